from __future__ import annotations

import numpy as np
import pytest

from agr_batch.stages.track import Tracker, TrackerConfig, iou_matrix


def _box(cx: float, cy: float, side: float = 80.0) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def _run(tracker: Tracker, frames: list[tuple[float, list[list[float]]]]) -> list[np.ndarray]:
    out = []
    for t, boxes in frames:
        b = np.array(boxes, np.float32).reshape(-1, 4)
        out.append(tracker.update(b, np.full(len(b), 0.9, np.float32), t))
    return out


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])
    assert iou_matrix(a, np.zeros((0, 4))).shape == (1, 0)


def test_static_faces_keep_one_track_each():
    people = [(200, 300), (500, 300), (800, 300), (1100, 300)]
    frames = [(i * 0.5, [_box(x, y) for x, y in people]) for i in range(40)]
    ids = _run(Tracker(), frames)
    assert all(list(f) == [0, 1, 2, 3] for f in ids)


def test_panning_faces_keep_ids_even_without_overlap():
    # Each face moves 100 px per sampled frame: more than its 80 px width, so consecutive
    # boxes never overlap; the velocity model still follows them.
    people = [(100, 200), (100, 500)]
    frames = [(i * 0.5, [_box(x + 100 * i, y) for x, y in people]) for i in range(12)]
    ids = _run(Tracker(), frames)
    assert all(list(f) == [0, 1] for f in ids)


def test_slow_people_across_keyframes_two_seconds_apart():
    # Keyframes-only scans see a frame every 2 s; people walking slowly (30 px/s) keep ids.
    people = [(300, 300), (420, 300), (900, 500)]
    frames = [(t, [_box(x + 30 * t, y) for x, y in people]) for t in np.arange(0, 30, 2.0)]
    ids = _run(Tracker(TrackerConfig(max_gap_s=3.0)), frames)
    assert all(list(f) == [0, 1, 2] for f in ids)


def test_crossing_order_does_not_swap_ids_of_shuffled_detections():
    people = [(200, 300), (700, 300)]
    frames = []
    for i in range(10):
        boxes = [_box(x + 10 * i, y) for x, y in people]
        frames.append((i * 0.5, boxes[::-1] if i % 2 else boxes))
    ids = _run(Tracker(), frames)
    for i, f in enumerate(ids):
        assert list(f) == ([1, 0] if i % 2 else [0, 1])


def test_face_that_returns_after_max_gap_is_a_new_track():
    tracker = Tracker(TrackerConfig(max_gap_s=2.0))
    seen = _run(tracker, [(t, [_box(300, 300)]) for t in (0.0, 0.5, 1.0)])
    assert [int(f[0]) for f in seen] == [0, 0, 0]
    # Gone for 1.5 s (within the gap): same person.
    assert int(_run(tracker, [(2.5, [_box(300, 300)])])[0][0]) == 0
    # Gone for 3 s (beyond the gap): a new visitor.
    back = _run(tracker, [(5.5, [_box(300, 300)])])
    assert int(back[0][0]) == 1
    assert tracker.pop_ended() == [0]
    assert tracker.close_all() == [1]


def test_low_score_detections_continue_tracks_after_high_ones():
    tracker = Tracker(TrackerConfig(high_score=0.6))
    tracker.update(
        np.array([_box(300, 300), _box(700, 300)], np.float32),
        np.array([0.9, 0.9], np.float32),
        0.0,
    )
    # Second frame: a high-score detection near track 1 and a low-score one near track 0.
    ids = tracker.update(
        np.array([_box(305, 300), _box(705, 300)], np.float32),
        np.array([0.55, 0.95], np.float32),
        0.5,
    )
    assert list(ids) == [0, 1]


def test_near_face_of_same_size_matches_but_very_different_size_does_not():
    def second_id(first: list[float], second: list[float]) -> int:
        tracker = Tracker()
        tracker.update(np.array([first], np.float32), np.array([0.9], np.float32), 0.0)
        ids = tracker.update(np.array([second], np.float32), np.array([0.9], np.float32), 0.5)
        return int(ids[0])

    # Same size, no overlap, centres 1.25 face widths apart: the same person moving.
    assert second_id(_box(300, 300, 80), _box(400, 300, 80)) == 0
    # No overlap and a face three times larger: someone else.
    assert second_id(_box(300, 300, 30), _box(380, 300, 100)) == 1
    # Far away (beyond the gate): someone else.
    assert second_id(_box(300, 300, 80), _box(700, 300, 80)) == 1


def test_config_validation():
    with pytest.raises(ValueError, match="--max-gap"):
        TrackerConfig(max_gap_s=0)


def test_gate_widens_with_the_gap_for_keyframe_scans():
    # Faces 70 px wide walking 90 px/s, seen every 2 s: 180 px (2.6 face widths) per gap,
    # beyond the 0.5 s gate but within the gap-widened one.
    people = [(200, 300), (600, 300), (1000, 300)]
    frames = [(t, [_box(x + 90 * t, y, 70) for x, y in people]) for t in np.arange(0, 12, 2.0)]
    ids = _run(Tracker(TrackerConfig(max_gap_s=3.0)), frames)
    assert all(list(f) == [0, 1, 2] for f in ids)
    # At 0.5 s sampling the same jump is implausible and starts new tracks.
    jumpy = [(t / 4, boxes) for t, boxes in frames]
    ids = _run(Tracker(TrackerConfig(max_gap_s=3.0)), jumpy)
    assert max(int(f.max()) for f in ids) > 2


def test_sparse_keyframes_keep_one_track_per_static_person():
    # x264's default GOP is 250 frames: 8.3 s between keyframes at 30 fps, far beyond the
    # 3 s --max-gap. Every sampled frame is given to the tracker, so it knows the spacing.
    people = [(200, 300), (420, 300), (640, 300), (860, 300), (1080, 300), (1300, 300)]
    frames = [(k * 250 / 30, [_box(x, y) for x, y in people]) for k in range(6)]
    tracker = Tracker(TrackerConfig(max_gap_s=3.0))
    ids = _run(tracker, frames)
    assert all(list(f) == [0, 1, 2, 3, 4, 5] for f in ids)
    assert tracker.sampling_interval == pytest.approx(250 / 30)
    assert tracker.effective_gap_s == pytest.approx(2.5 * 250 / 30)


def test_sampling_below_one_frame_per_gap_keeps_one_visitor():
    # --sample-fps 0.2: a frame every 5 s.
    tracker = Tracker(TrackerConfig(max_gap_s=3.0))
    ids = _run(tracker, [(5.0 * k, [_box(300, 300)]) for k in range(40)])
    assert {int(f[0]) for f in ids} == {0}


def test_dense_sampling_keeps_the_configured_gap():
    # At 2 fps the effective gap is --max-gap: 2.5 x 0.5 s is shorter.
    tracker = Tracker(TrackerConfig(max_gap_s=3.0))
    frames = [(t, [_box(300, 300)] if t < 2 or t > 5.6 else []) for t in np.arange(0, 8, 0.5)]
    ids = [f for f in _run(tracker, frames) if len(f)]
    assert tracker.effective_gap_s == 3.0
    assert [int(f[0]) for f in ids][-1] == 1  # unseen 4 s > 3 s: a new visitor


def test_one_long_pause_in_regular_sampling_still_ends_tracks():
    # Snapshots every 2 s, then an hour of nothing: the median interval stays 2 s, so the
    # person seen after the pause is a new visitor.
    tracker = Tracker(TrackerConfig(max_gap_s=3.0))
    frames = [(2.0 * k, [_box(300, 300)]) for k in range(10)]
    frames.append((18.0 + 3600.0, [_box(300, 300)]))
    ids = _run(tracker, frames)
    assert [int(f[0]) for f in ids] == [0] * 10 + [1]
