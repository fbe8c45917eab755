"""Suppression with one meaning: a shown cell holds at least K people and K faces, counted
after re-aggregation, and no total minus shown cells gives a suppressed one back.

The stats tables here are made by the real aggregator from tracks whose people are known,
so every check compares the report's decisions with the ground truth: which tracks (people)
and how many faces each chart cell really holds."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from agr_batch.commands.report import build_data, layout
from agr_batch.labels import AGE, GENDER, RACE, VOCABULARIES
from agr_batch.records import Predictions, TrackResult
from agr_batch.stages.aggregate import StatsAggregator
from agr_batch.stages.disclosure import Partition, Rows, people_lower_bound, protect

K = 5
T0 = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)
VOTE = {"vote": {"per_face": False}}


def _onehot(n: int, k: int, i: int) -> np.ndarray:
    p = np.zeros((n, k), np.float32)
    p[:, i] = 1
    return p


def track(source: str, tid: int, times, race: str, *, age: str = "20-29", gender: str = "Male",
          start: dt.datetime = T0, kind: str = "video") -> TrackResult:  # fmt: skip
    """One person seen at ``times`` (seconds into ``source``), labelled as given."""
    n = len(times)
    labels = (AGE.index(age), GENDER.index(gender), RACE.index(race))
    preds = Predictions(*(_onehot(n, k, i) for k, i in zip((9, 2, 7), labels, strict=True)))
    vote = Predictions(*(_onehot(1, k, i) for k, i in zip((9, 2, 7), labels, strict=True)))
    return TrackResult(
        source=source, kind=kind, start_time=start, track_id=tid,
        frame_index=np.arange(n, dtype=np.int64), time_s=np.asarray(times, np.float64),
        boxes=np.zeros((n, 4), np.float32), det_scores=np.full(n, 0.9, np.float32),
        face_predictions=preds, classified=np.ones(n, bool), vote=vote,
    )  # fmt: skip


def stats(tracks: list[TrackResult], *, window_s: float, durations: dict[str, float],
          starts: dict[str, dt.datetime] | None = None) -> pd.DataFrame:  # fmt: skip
    """The stats table the aggregator writes for ``tracks`` (every window covered)."""
    agg = StatsAggregator(VOCABULARIES, window_s=window_s)
    for source in durations:
        agg.add_source(source, "video", (starts or {}).get(source, T0))
    for t in tracks:
        agg.add(t)
    for source, duration in durations.items():
        agg.finish_source(source, duration_s=duration, covered_s=duration)
    return agg.table().to_pandas()


def report(frame: pd.DataFrame, k: int = K):  # type: ignore[no-untyped-def]
    return build_data(frame, {**VOTE, "window_s": _window(frame)}, source_path="stats.parquet",
                      min_cell_count=k, tz_name="UTC")  # fmt: skip


def _window(frame: pd.DataFrame) -> float:
    spans = frame.window_end - frame.window_start
    return float(spans[spans > 0].max())


def shown(data, chart: str) -> dict:  # type: ignore[no-untyped-def]
    cells = data.cells[chart].frame
    return {k: int(v) for k, v in cells[~cells.suppressed & (cells.faces > 0)].faces.items()}


# ---------------------------------------------------------------------------------------------
# The leak of the issue: a small group seen over several windows


def test_a_small_group_seen_across_windows_stays_suppressed_in_every_chart():
    # The demo's case: 2 White and 4 Latino people in a 12 s video with 5 s windows; their
    # later windows have visitors = 0 but are still them. 7 Black people make the page show
    # something.
    tracks = [track("lobby.mp4", i, np.arange(0, 12, 0.5), "White") for i in range(2)]
    tracks += [track("lobby.mp4", 2 + i, np.arange(0, 12, 0.5), "Latino_Hispanic")
               for i in range(4)]  # fmt: skip
    tracks += [track("lobby.mp4", 6 + i, np.arange(0, 12, 0.5), "Black") for i in range(7)]
    frame = stats(tracks, window_s=5, durations={"lobby.mp4": 12})
    # Each White row (window) holds 2 people: any K >= 3 suppresses it in `run` too.
    assert (frame[frame.race == "White"].people == 2).all()
    data = report(frame)
    race = data.cells["race"].frame
    assert race.loc["White"].suppressed and race.loc["Latino_Hispanic"].suppressed
    # 2 + 4 = 6 people hidden together: total minus Black reveals no group under 5.
    assert shown(data, "race") == {"Black": 7 * 24}
    assert data.cells["race"].frame.loc["Black"].visitors == 7
    # All 13 are present in each window: the windows are shown.
    assert list(shown(data, "over_time").values()) == [13 * 10, 13 * 10, 13 * 4]


def test_one_person_over_many_windows_is_one_person():
    # Four people in one camera, each seen in 6 windows: 24 rows of one person each, 4
    # people in all: suppressed at K = 5 however many faces they have.
    tracks = [track("cam.mp4", i, np.arange(0, 60, 0.5), "Indian") for i in range(4)]
    tracks += [track("cam.mp4", 4 + i, np.arange(0, 60, 0.5), "Black") for i in range(6)]
    frame = stats(tracks, window_s=10, durations={"cam.mp4": 60})
    data = report(frame)
    assert data.cells["race"].frame.loc["Indian"].faces == 480
    assert data.cells["race"].frame.loc["Indian"].suppressed
    # Indian alone would be revealed by total - Black: Black goes too, and says so.
    assert data.cells["race"].frame.loc["Black"].suppressed
    assert data.cells["totals"].frame.suppressed.tolist() == [False]  # 10 people


# ---------------------------------------------------------------------------------------------
# Across sources


def test_small_groups_split_across_sources_are_counted_once_per_person():
    # 2 Middle Eastern people at each of two cameras: 4 people, 160 faces: suppressed.
    # 3 Indian people at each camera: 6 people: shown, though no camera has 5.
    tracks, tid = [], itertools.count()
    for cam in ("camA/video.mp4", "camB/video.mp4"):
        tracks += [track(cam, next(tid), np.arange(0, 20, 0.5), "Middle Eastern")
                   for _ in range(2)]  # fmt: skip
        tracks += [track(cam, next(tid), np.arange(0, 20, 0.25), "Indian") for _ in range(3)]
        tracks += [track(cam, next(tid), np.arange(0, 20, 0.5), "East Asian") for _ in range(4)]
    frame = stats(tracks, window_s=60, durations={"camA/video.mp4": 20, "camB/video.mp4": 20})
    data = report(frame)
    race = data.cells["race"].frame
    assert race.loc["Middle Eastern"].faces == 160 and race.loc["Middle Eastern"].suppressed
    assert not race.loc["Indian"].suppressed and race.loc["Indian"].visitors == 6
    # The smaller of the other groups hides with Middle Eastern, so that total minus
    # Indian is 12 people, not 4.
    assert race.loc["East Asian"].suppressed
    # Two same-named files in two folders are two sources, keyed by their relative paths.
    assert list(data.cells["per_source"].frame.index) == ["camA/video.mp4", "camB/video.mp4"]


def test_totals_minus_the_shown_cells_never_reveal_a_small_group():
    # One lone person next to big groups: without complementary suppression "total - shown"
    # would give their face count, and the race they are not.
    tracks = [track("cam.mp4", 0, [1.0, 2.0, 3.0], "Southeast Asian", age="60-69")]
    tracks += [track("cam.mp4", 1 + i, [5.0, 6.0], "White") for i in range(6)]
    tracks += [track("cam.mp4", 7 + i, [5.0, 6.0, 7.0], "Black") for i in range(8)]
    frame = stats(tracks, window_s=60, durations={"cam.mp4": 60})
    data = report(frame)
    total = int(data.cells["totals"].frame.faces.iloc[0])
    for chart in ("race", "pyramid"):
        hidden = total - sum(shown(data, chart).values())
        assert hidden == 0 or hidden >= K, chart
    assert data.cells["race"].frame.loc["Southeast Asian"].suppressed
    assert data.cells["race"].frame.loc["White"].suppressed  # its partner: the smaller group
    assert not data.cells["race"].frame.loc["Black"].suppressed


def test_per_face_labels_count_people_only_within_a_row():
    # --per-face: one person's faces may fall into several label cells and their vote into
    # a cell without any of their faces; visitors then say nothing about a cell's people.
    agg = StatsAggregator(VOCABULARIES, window_s=60)
    agg.add_source("cam.mp4", "video", T0)
    for i in range(3):  # three people voted White, every face of them read as Black
        t = track("cam.mp4", i, [1.0, 2.0, 3.0, 4.0], "Black")
        vote = Predictions(_onehot(1, 9, 3), _onehot(1, 2, 0), _onehot(1, 7, 0))
        agg.add(TrackResult(**{**t.__dict__, "vote": vote}))
    for i in range(5):  # five East Asian people, two faces each
        agg.add(track("cam.mp4", 3 + i, [7.0, 8.0], "East Asian"))
    agg.finish_source("cam.mp4", duration_s=60, covered_s=60)
    frame = agg.table().to_pandas()
    data = build_data(frame, {"vote": {"per_face": True}, "window_s": 60},
                      source_path="s.parquet", min_cell_count=3, tz_name="UTC")  # fmt: skip
    race = data.cells["race"].frame
    assert race.loc["Black"].faces == 12 and not race.loc["Black"].suppressed  # 3 people
    # White: 3 visitors, 0 faces: it counts someone, so it is not an empty (shown) cell;
    # total visitors minus those shown would give it back: the smaller group hides with it.
    assert race.loc["White"].visitors == 3 and race.loc["White"].suppressed
    assert race.loc["East Asian"].faces == 10 and race.loc["East Asian"].suppressed


# ---------------------------------------------------------------------------------------------
# Every chart, every pair of charts, random small groups


def _ground_truth(frame: pd.DataFrame, tracks: list[TrackResult], window_s: float):
    """The tracks and faces behind each row of ``frame``."""
    index = {(r.source, r.window_start, r.age, r.gender, r.race): i
             for i, r in enumerate(frame.itertuples()) if r.faces}  # fmt: skip
    people: dict[int, set[int]] = defaultdict(set)
    faces: dict[int, int] = defaultdict(int)
    for t in tracks:
        labels = (AGE[t.face_predictions.age[0].argmax()], GENDER[t.face_predictions.gender[0]
                  .argmax()], RACE[t.face_predictions.race[0].argmax()])  # fmt: skip
        for time in t.time_s:
            row = index[(t.source, np.floor(time / window_s) * window_s, *labels)]
            people[row].add((t.source, t.track_id))
            faces[row] += 1
    return people, faces


def _components(a: np.ndarray, b: np.ndarray, live: np.ndarray) -> list[tuple[set[int], set[int]]]:
    """Cells of ``a`` and of ``b`` joined through shared rows (a plain BFS).

    Over each component, ``a``'s cells and ``b``'s cells add up to the same numbers.
    """
    edges: dict[tuple[str, int], set[tuple[str, int]]] = defaultdict(set)
    for ca, cb in zip(a[live], b[live], strict=True):
        if ca >= 0 and cb >= 0:
            edges[("a", ca)].add(("b", cb))
            edges[("b", cb)].add(("a", ca))
    seen: set[tuple[str, int]] = set()
    out = []
    for start in [n for n in edges if n[0] == "a"]:
        if start in seen:
            continue
        todo, comp = [start], set()
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            comp.add(node)
            todo += list(edges[node])
        out.append(({c for side, c in comp if side == "a"}, {c for side, c in comp if side == "b"}))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_no_combination_of_shown_cells_reveals_a_suppressed_one(seed):
    rng = np.random.default_rng(seed)
    window_s = 900.0
    cams = {f"site{c % 2}/cam{c}.mp4": T0 + dt.timedelta(hours=float(rng.uniform(0, 40)))
            for c in range(3)}  # fmt: skip
    durations = {cam: 4 * 3600.0 for cam in cams}
    tracks, tid = [], itertools.count()
    weights = np.array([20, 1, 1, 6, 2, 1, 3], float)  # skewed: some races are rare
    for cam in cams:
        for _ in range(int(rng.integers(5, 40))):
            first = float(rng.uniform(0, 4 * 3600 - 60))
            length = float(rng.choice([5.0, 60.0, 1200.0, 2400.0]))  # some span windows
            times = np.arange(first, min(first + length, 4 * 3600 - 1), 30.0)
            race = RACE[rng.choice(7, p=weights / weights.sum())]
            age, gender = AGE[rng.integers(2, 6)], GENDER[rng.integers(2)]
            tracks.append(track(cam, next(tid), times, race, start=cams[cam], age=age,
                                gender=gender))  # fmt: skip
    frame = stats(tracks, window_s=window_s, durations=durations, starts=cams)
    data = report(frame)
    lay = layout(frame, {**VOTE, "window_s": window_s}, tz=dt.UTC)
    people, faces = _ground_truth(frame, tracks, window_s)
    live = frame.faces.fillna(0).to_numpy() > 0

    def truth(cells: set[int], cell_of_row: np.ndarray) -> tuple[int, int]:
        rows = [r for r in np.flatnonzero(live) if cell_of_row[r] in cells]
        who = set().union(*(people[r] for r in rows)) if rows else set()
        return len(who), sum(faces[r] for r in rows)

    checked = 0
    for name, (cell_of_row, _) in lay.specs.items():
        cc = data.cells[name].frame
        for i in np.flatnonzero(~cc.suppressed.to_numpy() & (cc.faces.to_numpy() > 0)):
            n_people, n_faces = truth({int(i)}, cell_of_row)
            assert n_people >= K and n_faces >= K, (name, cc.index[i])
        for other, (other_cells, _) in lay.specs.items():
            if other == name:
                continue
            published = ~data.cells[other].frame.suppressed.to_numpy()
            for comp, other_comp in _components(cell_of_row, other_cells, live):
                hidden = {c for c in comp if cc.suppressed.iloc[c] and cc.faces.iloc[c] > 0}
                # Where the other chart shows all its cells of the component, their sum
                # minus this chart's shown cells is the sum of the hidden ones.
                if hidden and all(published[c] for c in other_comp):
                    checked += 1
                    n_people, n_faces = truth(hidden, cell_of_row)
                    assert n_people >= K and n_faces >= K, (name, other, sorted(hidden))
    assert checked > 0  # the data did have small groups to protect
    assert data.cells["race"].frame.suppressed.any()


# ---------------------------------------------------------------------------------------------
# The bound on people


def test_people_lower_bound_never_exceeds_the_truth_and_is_exact_where_it_can_be():
    tracks = [track("a.mp4", 0, [1, 11, 21], "White"), track("a.mp4", 1, [12, 13], "White"),
              track("b.mp4", 0, [5], "White"), track("a.mp4", 2, [25, 31], "White")]  # fmt: skip
    frame = stats(tracks, window_s=10, durations={"a.mp4": 40, "b.mp4": 10})
    live = frame.faces > 0
    rows = Rows(
        source=pd.factorize(frame.source)[0], window=frame.window_start.to_numpy(float),
        faces=frame.faces.to_numpy(float), visitors=frame.visitors.to_numpy(float),
        people=frame.people.to_numpy(float),
    )  # fmt: skip
    everything = np.where(live, 0, -1)
    assert people_lower_bound(rows, everything, 1).tolist() == [4.0]  # 3 in a, 1 in b
    later = np.where(live & (frame.window_start >= 10), 0, -1)  # a: 10-40 s: tracks 0, 1, 2
    assert people_lower_bound(rows, later, 1).tolist() == [3.0]
    assert protect(rows, [Partition("t", everything)], 5)["t"].suppressed.tolist() == [True]
