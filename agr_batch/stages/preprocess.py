"""Preprocessing shared by training and inference, described by data stored in checkpoints.

A :class:`PreprocessSpec` travels inside every checkpoint, so the processor always feeds the
classifier exactly what it was trained on: chip geometry (FairFace's dlib 5-landmark face chips
with padding 0.25), input size and normalisation. There is no second copy of these constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a face becomes a classifier input.

    Attributes:
        input_size: (H, W) of the chip fed to the model.
        mean: Per-channel RGB mean on the 0–1 scale.
        std: Per-channel RGB standard deviation on the 0–1 scale.
        alignment: Chip geometry; ``dlib-5pt`` is dlib's ``get_face_chip_details`` (FairFace).
        padding: dlib chip padding (FairFace used 0.25).
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    alignment: str = "dlib-5pt"
    padding: float = 0.25

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"input_size must be (H, W) with both >= 8, got {self.input_size}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3:
                raise ValueError(f"{name} must have 3 values (RGB), got {len(values)}")
            object.__setattr__(self, name, values)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.alignment != "dlib-5pt":
            raise ValueError(f"unknown alignment {self.alignment!r}; expected 'dlib-5pt'")
        if not 0.0 <= self.padding <= 1.0:
            raise ValueError(f"padding must be in [0, 1], got {self.padding}")
        object.__setattr__(self, "input_size", size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in checkpoints."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {"input_size", "mean", "std", "alignment", "padding"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown preprocessing keys {sorted(extra)}")
        return cls(
            input_size=tuple(d["input_size"]),  # type: ignore[arg-type]
            mean=tuple(d.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(d.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            alignment=str(d.get("alignment", "dlib-5pt")),
            padding=float(d.get("padding", 0.25)),
        )


def resize_chip(chip: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize an aligned RGB uint8 chip (H, W, 3) to the spec's input size.

    Downscaling uses area averaging (no aliasing), upscaling bilinear interpolation.
    """
    h, w = spec.input_size
    if chip.shape[:2] == (h, w):
        return chip
    interp = cv2.INTER_AREA if chip.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(chip, (w, h), interpolation=interp)


def chips_to_tensor(chips: np.ndarray | Sequence[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    """Turn aligned RGB uint8 chips into a normalised float batch (B, 3, H, W).

    Args:
        chips: (B, H, W, 3) uint8 array, or a sequence of (H, W, 3) arrays; chips whose size
            differs from the spec's input size are resized first.
        spec: The checkpoint's preprocessing.
    """
    if isinstance(chips, np.ndarray) and chips.ndim == 3:
        chips = chips[None]
    arrays = [resize_chip(np.asarray(c), spec) for c in chips]
    for i, a in enumerate(arrays):
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"chip {i}: expected uint8 (H, W, 3), got {a.dtype} {tuple(a.shape)}")
    h, w = spec.input_size
    batch = np.stack(arrays) if arrays else np.zeros((0, h, w, 3), np.uint8)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    # Contiguous NCHW: the layout every backend (and every exported engine) expects.
    return ((x - mean) / std).contiguous()
