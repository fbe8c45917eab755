"""Augmentation of aligned face chips, on uint8 RGB arrays before :func:`chips_to_tensor`.

FairFace's chips are already aligned (dlib 5-point, padding 0.25), so only mild geometric
changes make sense: a horizontal flip, a small scale change and shift (and, optionally, a
small rotation) that imitate landmark noise, plus mild brightness, contrast and saturation
jitter. Hue is never changed: skin tone carries label information. Every random draw comes
from the generator passed in, so a sample's augmentation is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation; ``AugmentConfig.none()`` disables all of them.

    Attributes:
        hflip: Probability of a horizontal flip.
        scale: Maximum relative zoom in or out (0.08 → factor in [0.92, 1.08]).
        shift: Maximum shift per axis as a fraction of the chip side.
        rotate: Maximum rotation in degrees (0 keeps the chip's alignment).
        brightness: Maximum relative brightness change.
        contrast: Maximum relative contrast change.
        saturation: Maximum relative saturation change.
    """

    hflip: float = 0.5
    scale: float = 0.08
    shift: float = 0.05
    rotate: float = 0.0
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip must be a probability, got {self.hflip}")
        for name in ("scale", "shift", "brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0.0 <= self.rotate <= 45.0:
            raise ValueError(f"rotate must be in [0, 45] degrees, got {self.rotate}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """A configuration that leaves chips unchanged."""
        return cls(hflip=0.0, scale=0.0, shift=0.0, brightness=0.0, contrast=0.0, saturation=0.0)

    @property
    def is_identity(self) -> bool:
        """Whether this configuration never changes a chip."""
        return self == AugmentConfig.none()


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def augment_chip(chip: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Return an augmented copy of one aligned RGB uint8 chip (H, W, 3).

    Args:
        chip: The chip, already at the model's input size.
        rng: Source of every random choice.
        config: Augmentation strengths.

    Returns:
        A uint8 array of the same shape.
    """
    if chip.dtype != np.uint8 or chip.ndim != 3 or chip.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) chip, got {chip.dtype} {chip.shape}")
    # Draw every number whatever the configuration, so each sample uses a fixed amount of
    # randomness and toggling one augmentation does not reshuffle the others.
    u = rng.random(8)
    out = chip
    h, w = chip.shape[:2]
    if u[0] < config.hflip:
        out = out[:, ::-1]
    zoom = 1.0 + config.scale * (2 * u[1] - 1)
    dx = config.shift * (2 * u[2] - 1) * w
    dy = config.shift * (2 * u[3] - 1) * h
    angle = config.rotate * (2 * u[4] - 1)
    if zoom != 1.0 or dx != 0.0 or dy != 0.0 or angle != 0.0:
        m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, zoom)
        m[:, 2] += (dx, dy)
        out = cv2.warpAffine(
            np.ascontiguousarray(out),
            m,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
    b = 1.0 + config.brightness * (2 * u[5] - 1)
    c = 1.0 + config.contrast * (2 * u[6] - 1)
    s = 1.0 + config.saturation * (2 * u[7] - 1)
    if b != 1.0 or c != 1.0 or s != 1.0:
        x = out.astype(np.float32) * b
        gray = x @ _LUMA
        if c != 1.0:
            x = (x - gray.mean()) * c + gray.mean()
            gray = x @ _LUMA
        if s != 1.0:
            x = gray[..., None] + (x - gray[..., None]) * s
        out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)
