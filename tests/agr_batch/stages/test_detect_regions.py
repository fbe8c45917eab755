"""Detection around tracked faces: tile geometry, the whole-frame schedule, and real faces."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from agr_batch.config import DetectorConfig, TrackerConfig
from agr_batch.pipeline.faces import FaceStep
from agr_batch.samples import write_scene_video
from agr_batch.stages.decode.media import frames
from agr_batch.stages.detect import create_detector
from agr_batch.stages.detect.regions import RegionPlanner, RegionPolicy, tiles_around
from agr_batch.stages.preprocess import PreprocessSpec
from agr_batch.stages.track import Tracker

SPEC = PreprocessSpec(input_size=(64, 64))


# --- geometry ----------------------------------------------------------------------------


def test_tiles_are_on_the_grid_of_one_size_inside_and_cover_each_face_with_its_margin():
    boxes = np.array([[100.0, 50.0, 130.0, 90.0], [500.0, 300.0, 540.0, 350.0]])
    tiles = tiles_around(boxes, 1.5, 640, 384)
    assert len(tiles) == 2
    sizes = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in tiles}
    assert len(sizes) == 1
    (tw, th), *_ = sizes
    assert tw % 64 == 0 and th % 64 == 0
    for (x0, y0, x1, y1), (bx1, by1, bx2, by2) in zip(tiles, boxes, strict=True):
        assert x0 % 32 == 0 and y0 % 32 == 0
        assert x0 >= 0 and y0 >= 0 and x1 <= 640 and y1 <= 384
        bw, bh = bx2 - bx1, by2 - by1
        # The margin is kept wherever the frame allows it.
        assert x0 <= max(0, bx1 - 1.5 * bw) and y0 <= max(0, by1 - 1.5 * bh)
        assert x1 >= min(640, bx2 + 1.5 * bw) and y1 >= min(384, by2 + 1.5 * bh)


def test_overlapping_reaches_merge_into_one_tile_and_edges_stay_inside():
    boxes = np.array([[600.0, 340.0, 630.0, 380.0], [570.0, 330.0, 600.0, 370.0]])
    tiles = tiles_around(boxes, 1.0, 640, 384)
    assert len(tiles) == 1
    x0, y0, x1, y1 = tiles[0]
    assert x1 == 640 and y1 == 384 and x0 <= 540 and y0 <= 290


def test_no_boxes_nan_boxes_and_boxes_outside_give_no_tiles():
    assert tiles_around(np.zeros((0, 4)), 1.5, 640, 384) == []
    assert tiles_around(np.array([[np.nan, 0, 10, 10], [0, np.inf, 5, 5]]), 1.5, 640, 384) == []
    assert tiles_around(np.array([[-500.0, -500, -400, -400]]), 1.0, 640, 384) == []
    assert tiles_around(np.array([[5000.0, 10, 5100, 90]]), 1.0, 640, 384) == []


def test_a_huge_box_gives_the_whole_input():
    assert tiles_around(np.array([[-1e9, -1e9, 1e9, 1e9]]), 1.5, 640, 384) == [(0, 0, 640, 384)]


# --- schedule ----------------------------------------------------------------------------


def test_the_schedule_searches_whole_at_the_start_every_interval_and_after_a_jump():
    planner = RegionPlanner(RegionPolicy(redetect_s=1.0, max_step_s=1.0))
    decisions = []
    for t in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 5.5, 3.0):
        decisions.append(planner.whole(t))
    # 0: first frame; 1.0, 2.0: the interval; 5.0: 2.5 s after the frame before; 3.0: back
    # in time.
    assert decisions == [True, False, True, False, True, False, True, False, True]
    assert planner.whole(math.nan)  # no time, no schedule


def test_odd_frames_sizes_and_times_keep_finding_the_faces(centerface):
    from agr_batch.records import Frame
    from agr_batch.samples import photo, scene_frame

    picture = photo()

    def frame(i, t, size):
        image = scene_frame(picture, t, size=size, height_frac=0.6, sway_px=size[0] / 10)
        return Frame("odd", i, t, image)

    step = FaceStep(centerface, SPEC, TrackerConfig(), regions=RegionPolicy(redetect_s=1.0))
    # The size changes mid-stream, then time jumps far ahead and runs backwards.
    wide, big, tall = (960, 540), (1920, 1080), (540, 960)
    plan = [(0.0, wide), (0.5, wide), (0.8, big), (1.1, big), (1.4, tall), (1e300, tall),
            (3.0, tall), (2.5, tall)]  # fmt: skip
    counts = [len(step.step(frame(i, t, size))) for i, (t, size) in enumerate(plan)]
    assert counts == [6] * len(plan)
    # Tiles at 0.5 and 1.1 s only: new sizes, the jump and going back are searched whole.
    assert (step.whole_frames, step.tiled_frames) == (6, 2)
    tiny = step.step(Frame("odd", 9, 3.2, np.zeros((1, 1, 3), np.uint8)))
    assert len(tiny) == 0


def test_a_tile_pass_that_became_whole_leaves_the_schedule_alone(centerface, scene_frames):
    # Tiles around the six faces of a scene frame cover far more than 1 % of it: every
    # tiled frame falls back to a whole search. The planned ones stay on the 1 s schedule
    # (they are what a look-ahead detector is given), so the plan depends on times alone.
    ahead = _Counting(create_detector("centerface", threads=2))  # its own session
    step = FaceStep(
        centerface, SPEC, TrackerConfig(), regions=RegionPolicy(redetect_s=1.0, max_share=0.01),
        lookahead=ahead,
    )  # fmt: skip
    try:
        found = step.step_batch(scene_frames[:4])  # 0, 0.5, 1.0 and 1.5 s
    finally:
        step.close()
    assert [len(f) for f in found] == [6, 6, 6, 6]
    assert (step.whole_frames, step.tiled_frames) == (4, 0)
    assert ahead.calls == 2  # 0 and 1.0 s; 0.5 and 1.5 s were tiles that fell back


class _Counting:
    """A detector that counts its whole-frame searches."""

    def __init__(self, detector):  # type: ignore[no-untyped-def]
        self.detector, self.calls = detector, 0

    def detect(self, images):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.detector.detect(images)


def test_redetect_zero_searches_every_frame_whole():
    planner = RegionPlanner(RegionPolicy(redetect_s=0.0))
    assert all(planner.whole(t / 2) for t in range(5))
    assert not RegionPolicy(redetect_s=0).enabled


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="redetect_s"):
        RegionPolicy(redetect_s=bad)
    with pytest.raises(ValueError, match="--redetect-every"):
        DetectorConfig(redetect_s=bad)


def test_the_tracker_predicts_open_tracks_by_their_velocity():
    tracker = Tracker(TrackerConfig())
    assert tracker.predicted_boxes(0.0).shape == (0, 4)
    tracker.update(np.array([[10.0, 10, 30, 30]]), np.array([0.9]), 0.0)
    tracker.update(np.array([[20.0, 10, 40, 30]]), np.array([0.9]), 0.5)
    np.testing.assert_allclose(tracker.predicted_boxes(1.0), [[30.0, 10, 50, 30]])


# --- real faces ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_frames(scene_video):
    return list(frames(scene_video.path, sample_fps=2))


def _max_landmark_gap(a, b):
    """Largest landmark distance between faces of ``a`` and ``b`` paired by nearest box."""
    worst = 0.0
    for box, lm in zip(a.boxes, a.landmarks, strict=True):
        centre = (box[:2] + box[2:]) / 2
        j = np.argmin(np.abs((b.boxes[:, :2] + b.boxes[:, 2:]) / 2 - centre).sum(axis=1))
        worst = max(worst, float(np.abs(b.landmarks[j] - lm).max()))
    return worst


def test_tiles_around_last_frames_faces_find_what_the_whole_frame_finds(centerface, scene_frames):
    checked = 0
    for before, frame in itertools.pairwise(scene_frames):
        whole = centerface.detect([frame.image])[0]
        previous = centerface.detect([before.image])[0]
        found, searched_whole = centerface.detect_around(
            frame.image, previous.boxes, margin=1.5, max_share=1.0
        )
        assert not searched_whole
        assert len(found) == len(whole) == 6
        assert _max_landmark_gap(found, whole) <= 1.5
        np.testing.assert_allclose(np.sort(found.scores), np.sort(whole.scores), atol=0.02)
        checked += 1
    assert checked >= 10


def test_tiles_where_no_face_is_find_nothing_and_wide_tiles_search_the_whole_frame(
    centerface, scene_frames
):
    frame = scene_frames[3]
    empty, whole = centerface.detect_around(frame.image, np.zeros((0, 4)), margin=1.5)
    assert len(empty) == 0 and not whole
    corner = np.array([[2.0, 2.0, 22.0, 22.0]])  # grey canvas only
    nothing, whole = centerface.detect_around(frame.image, corner, margin=1.5)
    assert len(nothing) == 0 and not whole
    h, w = frame.image.shape[:2]
    everything, whole = centerface.detect_around(
        frame.image, np.array([[0.0, 0.0, w, h]]), margin=1.5, max_share=0.6
    )
    assert whole and len(everything) == 6


def test_the_face_step_finds_arrivals_at_the_next_whole_search(centerface, tmp_path):
    # People in view from 1.2 s to 3.7 s of a 5 s video sampled at 2 fps.
    video = write_scene_video(
        tmp_path / "visit.mp4", seconds=5.0, size=(960, 540), sway_px=60, visits=[(1.2, 3.7)]
    )
    sampled = list(frames(video.path, sample_fps=2))
    every = FaceStep(centerface, SPEC, TrackerConfig(), regions=RegionPolicy(redetect_s=0))
    tiled = FaceStep(centerface, SPEC, TrackerConfig(), regions=RegionPolicy(redetect_s=1.0))
    a = [len(every.step(f)) for f in sampled]
    found = [tiled.step(f) for f in sampled]
    times = [f.time_s for f in sampled]
    assert a == [6 if 1.2 <= t < 3.7 else 0 for t in times]
    # Whole searches at 0, 1, 2, 3 and 4 s: the arrival at 1.2 s is found at 2.0 s, not at
    # 1.5 s; after that the tiles follow the six people until they leave.
    assert [len(f) for f in found] == [6 if 2.0 <= t < 3.7 else 0 for t in times]
    assert (every.whole_frames, every.tiled_frames) == (len(sampled), 0)
    assert (tiled.whole_frames, tiled.tiled_frames) == (5, len(sampled) - 5)
    # One track per person from when they are found.
    assert sorted(set(np.concatenate([f.track_ids for f in found]).tolist())) == [*range(6)]


def test_a_new_source_starts_with_a_whole_search(centerface, scene_frames):
    step = FaceStep(centerface, SPEC, TrackerConfig(), regions=RegionPolicy(redetect_s=10.0))
    for f in scene_frames[:4]:
        step.step(f)
    assert (step.whole_frames, step.tiled_frames) == (1, 3)
    step.end_source()
    step.start_source()
    step.step(scene_frames[4])
    assert step.whole_frames == 2
