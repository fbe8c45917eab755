"""SCRFD through insightface, for users who have an SCRFD model file.

insightface ships code but no weights, and its pretrained model packs (``buffalo_l``,
``antelopev2``, ...) are licensed for non-commercial research only, so nothing is downloaded
here: the detector uses a file the user already has.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agr_batch.records import Detections
from agr_batch.stages.detect.base import (
    DetectorError,
    check_image,
    choose_providers,
    clip_boxes,
    default_threads,
    register_detector,
    session_options,
)

__all__ = ["DEFAULT_ROOT", "MODEL_PATTERNS", "SCRFD", "find_model"]

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "~/.insightface"
MODEL_PATTERNS = ("det_*.onnx", "scrfd_*.onnx")
_LICENSE = "insightface's pretrained weights are licensed for non-commercial research only"


def find_model(root: str | Path = DEFAULT_ROOT) -> Path | None:
    """The first SCRFD file in insightface's model folder ``<root>/models/<pack>/``, if any."""
    models = Path(root).expanduser() / "models"
    for pattern in MODEL_PATTERNS:
        found = sorted(models.glob(f"*/{pattern}"))
        if found:
            return found[0]
    return None


@register_detector("scrfd", description="insightface SCRFD (bring your own model file)")
class SCRFD:
    """insightface's SCRFD detector on a model file the user provides.

    Args:
        model_path: An SCRFD ONNX file with keypoints (e.g. ``det_10g.onnx``). None searches
            ``<root>/models/*/`` for ``det_*.onnx`` then ``scrfd_*.onnx``.
        root: insightface's home folder, searched when ``model_path`` is None.
        input_size: (W, H) the frame is letterboxed into.
        score_threshold: Minimum detection score.
        nms_iou: NMS IoU threshold.
        min_face_size: Drop faces whose clipped box has a shorter side under this many pixels.
        threads: onnxruntime intra-op threads; None uses every core this process may use.
        providers: onnxruntime providers; None picks CUDA when available, else CPU.

    Raises:
        DetectorError: If no model file exists, or the model has no facial keypoints.
    """

    name = "scrfd"

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        root: str | Path = DEFAULT_ROOT,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        nms_iou: float = 0.4,
        min_face_size: float = 0.0,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        if model_path is None:
            found = find_model(root)
            if found is None:
                where = Path(root).expanduser() / "models" / "*"
                raise DetectorError(
                    f"scrfd: no model file found (looked for {' or '.join(MODEL_PATTERNS)} "
                    f"in {where}); pass --detector-model FILE with a SCRFD .onnx you have "
                    f"— note that {_LICENSE}"
                )
            path = found
        else:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise DetectorError(f"scrfd: model file {path} not found — note that {_LICENSE}")
        import onnxruntime as ort
        from insightface.model_zoo import scrfd as insight_scrfd

        self.model_path = path
        self.model_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.min_face_size = float(min_face_size)
        self.threads = int(threads) if threads else default_threads()
        options = session_options(self.threads)
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=choose_providers(providers, self.name)
        )
        self.providers = list(session.get_providers())
        try:
            self._model = insight_scrfd.SCRFD(model_file=str(path), session=session)
        except Exception as e:
            raise DetectorError(f"scrfd: {path} is not an SCRFD model ({e})") from None
        if not self._model.use_kps:
            raise DetectorError(f"scrfd: {path} has no facial keypoints, which alignment needs")
        self._model.prepare(
            0, input_size=self.input_size, det_thresh=self.score_threshold, nms_thresh=nms_iou
        )
        logger.info("scrfd %s on %s", path, self.providers[0])

    def config(self) -> dict[str, Any]:
        """Settings and model identity for output metadata."""
        return {
            "name": self.name,
            "model": str(self.model_path),
            "model_sha256": self.model_sha256,
            "input_size": list(self.input_size),
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "min_face_size": self.min_face_size,
            "threads": self.threads,
            "providers": self.providers,
            "license_note": _LICENSE,
        }

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Find faces in RGB uint8 frames; one :class:`Detections` per frame, best first."""
        out: list[Detections] = []
        for i, image in enumerate(images):
            check_image(image, i)
            height, width = image.shape[:2]
            # insightface takes BGR (it swaps to RGB inside its blob).
            det, kps = self._model.detect(
                np.ascontiguousarray(image[..., ::-1]),
                input_size=self.input_size,
                det_thresh=self.score_threshold,
            )
            if det is None or len(det) == 0 or kps is None:
                out.append(Detections.empty())
                continue
            boxes = clip_boxes(det[:, :4].astype(np.float32), width, height)
            scores = det[:, 4].astype(np.float32)
            landmarks = np.asarray(kps, np.float32).reshape(-1, 5, 2)
            order = np.argsort(-scores, kind="stable")
            dets = Detections(boxes[order], scores[order], landmarks[order])
            if self.min_face_size > 0:
                side = np.minimum(
                    dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1]
                )
                dets = dets.select(side >= self.min_face_size)
            out.append(dets)
        return out
