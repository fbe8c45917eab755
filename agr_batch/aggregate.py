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
faces      int64                   faces in the cell
start_time timestamp[us, UTC]      absolute time of the window's start, null if unknown
========== ======================= =====================================================
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from agr_batch.labels import HEADS
from agr_batch.records import FaceBatch

STATS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("window_start", pa.float64()),
        ("window_end", pa.float64()),
        ("age", pa.string()),
        ("gender", pa.string()),
        ("race", pa.string()),
        ("faces", pa.int64()),
        ("start_time", pa.timestamp("us", tz="UTC")),
    ]
)

FACES_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("time_s", pa.float64()),
        ("frame_index", pa.int64()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("det_score", pa.float32()),
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
)


def _argmax(batch: FaceBatch) -> dict[str, np.ndarray]:
    return {h: getattr(batch.predictions, h).argmax(axis=1) for h in HEADS}


def faces_table(batch: FaceBatch, labels: Mapping[str, tuple[str, ...]]) -> pa.Table:
    """One row per face: position, detection score, labels and probabilities. No pixels."""
    idx = _argmax(batch)
    cols: dict[str, pa.Array] = {
        "source": pa.array([batch.source] * len(batch), pa.string()),
        "time_s": pa.array(batch.time_s),
        "frame_index": pa.array(batch.frame_index),
        "x1": pa.array(batch.boxes[:, 0]),
        "y1": pa.array(batch.boxes[:, 1]),
        "x2": pa.array(batch.boxes[:, 2]),
        "y2": pa.array(batch.boxes[:, 3]),
        "det_score": pa.array(batch.det_scores),
    }
    for h in HEADS:
        names = np.asarray(labels[h], dtype=object)
        cols[h] = pa.array(names[idx[h]].tolist() if len(batch) else [], pa.string())
    for h in HEADS:
        probs = getattr(batch.predictions, h)
        cols[f"{h}_prob"] = pa.array(probs[np.arange(len(batch)), idx[h]])
    for h in HEADS:
        probs = getattr(batch.predictions, h)
        k = probs.shape[1]
        flat = pa.array(probs.reshape(-1))
        offsets = pa.array(np.arange(0, len(batch) * k + 1, k, dtype=np.int32))
        cols[f"{h}_probs"] = pa.ListArray.from_arrays(offsets, flat)
    return pa.table(cols, schema=FACES_SCHEMA)


@dataclass(frozen=True)
class _SourceInfo:
    kind: str
    start_time: dt.datetime | None
    duration_s: float | None


class StatsAggregator:
    """Counts faces per (source, window, age, gender, race) cell.

    Args:
        labels: Class names per head (from the checkpoint).
        window_s: Window length in seconds for videos.
    """

    def __init__(self, labels: Mapping[str, tuple[str, ...]], *, window_s: float = 60.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window_s}")
        self.labels = {h: tuple(labels[h]) for h in HEADS}
        self.window_s = float(window_s)
        self._counts: Counter[tuple[str, int, int, int, int]] = Counter()
        self._sources: dict[str, _SourceInfo] = {}

    def reset(self) -> None:
        """Forget everything counted so far."""
        self._counts.clear()
        self._sources.clear()

    def add(self, batch: FaceBatch) -> None:
        """Count the faces of ``batch``."""
        self._sources.setdefault(batch.source, _SourceInfo(batch.kind, batch.start_time, None))
        if not len(batch):
            return
        idx = _argmax(batch)
        windows = (
            np.zeros(len(batch), np.int64)
            if batch.kind == "image"
            else np.floor(batch.time_s / self.window_s).astype(np.int64)
        )
        keys = zip(
            windows.tolist(),
            idx["age"].tolist(),
            idx["gender"].tolist(),
            idx["race"].tolist(),
            strict=True,
        )
        self._counts.update((batch.source, w, a, g, r) for w, a, g, r in keys)

    def finish_source(self, source: str, *, duration_s: float | None) -> None:
        """Record a source's duration so its last window ends where the video does."""
        info = self._sources.get(source)
        if info is not None:
            self._sources[source] = _SourceInfo(info.kind, info.start_time, duration_s)

    @property
    def total_faces(self) -> int:
        """Faces counted over all cells."""
        return sum(self._counts.values())

    def table(self) -> pa.Table:
        """The stats table, sorted by source, window and label indices."""
        rows = sorted(self._counts.items())
        cols: dict[str, list] = {name: [] for name in STATS_SCHEMA.names}
        for (source, w, a, g, r), n in rows:
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
            cols["faces"].append(n)
            cols["start_time"].append(
                None if info.start_time is None else info.start_time + dt.timedelta(seconds=start)
            )
        return pa.table(cols, schema=STATS_SCHEMA)
