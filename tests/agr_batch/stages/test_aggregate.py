from __future__ import annotations

import datetime as dt

import numpy as np

from agr_batch.labels import VOCABULARIES
from agr_batch.records import Predictions, TrackResult
from agr_batch.stages.aggregate import StatsAggregator, faces_table, tracks_table


def _onehot(n: int, k: int, idx: int) -> np.ndarray:
    p = np.zeros((n, k), np.float32)
    p[:, idx] = 1.0
    return p


def _track(source, kind, tid, times, age, gender, race, start=None):
    n = len(times)
    preds = Predictions(_onehot(n, 9, age), _onehot(n, 2, gender), _onehot(n, 7, race))
    return TrackResult(
        source=source,
        kind=kind,
        start_time=start,
        track_id=tid,
        frame_index=np.arange(n, dtype=np.int64),
        time_s=np.asarray(times, np.float64),
        boxes=np.tile(np.array([[0, 0, 10, 10]], np.float32), (n, 1)),
        det_scores=np.full(n, 0.9, np.float32),
        face_predictions=preds,
        classified=np.zeros(n, bool),
        vote=Predictions(_onehot(1, 9, age), _onehot(1, 2, gender), _onehot(1, 7, race)),
    )


def test_hand_computed_cells():
    start = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    agg = StatsAggregator(VOCABULARIES, window_s=10.0)
    agg.add_source("v.mp4", "video", start)
    # Person A: 20-29 Female White, seen 0..14 s (faces in windows 0 and 1), starts in window 0.
    agg.add(_track("v.mp4", "video", 0, [0, 5, 9.9, 10, 14], 3, 1, 0, start))
    # Person B: same labels, seen only at 12 s.
    agg.add(_track("v.mp4", "video", 1, [12], 3, 1, 0, start))
    # Person C: more than 70, Male, Indian, seen 21..23 s.
    agg.add(_track("v.mp4", "video", 2, [21, 23], 8, 0, 5, start))
    agg.finish_source("v.mp4", duration_s=24.5)
    # An image: one window at 0, no absolute time.
    agg.add(_track("a.jpg", "image", 0, [0], 0, 0, 1))
    rows = agg.table().to_pylist()
    simple = [
        (
            r["source"],
            r["window_start"],
            r["window_end"],
            r["age"],
            r["gender"],
            r["race"],
            r["faces"],
            r["visitors"],
        )
        for r in rows
    ]
    assert simple == [
        ("a.jpg", 0.0, 0.0, "0-2", "Male", "Black", 1, 1),
        ("v.mp4", 0.0, 10.0, "20-29", "Female", "White", 3, 1),
        ("v.mp4", 10.0, 20.0, "20-29", "Female", "White", 3, 1),
        ("v.mp4", 20.0, 24.5, "more than 70", "Male", "Indian", 2, 1),
    ]
    assert rows[0]["start_time"] is None
    assert rows[2]["start_time"] == start + dt.timedelta(seconds=10)
    assert agg.total_faces == 9 and agg.total_visitors == 4


def test_faces_and_tracks_tables():
    t = _track("v.mp4", "video", 7, [1.0, 2.0, 4.5], 4, 0, 3)
    faces = faces_table(t, VOCABULARIES)
    assert faces.num_rows == 3
    assert faces.column("track_id").to_pylist() == [7, 7, 7]
    assert faces.column("age").to_pylist() == ["30-39"] * 3
    assert faces.column("race_probs").to_pylist()[0] == [0, 0, 0, 1, 0, 0, 0]
    assert faces.column("gender_prob").to_pylist() == [1.0, 1.0, 1.0]
    tracks = tracks_table([t], VOCABULARIES)
    row = tracks.to_pylist()[0]
    assert row["dwell_s"] == 3.5 and row["faces"] == 3 and row["race"] == "East Asian"
    assert tracks_table([], VOCABULARIES).num_rows == 0


def test_small_cells_are_suppressed_by_faces_and_by_people():
    agg = StatsAggregator(VOCABULARIES, window_s=10.0)
    agg.add_source("v.mp4", "video", None)
    # Cell A: one person seen in 8 frames (many faces, but a single individual).
    agg.add(_track("v.mp4", "video", 0, [float(i) for i in range(8)], 3, 1, 0))
    # Cell B: five people, one face each.
    for tid in range(1, 6):
        agg.add(_track("v.mp4", "video", tid, [1.0], 4, 0, 2))
    # Cell C: two people, one face each.
    for tid in range(6, 8):
        agg.add(_track("v.mp4", "video", tid, [2.0], 5, 0, 3))
    full = agg.table()
    assert full.num_rows == 3 and agg.suppressed.cells == 0
    kept = agg.table(min_cell_count=3).to_pylist()
    assert [(r["age"], r["faces"], r["visitors"]) for r in kept] == [("30-39", 5, 5)]
    assert agg.suppressed.cells == 2
    assert agg.suppressed.faces == 8 + 2 and agg.suppressed.visitors == 1 + 2
    assert agg.table(min_cell_count=1).num_rows == 3
