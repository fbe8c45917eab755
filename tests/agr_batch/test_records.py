"""The records passed between stages refuse what no stage can handle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agr_batch.records import Frame

IMAGE = np.zeros((4, 6, 3), np.uint8)


def test_a_frame_keeps_what_it_is_given():
    frame = Frame("a.mp4", 3, 1.5, IMAGE)
    assert (frame.height, frame.width, frame.time_s, frame.frame_index) == (4, 6, 1.5, 3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_frame_without_a_finite_time_is_refused(bad):
    with pytest.raises(ValueError, match=r"Frame\.time_s: expected a finite number"):
        Frame("a.mp4", 0, bad, IMAGE)


def test_a_frame_with_a_negative_index_or_a_grey_image_is_refused():
    with pytest.raises(ValueError, match="frame_index"):
        Frame("a.mp4", -1, 0.0, IMAGE)
    with pytest.raises(ValueError, match=r"Frame\.image"):
        Frame("a.mp4", 0, 0.0, np.zeros((4, 6), np.uint8))
