"""The device chips' sampling geometry against the references it reimplements."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from agr_batch.stages.align_geometry import (
    Region,
    affine,
    compose,
    covered_region,
    invert,
    sampling_grid,
    union,
)


def _similarities(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 2, 3) float64 rotation-scale-translation matrices, as chip transforms are."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(-np.pi, np.pi, n)
    scale = rng.uniform(0.2, 3.0, n)
    a, b = scale * np.cos(angle), scale * np.sin(angle)
    tx, ty = rng.uniform(-500, 500, n), rng.uniform(-500, 500, n)
    return torch.from_numpy(np.stack([np.stack([a, -b, tx], 1), np.stack([b, a, ty], 1)], 1))


def test_invert_matches_cv2_and_returns_the_scale():
    matrices = _similarities(20)
    inverse, scale = invert(matrices)
    for m, inv in zip(matrices.numpy(), inverse.numpy(), strict=True):
        np.testing.assert_allclose(inv, cv2.invertAffineTransform(m), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(scale.numpy(), np.hypot(matrices[:, 0, 0], matrices[:, 1, 0]))


def test_a_singular_matrix_inverts_to_zeros_not_inf():
    inverse, scale = invert(torch.zeros((1, 2, 3), dtype=torch.float64))
    assert torch.isfinite(inverse).all() and float(scale[0]) == 0.0


def test_sampling_grid_is_affine_grids():
    theta = torch.from_numpy(np.random.default_rng(1).uniform(-0.02, 0.02, (5, 2, 3)))
    size = (24, 40)
    # Chip pixel (u, v) at integer coordinates -> affine_grid's normalised chip coordinates
    # (align_corners=False): x_n = (2 u + 1) / W - 1.
    to_pixels = affine(size[1] / 2.0, (size[1] - 1) / 2.0, size[0] / 2.0, (size[0] - 1) / 2.0,
                       theta)  # fmt: skip
    want = F.affine_grid(compose(torch.cat([theta, _last_row(theta)], 1), to_pixels[:, :2])
                         .float(), [5, 3, *size], align_corners=False)  # fmt: skip
    got = sampling_grid(theta, size, torch.device("cpu"))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _last_row(theta: torch.Tensor) -> torch.Tensor:
    row = torch.zeros((len(theta), 1, 3), dtype=theta.dtype)
    row[:, 0, 2] = 1.0
    return row


def test_sampling_grid_clamps_y_per_face():
    theta = torch.zeros((2, 2, 3), dtype=torch.float64)
    theta[:, 1, 1] = 1.0  # y = v
    lo, hi = torch.tensor([0.0, 2.0]), torch.tensor([3.0, 5.0])
    grid = sampling_grid(theta, (8, 4), torch.device("cpu"), clamp_y=(lo, hi))
    assert grid[0, ..., 1].min() == 0.0 and grid[0, ..., 1].max() == 3.0
    assert grid[1, ..., 1].min() == 2.0 and grid[1, ..., 1].max() == 5.0


def test_covered_region_holds_every_tap_and_stays_in_the_frame():
    inverse, scale = invert(_similarities(30, seed=2))
    size, frame_w, frame_h = (16, 16), 800, 600
    region = covered_region(inverse, scale, size, frame_w, frame_h)
    assert (region.x0 >= 0).all() and (region.y0 >= 0).all()
    assert (region.x1 <= frame_w).all() and (region.y1 <= frame_h).all()
    vs, us = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    pts = torch.stack([us.flatten(), vs.flatten(), torch.ones(256)], 0).double()
    for k in range(len(inverse)):
        xy = inverse[k] @ pts  # every chip pixel's centre in the frame
        inside = (xy[0] >= 0) & (xy[0] <= frame_w - 1) & (xy[1] >= 0) & (xy[1] <= frame_h - 1)
        if inside.any():
            x, y = xy[0, inside], xy[1, inside]
            # Both bilinear taps of every in-frame sample (the far one where it is in the
            # frame) lie in [x0, x1) x [y0, y1).
            far_x = (x.floor() + 1).clamp(max=frame_w - 1)
            far_y = (y.floor() + 1).clamp(max=frame_h - 1)
            assert x.floor().min() >= region.x0[k] and far_x.max() < region.x1[k]
            assert y.floor().min() >= region.y0[k] and far_y.max() < region.y1[k]
    picked = region.select(torch.tensor([3, 1]))
    assert isinstance(picked, Region) and picked.x0.tolist() == region.x0[[3, 1]].tolist()


def test_union_and_compose():
    rects = torch.tensor([[5.0, 1.0], [7.0, 2.0], [9.0, 4.0], [8.0, 10.0]])
    assert union(rects) == (1, 2, 9, 10)
    inner = _similarities(3, seed=3)
    outer = torch.cat([_similarities(3, seed=4), _last_row(inner)], 1)
    full = outer @ torch.cat([inner, _last_row(inner)], 1)
    torch.testing.assert_close(compose(outer, inner), full[:, :2])
