"""The output path shared by ``run`` and ``scan``: finished results → the output tables.

:class:`ResultSink` feeds each :class:`~agr_batch.pipeline.SourceResult` to the stats
aggregator and turns its tracks into per-face rows (sorted by time, then ``x1``) and
per-track rows (sorted by first appearance). ``run`` uses one sink for the whole batch and
streams the faces to its output file; ``scan`` uses one per file, for that file's parts.
:class:`SourceOrder` hands results on in source order, so the tables are sorted by source
too, whatever order the executor finishes them in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import pyarrow as pa

from agr_batch.pipeline import SourceResult
from agr_batch.records import TrackResult
from agr_batch.stages.aggregate import (
    FACES_SCHEMA,
    StatsAggregator,
    Suppressed,
    faces_table,
    tracks_table,
)

__all__ = ["ResultSink", "SourceOrder", "sorted_faces", "sorted_tracks"]

FACES_ORDER = [("source", "ascending"), ("time_s", "ascending"), ("x1", "ascending")]
"""The faces table's row order; ``y1`` and ``track_id`` break the rare remaining ties."""
TRACKS_ORDER = [("source", "ascending"), ("first_time_s", "ascending")]
"""The tracks table's row order; ``track_id`` breaks ties (people who appear together)."""


def sorted_faces(tracks: Iterable[TrackResult], labels: Mapping[str, tuple[str, ...]]) -> pa.Table:
    """The per-face rows of ``tracks``, sorted by source, time and left edge."""
    tables = [faces_table(t, labels) for t in tracks]
    if not tables:
        return FACES_SCHEMA.empty_table()
    keys = [*FACES_ORDER, ("y1", "ascending"), ("track_id", "ascending")]
    return pa.concat_tables(tables).sort_by(keys)


def sorted_tracks(tracks: Iterable[TrackResult], labels: Mapping[str, tuple[str, ...]]) -> pa.Table:
    """The per-track rows of ``tracks``, sorted by source and first appearance."""
    return tracks_table(list(tracks), labels).sort_by([*TRACKS_ORDER, ("track_id", "ascending")])


class ResultSink:
    """Turns finished results into the stats, faces and tracks tables.

    Args:
        labels: Class names per head.
        window_s: Aggregation window in seconds.
        align: ``start`` (windows from each source's start) or ``clock`` (on the wall clock).
        tz: Time zone of clock windows (None: local time).
        faces: Called with each result's per-face rows (None: no faces table).
        keep_tracks: Keep the tracks for :meth:`tracks` (a tracks table is wanted).
    """

    def __init__(
        self,
        labels: Mapping[str, tuple[str, ...]],
        *,
        window_s: float,
        align: str = "start",
        tz: str | None = None,
        faces: Callable[[pa.Table], None] | None = None,
        keep_tracks: bool = False,
    ) -> None:
        self.labels = labels
        self.aggregator = StatsAggregator(labels, window_s=window_s, align=align, tz=tz)
        self._faces = faces
        self._keep_tracks = keep_tracks
        self._tracks: list[TrackResult] = []

    def add(self, result: SourceResult) -> None:
        """Count one source's tracks and emit its face rows."""
        source = result.item.source
        self.aggregator.add_source(source, result.media.kind, result.start_time)
        for track in result.tracks:
            self.aggregator.add(track)
        self.aggregator.finish_source(
            source, duration_s=result.duration_s, covered_s=result.covered_s
        )
        if self._faces is not None and result.tracks:
            self._faces(sorted_faces(result.tracks, self.labels))
        if self._keep_tracks:
            self._tracks.extend(result.tracks)

    def stats(self, *, min_cell_count: int = 0) -> pa.Table:
        """The stats table (see :meth:`StatsAggregator.table`)."""
        return self.aggregator.table(min_cell_count=min_cell_count)

    @property
    def suppressed(self) -> Suppressed:
        """What the last :meth:`stats` call suppressed."""
        return self.aggregator.suppressed

    def tracks(self) -> pa.Table:
        """The tracks table of every result added (``keep_tracks`` must be set)."""
        return sorted_tracks(self._tracks, self.labels)


class SourceOrder:
    """Hands results on in the sorted order of their sources, holding back early ones.

    Results carry no pixels (a few kilobytes per person), so holding some back is cheap.

    Args:
        sources: Every source that will arrive (each exactly once).
        deliver: Called with the results, in order.
    """

    def __init__(self, sources: Iterable[str], deliver: Callable[[SourceResult], None]) -> None:
        self._order = sorted(set(sources))
        self._next = 0
        self._held: dict[str, SourceResult] = {}
        self._deliver = deliver

    def __call__(self, result: SourceResult) -> None:
        """Take one result; deliver it and any held ones that are now next."""
        self._held[result.item.source] = result
        while self._next < len(self._order) and self._order[self._next] in self._held:
            self._deliver(self._held.pop(self._order[self._next]))
            self._next += 1

    def flush(self) -> None:
        """Deliver whatever is still held (sources that never arrived are skipped)."""
        for source in self._order[self._next :]:
            if source in self._held:
                self._deliver(self._held.pop(source))
        self._next = len(self._order)
