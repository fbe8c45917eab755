"""Detection and alignment of a batch of frames on a torch device (the GPU path).

Frames arrive as host arrays (PyAV) or device tensors (NVDEC). Host frames are copied to the
device once each (pinned memory, non-blocking); from there the detector
(:class:`~agr_batch.stages.detect.centerface_torch.CenterFaceTorch`) runs on the whole batch, the
chips are warped on the device (:mod:`agr_batch.stages.align_torch`) straight into the classifier's
normalised input, and their sharpness (the variance of the Laplacian, which the voter uses to
pick each track's best faces) is computed there too. Only boxes, landmarks, scores and one
float per face come back to the host; pixels never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from agr_batch.records import Detections, Frame
from agr_batch.stages.preprocess import PreprocessSpec

__all__ = ["DeviceFaceStage", "DeviceFaces", "laplacian_variance"]

# OpenCV's Laplacian with ksize=1 (the kernel vote.face_quality uses on host chips).
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True, eq=False)
class DeviceFaces:
    """The faces of one frame, their classifier input still on the device.

    Attributes:
        detections: Boxes, scores and landmarks (host arrays).
        chips: (N, 3, H, W) normalised classifier input on the device.
        sharpness: (N,) float64 variance of each chip's Laplacian (grey levels).
    """

    detections: Detections
    chips: torch.Tensor
    sharpness: np.ndarray


def laplacian_variance(chips: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of (N, H, W, 3) uint8 RGB chips, as OpenCV computes it.

    Grey is OpenCV's ``RGB2GRAY`` (0.299, 0.587, 0.114, rounded to integers) and the border
    is reflected without repeating the edge (``BORDER_REFLECT_101``).
    """
    x = chips.float()
    gray = torch.floor(x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114 + 0.5)
    padded = F.pad(gray[:, None], (1, 1, 1, 1), mode="reflect")
    lap = F.conv2d(padded, _LAPLACIAN.to(chips.device)[None, None])
    return lap.flatten(1).var(dim=1, unbiased=False)


class DeviceFaceStage:
    """Detect and align frames in batches on the detector's device.

    Args:
        detector: A CenterFace running in PyTorch on the device.
        spec: The classifier's preprocessing (chip size, padding, normalisation).
    """

    def __init__(self, detector: Any, spec: PreprocessSpec) -> None:
        self.detector = detector
        self.spec = spec
        self.device = torch.device(detector.device)

    def to_device(self, image: Any) -> torch.Tensor:
        """A frame's (H, W, 3) uint8 pixels on the device (copied once if on the host)."""
        if isinstance(image, torch.Tensor):
            return image.to(self.device, non_blocking=True)
        t = torch.from_numpy(np.ascontiguousarray(image))
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def __call__(self, frames: Sequence[Frame]) -> list[DeviceFaces]:
        """Faces of every frame, in order."""
        from agr_batch.stages.align_torch import align_faces

        tensors = [self.to_device(f.image) for f in frames]
        dets = self.detector.detect_tensors(tensors)
        h, w = self.spec.input_size
        out: list[DeviceFaces | None] = [None] * len(frames)
        # Frames of one size are warped in one call (a video's frames all share one size).
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape), []).append(i)
        for idx in groups.values():
            counts = [len(dets[i]) for i in idx]
            total = sum(counts)
            if total == 0:
                for i in idx:
                    out[i] = DeviceFaces(
                        dets[i],
                        torch.zeros(0, 3, h, w, device=self.device),
                        np.zeros(0, np.float64),
                    )
                continue
            landmarks = np.concatenate([dets[i].landmarks for i in idx if len(dets[i])])
            owner = np.repeat(np.arange(len(idx)), counts)
            batch = torch.stack([tensors[i] for i in idx])
            chips = align_faces(batch, landmarks, self.spec, frame_index=owner)
            sharp = laplacian_variance(chips).double().cpu().numpy()
            x = chips.permute(0, 3, 1, 2).float().div_(255.0)
            mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
            x = ((x - mean) / std).contiguous()
            start = 0
            for i, n in zip(idx, counts, strict=True):
                out[i] = DeviceFaces(dets[i], x[start : start + n], sharp[start : start + n])
                start += n
        return [o for o in out if o is not None]
