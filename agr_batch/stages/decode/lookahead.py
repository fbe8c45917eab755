"""Exact frame skipping: decode only the frames that are sampled or that others refer to.

Sampling 2 frames a second from a 30 fps video still decodes all 30, because later frames
are predicted from earlier ones. But a frame that no other frame refers to (in x264's
output about half of them, the non-reference B-frames) is needed only if it is sampled
itself. :class:`ExactSkip` holds packets back for a short look-ahead, long enough to see the
frames in presentation order, runs a shadow :class:`~agr_batch.stages.decode.video.Sampler`
on the packets' times, and tells the caller, per packet, whether the frame may be skipped.
The caller then sets the decoder's ``skip_frame`` to ``NONREF`` for that packet only, so the
decoder drops it if, and only if, nothing refers to it.

The result is exactly the full decode's: the sampler's state changes only on frames it
takes, so a run over any superset of the taken frames takes the same frames, and each taken
frame is decoded from the same references. Frame indices come from the packets' order in
presentation time, so they stay those of the full stream.

It is used for H.264 only, where ``NONREF`` means ``nal_ref_idc == 0``: such a frame is
never a reference. (HEVC's "sub-layer non-reference" pictures may be referenced by higher
temporal layers, so dropping them is not safe in general.) Anything that would make the
look-ahead guess (a packet without a time, a repeated time, reordering deeper than the
window) turns skipping off for the rest of the stream: from then on every frame is decoded.
So does a sampled frame that never comes out of the decoder (a damaged one). In a damaged
stretch of a stream the decoder conceals broken pictures from what it has decoded, so the
concealed pixels there may differ from a full decode's; intact streams decode identically.
Packets an edit list discards (decoded for reference, never shown) have no place in
presentation order.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

WINDOW = 48
"""Packets held back. H.264 reorders at most 16 frames (its largest picture buffer), so a
frame's place in presentation order is settled well within 48 packets of decode order."""

SKIPPABLE_CODECS = frozenset({"h264"})
"""Decoders whose ``skip_frame="NONREF"`` drops only frames nothing refers to."""


class _Packet(Protocol):
    @property
    def pts(self) -> int | None: ...

    @property
    def is_discard(self) -> bool: ...


class _Take(Protocol):
    def __call__(self, t: float) -> bool | object: ...


class ExactSkip:
    """Look-ahead over packets that marks the ones whose frames need not be decoded.

    Args:
        take: A fresh sampler's ``take`` (the shadow: it sees every frame's time, in
            presentation order, exactly as the real sampler would on a full decode).
        seconds: Converts a packet's PTS to the seconds the sampler expects.
        name: For the log line when skipping is turned off.
        window: Packets held back before the first is released.
    """

    def __init__(
        self,
        take: _Take,
        seconds: Callable[[int], float],
        *,
        name: str = "",
        window: int = WINDOW,
    ) -> None:
        self._take = take
        self._seconds = seconds
        self._name = name
        self._window = window
        self._held: deque[_Packet] = deque()  # decode order
        self._unplaced: list[int] = []  # heap of held PTS not yet placed in presentation order
        self._seen: set[int] = set()  # PTS of held packets, to catch repeats
        self._needed: set[int] = set()
        # Placed frames not yet out of the decoder: (PTS, presentation index, sampled).
        self._order: deque[tuple[int, int, bool]] = deque()
        self._placed = 0
        self._front: int | None = None  # the last PTS placed
        self.active = True
        self.marked = 0  # packets released as skippable (the decoder drops those nothing refers to)

    def push(self, packet: _Packet) -> list[tuple[_Packet, bool]]:
        """Hold ``packet``; return ``(packet, skippable)`` for those now settled, in order."""
        pts = packet.pts
        if packet.is_discard:
            # Decoded (later frames may refer to it) but never shown: an edit list starts the
            # video after it. It has no place in presentation order.
            self._held.append(packet)
            return self._ready()
        if self.active and (pts is None or pts in self._seen or self._behind(pts)):
            self._stop("a packet without a time, a repeated time or deep reordering")
        if self.active and pts is not None:
            self._seen.add(pts)
            heapq.heappush(self._unplaced, pts)
        self._held.append(packet)
        return self._ready()

    def _ready(self) -> list[tuple[_Packet, bool]]:
        ready = []
        while len(self._held) > self._window:
            ready.append(self._release())
        return ready

    def flush(self) -> list[tuple[_Packet, bool]]:
        """Every packet still held, at the end of the stream (or before a drain)."""
        ready = []
        while self._held:
            ready.append(self._release())
        return ready

    def index(self, pts: int | None) -> int | None:
        """The presentation index of a decoded frame's PTS (None when unknown).

        Frames come out of the decoder in presentation order, so the places of earlier
        frames (skipped ones included) are dropped as it goes.
        """
        if pts is None:
            return None
        order = self._order
        while order and order[0][0] < pts:
            if order.popleft()[2]:
                # A frame the shadow sampler took never came out (the decoder dropped it):
                # the real sampler now takes another, which may have been skipped.
                self._stop("a sampled frame was not decoded")
        if order and order[0][0] == pts:
            return order.popleft()[1]
        return None

    def _behind(self, pts: int) -> bool:
        return self._front is not None and pts <= self._front

    def _release(self) -> tuple[_Packet, bool]:
        """The oldest held packet, once its frame's place and fate are known."""
        packet = self._held.popleft()
        pts = packet.pts
        if not self.active or pts is None or packet.is_discard:
            return packet, False
        # Every frame shown before this one has been read by now (reordering is shallower
        # than the window), so the times up to this one are settled, in presentation order.
        while self._unplaced and self._unplaced[0] <= pts:
            placed = heapq.heappop(self._unplaced)
            self._front = placed
            taken = self._take(self._seconds(placed)) is True
            self._order.append((placed, self._placed, taken))
            self._placed += 1
            if taken:
                self._needed.add(placed)
        self._seen.discard(pts)
        if pts in self._needed:
            self._needed.discard(pts)
            return packet, False
        self.marked += 1
        return packet, True

    def _stop(self, why: str) -> None:
        if self.active:
            logger.debug("%s: exact frame skipping off (%s); decoding every frame", self._name, why)
        self.active = False
