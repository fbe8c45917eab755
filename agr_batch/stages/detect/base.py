"""The detector interface, the detector registry and geometry shared by detectors."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from agr_batch.records import Detections
from agr_batch.registry import Entry, Registry, RegistryError

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorError",
    "RegistryError",
    "check_image",
    "choose_providers",
    "clip_boxes",
    "create_detector",
    "default_threads",
    "detector_entry",
    "iou_matrix",
    "list_detectors",
    "nms",
    "register_detector",
]


@runtime_checkable
class Detector(Protocol):
    """A face detector: RGB uint8 frames in, one :class:`Detections` per frame out.

    Attributes:
        name: The registry name it was created under.
    """

    name: str

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Find faces in each (H, W, 3) uint8 RGB frame; coordinates in frame pixels."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-ready settings and model identity, recorded in output metadata."""
        ...


class DetectorError(RuntimeError):
    """A detector that cannot be built (missing weights, bad settings); one-line message."""


DETECTORS: Registry[Detector] = Registry("detector")


def register_detector(
    name: str, *, description: str = ""
) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    """Register a detector constructor under ``name`` (duplicates raise RegistryError)."""
    return DETECTORS.register(name, description=description)


def list_detectors() -> list[str]:
    """Names of all registered detectors, sorted."""
    return DETECTORS.names()


def detector_entry(name: str) -> Entry[Detector]:
    """The registry entry of ``name`` (unknown names raise :class:`RegistryError`)."""
    return DETECTORS.entry(name)


def create_detector(name: str = "centerface", **kwargs: Any) -> Detector:
    """Build the detector registered as ``name`` with constructor keyword ``kwargs``.

    Raises:
        RegistryError: If ``name`` is not registered; the message lists the known names.
        DetectorError: If the detector cannot be built (for example, missing weights).
    """
    return DETECTORS.create(name, **kwargs)


def default_threads() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_options(threads: int) -> Any:
    """Session options for an onnxruntime detector that shares the CPU with the decoder.

    Intra-op threads do not spin between operators: spinning keeps cores busy that the
    decoder is waiting for. In paired runs on 2 cores (decode and detect sharing them) turning
    it off used 5–22 % less CPU and 0–18 % less wall time (BENCHMARKS.md).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # unused initialisers in model files warn at load time
    return options


def choose_providers(requested: Sequence[str] | None, who: str) -> list[str]:
    """The requested onnxruntime providers (checked), or CUDA when available, then CPU.

    Raises:
        DetectorError: If a requested provider is not available.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is not None:
        missing = [p for p in requested if p not in available]
        if missing:
            raise DetectorError(
                f"{who}: provider(s) {', '.join(missing)} not available; "
                f"available: {', '.join(available)}"
            )
        return list(requested)
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
        boxes: (N, 4) x1, y1, x2, y2.
        scores: (N,) scores.
        iou_threshold: A box is dropped when its IoU with a kept, higher-scoring box is at
            least this.

    Returns:
        Indices of the kept boxes, highest score first.
    """
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, np.int64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes clipped to the frame ``[0, width] x [0, height]`` (a copy)."""
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


def check_image(image: np.ndarray, index: int) -> None:
    """Raise ValueError unless ``image`` is an (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        got = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        raise ValueError(f"image {index}: expected (H, W, 3) uint8 RGB, got {got}")
    if image.shape[2] != 3:
        raise ValueError(f"image {index}: expected 3 channels (RGB), got {image.shape[2]}")
