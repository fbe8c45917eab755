"""Typed records passed between pipeline stages, validated on construction.

Every stage takes and returns these frozen dataclasses; shapes are checked in
``__post_init__`` with messages that give the expected and the actual shape.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def _check(name: str, array: np.ndarray, shape: tuple[int | None, ...], dtype: type) -> None:
    """Raise ValueError unless ``array`` has ``shape`` (None = any size) and ``dtype``."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected numpy.ndarray, got {type(array).__name__}")
    ok = array.ndim == len(shape) and all(
        want is None or want == got for want, got in zip(shape, array.shape, strict=False)
    )
    if not ok:
        expected = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(array.shape)}")
    if array.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {array.dtype}")


def _is_tensor(value: Any) -> bool:
    """A torch tensor, recognised without importing torch (light decode environments)."""
    return type(value).__module__.startswith("torch") and hasattr(value, "device")


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded RGB frame of a video, or one image.

    Attributes:
        source: The input file's path, as a string.
        frame_index: Index of the frame in decode order (0 for an image).
        time_s: Seconds from the start of the source (0 for an image).
        image: (H, W, 3) uint8 RGB pixels: a NumPy array on the host, or a torch tensor on
            the device that decoded it (GPU decoders), where the next stages read it.
        start_time: Absolute (timezone-aware) time of the source's start, when known.
    """

    source: str
    frame_index: int
    time_s: float
    image: Any
    start_time: dt.datetime | None = None

    def __post_init__(self) -> None:
        if _is_tensor(self.image):
            image = self.image
            if image.ndim != 3 or image.shape[2] != 3 or str(image.dtype) != "torch.uint8":
                raise ValueError(
                    f"Frame.image: expected an (H, W, 3) uint8 tensor, got {image.dtype} "
                    f"{tuple(image.shape)}"
                )
        else:
            _check("Frame.image", self.image, (None, None, 3), np.uint8)
        if self.frame_index < 0:
            raise ValueError(f"Frame.frame_index: expected >= 0, got {self.frame_index}")
        if not math.isfinite(self.time_s):
            # The tracker and the whole-frame schedule order frames by time.
            raise ValueError(f"Frame.time_s: expected a finite number, got {self.time_s}")
        if self.start_time is not None and self.start_time.tzinfo is None:
            raise ValueError("Frame.start_time: expected a timezone-aware datetime")

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])

    @property
    def on_device(self) -> bool:
        """True when the pixels are a torch tensor (e.g. decoded on the GPU)."""
        return _is_tensor(self.image)

    @property
    def absolute_time(self) -> dt.datetime | None:
        """``start_time + time_s`` when the start time is known."""
        if self.start_time is None:
            return None
        return self.start_time + dt.timedelta(seconds=self.time_s)


@dataclass(frozen=True, eq=False)
class Detections:
    """Faces found in one frame.

    Attributes:
        boxes: (N, 4) float32 boxes x1, y1, x2, y2 in frame pixels.
        scores: (N,) float32 detection scores in [0, 1].
        landmarks: (N, 5, 2) float32 points in frame pixels, in image order: left eye,
            right eye, nose tip, left mouth corner, right mouth corner ("left" = smaller x
            for an upright frontal face).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        _check("Detections.boxes", self.boxes, (None, 4), np.float32)
        n = len(self.boxes)
        _check("Detections.scores", self.scores, (n,), np.float32)
        _check("Detections.landmarks", self.landmarks, (n, 5, 2), np.float32)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        """No faces."""
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, 5, 2), np.float32),
        )

    def select(self, keep: np.ndarray) -> Detections:
        """The detections at the boolean mask or indices ``keep``."""
        return Detections(self.boxes[keep], self.scores[keep], self.landmarks[keep])


@dataclass(frozen=True, eq=False)
class Predictions:
    """Softmax probabilities per head for N faces.

    Attributes:
        age: (N, 9) float32.
        gender: (N, 2) float32.
        race: (N, 7) float32.
    """

    age: np.ndarray
    gender: np.ndarray
    race: np.ndarray

    def __post_init__(self) -> None:
        _check("Predictions.age", self.age, (None, 9), np.float32)
        n = len(self.age)
        _check("Predictions.gender", self.gender, (n, 2), np.float32)
        _check("Predictions.race", self.race, (n, 7), np.float32)

    def __len__(self) -> int:
        return len(self.age)


@dataclass(frozen=True, eq=False)
class TrackResult:
    """A closed track (one person) with its faces and voted probabilities.

    Attributes:
        source: Input file path.
        kind: ``video`` or ``image``.
        start_time: Absolute start of the source, when known.
        track_id: Id unique within the source.
        frame_index: (N,) int64.
        time_s: (N,) float64.
        boxes: (N, 4) float32.
        det_scores: (N,) float32.
        face_predictions: Per-face probabilities (the track's vote for every face, or each
            face's own prediction in per-face mode).
        classified: (N,) bool, whether the face itself went through the classifier.
        vote: The track's mean probabilities, (1, K) per head.
    """

    source: str
    kind: str
    start_time: dt.datetime | None
    track_id: int
    frame_index: np.ndarray
    time_s: np.ndarray
    boxes: np.ndarray
    det_scores: np.ndarray
    face_predictions: Predictions
    classified: np.ndarray
    vote: Predictions

    def __post_init__(self) -> None:
        if self.kind not in ("video", "image"):
            raise ValueError(f"TrackResult.kind: expected 'video' or 'image', got {self.kind!r}")
        n = len(self.face_predictions)
        _check("TrackResult.frame_index", self.frame_index, (n,), np.int64)
        _check("TrackResult.time_s", self.time_s, (n,), np.float64)
        _check("TrackResult.boxes", self.boxes, (n, 4), np.float32)
        _check("TrackResult.det_scores", self.det_scores, (n,), np.float32)
        _check("TrackResult.classified", self.classified, (n,), np.bool_)
        if len(self.vote) != 1:
            raise ValueError(f"TrackResult.vote: expected 1 row, got {len(self.vote)}")

    def __len__(self) -> int:
        return len(self.face_predictions)

    @property
    def first_time(self) -> float:
        """Seconds from the source start when the track was first seen."""
        return float(self.time_s.min())

    @property
    def last_time(self) -> float:
        """Seconds from the source start when the track was last seen."""
        return float(self.time_s.max())
