"""Face chips on the device: a batched PyTorch twin of :mod:`agr_batch.stages.align`.

:func:`agr_batch.stages.align.align_faces` warps one face at a time with ``cv2.warpAffine`` on
the host. Here the frames stay where they are (a CUDA tensor straight from the decoder, or a CPU
tensor) and every face of a batch of frames is warped by one ``grid_sample`` call, so on a GPU
pixels never come back to the host: the result is either uint8 chips or directly the
classifier's normalised NCHW batch.

Geometry is the cv2 path's, exactly:

- The transforms are dlib's least-squares similarity
  (:func:`agr_batch.stages.align.chip_transforms`), in its closed 2-D form (no SVD), batched
  in float64.
- Pixel centres sit at integer coordinates, as in OpenCV. ``grid_sample`` with
  ``align_corners=False`` puts pixel ``i`` of a ``n``-pixel axis at ``(2 i + 1) / n - 1``;
  the normalised coordinates are built from that formula, so the bilinear taps and weights
  are OpenCV's. Outside the frame is black: ``padding_mode="zeros"`` blends edge pixels with
  zero as ``BORDER_CONSTANT`` does.
- The frames of a batch (cut to the rectangle that the faces cover) are stacked into one
  tall image with a black row under each frame; each face samples its own frame at a
  vertical offset, and a sample wholly above or below its frame is clamped onto a black
  row, so it reads black rather than a neighbouring frame. The sampling grid is what
  ``affine_grid`` would give, built as two broadcast sums (faster on the CPU).
- Faces more than twice the chip's size are area-averaged first, as the cv2 path does with
  ``INTER_AREA`` on the covered region (:func:`agr_batch.stages.align._warp`). The area
  averages are exact box integrals read from a float64 summed-area table of the part of each frame
  those faces cover (one ``grid_sample`` at the box corners), rounded as cv2's uint8
  resize rounds; the chip is then warped bilinearly from that small image with the same
  composed transform.

The host is needed once per call: a small per-face plan (which path, frame, covered
rectangle) sizes the batches. It is free when the landmarks are on the CPU, which is where
a detector's landmarks come back to anyway; with landmarks on the GPU it costs one
synchronisation (none at all with ``antialias=False``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from agr_batch.stages.align import _ANTIALIAS_BELOW, template
from agr_batch.stages.align_geometry import (
    Region,
    affine,
    compose,
    covered_region,
    invert,
    sampling_grid,
    union,
)
from agr_batch.stages.preprocess import PreprocessSpec

__all__ = [
    "Layout",
    "align_faces",
    "align_faces_normalized",
    "chip_transforms",
    "similarity_transforms",
    "warp_faces",
]

Layout = Literal["auto", "hwc", "chw"]
"""How frames are laid out: ``(…, H, W, 3)``, ``(…, 3, H, W)``, or told by the shape."""

# Corner points (float64) evaluated per chunk of large faces: bounds the memory of the
# summed-area-table lookups (grid + values, ~40 bytes a point) to a few hundred MB.
_CORNER_POINTS_PER_CHUNK = 1 << 22


def similarity_transforms(
    src: torch.Tensor, dst: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched least-squares similarity transforms, as the cv2 path's.

    See :func:`agr_batch.stages.align.similarity_transform`.

    In two dimensions Umeyama's rotation without reflection has a closed form: with centred
    points ``x`` (source) and ``y`` (destination), ``s R = [[a, -b], [b, a]] / sum |x|^2``
    where ``a = sum x . y`` and ``b = sum x × y``. This equals the SVD solution (including its
    refusal to reflect) and runs on any device without a host round trip.

    Args:
        src: (N, K, 2) source points, K >= 2.
        dst: (K, 2) or (N, K, 2) destination points.

    Returns:
        ``(matrices, valid)``: (N, 2, 3) float64 matrices with ``dst ≈ M[:, :2] @ p + M[:, 2]``
        (NaN where invalid) and an (N,) bool tensor, False where the source points coincide
        or are not finite.
    """
    if src.ndim != 3 or src.shape[-1] != 2 or src.shape[1] < 2:
        raise ValueError(f"src: expected shape (N, K>=2, 2), got {tuple(src.shape)}")
    src = src.to(torch.float64)
    dst = dst.to(device=src.device, dtype=torch.float64).expand_as(src)
    k = src.shape[1]
    mu_src = src.mean(dim=1)
    mu_dst = dst.mean(dim=1)
    xs = src - mu_src[:, None]
    ys = dst - mu_dst[:, None]
    var = (xs * xs).sum(dim=(1, 2)) / k
    a = (xs * ys).sum(dim=(1, 2)) / k
    b = (xs[..., 0] * ys[..., 1] - xs[..., 1] * ys[..., 0]).sum(dim=1) / k
    valid = torch.isfinite(var) & (var >= 1e-12) & torch.isfinite(a) & torch.isfinite(b)
    var = torch.where(valid, var, torch.ones_like(var))
    c, s = a / var, b / var
    lin = torch.stack([torch.stack([c, -s], dim=-1), torch.stack([s, c], dim=-1)], dim=1)
    shift = mu_dst - (lin @ mu_src[..., None])[..., 0]
    matrices = torch.cat([lin, shift[..., None]], dim=2)
    matrices = torch.where(valid[:, None, None], matrices, torch.full_like(matrices, math.nan))
    return matrices, valid


def chip_transforms(
    landmarks: torch.Tensor, spec: PreprocessSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-to-chip similarity transforms of N faces, on the landmarks' device.

    Args:
        landmarks: (N, 5, 2) detector landmarks in frame pixels.
        spec: Chip size (``input_size``) and ``padding``.

    Returns:
        ``(matrices, valid)`` as :func:`similarity_transforms` gives them.
    """
    if landmarks.ndim != 3 or tuple(landmarks.shape[1:]) != (5, 2):
        raise ValueError(f"landmarks: expected shape (N, 5, 2), got {tuple(landmarks.shape)}")
    dst = torch.from_numpy(np.array(template(spec.input_size, spec.padding)))
    return similarity_transforms(landmarks, dst)


def warp_faces(
    frames: torch.Tensor,
    landmarks: torch.Tensor | np.ndarray,
    spec: PreprocessSpec,
    *,
    frame_index: torch.Tensor | np.ndarray | None = None,
    antialias: bool = True,
    layout: Layout = "auto",
) -> torch.Tensor:
    """Aligned chips of the faces of a batch of frames, as float pixel values.

    Args:
        frames: uint8 RGB frames on any device: one frame ``(H, W, 3)`` / ``(3, H, W)`` or a
            batch ``(B, H, W, 3)`` / ``(B, 3, H, W)``.
        landmarks: (N, 5, 2) landmarks in frame pixels (left eye, right eye, nose, left and
            right mouth corner). The transforms are computed on this tensor's device; keep
            them on the CPU (where a detector's landmarks come back to anyway) to spare the
            device a synchronisation.
        spec: Chip size (``input_size``, (H, W)) and ``padding``.
        frame_index: (N,) index of each face's frame in the batch; may be omitted for a
            single frame. Checked when it is on the CPU; on a GPU an index outside the batch
            gives a black chip (checking it would stall the device).
        antialias: Area-average faces more than twice the chip's size before warping, as
            :func:`agr_batch.stages.align.align_faces` does.
        layout: ``"hwc"``, ``"chw"`` or ``"auto"`` (from which axis has 3 entries).

    Returns:
        (N, 3, H, W) contiguous float32 on the frames' device, values in [0, 255], not
        rounded. Faces whose landmarks coincide give black chips (the cv2 path raises).
    """
    batch = _as_batch(frames, layout)
    size = spec.input_size
    lm = torch.as_tensor(landmarks)
    if lm.ndim != 3 or tuple(lm.shape[1:]) != (5, 2):
        raise ValueError(f"landmarks: expected shape (N, 5, 2), got {tuple(lm.shape)}")
    n = lm.shape[0]
    device = batch.device
    if n == 0:
        return torch.zeros((0, 3, *size), dtype=torch.float32, device=device)
    index = _frame_index(frame_index, n, batch.shape[0], lm.device)
    matrices, valid = chip_transforms(lm, spec)
    inverse, scale = invert(matrices)
    frame_h, frame_w = int(batch.shape[2]), int(batch.shape[3])
    region = covered_region(inverse, scale, size, frame_w, frame_h)
    if lm.device.type != "cpu" and not antialias:
        # Device landmarks and nothing to size: warp from the whole frames, no host sync.
        return _warp_direct(batch, inverse, valid, index, size, None)

    big = valid & region.ok & (scale < _ANTIALIAS_BELOW) if antialias else torch.zeros_like(valid)
    seen = valid & region.nonempty
    # The one host transfer (free for CPU landmarks): which faces take which path, and the
    # rectangles they read, size the batches below.
    plan = torch.stack([big, seen, index, region.x0, region.y0, region.x1, region.y1]).to(
        torch.float64
    )
    plan = plan.cpu()
    # Faces neither warped nor area-averaged (no transform, or wholly off-frame) stay black.
    out = torch.zeros((n, 3, *size), dtype=torch.float32, device=device)
    big_h, seen_h = plan[0].bool(), plan[1].bool()
    direct_ids = (seen_h & ~big_h).nonzero()[:, 0]
    big_ids = big_h.nonzero()[:, 0]
    if len(direct_ids):
        ids = direct_ids.to(lm.device)
        window = union(plan[3:, direct_ids])
        if len(direct_ids) == n:
            return _warp_direct(batch, inverse, valid, index, size, window)
        chips = _warp_direct(batch, inverse[ids], valid[ids], index[ids], size, window)
        out.index_copy_(0, direct_ids.to(device), chips)
    if len(big_ids):
        ids = big_ids.to(lm.device)
        chips = _warp_antialiased(
            batch, inverse[ids], scale[ids], region.select(ids), size, plan[2:, big_ids]
        )
        out.index_copy_(0, big_ids.to(device), chips)
    return out


def align_faces(
    frames: torch.Tensor,
    landmarks: torch.Tensor | np.ndarray,
    spec: PreprocessSpec,
    *,
    frame_index: torch.Tensor | np.ndarray | None = None,
    antialias: bool = True,
    layout: Layout = "auto",
) -> torch.Tensor:
    """Aligned uint8 chips, the device twin of :func:`agr_batch.stages.align.align_faces`.

    Arguments as :func:`warp_faces`.

    Returns:
        (N, H, W, 3) contiguous uint8 RGB chips on the frames' device.
    """
    chips = warp_faces(
        frames, landmarks, spec, frame_index=frame_index, antialias=antialias, layout=layout
    )
    # Values lie in [0, 255] (bilinear weights are convex), so adding 1/2 and truncating
    # rounds half up, as cv2's fixed-point warp does, with no clamp.
    return chips.add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def align_faces_normalized(
    frames: torch.Tensor,
    landmarks: torch.Tensor | np.ndarray,
    spec: PreprocessSpec,
    *,
    frame_index: torch.Tensor | np.ndarray | None = None,
    antialias: bool = True,
    layout: Layout = "auto",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The classifier's input batch straight from the frames, without a host round trip.

    The chips are rounded to whole pixel values first, so the batch equals
    ``chips_to_tensor(align_faces(...), spec)``
    (:func:`agr_batch.stages.preprocess.chips_to_tensor`) computed on the device.

    Args:
        frames: See :func:`warp_faces`.
        landmarks: See :func:`warp_faces`.
        spec: Chip geometry and the normalisation (``mean``, ``std``).
        frame_index: See :func:`warp_faces`.
        antialias: See :func:`warp_faces`.
        layout: See :func:`warp_faces`.
        dtype: Output dtype (``torch.float16`` for a half-precision engine).

    Returns:
        (N, 3, H, W) contiguous NCHW ``(x / 255 - mean) / std`` on the frames' device.
    """
    x = warp_faces(
        frames, landmarks, spec, frame_index=frame_index, antialias=antialias, layout=layout
    )
    x = x.add_(0.5).floor_().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)


# ---------------------------------------------------------------------------------------------
# Helpers


def _as_batch(frames: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A (B, 3, H, W) uint8 view of one frame or a batch in either layout."""
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        kind = frames.dtype if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames: expected a uint8 torch.Tensor, got {kind}")
    shape = tuple(frames.shape)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4:
        raise ValueError(f"frames: expected (H, W, 3), (3, H, W) or a batch of them, got {shape}")
    if layout == "auto":
        hwc, chw = frames.shape[3] == 3, frames.shape[1] == 3
        if hwc == chw:
            raise ValueError(
                f"frames: cannot tell the channel axis of shape {shape}; pass layout='hwc' or 'chw'"
            )
        layout = "hwc" if hwc else "chw"
    if layout == "hwc":
        frames = frames.permute(0, 3, 1, 2)
    elif layout != "chw":
        raise ValueError(f"layout: expected 'auto', 'hwc' or 'chw', got {layout!r}")
    if frames.shape[1] != 3 or frames.shape[2] < 1 or frames.shape[3] < 1:
        raise ValueError(f"frames: expected 3 channels and a non-empty image, got {shape}")
    return frames


def _frame_index(
    frame_index: torch.Tensor | np.ndarray | None, n: int, frames: int, device: torch.device
) -> torch.Tensor:
    """(N,) int64 frame indices on ``device``, checked where that costs nothing."""
    if frame_index is None:
        if frames != 1:
            raise ValueError(f"frame_index is required with a batch of {frames} frames")
        return torch.zeros(n, dtype=torch.int64, device=device)
    index = torch.as_tensor(frame_index)
    if index.shape != (n,) or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(
            f"frame_index: expected ({n},) integers, got {index.dtype} {tuple(index.shape)}"
        )
    if index.device.type == "cpu" and (int(index.min()) < 0 or int(index.max()) >= frames):
        raise ValueError(f"frame_index: values must lie in [0, {frames}), got {index.tolist()}")
    return index.to(device=device, dtype=torch.int64)


def _warp_direct(
    batch: torch.Tensor,
    inverse: torch.Tensor,
    valid: torch.Tensor,
    index: torch.Tensor,
    size: tuple[int, int],
    window: tuple[int, int, int, int] | None,
) -> torch.Tensor:
    """Bilinear warp of every face from the stacked frames, cut to ``window`` (x0, y0, x1, y1).

    The window must hold every face's covered region (or be None: the whole frames).

    Returns:
        (N, 3, H, W) float32 chips.
    """
    frames = batch.shape[0]
    device = batch.device
    x0, y0, x1, y1 = window if window is not None else (0, 0, batch.shape[3], batch.shape[2])
    crop_h, crop_w = y1 - y0, x1 - x0
    row = crop_h + 1  # each frame's crop plus one black row below it
    tall_h = frames * row
    # The crops as float planes, one black row under each: bilinear taps that straddle a
    # frame's top or bottom edge read black, as BORDER_CONSTANT does.
    tall = torch.empty((3, frames, row, crop_w), dtype=torch.float32, device=device)
    tall[:, :, :crop_h].copy_(batch[:, :, y0:y1, x0:x1].permute(1, 0, 2, 3))
    tall[:, :, crop_h].zero_()

    top = index.to(inverse.dtype) * row  # the face's frame's first row in the tall image
    # Frame pixel -> crop pixel -> tall image -> normalised (align_corners=False:
    # pixel i of an n-pixel axis at (2 i + 1) / n - 1).
    to_tall = affine(
        2.0 / crop_w,
        (1.0 - 2.0 * x0) / crop_w - 1.0,
        2.0 / tall_h,
        (2.0 * (top - y0) + 1.0) / tall_h - 1.0,
        inverse,
    )
    theta = compose(to_tall, inverse)
    # Faces without a transform sample far outside every frame: black chips.
    far = torch.zeros_like(theta)
    far[:, :, 2] = -3.0
    theta = torch.where(valid[:, None, None], theta, far)
    # A sample wholly above or below its own frame (y <= -1 or y >= H) would read another
    # frame: clamp it onto the black row above or below, which reads 0 with weight 1.
    # Samples left or right of the frame read black through grid_sample's zero padding.
    lo = (2.0 * (top - 1.0) + 1.0) / tall_h - 1.0
    hi = (2.0 * (top + crop_h) + 1.0) / tall_h - 1.0
    grid = sampling_grid(theta, size, device, clamp_y=(lo, hi) if frames > 1 else None)
    # The same image for every face (a stride-0 batch, not copied), so the output is NCHW.
    return F.grid_sample(
        tall.view(1, 3, tall_h, crop_w).expand(len(grid), -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )


def _small_side(size: tuple[int, int]) -> int:
    """Side that holds every area-averaged region of a chip of ``size``.

    The region spans ((W + 1)|cos| + (H + 1)|sin|) / scale plus a 2-chip-pixel margin on each
    side and rounding, so after shrinking by ``scale`` it is at most
    sqrt((W + 1)^2 + (H + 1)^2) + 6 pixels wide (and as tall).
    """
    height, width = size
    return math.ceil(math.hypot(width + 1, height + 1)) + 7


def _warp_antialiased(
    batch: torch.Tensor,
    inverse: torch.Tensor,
    scale: torch.Tensor,
    region: Region,
    size: tuple[int, int],
    host: torch.Tensor,
) -> torch.Tensor:
    """Area-average each large face's region to its scale, then warp bilinearly from it.

    Mirrors :func:`agr_batch.stages.align._warp`: the region ``[x0, x1) x [y0, y1)`` shrinks to
    ``round(w * scale) x round(h * scale)`` pixels by exact box averages (``INTER_AREA``),
    rounded to whole values as cv2's uint8 resize does, and the chip is then sampled from
    that small image, with zeros around it, by the composed transform. The box sums come
    from a summed-area table of the part of each frame its large faces cover, so the work
    and memory follow the faces, not the frame size; one frame at a time bounds the memory
    (a loop over frames, never over faces).

    Args:
        batch: (B, 3, H, W) uint8 frames.
        inverse: (N, 2, 3) chip-to-frame matrices.
        scale: (N,) chip pixels per frame pixel.
        region: Each face's covered rectangle.
        size: Chip (H, W).
        host: (5, N) on the host: each face's frame index and region x0, y0, x1, y1.

    Returns:
        (N, 3, H, W) float32 chips.
    """
    device = batch.device
    side = _small_side(size)
    w, h = region.x1 - region.x0, region.y1 - region.y0
    new_w = torch.round(w * scale).clamp(1, side)
    new_h = torch.round(h * scale).clamp(1, side)
    rx, ry = new_w / w, new_h / h
    # Chip pixel -> frame pixel -> small-image pixel (u = rx (x - x0 + 1/2) - 1/2) ->
    # normalised small-image coordinates (align_corners=False).
    to_small = affine(
        2.0 * rx / side,
        (2.0 * (rx * (0.5 - region.x0) - 0.5) + 1.0) / side - 1.0,
        2.0 * ry / side,
        (2.0 * (ry * (0.5 - region.y0) - 0.5) + 1.0) / side - 1.0,
        inverse,
    )
    grid = sampling_grid(compose(to_small, inverse), size, device)
    steps = torch.arange(side + 1, dtype=torch.float64, device=inverse.device)
    chunk = max(1, _CORNER_POINTS_PER_CHUNK // (side + 1) ** 2)

    out = torch.empty((len(inverse), 3, *size), dtype=torch.float32, device=device)
    frame_of = host[0].long()
    for k in torch.unique(frame_of).tolist():
        in_frame = (frame_of == k).nonzero()[:, 0]
        wx0, wy0, wx1, wy1 = union(host[1:, in_frame])
        # Summed-area table of the frame's window, with a zero first row and column:
        # entry (j, i) is the sum of the pixels above and left of (i, j). float64 sums of
        # bytes are exact (2^53 >> 255 x 2^32 pixels).
        sat = torch.zeros((1, 3, wy1 - wy0 + 1, wx1 - wx0 + 1), dtype=torch.float64, device=device)
        inner = sat[0, :, 1:, 1:]
        # Copied into planar float64 first: cumsum along the rows of an HWC frame's strides
        # is many times slower.
        inner.copy_(batch[k, :, wy0:wy1, wx0:wx1])
        inner.cumsum_(1).cumsum_(2)
        for start in range(0, len(in_frame), chunk):
            ids = in_frame[start : start + chunk].to(inverse.device)
            # Box corners in area coordinates (pixel i covers [i, i + 1)), relative to the
            # window; boxes past the small image's size have zero width and so read zero.
            xs = torch.minimum(region.x0[ids, None] + steps / rx[ids, None], region.x1[ids, None])
            ys = torch.minimum(region.y0[ids, None] + steps / ry[ids, None], region.y1[ids, None])
            # align_corners=True: entry j of an n-entry axis sits at 2 j / (n - 1) - 1.
            gx = (2.0 * (xs - wx0) / (wx1 - wx0) - 1.0)[:, None, :].expand(-1, side + 1, -1)
            gy = (2.0 * (ys - wy0) / (wy1 - wy0) - 1.0)[:, :, None].expand(-1, -1, side + 1)
            corners = torch.stack([gx, gy], dim=-1).to(device)
            m = len(ids)
            # Bilinear interpolation of a summed-area table is the exact integral of the
            # piecewise-constant image up to a fractional corner.
            integral = F.grid_sample(
                sat,
                corners.view(1, m * (side + 1), side + 1, 2),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            ).view(3, m, side + 1, side + 1)
            boxes = (
                integral[:, :, 1:, 1:]
                - integral[:, :, :-1, 1:]
                - integral[:, :, 1:, :-1]
                + integral[:, :, :-1, :-1]
            )
            area = (rx[ids] * ry[ids]).to(device)[None, :, None, None]
            small = (boxes * area).round_().to(torch.float32).permute(1, 0, 2, 3)
            dev_ids = ids.to(device)
            out[dev_ids] = F.grid_sample(
                small, grid[dev_ids], mode="bilinear", padding_mode="zeros", align_corners=False
            )
    return out
