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


def _simple(rows):
    return [
        (r["window_start"], r["window_end"], r["race"], r["faces"], r["people"], r["footage_s"])
        for r in rows
    ]


def test_every_window_covered_has_a_row_with_its_footage():
    agg = StatsAggregator(VOCABULARIES, window_s=10.0)
    agg.add_source("v.mp4", "video", None)
    agg.add(_track("v.mp4", "video", 0, [1, 2, 3], 3, 1, 0))  # window 0
    agg.add(_track("v.mp4", "video", 1, [21, 22, 24], 3, 1, 1))  # window 2
    agg.finish_source("v.mp4", duration_s=36.0, covered_s=36.0)
    # A camera that saw nobody, and a photo without a face: rows with faces = 0.
    agg.add_source("empty.mp4", "video", None)
    agg.finish_source("empty.mp4", duration_s=12.0, covered_s=12.0)
    agg.add_source("nobody.jpg", "image", None)
    agg.finish_source("nobody.jpg", duration_s=None, covered_s=0.0)
    # A source that yielded nothing (it could not be opened) has no rows.
    agg.add_source("broken.mp4", "video", None)
    agg.finish_source("broken.mp4", duration_s=None, covered_s=None)
    table = agg.table()
    by_source = {s: [r for r in table.to_pylist() if r["source"] == s] for s in
                 ("v.mp4", "empty.mp4", "nobody.jpg", "broken.mp4")}  # fmt: skip
    assert _simple(by_source["v.mp4"]) == [
        (0.0, 10.0, "White", 3, 1, 10.0),
        (10.0, 20.0, None, 0, 0, 10.0),
        (20.0, 30.0, "Black", 3, 1, 10.0),
        (30.0, 36.0, None, 0, 0, 6.0),
    ]
    assert _simple(by_source["empty.mp4"]) == [
        (0.0, 10.0, None, 0, 0, 10.0),
        (10.0, 12.0, None, 0, 0, 2.0),
    ]
    assert _simple(by_source["nobody.jpg"]) == [(0.0, 0.0, None, 0, 0, 0.0)]
    assert by_source["broken.mp4"] == []
    # A video that failed part way: rows up to where decoding stopped.
    part = StatsAggregator(VOCABULARIES, window_s=10.0)
    part.add_source("cut.mp4", "video", None)
    part.finish_source("cut.mp4", duration_s=60.0, covered_s=14.5)
    assert [r["footage_s"] for r in part.table().to_pylist()] == [10.0, 4.5]


def test_people_counts_everyone_present_visitors_only_where_they_start():
    agg = StatsAggregator(VOCABULARIES, window_s=10.0)
    agg.add_source("v.mp4", "video", None)
    for tid in range(3):  # three people seen from 5 s to 25 s: windows 0, 1 and 2
        agg.add(_track("v.mp4", "video", tid, [5, 15, 25], 3, 1, 0))
    agg.finish_source("v.mp4", duration_s=30.0, covered_s=30.0)
    rows = agg.table().to_pylist()
    assert [(r["faces"], r["visitors"], r["people"]) for r in rows] == [(3, 3, 3), (3, 0, 3),
                                                                       (3, 0, 3)]  # fmt: skip


def test_a_window_whose_cells_are_all_suppressed_keeps_a_row_with_null_counts():
    agg = StatsAggregator(VOCABULARIES, window_s=10.0)
    agg.add_source("v.mp4", "video", None)
    for tid in range(3):  # window 0: three people, all the same labels
        agg.add(_track("v.mp4", "video", tid, [1, 2], 3, 1, 0))
    agg.add(_track("v.mp4", "video", 3, [12, 13], 3, 1, 0))  # window 1: one person
    agg.finish_source("v.mp4", duration_s=30.0, covered_s=30.0)
    rows = agg.table(min_cell_count=3).to_pylist()
    assert _simple(rows) == [
        (0.0, 10.0, "White", 6, 3, 10.0),
        (10.0, 20.0, None, None, None, 10.0),  # withheld, not "nobody"
        (20.0, 30.0, None, 0, 0, 10.0),
    ]
    assert agg.suppressed.cells == 1 and not agg.suppressed.everything
    assert agg.table(min_cell_count=4).column("faces").null_count == 2
    assert agg.suppressed.everything


def test_clock_windows_start_on_the_wall_clock_of_the_time_zone():
    import zoneinfo

    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    start = dt.datetime(2026, 3, 2, 10, 7, 30, tzinfo=berlin)  # 09:07:30 UTC
    agg = StatsAggregator(VOCABULARIES, window_s=900.0, align="clock", tz="Europe/Berlin")
    agg.add_source("v.mp4", "video", start)
    agg.add(_track("v.mp4", "video", 0, [0.0, 449.0, 451.0], 3, 1, 0, start))
    agg.finish_source("v.mp4", duration_s=1500.0, covered_s=1500.0)
    rows = agg.table().to_pylist()
    walls = [r["start_time"].astimezone(berlin).strftime("%H:%M") for r in rows]
    assert walls == ["10:00", "10:15", "10:30"]
    assert [(r["window_start"], r["window_end"], r["footage_s"]) for r in rows] == [
        (0.0, 450.0, 450.0),  # 10:07:30-10:15 of the 10:00 window
        (450.0, 1350.0, 900.0),
        (1350.0, 1500.0, 150.0),  # 10:30-10:32:30
    ]
    assert [r["faces"] for r in rows] == [2, 1, 0]
    # The same instant in another zone with a half-hour offset: another grid.
    kolkata = StatsAggregator(VOCABULARIES, window_s=3600.0, align="clock", tz="Asia/Kolkata")
    kolkata.add_source("v.mp4", "video", start)  # 14:37:30 in Kolkata
    kolkata.finish_source("v.mp4", duration_s=60.0, covered_s=60.0)
    (row,) = kolkata.table().to_pylist()
    # 14:00 in Kolkata is 08:30 UTC: an hour on the local clock, not on UTC's.
    assert row["start_time"] == dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC)
    # Today's default: windows from the source's start.
    default = StatsAggregator(VOCABULARIES, window_s=900.0)
    default.add_source("v.mp4", "video", start)
    default.finish_source("v.mp4", duration_s=1000.0, covered_s=1000.0)
    assert [r["start_time"] for r in default.table().to_pylist()] == [
        start,
        start + dt.timedelta(seconds=900),
    ]


def test_clock_windows_must_tile_a_day():
    import pytest

    with pytest.raises(ValueError, match="divides a day"):
        StatsAggregator(VOCABULARIES, window_s=7 * 60.0, align="clock")
    with pytest.raises(ValueError, match="not a known time zone"):
        StatsAggregator(VOCABULARIES, window_s=60.0, align="clock", tz="Mars/Olympus")
