"""Multi-object face tracking over a video's sampled detections.

A ByteTrack-style tracker (Zhang et al., 2022): each frame's detections are associated with
the live tracks in two stages, high-score detections first and the remaining ones second, by
Hungarian matching on a similarity that combines IoU with a constant-velocity motion model.
IoU alone fails when frames are far apart (keyframes a second or more apart), so a track's box
is first moved by its estimated velocity, and boxes that no longer overlap can still match when
their centres are close relative to the face's size.

A track ends when it has not been matched for longer than the *effective gap*; a face that
leaves and returns after that becomes a new track (a new visitor). The effective gap is
``max(max_gap_s, gap_samples x sampling interval)``, the sampling interval being the median
spacing of the last frames the tracker was given (``1 / sample_fps`` when sampling by rate,
the keyframe spacing in keyframes-only scans, the snapshot spacing of an image sequence).
A fixed gap in seconds cannot work for sparse sampling: with keyframes 8 s apart and a 3 s
gap, every person would end and restart at every keyframe. The tracker cannot tell whether
someone left between two samples, so it never ends a track before it has missed
``gap_samples`` intervals; the median (not the last interval) keeps one long pause in an
otherwise regular sequence from linking people across it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from agr_batch.config import TrackerConfig
from agr_batch.stages.detect.base import iou_matrix

__all__ = ["Tracker", "TrackerConfig", "iou_matrix", "similarity"]


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # x1, y1, x2, y2 at last_time
    last_time: float
    first_time: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box units per second
    hits: int = 1

    def predict(self, t: float) -> np.ndarray:
        return self.box + self.velocity * (t - self.last_time)


def similarity(tracks: np.ndarray, dets: np.ndarray, center_gate: float | np.ndarray) -> np.ndarray:
    """IoU, or when boxes do not overlap, a centre-distance score gated by face size.

    ``center_gate`` may be one value per track (gates widen with the time since a track was
    last seen).
    """
    iou = iou_matrix(tracks, dets)
    if iou.size == 0:
        return iou
    ct = (tracks[:, :2] + tracks[:, 2:]) / 2
    cd = (dets[:, :2] + dets[:, 2:]) / 2
    size_t = np.sqrt((tracks[:, 2] - tracks[:, 0]) * (tracks[:, 3] - tracks[:, 1]))
    size_d = np.sqrt((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]))
    dist = np.linalg.norm(ct[:, None, :] - cd[None, :, :], axis=2)
    scale = np.maximum((size_t[:, None] + size_d[None, :]) / 2, 1e-6)
    # Half weight: a close centre alone is weaker evidence than overlap.
    gate = np.broadcast_to(np.asarray(center_gate, float).reshape(-1, 1), scale.shape)
    near = 0.5 * np.clip(1.0 - dist / (gate * scale), 0.0, 1.0)
    # Faces of very different sizes are different people even when centres are close.
    ratio = np.minimum(size_t[:, None], size_d[None, :]) / np.maximum(
        np.maximum(size_t[:, None], size_d[None, :]), 1e-6
    )
    near = np.where(ratio >= 0.5, near, 0.0)
    return np.maximum(iou, near)


class Tracker:
    """Assigns a track id to every detection of one video, frame by frame.

    Args:
        config: Association thresholds.
        first_id: Id given to the first track.
    """

    def __init__(self, config: TrackerConfig | None = None, *, first_id: int = 0) -> None:
        self.config = config or TrackerConfig()
        self._tracks: list[_Track] = []
        self._next_id = first_id
        self._ended: list[int] = []
        self._last_time: float | None = None
        self._intervals: deque[float] = deque(maxlen=self.config.interval_window)

    @property
    def sampling_interval(self) -> float | None:
        """Median spacing of the recent frames, seconds (None before the second frame)."""
        if not self._intervals:
            return None
        return float(np.median(np.fromiter(self._intervals, float)))

    @property
    def effective_gap_s(self) -> float:
        """Seconds a track may go unseen now: ``max_gap_s``, or more for sparse sampling."""
        interval = self.sampling_interval
        if interval is None:
            return self.config.max_gap_s
        return max(self.config.max_gap_s, self.config.gap_samples * interval)

    @property
    def live_ids(self) -> list[int]:
        """Ids of the tracks still open."""
        return [t.track_id for t in self._tracks]

    def predicted_boxes(self, time_s: float) -> np.ndarray:
        """(N, 4) boxes of the open tracks, moved by their velocity to ``time_s``."""
        if not self._tracks:
            return np.zeros((0, 4))
        return np.stack([t.predict(time_s) for t in self._tracks])

    def update(self, boxes: np.ndarray, scores: np.ndarray, time_s: float) -> np.ndarray:
        """Associate one frame's detections; returns (N,) int64 track ids.

        Every sampled frame must be passed, with or without detections: the frames' spacing
        is the sampling interval. Tracks unmatched for longer than :attr:`effective_gap_s`
        are closed first; :meth:`pop_ended` returns them.
        """
        cfg = self.config
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        if self._last_time is not None and time_s > self._last_time:
            self._intervals.append(time_s - self._last_time)
        self._last_time = time_s if self._last_time is None else max(self._last_time, time_s)
        gap = self.effective_gap_s
        keep: list[_Track] = []
        for t in self._tracks:
            if time_s - t.last_time > gap:
                self._ended.append(t.track_id)
            else:
                keep.append(t)
        self._tracks = keep

        ids = np.full(len(boxes), -1, np.int64)
        unmatched_tracks = list(range(len(self._tracks)))
        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero(scores < cfg.high_score)
        for group in (high, low):
            if len(group) == 0 or not unmatched_tracks:
                continue
            predicted = np.stack([self._tracks[i].predict(time_s) for i in unmatched_tracks])
            # The farther apart the observations (keyframe scans), the farther a face may
            # have moved: the gate grows with the square root of the gap.
            gaps = np.array([time_s - self._tracks[i].last_time for i in unmatched_tracks])
            gates = cfg.center_gate * np.sqrt(np.maximum(1.0, gaps / cfg.gate_reference_s))
            sim = similarity(predicted, boxes[group], gates)
            # Imported here: the configuration (TrackerConfig) loads without SciPy.
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(-sim)
            used = set()
            for r, c in zip(rows, cols, strict=True):
                if sim[r, c] < cfg.min_similarity:
                    continue
                track = self._tracks[unmatched_tracks[r]]
                self._observe(track, boxes[group[c]], time_s)
                ids[group[c]] = track.track_id
                used.add(r)
            unmatched_tracks = [t for k, t in enumerate(unmatched_tracks) if k not in used]
        for d in np.flatnonzero(ids < 0):
            track = _Track(self._next_id, boxes[d].copy(), time_s, time_s)
            self._next_id += 1
            self._tracks.append(track)
            ids[d] = track.track_id
        return ids

    def _observe(self, track: _Track, box: np.ndarray, time_s: float) -> None:
        dt = time_s - track.last_time
        if dt > 0:
            measured = (box - track.box) / dt
            a = self.config.velocity_smoothing
            track.velocity = (
                measured if track.hits == 1 else a * measured + (1 - a) * track.velocity
            )
        track.box = box.copy()
        track.last_time = time_s
        track.hits += 1

    def pop_ended(self) -> list[int]:
        """Ids of tracks closed since the last call."""
        ended, self._ended = self._ended, []
        return ended

    def close_all(self) -> list[int]:
        """Close every live track (end of the video) and return all ids not yet popped."""
        self._ended.extend(t.track_id for t in self._tracks)
        self._tracks = []
        return self.pop_ended()
