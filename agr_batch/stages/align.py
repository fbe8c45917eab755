"""Face chips with FairFace's geometry: dlib's ``get_face_chip_details(det, size, padding)``.

FairFace cropped its faces with dlib: a similarity transform (least squares) maps detected
landmarks onto dlib's mean face shape scaled into the chip, ``chip = (padding + p) /
(1 + 2 * padding) * size``. Our detectors give eye centres, the nose tip and the mouth corners
rather than dlib's 68 points, so the 5-point template is derived from dlib's mean shape: the
mean of each eye's six contour points, point 30 (nose tip) and points 48 and 54 (mouth
corners). Points are (x, y) with pixel centres at integer coordinates, as in dlib and OpenCV.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from agr_batch.stages.preprocess import PreprocessSpec

__all__ = [
    "MEAN_FACE_SHAPE",
    "TEMPLATE_UNIT",
    "align_faces",
    "chip_transforms",
    "similarity_transform",
    "template",
]

# dlib's mean face shape for the 68-point landmarks 17..67 (index i - 17 for point i), on the
# unit square; copied from dlib/image_transforms/interpolation.h (get_face_chip_details).
_MEAN_FACE_SHAPE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)  # fmt: skip
_MEAN_FACE_SHAPE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482,
    0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345,
    0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733, 0.245099,
    0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099, 0.780233,
    0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805, 0.902192,
    0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746, 0.784792,
    0.824182, 0.831803, 0.824182,
)  # fmt: skip

MEAN_FACE_SHAPE: np.ndarray = np.stack([_MEAN_FACE_SHAPE_X, _MEAN_FACE_SHAPE_Y], axis=1)
"""(51, 2) dlib mean shape of 68-point landmarks 17..67, unit square, (x, y)."""
MEAN_FACE_SHAPE.setflags(write=False)


def _point(i: int) -> np.ndarray:
    """Point ``i`` (17 <= i <= 67) of dlib's 68-point mean shape."""
    return MEAN_FACE_SHAPE[i - 17]


def _derive_template() -> np.ndarray:
    """The 5-point template on the unit square, in the detectors' order."""
    left_eye = MEAN_FACE_SHAPE[36 - 17 : 41 - 17 + 1].mean(axis=0)  # image-left eye
    right_eye = MEAN_FACE_SHAPE[42 - 17 : 47 - 17 + 1].mean(axis=0)
    pts = np.stack([left_eye, right_eye, _point(30), _point(48), _point(54)])
    pts.setflags(write=False)
    return pts


TEMPLATE_UNIT: np.ndarray = _derive_template()
"""(5, 2) left eye, right eye, nose tip, left and right mouth corner on the unit square."""

# Below this chip/face scale a bilinear warp skips source pixels (aliasing); the region is
# area-averaged down first, as FairFace's chips were resized down from larger dlib chips.
_ANTIALIAS_BELOW = 0.5


@functools.lru_cache(maxsize=32)
def _template_cached(height: int, width: int, padding: float) -> np.ndarray:
    scale = np.array([width, height], np.float64)
    pts = (padding + TEMPLATE_UNIT) / (1.0 + 2.0 * padding) * scale
    pts.setflags(write=False)
    return pts


def template(size: tuple[int, int], padding: float = 0.25) -> np.ndarray:
    """The 5 landmark positions in a chip, dlib's formula.

    Args:
        size: Chip (H, W), as in :attr:`PreprocessSpec.input_size`.
        padding: dlib's padding: the face's unit square plus ``padding`` of it on every side.

    Returns:
        (5, 2) float64 (x, y) chip coordinates (a read-only array).
    """
    height, width = (int(v) for v in size)
    return _template_cached(height, width, float(padding))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's method without reflection, as dlib's ``find_similarity_transform``.

    Args:
        src: (N, 2) points, N >= 2.
        dst: (N, 2) corresponding points.

    Returns:
        (2, 3) float64 matrix ``M`` with ``dst ≈ M[:, :2] @ p + M[:, 2]``.

    Raises:
        ValueError: If the shapes differ or the source points coincide.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum() / len(src)
    if not np.isfinite(var_src) or var_src < 1e-12:
        raise ValueError("source points coincide (or are not finite); no similarity exists")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection fits better: refuse it
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_src)
    matrix = np.empty((2, 3), np.float64)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_dst - scale * rot @ mu_src
    return matrix


def chip_transforms(landmarks: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Frame-to-chip similarity transforms of N faces.

    Args:
        landmarks: (N, 5, 2) detector landmarks in frame pixels.
        spec: Chip size (``input_size``) and ``padding``.

    Returns:
        (N, 2, 3) float64 matrices.
    """
    landmarks = np.asarray(landmarks)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f"landmarks: expected shape (N, 5, 2), got {landmarks.shape}")
    dst = template(spec.input_size, spec.padding)
    out = np.empty((len(landmarks), 2, 3), np.float64)
    for i, pts in enumerate(landmarks):
        out[i] = similarity_transform(pts, dst)
    return out


def align_faces(
    image: np.ndarray,
    landmarks: np.ndarray,
    spec: PreprocessSpec,
    *,
    antialias: bool = True,
) -> np.ndarray:
    """Cut aligned face chips out of a frame, FairFace style.

    Pixels outside the frame are black, as in dlib's ``extract_image_chip``. When the face is
    more than twice the chip's size, the region under the chip is first area-averaged down so
    that the bilinear warp does not alias.

    Args:
        image: (H, W, 3) uint8 RGB frame.
        landmarks: (N, 5, 2) landmarks in frame pixels (left eye, right eye, nose, left and
            right mouth corner).
        spec: Chip size (``input_size``, (H, W)) and ``padding``.
        antialias: Area-average large faces before warping.

    Returns:
        (N, H, W, 3) uint8 chips.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {image.dtype} {image.shape}")
    height, width = spec.input_size
    transforms = chip_transforms(landmarks, spec)
    chips = np.zeros((len(transforms), height, width, 3), np.uint8)
    for i, matrix in enumerate(transforms):
        chips[i] = _warp(image, matrix, (height, width), antialias)
    return chips


def _warp(
    image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], antialias: bool
) -> np.ndarray:
    """One chip: optional area downscale of the covered region, then a bilinear warp."""
    height, width = size
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if antialias and scale < _ANTIALIAS_BELOW:
        region = _covered_region(matrix, size, image.shape[1], image.shape[0])
        if region is not None:
            x0, y0, x1, y1 = region
            crop = image[y0:y1, x0:x1]
            # Shrink the region so that the remaining warp is close to scale 1.
            new_w = max(1, round((x1 - x0) * scale))
            new_h = max(1, round((y1 - y0) * scale))
            small = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_AREA)
            rx, ry = new_w / (x1 - x0), new_h / (y1 - y0)
            # Small-image pixel centre (u, v) sits at frame ((u + .5) / rx - .5 + x0, ...).
            to_frame = np.array(
                [[1 / rx, 0.0, 0.5 / rx - 0.5 + x0], [0.0, 1 / ry, 0.5 / ry - 0.5 + y0]]
            )
            composed = np.empty((2, 3), np.float64)
            composed[:, :2] = matrix[:, :2] @ to_frame[:, :2]
            composed[:, 2] = matrix[:, :2] @ to_frame[:, 2] + matrix[:, 2]
            image, matrix = small, composed
    return cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def _covered_region(
    matrix: np.ndarray, size: tuple[int, int], frame_w: int, frame_h: int
) -> tuple[int, int, int, int] | None:
    """Frame rectangle (x0, y0, x1, y1) under the chip, with a margin; None if off-frame."""
    height, width = size
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[-1, -1], [width, -1], [-1, height], [width, height]], np.float64)
    pts = corners @ inverse[:, :2].T + inverse[:, 2]
    margin = 2.0 / float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # 2 chip pixels
    x0 = max(0, int(np.floor(pts[:, 0].min() - margin)))
    y0 = max(0, int(np.floor(pts[:, 1].min() - margin)))
    x1 = min(frame_w, int(np.ceil(pts[:, 0].max() + margin)) + 1)
    y1 = min(frame_h, int(np.ceil(pts[:, 1].max() + margin)) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1
