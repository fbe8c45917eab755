"""Stitching overlapping segments: one track per person, every face once, the voter's mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agr_batch.pipeline import SourceResult
from agr_batch.pipeline.stitch import stitch_segments
from agr_batch.pipeline.work import plan_segments
from agr_batch.records import Predictions, TrackResult
from agr_batch.stages.decode.media import MediaFile

VIDEO = MediaFile(Path("v.mp4"), "video")
# 4 s at 2 fps in two windows [0, 2) and [2, 4), each decoding 1 s of the other.
WINDOWS = plan_segments(VIDEO, 4.0, segment_s=2, sample_fps=2, overlap_s=1.0)


def _probs(k: int, hot: int) -> np.ndarray:
    p = np.full(k, 0.1 / (k - 1), np.float32)
    p[hot] = 0.9
    return p


def _track(track_id: int, times: list[float], x: float, *, hot: int, classified: int,
           own: bool = False) -> TrackResult:  # fmt: skip
    n = len(times)
    age, gender, race = _probs(9, hot), _probs(2, hot % 2), _probs(7, hot % 7)
    faces = Predictions(np.tile(age, (n, 1)), np.tile(gender, (n, 1)), np.tile(race, (n, 1)))
    if own:  # per-face predictions that differ face by face
        faces = Predictions(
            np.stack([_probs(9, i % 9) for i in range(n)]), faces.gender, faces.race
        )
    flags = np.zeros(n, bool)
    flags[:classified] = True
    return TrackResult(
        source="v.mp4", kind="video", start_time=None, track_id=track_id,
        frame_index=np.round(np.array(times) * 30).astype(np.int64),
        time_s=np.array(times, np.float64),
        boxes=np.tile(np.array([x, 10, x + 40, 50], np.float32), (n, 1)),
        det_scores=np.full(n, 0.9, np.float32), face_predictions=faces,
        classified=flags, vote=Predictions(age[None], gender[None], race[None]),
    )  # fmt: skip


def _result(k: int, tracks: tuple[TrackResult, ...], error: str | None = None) -> SourceResult:
    return SourceResult(WINDOWS[k], 4, 4.0, None, tracks, error)


def test_a_person_across_the_boundary_is_one_track_with_each_face_once():
    # Seg 0 decodes [0, 3), seg 1 decodes [1, 4): both see 1.0 .. 2.5.
    a0 = _track(0, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], 100, hot=1, classified=2)
    a1 = _track(0, [1.0, 1.5, 2.0, 2.5, 3.0, 3.5], 100, hot=3, classified=6)
    b1 = _track(1, [3.0, 3.5], 400, hot=5, classified=1)  # someone else, after the boundary
    whole = stitch_segments([_result(0, (a0,)), _result(1, (a1, b1))], per_face=False,
                            duration_s=4.0)  # fmt: skip
    assert whole.item.count == 1 and whole.frames == 8 and whole.duration_s == 4.0
    a, b = whole.tracks
    assert (a.track_id, b.track_id) == (0, 1)
    assert a.time_s.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert a.frame_index.tolist() == [0, 15, 30, 45, 60, 75, 90, 105]
    assert b.time_s.tolist() == [3.0, 3.5]
    # The vote is the mean over the 2 + 6 classified faces: the parts' votes weighted 2:6.
    want = (2 * a0.vote.age[0].astype(np.float64) + 6 * a1.vote.age[0]) / 8
    np.testing.assert_allclose(a.vote.age[0], want, rtol=1e-6)
    np.testing.assert_allclose(a.face_predictions.age, np.tile(a.vote.age, (8, 1)))
    # Kept faces keep their flags: seg 0's first two, and seg 1's faces from 2.0 on.
    assert a.classified.tolist() == [True, True, False, False, True, True, True, True]


def test_people_who_share_no_face_stay_apart_and_overlap_only_tracks_are_counted_once():
    a0 = _track(0, [0.0, 0.5], 100, hot=1, classified=1)
    late0 = _track(1, [2.0, 2.5], 300, hot=2, classified=1)  # in seg 0's overlap only
    late1 = _track(0, [2.0, 2.5, 3.0], 300, hot=2, classified=1)
    other1 = _track(1, [2.0, 2.5], 600, hot=4, classified=1)
    whole = stitch_segments([_result(0, (a0, late0)), _result(1, (late1, other1))],
                            per_face=False, duration_s=4.0)  # fmt: skip
    assert [t.time_s.tolist() for t in whole.tracks] == [[0.0, 0.5], [2.0, 2.5, 3.0], [2.0, 2.5]]
    assert [t.track_id for t in whole.tracks] == [0, 1, 2]
    assert sum(len(t) for t in whole.tracks) == 7


def test_per_face_predictions_are_kept_face_by_face():
    a0 = _track(0, [0.5, 1.0, 1.5, 2.0], 100, hot=1, classified=4, own=True)
    a1 = _track(0, [1.0, 1.5, 2.0, 2.5], 100, hot=1, classified=4, own=True)
    (a,) = stitch_segments([_result(0, (a0,)), _result(1, (a1,))], per_face=True,
                           duration_s=4.0).tracks  # fmt: skip
    np.testing.assert_array_equal(a.face_predictions.age[:3], a0.face_predictions.age[:3])
    np.testing.assert_array_equal(a.face_predictions.age[3:], a1.face_predictions.age[2:])


def test_a_failed_segment_keeps_the_others_and_reports_the_first_error():
    windows = plan_segments(VIDEO, 6.0, segment_s=2, sample_fps=2, overlap_s=1.0)
    parts = [
        SourceResult(windows[0], 4, None, None, (_track(0, [0.0, 2.5], 100, hot=1, classified=1),),
                     None),
        SourceResult(windows[1], 0, None, None, (), "v.mp4: Ray worker failed (segment 2)"),
        SourceResult(windows[2], 4, None, None, (_track(0, [3.5, 4.0], 100, hot=1, classified=1),),
                     "v.mp4: truncated"),
    ]  # fmt: skip
    whole = stitch_segments(parts, per_face=False, duration_s=6.0)
    # The face at 2.5 s lies in the failed window: it is lost, not counted twice.
    assert [t.time_s.tolist() for t in whole.tracks] == [[0.0], [4.0]]
    assert whole.error == "v.mp4: Ray worker failed (segment 2)" and whole.frames == 8


def test_nothing_to_stitch_is_an_error():
    with pytest.raises(ValueError, match="no segments"):
        stitch_segments([], per_face=False, duration_s=None)
