"""Sparse sampling does not multiply visitors: the tracker's gap follows the sampling."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from agr_batch.commands.run import run
from agr_batch.config import RunConfig
from tests import media


@pytest.fixture(scope="module")
def default_gop_video(tmp_path_factory, t1_rgb):
    """34 s of six static people at 30 fps with x264's default keyframe interval (250)."""
    path = tmp_path_factory.mktemp("gop") / "six.mp4"
    video = media.make_video(path, [t1_rgb], fps=30, seconds=34, size=(640, 480), gop=None)
    assert media.keyframe_indices(path) == [0, 250, 500, 750, 1000]
    return video


def _run(tmp_path, video, model, **kw):
    config = RunConfig(
        inputs=(str(video),), out=tmp_path / "s.parquet", tracks_out=tmp_path / "t.parquet",
        model=model, backend="eager", **kw,
    )  # fmt: skip
    return run(config), pq.read_table(tmp_path / "t.parquet").to_pandas()


def test_keyframes_only_with_default_gop_keeps_six_visitors(
    tmp_path, default_gop_video, tiny_checkpoint
):
    # Keyframes 8.3 s apart against a 3 s --max-gap: every person restarted at every
    # keyframe (30 visitors here, 90 on a longer clip).
    summary, tracks = _run(tmp_path, default_gop_video.path, tiny_checkpoint, keyframes_only=True)
    assert summary.frames == 5 and summary.faces == 30
    assert summary.visitors == 6
    assert (tracks.faces == 5).all()


def test_sample_fps_0_2_on_one_face_is_one_visitor(tmp_path, hanks_rgb, tiny_checkpoint):
    video = media.make_video(
        tmp_path / "one.mp4", [hanks_rgb], fps=5, seconds=60, size=(320, 240), gop=25
    )
    summary, tracks = _run(tmp_path, video.path, tiny_checkpoint, sample_fps=0.2)
    assert summary.frames == 12 and summary.faces == 12
    assert summary.visitors == 1 and tracks.dwell_s.tolist() == pytest.approx([55.0])
