"""Voting and completion: from the face step's records to one finished result per work item.

:class:`SourceAssembler` feeds every face to the track voter (which batches the classifier
calls), and hands a work item's :class:`~agr_batch.pipeline.SourceResult` on once the item has
ended and all its tracks are classified. Items complete in the order they end as far as
classification allows; the caller's ``on_source`` runs on the thread that calls the
assembler.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agr_batch.pipeline import OnSource, SourceResult, StageTimes
from agr_batch.pipeline.faces import FaceBatch
from agr_batch.pipeline.work import WorkItem
from agr_batch.records import Predictions, TrackResult
from agr_batch.stages.vote import TrackVoter, VoteConfig

__all__ = ["SourceAssembler"]


@dataclass
class _ItemState:
    item: WorkItem
    id_offset: int
    frames: int = 0
    start_time: Any = None
    duration_s: float | None = None
    processed_s: float | None = None
    error: str | None = None
    ended: bool = False
    open_tracks: set[int] = field(default_factory=set)
    tracks: list[TrackResult] = field(default_factory=list)


class SourceAssembler:
    """Collects each work item's faces into voted tracks and completes the item.

    Args:
        classify: Classifies a batch of chips (host uint8 or device tensors).
        vote: Which faces of each track are classified.
        batch_size: Chips per classifier call.
        chip_side: Side of the classifier's chips (for the voter's face quality).
        times: Where classification and hand-over seconds are added.
        on_source: Called with each item's result when it is complete.
    """

    def __init__(
        self,
        classify: Callable[[Any], Predictions],
        *,
        vote: VoteConfig,
        batch_size: int,
        chip_side: int,
        times: StageTimes,
        on_source: OnSource,
    ) -> None:
        self._classify_chips = classify
        self.times = times
        self.on_source = on_source
        self.voter = TrackVoter(
            self._classify, batch_size=batch_size, config=vote, chip_side=chip_side
        )
        self._items: dict[int, _ItemState] = {}
        self._by_track: dict[tuple[str, int], int] = {}  # voter key -> item key
        self._next_id: dict[str, int] = {}  # per source: first free voter track id

    def _classify(self, chips: Any) -> Predictions:
        t0 = time.perf_counter()
        preds = self._classify_chips(chips)
        self.times.classify += time.perf_counter() - t0
        return preds

    def start(self, key: int, item: WorkItem) -> None:
        """Item ``key`` starts.

        Its track ids are offset past those of earlier items of the same source in this batch
        (windows of one video), so the voter keeps them apart.
        """
        offset = self._next_id.get(item.source, 0)
        self._items[key] = _ItemState(item, offset)

    def add(self, key: int, batch: FaceBatch) -> None:
        """The faces of one frame of item ``key``."""
        st = self._items[key]
        if st.item.owns(batch.time_s):  # overlap frames are context, not counted
            st.frames += 1
        if st.start_time is None:
            st.start_time = batch.start_time
        source = st.item.source
        for i in range(len(batch)):
            tid = int(batch.track_ids[i]) + st.id_offset
            if tid not in st.open_tracks:
                st.open_tracks.add(tid)
                self._by_track[(source, tid)] = key
                self._next_id[source] = max(self._next_id.get(source, 0), tid + 1)
            self.voter.add_face(
                source=source,
                kind=st.item.kind,
                start_time=batch.start_time,
                track_id=tid,
                frame_index=batch.frame_index,
                time_s=batch.time_s,
                box=batch.detections.boxes[i],
                score=float(batch.detections.scores[i]),
                chip=batch.chips[i],
                quality=None if batch.quality is None else float(batch.quality[i]),
            )
        self.end_tracks(key, batch.ended)

    def fail(self, key: int, error: str) -> None:
        """Record an item's first error (its tracks so far are kept)."""
        st = self._items[key]
        if st.error is None:
            st.error = error

    def end_tracks(self, key: int, track_ids: tuple[int, ...]) -> None:
        """Tracks of item ``key`` ended (their ids as the face step gave them)."""
        st = self._items[key]
        for tid in track_ids:
            self.voter.end_track(st.item.source, tid + st.id_offset)
        self._collect(self.voter.pop_finished())

    def end(
        self,
        key: int,
        *,
        duration_s: float | None,
        error: str | None,
        frames: int = 0,
        last_time_s: float | None = None,
    ) -> None:
        """Item ``key`` has no more frames (``frames`` decoded, the last at ``last_time_s``)."""
        st = self._items[key]
        st.ended = True
        st.duration_s = duration_s
        if frames:
            # Decoded to the end: the whole duration; else up to the last frame decoded.
            whole = error is None and duration_s is not None
            st.processed_s = duration_s if whole else (last_time_s or 0.0)
        if error is not None:
            self.fail(key, error)
        self._collect([])

    def finish(self) -> None:
        """Classify whatever is pending and complete every item."""
        self._collect(self.voter.finish_all())

    def _collect(self, finished: list[TrackResult]) -> None:
        for track in finished:
            key = self._by_track.pop((track.source, track.track_id))
            st = self._items[key]
            st.tracks.append(track)
            st.open_tracks.discard(track.track_id)
        for key, st in list(self._items.items()):
            if st.ended and not st.open_tracks:
                del self._items[key]
                t0 = time.perf_counter()
                st.tracks.sort(key=lambda t: t.track_id)
                self.on_source(
                    SourceResult(
                        st.item,
                        st.frames,
                        st.duration_s,
                        st.start_time,
                        tuple(st.tracks),
                        st.error,
                        st.processed_s,
                    )
                )
                self.times.write += time.perf_counter() - t0
