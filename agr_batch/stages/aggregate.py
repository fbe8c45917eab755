"""Aggregation stage: classified faces → the tidy stats table and the per-face table.

Stats table (``--out``), one row per non-empty (source, window, age, gender, race) cell:

========== ======================= =====================================================
column     type                    meaning
========== ======================= =====================================================
source     string                  input file path as given
window_start float64               window start, seconds from the source's start
window_end float64                 window end (clipped to the video's duration); an
                                   image is one window with start = end = 0
age        string                  FairFace age bin (argmax of the age head)
gender     string                  FairFace gender
race       string                  FairFace race group
faces      int64                   faces (detections) in the cell
visitors   int64                   people (tracks) whose voted labels fall in the cell,
                                   counted once, in the window where the track starts
start_time timestamp[us, UTC]      absolute time of the window's start, null if unknown
========== ======================= =====================================================

A row exists when ``faces`` or ``visitors`` is non-zero. The per-face table (``--faces``)
and the per-track table (``--tracks``) are documented in the README.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from agr_batch.labels import HEADS
from agr_batch.records import Predictions, TrackResult

STATS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("window_start", pa.float64()),
        ("window_end", pa.float64()),
        ("age", pa.string()),
        ("gender", pa.string()),
        ("race", pa.string()),
        ("faces", pa.int64()),
        ("visitors", pa.int64()),
        ("start_time", pa.timestamp("us", tz="UTC")),
    ]
)

# Labels, the probability of each shown label, and the full vectors (in label order): the
# columns _label_columns() fills, shared by the faces and tracks tables.
_LABEL_FIELDS = [
    ("age", pa.string()),
    ("gender", pa.string()),
    ("race", pa.string()),
    ("age_prob", pa.float32()),
    ("gender_prob", pa.float32()),
    ("race_prob", pa.float32()),
    ("age_probs", pa.list_(pa.float32())),
    ("gender_probs", pa.list_(pa.float32())),
    ("race_probs", pa.list_(pa.float32())),
]

FACES_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("time_s", pa.float64()),
        ("frame_index", pa.int64()),
        ("track_id", pa.int64()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("det_score", pa.float32()),
        *_LABEL_FIELDS,
        ("classified", pa.bool_()),
    ]
)

TRACKS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("track_id", pa.int64()),
        ("first_time_s", pa.float64()),
        ("last_time_s", pa.float64()),
        ("dwell_s", pa.float64()),
        ("faces", pa.int64()),
        ("classified_faces", pa.int64()),
        *_LABEL_FIELDS,
        ("start_time", pa.timestamp("us", tz="UTC")),
    ]
)


def _list_column(probs: np.ndarray) -> pa.ListArray:
    n, k = probs.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)))


def _label_columns(
    preds: Predictions, labels: Mapping[str, tuple[str, ...]]
) -> dict[str, pa.Array]:
    """``age``/``gender``/``race`` names, the winning probabilities and the full vectors."""
    cols: dict[str, pa.Array] = {}
    n = len(preds)
    idx = {h: getattr(preds, h).argmax(axis=1) for h in HEADS}
    for h in HEADS:
        names = np.asarray(labels[h], dtype=object)
        cols[h] = pa.array(names[idx[h]].tolist() if n else [], pa.string())
    for h in HEADS:
        cols[f"{h}_prob"] = pa.array(getattr(preds, h)[np.arange(n), idx[h]])
    for h in HEADS:
        cols[f"{h}_probs"] = _list_column(getattr(preds, h))
    return cols


def faces_table(track: TrackResult, labels: Mapping[str, tuple[str, ...]]) -> pa.Table:
    """One row per face of ``track``: position, detection score, labels. No pixels."""
    n = len(track)
    cols: dict[str, pa.Array] = {
        "source": pa.array([track.source] * n, pa.string()),
        "time_s": pa.array(track.time_s),
        "frame_index": pa.array(track.frame_index),
        "track_id": pa.array(np.full(n, track.track_id, np.int64)),
        "x1": pa.array(track.boxes[:, 0]),
        "y1": pa.array(track.boxes[:, 1]),
        "x2": pa.array(track.boxes[:, 2]),
        "y2": pa.array(track.boxes[:, 3]),
        "det_score": pa.array(track.det_scores),
    }
    cols.update(_label_columns(track.face_predictions, labels))
    cols["classified"] = pa.array(track.classified)
    return pa.table(cols, schema=FACES_SCHEMA)


def tracks_table(tracks: list[TrackResult], labels: Mapping[str, tuple[str, ...]]) -> pa.Table:
    """One row per track (person): times, dwell, face counts, voted labels."""
    if not tracks:
        return TRACKS_SCHEMA.empty_table()
    votes = Predictions(*(np.concatenate([getattr(t.vote, h) for t in tracks]) for h in HEADS))
    cols: dict[str, pa.Array] = {
        "source": pa.array([t.source for t in tracks], pa.string()),
        "track_id": pa.array([t.track_id for t in tracks], pa.int64()),
        "first_time_s": pa.array([t.first_time for t in tracks], pa.float64()),
        "last_time_s": pa.array([t.last_time for t in tracks], pa.float64()),
        "dwell_s": pa.array([t.last_time - t.first_time for t in tracks], pa.float64()),
        "faces": pa.array([len(t) for t in tracks], pa.int64()),
        "classified_faces": pa.array([int(t.classified.sum()) for t in tracks], pa.int64()),
    }
    cols.update(_label_columns(votes, labels))
    cols["start_time"] = pa.array(
        [
            None if t.start_time is None else t.start_time + dt.timedelta(seconds=t.first_time)
            for t in tracks
        ],
        pa.timestamp("us", tz="UTC"),
    )
    return pa.table(cols, schema=TRACKS_SCHEMA)


@dataclass(frozen=True)
class Suppressed:
    """What small-cell suppression removed from a table."""

    cells: int = 0
    faces: int = 0
    visitors: int = 0


@dataclass(frozen=True)
class _SourceInfo:
    kind: str
    start_time: dt.datetime | None
    duration_s: float | None


class StatsAggregator:
    """Counts faces and visitors per (source, window, age, gender, race) cell.

    Args:
        labels: Class names per head (from the checkpoint).
        window_s: Window length in seconds for videos.
    """

    def __init__(self, labels: Mapping[str, tuple[str, ...]], *, window_s: float = 60.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window_s}")
        self.labels = {h: tuple(labels[h]) for h in HEADS}
        self.window_s = float(window_s)
        self.suppressed = Suppressed()
        self._faces: Counter[tuple[str, int, int, int, int]] = Counter()
        self._visitors: Counter[tuple[str, int, int, int, int]] = Counter()
        self._people: dict[tuple[str, int, int, int, int], set[int]] = {}
        self._sources: dict[str, _SourceInfo] = {}

    def reset(self) -> None:
        """Forget everything counted so far."""
        self._faces.clear()
        self._visitors.clear()
        self._people.clear()
        self._sources.clear()

    def _windows(self, kind: str, times: np.ndarray) -> np.ndarray:
        if kind == "image":
            return np.zeros(len(times), np.int64)
        return np.floor(times / self.window_s).astype(np.int64)

    def add_source(self, source: str, kind: str, start_time: dt.datetime | None) -> None:
        """Register a source (so its windows get their times even before faces arrive)."""
        info = self._sources.get(source)
        if info is None:
            self._sources[source] = _SourceInfo(kind, start_time, None)
        elif info.start_time is None and start_time is not None:
            self._sources[source] = _SourceInfo(kind, start_time, info.duration_s)

    def add(self, track: TrackResult) -> None:
        """Count the faces of ``track`` and the track itself as one visitor."""
        self.add_source(track.source, track.kind, track.start_time)
        preds = track.face_predictions
        idx = [getattr(preds, h).argmax(axis=1).tolist() for h in HEADS]
        windows = self._windows(track.kind, track.time_s).tolist()
        keys = [(track.source, w, a, g, r) for w, a, g, r in zip(windows, *idx, strict=True)]
        self._faces.update(keys)
        for key in set(keys):
            self._people.setdefault(key, set()).add(track.track_id)
        first = self._windows(track.kind, np.array([track.first_time]))[0]
        a, g, r = (int(getattr(track.vote, h)[0].argmax()) for h in HEADS)
        self._visitors[(track.source, int(first), a, g, r)] += 1

    def finish_source(self, source: str, *, duration_s: float | None) -> None:
        """Record a source's duration so its last window ends where the video does."""
        info = self._sources.get(source)
        if info is not None:
            self._sources[source] = _SourceInfo(info.kind, info.start_time, duration_s)

    @property
    def total_faces(self) -> int:
        """Faces counted over all cells."""
        return sum(self._faces.values())

    @property
    def total_visitors(self) -> int:
        """Visitors counted over all cells."""
        return sum(self._visitors.values())

    def table(self, *, min_cell_count: int = 0) -> pa.Table:
        """The stats table, sorted by source, window and label indices.

        Args:
            min_cell_count: Drop cells with fewer than this many faces, or with faces of
                fewer than this many distinct people (so small groups cannot be singled
                out); :attr:`suppressed` then reports what was dropped. 0 keeps every cell.
        """
        keys = sorted(set(self._faces) | set(self._visitors))
        self.suppressed = Suppressed()
        if min_cell_count > 0:
            kept = []
            for key in keys:
                people = len(self._people.get(key, ())) or self._visitors.get(key, 0)
                if self._faces.get(key, 0) < min_cell_count or people < min_cell_count:
                    self.suppressed = Suppressed(
                        cells=self.suppressed.cells + 1,
                        faces=self.suppressed.faces + self._faces.get(key, 0),
                        visitors=self.suppressed.visitors + self._visitors.get(key, 0),
                    )
                else:
                    kept.append(key)
            keys = kept
        cols: dict[str, list] = {name: [] for name in STATS_SCHEMA.names}
        for key in keys:
            source, w, a, g, r = key
            info = self._sources[source]
            if info.kind == "image":
                start, end = 0.0, 0.0
            else:
                start = w * self.window_s
                end = (w + 1) * self.window_s
                if info.duration_s is not None:
                    end = max(start, min(end, info.duration_s))
            cols["source"].append(source)
            cols["window_start"].append(start)
            cols["window_end"].append(end)
            cols["age"].append(self.labels["age"][a])
            cols["gender"].append(self.labels["gender"][g])
            cols["race"].append(self.labels["race"][r])
            cols["faces"].append(self._faces.get(key, 0))
            cols["visitors"].append(self._visitors.get(key, 0))
            cols["start_time"].append(
                None if info.start_time is None else info.start_time + dt.timedelta(seconds=start)
            )
        return pa.table(cols, schema=STATS_SCHEMA)
