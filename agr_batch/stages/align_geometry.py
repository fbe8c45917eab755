"""Sampling geometry of the device chips (:mod:`agr_batch.stages.align_torch`).

The frame rectangle under each chip, the chip-to-frame matrices and the ``grid_sample``
grids, batched over faces in PyTorch. Kept apart from the warps that use them so that each
module stays readable; the conventions (pixel centres at integer coordinates, as in OpenCV;
``align_corners=False`` grids) are described in :mod:`agr_batch.stages.align_torch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Region", "affine", "compose", "covered_region", "invert", "sampling_grid", "union"]


@dataclass(frozen=True)
class Region:
    """Per-face frame rectangle under the chip (integer-valued float64), as in align.py.

    Attributes:
        x0: Left column (inclusive).
        y0: Top row (inclusive).
        x1: Right column (exclusive).
        y1: Bottom row (exclusive).
    """

    x0: torch.Tensor
    y0: torch.Tensor
    x1: torch.Tensor
    y1: torch.Tensor

    @property
    def ok(self) -> torch.Tensor:
        """Where align.py area-averages: at least 2 x 2 frame pixels under the chip."""
        return (self.x1 - self.x0 >= 2) & (self.y1 - self.y0 >= 2)

    @property
    def nonempty(self) -> torch.Tensor:
        """Where the chip covers any frame pixel (False for NaN transforms too)."""
        return (self.x1 > self.x0) & (self.y1 > self.y0)

    def select(self, ids: torch.Tensor) -> Region:
        """The rows ``ids``."""
        return Region(self.x0[ids], self.y0[ids], self.x1[ids], self.y1[ids])


def invert(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chip-to-frame matrices (cv2.invertAffineTransform's formula) and each face's scale."""
    a, b, c = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    d, e, f = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * e - b * d
    scale = det.abs().sqrt()
    inv_det = torch.where(det != 0, 1.0 / det, torch.zeros_like(det))
    a11, a12, a21, a22 = e * inv_det, -b * inv_det, -d * inv_det, a * inv_det
    b1 = -a11 * c - a12 * f
    b2 = -a21 * c - a22 * f
    inverse = torch.stack(
        [torch.stack([a11, a12, b1], dim=-1), torch.stack([a21, a22, b2], dim=-1)], dim=1
    )
    return inverse, scale


def covered_region(
    inverse: torch.Tensor, scale: torch.Tensor, size: tuple[int, int], frame_w: int, frame_h: int
) -> Region:
    """Batched :func:`agr_batch.stages.align._covered_region`: the frame rectangle under each chip.

    Every bilinear tap of every chip pixel lies inside it, so warping from a crop that holds
    it gives the same chip as warping from the whole frame.
    """
    height, width = size
    corners = torch.tensor(
        [[-1, -1], [width, -1], [-1, height], [width, height]],
        dtype=inverse.dtype,
        device=inverse.device,
    )
    pts = corners @ inverse[:, :, :2].transpose(1, 2) + inverse[:, None, :, 2]
    margin = 2.0 / scale
    x0 = torch.floor(pts[..., 0].amin(dim=1) - margin).clamp(min=0)
    y0 = torch.floor(pts[..., 1].amin(dim=1) - margin).clamp(min=0)
    x1 = (torch.ceil(pts[..., 0].amax(dim=1) + margin) + 1).clamp(max=frame_w)
    y1 = (torch.ceil(pts[..., 1].amax(dim=1) + margin) + 1).clamp(max=frame_h)
    return Region(x0, y0, x1, y1)


def union(rects: torch.Tensor) -> tuple[int, int, int, int]:
    """The rectangle holding (4, K) host rectangles x0, y0, x1, y1."""
    return (
        int(rects[0].min()),
        int(rects[1].min()),
        int(rects[2].max()),
        int(rects[3].max()),
    )


def affine(
    sx: torch.Tensor | float,
    tx: torch.Tensor | float,
    sy: torch.Tensor | float,
    ty: torch.Tensor | float,
    like: torch.Tensor,
) -> torch.Tensor:
    """(N, 3, 3) axis-aligned maps ``(x, y) -> (sx x + tx, sy y + ty)``, N = len(like)."""
    out = torch.zeros((like.shape[0], 3, 3), dtype=like.dtype, device=like.device)
    out[:, 0, 0], out[:, 0, 2] = sx, tx
    out[:, 1, 1], out[:, 1, 2] = sy, ty
    out[:, 2, 2] = 1.0
    return out


def sampling_grid(
    theta: torch.Tensor,
    size: tuple[int, int],
    device: torch.device,
    *,
    clamp_y: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """grid_sample's (N, H, W, 2) float32 grid for chip pixels mapped by ``theta``.

    The grid ``affine_grid`` would give for the same map with ``align_corners=False``, built
    as two broadcast sums (affine_grid's batched matrix product is several times slower on
    the CPU).

    Args:
        theta: (N, 2, 3) float64 from chip pixels (centres at integer coordinates, as
            cv2.warpAffine samples them) to the input's normalised coordinates.
        size: Chip (H, W).
        device: Where the grid goes.
        clamp_y: Per-face (N,) bounds for the normalised y coordinate.
    """
    height, width = size
    theta = theta.to(device=device, dtype=torch.float32)
    us = torch.arange(width, dtype=torch.float32, device=device)
    vs = torch.arange(height, dtype=torch.float32, device=device)
    planes = []
    for axis in range(2):
        col = theta[:, axis, 0, None, None] * us[None, None, :]
        row = theta[:, axis, 1, None, None] * vs[None, :, None] + theta[:, axis, 2, None, None]
        planes.append(col + row)
    if clamp_y is not None:
        lo, hi = (b.to(device=device, dtype=torch.float32)[:, None, None] for b in clamp_y)
        planes[1] = torch.clamp(planes[1], lo, hi)
    return torch.stack(planes, dim=-1)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) affine ``outer ∘ inner`` of (N, 3, 3) ``outer`` and (N, 2, 3) ``inner``."""
    return outer[:, :2, :2] @ inner + torch.cat(
        [torch.zeros_like(inner[:, :, :2]), outer[:, :2, 2:]], dim=2
    )
