"""Typed records passed between pipeline stages, validated on construction.

Every stage takes and returns these frozen dataclasses; shapes are checked in
``__post_init__`` with messages that give the expected and the actual shape.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

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


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded RGB frame of a video, or one image.

    Attributes:
        source: The input file's path, as a string.
        frame_index: Index of the frame in decode order (0 for an image).
        time_s: Seconds from the start of the source (0 for an image).
        image: (H, W, 3) uint8 RGB pixels.
        start_time: Absolute (timezone-aware) time of the source's start, when known.
    """

    source: str
    frame_index: int
    time_s: float
    image: np.ndarray
    start_time: dt.datetime | None = None

    def __post_init__(self) -> None:
        _check("Frame.image", self.image, (None, None, 3), np.uint8)
        if self.frame_index < 0:
            raise ValueError(f"Frame.frame_index: expected >= 0, got {self.frame_index}")
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
class FaceBatch:
    """Classified faces from one source, column-wise.

    Attributes:
        source: The input file's path, as a string.
        kind: ``video`` or ``image``.
        frame_index: (N,) int64 frame index of each face.
        time_s: (N,) float64 seconds from the source's start.
        boxes: (N, 4) float32 x1, y1, x2, y2 in frame pixels.
        det_scores: (N,) float32 detection scores.
        predictions: Probabilities per head.
        start_time: Absolute time of the source's start, when known.
    """

    source: str
    kind: str
    frame_index: np.ndarray
    time_s: np.ndarray
    boxes: np.ndarray
    det_scores: np.ndarray
    predictions: Predictions
    start_time: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("video", "image"):
            raise ValueError(f"FaceBatch.kind: expected 'video' or 'image', got {self.kind!r}")
        n = len(self.predictions)
        _check("FaceBatch.frame_index", self.frame_index, (n,), np.int64)
        _check("FaceBatch.time_s", self.time_s, (n,), np.float64)
        _check("FaceBatch.boxes", self.boxes, (n, 4), np.float32)
        _check("FaceBatch.det_scores", self.det_scores, (n,), np.float32)

    def __len__(self) -> int:
        return len(self.predictions)
