"""Per-track classification: classify a few good faces of each person and vote.

Visitor analytics counts people, so each track (one person) is classified from a handful of
its faces rather than every detection: the best ``best_k`` faces by quality, plus a fresh face
whenever the track has grown by ``refresh_every`` faces since the last one sent. The person's
estimate is the mean of those faces' probabilities, and every face of the track carries it.
With ``per_face=True`` every face is classified and keeps its own prediction (the baseline the
benchmark compares against); the visitor's label is then the mean over all its faces.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agr_batch.config import VoteConfig
from agr_batch.labels import HEADS
from agr_batch.records import Predictions, TrackResult

Classify = Callable[[Any], Predictions]
"""Classifies a batch of chips: (N, H, W, 3) uint8 host chips, or an (N, 3, H, W) normalised
tensor of device chips."""


def face_quality(chip: np.ndarray, box: np.ndarray, score: float, chip_side: int) -> float:
    """Quality of a face for classification: detection score × size × sharpness, in [0, 1].

    Size saturates once the face is as large as the chip; sharpness is the variance of the
    chip's Laplacian mapped to [0, 1) (blurred or tiny faces score low).
    """
    import cv2  # here: the configuration (VoteConfig) loads without OpenCV, for a fast CLI

    gray = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    sharp = float(cv2.Laplacian(gray, cv2.CV_32F).var())
    return quality_from(box, score, sharp, chip_side)


def quality_from(box: np.ndarray, score: float, sharpness: float, chip_side: int) -> float:
    """:func:`face_quality` given the chip's Laplacian variance (measured on a device)."""
    side = float(min(box[2] - box[0], box[3] - box[1]))
    size = min(1.0, max(side, 0.0) / chip_side)
    return float(score) * size * (sharpness / (sharpness + 100.0))


@dataclass
class _TrackState:
    source: str
    kind: str
    start_time: dt.datetime | None
    track_id: int
    frame_index: list[int] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    candidates: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # min-heap
    since_sent: int = 0
    sent: int = 0
    done: int = 0
    prob_sum: dict[str, np.ndarray] | None = None
    own: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # per_face mode
    classified: set[int] = field(default_factory=set)
    closing: bool = False


class TrackVoter:
    """Collects faces per track, batches classification requests, and votes.

    Args:
        classify: Callable classifying a batch of chips (see :data:`Classify`).
        batch_size: Chips per classifier call.
        config: Face selection policy.
        chip_side: Side of the classifier's chips (for the size term of quality).
    """

    def __init__(
        self, classify: Classify, *, batch_size: int, config: VoteConfig, chip_side: int
    ) -> None:
        self.classify = classify
        self.batch_size = batch_size
        self.config = config
        self.chip_side = chip_side
        self._tracks: dict[tuple[str, int], _TrackState] = {}
        self._requests: list[tuple[tuple[str, int], int, np.ndarray]] = []  # key, face idx, chip
        self.classified_faces = 0
        self.total_faces = 0

    def add_face(
        self,
        *,
        source: str,
        kind: str,
        start_time: dt.datetime | None,
        track_id: int,
        frame_index: int,
        time_s: float,
        box: np.ndarray,
        score: float,
        chip: Any,
        quality: float | None = None,
    ) -> None:
        """Record one face of a track and queue it for classification if the policy says so.

        Args:
            source: The input's path.
            kind: ``video`` or ``image``.
            start_time: Absolute start of the source, when known.
            track_id: The face's track.
            frame_index: Index of its frame.
            time_s: Time of its frame.
            box: (4,) box in frame pixels.
            score: Detection score.
            chip: The aligned chip: (H, W, 3) uint8 on the host, or a (3, H, W) normalised
                tensor on the device (then ``quality`` must be given).
            quality: The face's quality for classification; None computes
                :func:`face_quality` from the host chip.
        """
        key = (source, track_id)
        st = self._tracks.get(key)
        if st is None:
            st = self._tracks[key] = _TrackState(source, kind, start_time, track_id)
        idx = len(st.frame_index)
        st.frame_index.append(frame_index)
        st.time_s.append(time_s)
        st.boxes.append(np.asarray(box, np.float32))
        st.scores.append(float(score))
        self.total_faces += 1
        if self.config.per_face:
            self._request(key, st, idx, chip)
            return
        q = face_quality(chip, box, score, self.chip_side) if quality is None else quality
        item = (q, idx, chip)
        if len(st.candidates) < self.config.best_k:
            heapq.heappush(st.candidates, item)
        elif q > st.candidates[0][0]:
            heapq.heapreplace(st.candidates, item)
        st.since_sent += 1
        if st.since_sent >= self.config.refresh_every:
            # A fresh look at a long track: send the best face seen since the last one.
            best = max(st.candidates, key=lambda c: c[0])
            st.candidates.remove(best)
            heapq.heapify(st.candidates)
            self._request(key, st, best[1], best[2])
            st.since_sent = 0

    def _request(self, key: tuple[str, int], st: _TrackState, idx: int, chip: np.ndarray) -> None:
        self._requests.append((key, idx, chip))
        st.classified.add(idx)
        st.sent += 1
        if len(self._requests) >= self.batch_size:
            self.flush()

    def end_track(self, source: str, track_id: int) -> None:
        """Mark a track closed: its remaining best faces are queued for classification."""
        st = self._tracks.get((source, track_id))
        if st is None or st.closing:
            return
        st.closing = True
        for _, idx, chip in sorted(st.candidates, reverse=True):
            self._request((source, track_id), st, idx, chip)
        st.candidates = []

    def flush(self) -> None:
        """Classify every queued chip."""
        if not self._requests:
            return
        preds = self.classify(_stack([c for _, _, c in self._requests]))
        self.classified_faces += len(self._requests)
        for i, (key, idx, _) in enumerate(self._requests):
            st = self._tracks[key]
            row = {h: getattr(preds, h)[i] for h in HEADS}
            if st.prob_sum is None:
                st.prob_sum = {h: row[h].astype(np.float64) for h in HEADS}
            else:
                for h in HEADS:
                    st.prob_sum[h] += row[h]
            if self.config.per_face:
                st.own[idx] = row
            st.done += 1
        self._requests.clear()

    def pop_finished(self) -> list[TrackResult]:
        """Tracks that are closed and fully classified, removed from the voter."""
        out = []
        for key, st in list(self._tracks.items()):
            if st.closing and st.done == st.sent and st.sent > 0:
                out.append(self._finish(st))
                del self._tracks[key]
        return out

    def finish_all(self) -> list[TrackResult]:
        """Close every track, classify what is pending and return them all."""
        for st in list(self._tracks.values()):
            self.end_track(st.source, st.track_id)
        self.flush()
        return self.pop_finished()

    def _finish(self, st: _TrackState) -> TrackResult:
        assert st.prob_sum is not None
        n = len(st.frame_index)
        mean = {h: (st.prob_sum[h] / st.done).astype(np.float32) for h in HEADS}
        vote = Predictions(*(mean[h][None, :] for h in HEADS))
        classified = np.zeros(n, bool)
        classified[sorted(st.classified)] = True
        if self.config.per_face:
            per_face = {
                h: np.stack([st.own[i][h] for i in range(n)]).astype(np.float32) for h in HEADS
            }
        else:
            per_face = {h: np.repeat(mean[h][None, :], n, axis=0) for h in HEADS}
        return TrackResult(
            source=st.source,
            kind=st.kind,
            start_time=st.start_time,
            track_id=st.track_id,
            frame_index=np.asarray(st.frame_index, np.int64),
            time_s=np.asarray(st.time_s, np.float64),
            boxes=np.stack(st.boxes).astype(np.float32),
            det_scores=np.asarray(st.scores, np.float32),
            face_predictions=Predictions(*(per_face[h] for h in HEADS)),
            classified=classified,
            vote=vote,
        )


def _stack(chips: list[Any]) -> Any:
    """One batch of chips: a NumPy stack of host chips, a torch stack of device chips."""
    if isinstance(chips[0], np.ndarray):
        return np.stack(chips)
    import torch

    return torch.stack(chips)
