"""Aggregation stage: classified faces → the tidy stats table and the per-face table.

Stats table (``--out``), one row per non-empty (source, window, age, gender, race) cell, plus
one coverage row per processed window in which no cell is shown:

============ ===================== =====================================================
column       type                  meaning
============ ===================== =====================================================
source       string                input file path as given
window_start float64               start of the window's part of the source, seconds from
                                   the source's start
window_end   float64               its end (clipped to the video's duration); an image is
                                   one window with start = end = 0
age          string                FairFace age bin (argmax of the age head); null in a
                                   coverage row
gender       string                FairFace gender; null in a coverage row
race         string                FairFace race group; null in a coverage row
faces        int64                 faces (detections) in the cell; 0 in the coverage row of
                                   a window where nobody was seen, null where its cells
                                   were all suppressed (``--min-cell-count``)
visitors     int64                 people (tracks) whose voted labels fall in the cell,
                                   counted once, in the window where the track starts
start_time   timestamp[us, UTC]    absolute time of the window's start (on the clock grid
                                   with ``--align-windows clock``), null if unknown
people       int64                 distinct people (tracks) with a face in the cell,
                                   wherever their track starts
footage_s    float64               seconds of the source processed in the window (the same
                                   on each row of the window; 0 for a photo)
============ ===================== =====================================================

The per-face table (``--faces``) and the per-track table (``--tracks``) are documented in
the README.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from agr_batch.clock import ALIGN_CHOICES, check_clock_window, clock_phase, resolve_tz
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
        ("people", pa.int64()),
        ("footage_s", pa.float64()),
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
    """What small-cell suppression removed from a table.

    Attributes:
        cells: Cells dropped.
        faces: Faces in them.
        visitors: Visitors counted in them.
        kept_cells: Cells kept (with faces or visitors); 0 with ``cells`` > 0 means that
            everything was suppressed.
    """

    cells: int = 0
    faces: int = 0
    visitors: int = 0
    kept_cells: int = 0

    @property
    def everything(self) -> bool:
        """Whether every cell was suppressed (and there was at least one)."""
        return self.cells > 0 and self.kept_cells == 0


def everything_suppressed(min_cell_count: int, *, faces: int, where: str) -> str:
    """Why a table or page shows no data although faces were seen, and what changes it."""
    return (
        f"everything in {where} was suppressed: {faces} faces were seen, but every cell has "
        f"fewer than {min_cell_count} distinct people or {min_cell_count} faces "
        f"(--min-cell-count {min_cell_count}); aggregate more (a longer --window, more "
        "footage) or lower --min-cell-count (0 shows every cell: for private use only)"
    )


@dataclass(frozen=True)
class _SourceInfo:
    kind: str
    start_time: dt.datetime | None
    duration_s: float | None = None
    covered_s: float | None = None  # end of the processed span; None: no coverage rows
    phase: float = 0.0  # seconds window 0 starts before the source (clock alignment)


_Key = tuple[str, int, int, int, int]


class StatsAggregator:
    """Counts faces, visitors and people per (source, window, age, gender, race) cell.

    Every source finished with a covered span also gets a row for each window of that span
    in which no cell is shown (labels null, ``faces`` 0 — or null when its cells were
    suppressed), so "nobody was seen" differs from "not processed".

    Args:
        labels: Class names per head (from the checkpoint).
        window_s: Window length in seconds for videos.
        align: ``start``: windows from each source's start; ``clock``: on the wall clock.
        tz: Time zone of the clock windows (IANA name; None: this system's local time).
    """

    def __init__(
        self,
        labels: Mapping[str, tuple[str, ...]],
        *,
        window_s: float = 60.0,
        align: str = "start",
        tz: str | None = None,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window_s}")
        if align not in ALIGN_CHOICES:
            raise ValueError(f"align must be one of {ALIGN_CHOICES}, got {align!r}")
        if align == "clock":
            check_clock_window(window_s)
        self.labels = {h: tuple(labels[h]) for h in HEADS}
        self.window_s = float(window_s)
        self.align = align
        self.tz = resolve_tz(tz) if align == "clock" else None
        self.suppressed = Suppressed()
        self._faces: Counter[_Key] = Counter()
        self._visitors: Counter[_Key] = Counter()
        self._people: dict[_Key, set[int]] = {}
        self._sources: dict[str, _SourceInfo] = {}

    def reset(self) -> None:
        """Forget everything counted so far."""
        self._faces.clear()
        self._visitors.clear()
        self._people.clear()
        self._sources.clear()

    def _phase(self, kind: str, start_time: dt.datetime | None) -> float:
        if self.tz is None or kind == "image" or start_time is None:
            return 0.0
        return clock_phase(start_time, self.window_s, self.tz)

    def _windows(self, source: str, times: np.ndarray) -> np.ndarray:
        info = self._sources[source]
        if info.kind == "image":
            return np.zeros(len(times), np.int64)
        return np.floor((times + info.phase) / self.window_s).astype(np.int64)

    def add_source(self, source: str, kind: str, start_time: dt.datetime | None) -> None:
        """Register a source (so its windows get their times even before faces arrive)."""
        info = self._sources.get(source)
        if info is None:
            phase = self._phase(kind, start_time)
            self._sources[source] = _SourceInfo(kind, start_time, phase=phase)
        elif info.start_time is None and start_time is not None:
            if self._faces and any(k[0] == source for k in self._faces):
                # Windows already counted keep their grid; only the absolute time is new.
                self._sources[source] = replace(info, start_time=start_time)
            else:
                phase = self._phase(info.kind, start_time)
                self._sources[source] = replace(info, start_time=start_time, phase=phase)

    def add(self, track: TrackResult) -> None:
        """Count the faces of ``track`` and the track itself as one visitor."""
        self.add_source(track.source, track.kind, track.start_time)
        preds = track.face_predictions
        idx = [getattr(preds, h).argmax(axis=1).tolist() for h in HEADS]
        windows = self._windows(track.source, track.time_s).tolist()
        keys = [(track.source, w, a, g, r) for w, a, g, r in zip(windows, *idx, strict=True)]
        self._faces.update(keys)
        for key in set(keys):
            self._people.setdefault(key, set()).add(track.track_id)
        first = self._windows(track.source, np.array([track.first_time]))[0]
        a, g, r = (int(getattr(track.vote, h)[0].argmax()) for h in HEADS)
        self._visitors[(track.source, int(first), a, g, r)] += 1

    def finish_source(
        self, source: str, *, duration_s: float | None, covered_s: float | None = None
    ) -> None:
        """Record a source's duration and the span processed.

        Args:
            source: The source.
            duration_s: Its duration, so its last window ends where the video does.
            covered_s: End of the span processed, seconds from its start: every window up
                to it gets a row, and each row says how many seconds of it were processed.
                None: the source yielded nothing (no coverage rows).
        """
        info = self._sources.get(source)
        if info is not None:
            self._sources[source] = replace(info, duration_s=duration_s, covered_s=covered_s)

    @property
    def total_faces(self) -> int:
        """Faces counted over all cells."""
        return sum(self._faces.values())

    @property
    def total_visitors(self) -> int:
        """Visitors counted over all cells."""
        return sum(self._visitors.values())

    def _suppress(self, keys: list[_Key], min_cell_count: int) -> list[_Key]:
        """Cells with at least ``min_cell_count`` faces and distinct people; sets suppressed."""
        if min_cell_count <= 0:
            self.suppressed = Suppressed(kept_cells=len(keys))
            return keys
        kept, cells, faces, visitors = [], 0, 0, 0
        for key in keys:
            people = len(self._people.get(key, ())) or self._visitors.get(key, 0)
            if self._faces.get(key, 0) < min_cell_count or people < min_cell_count:
                cells += 1
                faces += self._faces.get(key, 0)
                visitors += self._visitors.get(key, 0)
            else:
                kept.append(key)
        self.suppressed = Suppressed(cells, faces, visitors, kept_cells=len(kept))
        return kept

    def _last_window(self, info: _SourceInfo) -> int:
        if info.kind == "image" or not info.covered_s or info.covered_s <= 0:
            return 0
        return max(0, math.ceil((info.covered_s + info.phase) / self.window_s - 1e-9) - 1)

    def _span(self, info: _SourceInfo, w: int) -> tuple[float, float, float | None]:
        """Window ``w``'s start and end (seconds from the source's start) and footage."""
        if info.kind == "image":
            return 0.0, 0.0, (0.0 if info.covered_s is not None else None)
        grid = w * self.window_s - info.phase
        start, end = max(grid, 0.0), grid + self.window_s
        if info.duration_s is not None:
            end = max(start, min(end, info.duration_s))
        footage = None
        if info.covered_s is not None:
            footage = max(0.0, min(grid + self.window_s, info.covered_s) - start)
        return start, end, footage

    def table(self, *, min_cell_count: int = 0) -> pa.Table:
        """The stats table, sorted by source, window and label indices.

        Args:
            min_cell_count: Drop cells with fewer than this many faces, or with faces of
                fewer than this many distinct people (so small groups cannot be singled
                out); :attr:`suppressed` then reports what was dropped. 0 keeps every cell.
                A window whose cells were all dropped keeps its coverage row, with null
                counts: withheld, not zero.
        """
        cells = sorted(set(self._faces) | set(self._visitors))
        kept = self._suppress(cells, min_cell_count)
        seen = {(k[0], k[1]) for k in cells}
        rows: list[tuple[_Key, bool]] = [(k, False) for k in kept]
        shown = {(k[0], k[1]) for k in kept}
        for source, info in self._sources.items():
            if info.covered_s is None:
                continue
            last = max([self._last_window(info)] + [w for s, w in seen if s == source])
            for w in range(last + 1):
                if (source, w) not in shown:
                    rows.append(((source, w, -1, -1, -1), (source, w) in seen))
        rows.sort(key=lambda row: row[0])
        cols: dict[str, list[Any]] = {name: [] for name in STATS_SCHEMA.names}
        for key, withheld in rows:
            source, w, a, g, r = key
            info = self._sources[source]
            start, end, footage = self._span(info, w)
            cols["source"].append(source)
            cols["window_start"].append(start)
            cols["window_end"].append(end)
            for head, i in zip(HEADS, (a, g, r), strict=True):
                cols[head].append(self.labels[head][i] if i >= 0 else None)
            counts = (
                (None, None, None)
                if withheld
                else (
                    self._faces.get(key, 0),
                    self._visitors.get(key, 0),
                    len(self._people.get(key, ())),
                )
            )
            cols["faces"].append(counts[0])
            cols["visitors"].append(counts[1])
            cols["people"].append(counts[2])
            grid = 0.0 if info.kind == "image" else w * self.window_s - info.phase
            cols["start_time"].append(
                None if info.start_time is None else info.start_time + dt.timedelta(seconds=grid)
            )
            cols["footage_s"].append(footage)
        return pa.table(cols, schema=STATS_SCHEMA)
