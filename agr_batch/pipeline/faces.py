"""The face step: detect the faces of frames, align a chip for each and track them.

:class:`FaceStep` turns frames into :class:`FaceBatch` records, one per frame: the frame's
identity and time, its detections, an aligned chip per face, the track id of each face and the
tracks that ended. The detector is called on a list of frames at once (:meth:`FaceStep.
step_batch`); the tracker is still updated frame by frame, in order. Frames' pixels are not
kept: after this step only the chips (a few kilobytes per face) travel on.

In a video searched in tiles around the tracked faces (:mod:`agr_batch.stages.detect.regions`),
the whole-frame searches are planned by time alone, so each is known before the frames ahead
of it are tracked. Given a second detector (``lookahead``), they run on a helper thread while
this one searches the tiles of the frames in between, aligns and tracks: the two inferences
overlap instead of waiting on each other (on 2 cores a 60 s video took 3–15 % less time;
BENCHMARKS.md). The results are the same either way.

With a detector that runs on a torch device (CenterFace in PyTorch, e.g. on a GPU), a batch of
frames is detected in one call and its chips are warped there, straight into the classifier's
normalised input (:class:`~agr_batch.stages.device_faces.DeviceFaceStage`): the chips stay on
the device and each face's quality is computed there. Only boxes, landmarks and scores come
back to the host, for the tracker.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from agr_batch.pipeline import StageTimes
from agr_batch.records import Detections, Frame
from agr_batch.stages.align import align_faces
from agr_batch.stages.detect import Detector
from agr_batch.stages.detect.regions import RegionPlanner, RegionPolicy
from agr_batch.stages.preprocess import PreprocessSpec
from agr_batch.stages.track import Tracker, TrackerConfig

__all__ = ["FaceBatch", "FaceStep", "PartialBatchError", "detection_error", "qualities"]

_LOOKAHEAD_FRAMES = 4  # frames taken at once from the queue when searches can run ahead


@dataclass(frozen=True, eq=False)
class FaceBatch:
    """The faces of one frame after detection, alignment and tracking.

    Attributes:
        source: The input's path, as a string.
        frame_index: Index of the frame in its source.
        time_s: Seconds from the source's start.
        start_time: Absolute start of the source, when known.
        detections: The faces found (boxes, scores, landmarks in frame pixels).
        chips: One chip per face: (N, H, W, 3) uint8 RGB on the host, or a torch tensor of
            (N, 3, H, W) normalised classifier input on the device that aligned it.
        track_ids: (N,) int64 track id of each face.
        ended: Tracks that ended with this frame.
        quality: (N,) float32 quality of each face for classification, when the step
            computed it (device chips); None lets the voter compute it from host chips.
    """

    source: str
    frame_index: int
    time_s: float
    start_time: dt.datetime | None
    detections: Detections
    chips: Any
    track_ids: np.ndarray
    ended: tuple[int, ...] = ()
    quality: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.detections)
        if len(self.chips) != n or len(self.track_ids) != n:
            raise ValueError(
                f"FaceBatch: {n} detections, {len(self.chips)} chips, "
                f"{len(self.track_ids)} track ids"
            )
        if self.quality is not None and len(self.quality) != n:
            raise ValueError(f"FaceBatch: {n} detections, {len(self.quality)} qualities")

    def __len__(self) -> int:
        return len(self.detections)


class FaceStep:
    """Detect, align and track the frames of one source at a time.

    Args:
        detector: The face detector.
        spec: The classifier's preprocessing (chip size and alignment).
        tracker_config: Tracker thresholds; a new tracker starts with each source.
        times: Where the seconds spent detecting, aligning and tracking are added.
        regions: When a video's frames are searched whole and, in between, only around the
            tracked faces (:mod:`agr_batch.stages.detect.regions`); None searches every
            frame whole. Used with detectors that can search tiles (CenterFace on the host).
        lookahead: A second instance of the detector, with its own session: the planned
            whole-frame searches run on it on a helper thread, ahead of the tiles. Used
            with ``regions`` only; call :meth:`close` when done.
    """

    def __init__(
        self,
        detector: Detector,
        spec: PreprocessSpec,
        tracker_config: TrackerConfig,
        *,
        times: StageTimes | None = None,
        regions: RegionPolicy | None = None,
        lookahead: Detector | None = None,
    ) -> None:
        self.detector = detector
        self.spec = spec
        self.tracker_config = tracker_config
        self.times = times
        self.tracker = Tracker(tracker_config)
        # Tiles need a detector that can search them; the others search every frame whole.
        tiled = regions is not None and regions.enabled and hasattr(detector, "detect_around")
        self._planner = RegionPlanner(regions) if tiled and regions is not None else None
        # (The same instance would run two inferences on one session at once.)
        self._lookahead = (
            lookahead if self._planner is not None and lookahead is not detector else None
        )
        self._helper: ThreadPoolExecutor | None = None
        self.whole_frames = 0  # frames searched whole, and frames searched in tiles
        self.tiled_frames = 0
        # Detectors that run on a torch device detect and align whole batches there.
        self._device_stage: Any = None
        if hasattr(detector, "detect_tensors"):
            from agr_batch.stages.device_faces import DeviceFaceStage

            self._device_stage = DeviceFaceStage(detector, spec)

    @property
    def on_device(self) -> bool:
        """True when detection and alignment run on a torch device in batches."""
        return self._device_stage is not None

    @property
    def device(self) -> Any:
        """The torch device of the detector (``cpu`` for host detectors)."""
        import torch

        return torch.device(getattr(self.detector, "device", "cpu"))

    @property
    def batch_size(self) -> int:
        """Frames per :meth:`step_batch` call.

        The device detector's batch; a few frames when whole-frame searches can run ahead
        of the tiles; else one. Batching frames in one detector call measured no faster
        with onnxruntime on CPUs.
        """
        if self.on_device:
            return int(getattr(self.detector, "batch_size", 1))
        return _LOOKAHEAD_FRAMES if self._lookahead is not None else 1

    def close(self) -> None:
        """Stop the helper thread of the look-ahead searches, if one was started."""
        if self._helper is not None:
            # Searches not started are dropped; a running one takes milliseconds.
            self._helper.shutdown(wait=True, cancel_futures=True)
            self._helper = None

    def start_source(self) -> None:
        """Forget the previous source's tracks (ids start again at 0)."""
        self.tracker = Tracker(self.tracker_config)
        if self._planner is not None:
            self._planner = RegionPlanner(self._planner.policy)

    def end_source(self) -> tuple[int, ...]:
        """End every track still open: the source has no more frames."""
        return tuple(self.tracker.close_all())

    def step(self, frame: Frame) -> FaceBatch:
        """Detect, align and track one frame."""
        return self.step_batch([frame])[0]

    def step_batch(self, frames: Sequence[Frame]) -> list[FaceBatch]:
        """Detect the faces of ``frames`` in one detector call, then align and track each.

        The frames must be consecutive frames of the current source, in time order.

        Raises:
            PartialBatchError: Detection failed after some frames were done (searched in tiles
                or ahead of them): those frames' records, and the cause for the rest.
            Exception: Whatever the detector raises (the caller reports the frames as failed;
                the tracker has not seen them).
        """
        if not frames:
            return []
        if self._planner is not None:
            return self._step_planned(frames)
        t0 = time.perf_counter()
        quality: list[np.ndarray | None]
        if self._device_stage is not None:
            found_faces = self._device_stage(frames)
            found = [f.detections for f in found_faces]
            chips: list[Any] = [f.chips for f in found_faces]
            side = min(self.spec.input_size)
            quality = [qualities(f.detections, f.sharpness, chip_side=side) for f in found_faces]
            t1 = t2 = time.perf_counter()
        else:
            found = self._detect_host(frames)
            t1 = time.perf_counter()
            chips = [
                align_faces(f.image, d.landmarks, self.spec)
                for f, d in zip(frames, found, strict=True)
            ]
            quality = [None] * len(frames)
            t2 = time.perf_counter()
        out = [
            self._track(frame, dets, frame_chips, q)
            for frame, dets, frame_chips, q in zip(frames, found, chips, quality, strict=True)
        ]
        if self.times is not None:
            # On the device, detection and alignment are one call: counted as detection.
            self.times.detect += t1 - t0
            self.times.align += t2 - t1
            self.times.track += time.perf_counter() - t2
        return out

    def _track(
        self, frame: Frame, dets: Detections, chips: Any, quality: np.ndarray | None
    ) -> FaceBatch:
        # A new tracker per source: in an image each face is its own track (ids 0..n-1).
        track_ids = self.tracker.update(dets.boxes, dets.scores, frame.time_s)
        return FaceBatch(
            source=frame.source,
            frame_index=frame.frame_index,
            time_s=frame.time_s,
            start_time=frame.start_time,
            detections=dets,
            chips=chips,
            track_ids=np.asarray(track_ids, np.int64),
            ended=tuple(self.tracker.pop_ended()),
            quality=quality,
        )

    def _detect_host(self, frames: Sequence[Frame]) -> list[Detections]:
        self.whole_frames += len(frames)
        return self.detector.detect([f.image for f in frames])

    def _step_planned(self, frames: Sequence[Frame]) -> list[FaceBatch]:
        """Frames searched whole or in tiles around the tracks, in order.

        The whole-frame searches are planned first, for every frame of the batch, from the
        frames' times and sizes alone (a tile search that falls back to the whole frame
        does not move the schedule), so the plan does not depend on how the frames were
        batched; with a look-ahead detector they start at once on the helper thread.
        Where to look in a tiled frame depends on the tracks after the frame before, so
        the frames are then searched, aligned and tracked one after the other.
        """
        planner = self._planner
        assert planner is not None
        pending: dict[int, Future[Detections] | None] = {}
        for i, frame in enumerate(frames):
            if planner.whole(frame.time_s, frame.image.shape):
                pending[i] = self._search_ahead(frame)
        out: list[FaceBatch] = []
        try:
            for i, frame in enumerate(frames):
                t0 = time.perf_counter()
                if i in pending:
                    ahead = pending.pop(i)
                    dets = ahead.result() if ahead else self.detector.detect([frame.image])[0]
                    whole = True
                else:
                    dets, whole = self.detector.detect_around(  # type: ignore[attr-defined]
                        frame.image,
                        self.tracker.predicted_boxes(frame.time_s),
                        margin=planner.policy.margin,
                        max_share=planner.policy.max_share,
                    )
                self.whole_frames += whole
                self.tiled_frames += not whole
                t1 = time.perf_counter()
                chips = align_faces(frame.image, dets.landmarks, self.spec)
                t2 = time.perf_counter()
                out.append(self._track(frame, dets, chips, None))
                if self.times is not None:
                    self.times.detect += t1 - t0
                    self.times.align += t2 - t1
                    self.times.track += time.perf_counter() - t2
        except Exception as e:
            # The frames before this one are tracked: they must not be reported as failed.
            raise PartialBatchError(out, e) from e
        finally:
            for ahead in pending.values():  # a search failed: the later ones are not needed
                if ahead is not None and not ahead.cancel():
                    ahead.exception()  # wait: the helper's detector is free again
        return out

    def _search_ahead(self, frame: Frame) -> Future[Detections] | None:
        """The whole-frame search of ``frame`` started on the helper thread (None: none)."""
        detector = self._lookahead
        if detector is None:
            return None
        if self._helper is None:
            self._helper = ThreadPoolExecutor(1, thread_name_prefix="agr-whole")
        return self._helper.submit(lambda: detector.detect([frame.image])[0])


class PartialBatchError(Exception):
    """Detection failed part-way through a batch of frames.

    Attributes:
        done: The records of the frames before the failed one (they are tracked).
        cause: What the detector raised for the next frame.
    """

    def __init__(self, done: list[FaceBatch], cause: Exception) -> None:
        super().__init__(str(cause))
        self.done = done
        self.cause = cause


def qualities(dets: Detections, sharpness: np.ndarray, *, chip_side: int) -> np.ndarray:
    """Each face's quality for classification, from a sharpness measured on the device.

    The same as :func:`~agr_batch.stages.vote.face_quality` computes from a host chip.
    """
    from agr_batch.stages.vote import quality_from

    return np.asarray(
        [
            quality_from(box, float(score), float(sharp), chip_side)
            for box, score, sharp in zip(dets.boxes, dets.scores, sharpness, strict=True)
        ],
        np.float32,
    )


def detection_error(frame: Frame, exc: BaseException) -> str:
    """The one-line message for a frame whose detection failed."""
    return f"{frame.source}: face detection failed at {frame.time_s:.2f} s ({exc})".splitlines()[0]
