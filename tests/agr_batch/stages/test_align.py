from __future__ import annotations

import cv2
import numpy as np
import pytest

from agr_batch.records import Detections
from agr_batch.stages.align import (
    MEAN_FACE_SHAPE,
    TEMPLATE_UNIT,
    align_faces,
    chip_transforms,
    similarity_transform,
    template,
)
from agr_batch.stages.preprocess import PreprocessSpec


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ matrix[:, :2].T + matrix[:, 2]


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a) * scale, np.sin(a) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def test_template_is_derived_from_dlibs_mean_shape():
    assert MEAN_FACE_SHAPE.shape == (51, 2)
    # Hand-computed from the table: eye centres are the means of points 36..41 and 42..47.
    left_eye_x = np.mean([0.121737, 0.187122, 0.265825, 0.334606, 0.260918, 0.182743])
    right_eye_y = np.mean([0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099])
    assert TEMPLATE_UNIT[0, 0] == pytest.approx(left_eye_x)
    assert TEMPLATE_UNIT[1, 1] == pytest.approx(right_eye_y)
    assert tuple(TEMPLATE_UNIT[2]) == pytest.approx((0.490127, 0.515625))  # point 30
    assert tuple(TEMPLATE_UNIT[3]) == pytest.approx((0.254149, 0.780233))  # point 48
    assert tuple(TEMPLATE_UNIT[4]) == pytest.approx((0.726104, 0.780233))  # point 54
    assert TEMPLATE_UNIT[0, 0] < TEMPLATE_UNIT[1, 0]  # image order


def test_template_uses_dlibs_chip_formula():
    pts = template((224, 224), 0.25)
    np.testing.assert_allclose(pts, (0.25 + TEMPLATE_UNIT) / 1.5 * 224)
    wide = template((100, 200), 0.0)  # (H, W): x scales with W, y with H
    np.testing.assert_allclose(wide, TEMPLATE_UNIT * [200, 100])
    with pytest.raises(ValueError):
        pts[0, 0] = 1.0  # shared, read-only


def test_template_points_map_exactly_onto_the_template():
    dst = template((224, 224), 0.25)
    np.testing.assert_allclose(similarity_transform(dst, dst), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    # Landmarks that are an exact similarity of the template come back onto it exactly.
    frame_pts = _apply(_similarity(-17.0, 3.1, 400.0, 250.0), dst)
    matrix = similarity_transform(frame_pts, dst)
    np.testing.assert_allclose(_apply(matrix, frame_pts), dst, atol=1e-9)


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 500, (5, 2))
    truth = _similarity(33.0, 0.37, -12.5, 80.0)
    dst = _apply(truth, src) + rng.normal(0, 1e-4, (5, 2))
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-3)


def test_similarity_transform_never_reflects():
    src = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [5, 3]], np.float64)
    mirrored = src * [-1, 1]
    matrix = similarity_transform(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), src)
    with pytest.raises(ValueError, match="point sets"):
        similarity_transform(src[:4], src)


def test_t1_chips_put_the_landmarks_on_the_template(t1_rgb: np.ndarray, t1_detections: Detections):
    spec = PreprocessSpec(input_size=(224, 224))
    chips = align_faces(t1_rgb, t1_detections.landmarks, spec)
    assert chips.shape == (6, 224, 224, 3) and chips.dtype == np.uint8
    dst = template(spec.input_size, spec.padding)
    eye_errors: list[float] = []
    ratios: list[float] = []
    for matrix, lm, chip in zip(
        chip_transforms(t1_detections.landmarks, spec), t1_detections.landmarks, chips, strict=True
    ):
        mapped = _apply(matrix, lm.astype(np.float64))
        error = np.linalg.norm(mapped - dst, axis=1)
        # Real faces are not the mean face: allow the least-squares residual of turned heads.
        assert error.mean() < 20, error
        assert error[:2].max() < 20, error
        eye_errors.append(error[:2].max())
        # Scale and roll are right: eye distance and eye-line angle match the template's.
        eyes = mapped[1] - mapped[0]
        ref = dst[1] - dst[0]
        ratios.append(np.linalg.norm(eyes) / np.linalg.norm(ref))
        assert abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) < 8
        assert chip.std() > 20  # a face, not an empty or black chip
        assert chip.mean() > 40
    assert np.median(eye_errors) < 6  # most eyes land within a few pixels of the template
    assert np.median(ratios) == pytest.approx(1.0, abs=0.1)
    assert min(ratios) > 0.5  # a turned head shows its eyes closer together


def _dots(shape: tuple[int, int], pts: np.ndarray, radius: float) -> np.ndarray:
    image = np.zeros((*shape, 3), np.uint8)
    sub = 16  # cv2.circle's shift=4: sub-pixel centres
    for x, y in pts:
        centre = (round(x * sub), round(y * sub))
        cv2.circle(image, centre, round(radius * sub), (255, 255, 255), -1, cv2.LINE_AA, 4)
    return image


def _blob_centres(chip: np.ndarray) -> np.ndarray:
    gray = chip[..., 0].astype(np.float64)
    count, labels = cv2.connectedComponents((gray > 40).astype(np.uint8))
    centres = []
    for k in range(1, count):
        ys, xs = np.nonzero(labels == k)
        w = gray[ys, xs]
        centres.append(((xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()))
    return np.array(centres)


@pytest.mark.parametrize(
    ("scale", "antialias"), [(0.1, True), (0.2, True), (0.2, False), (0.8, True), (1.7, True)]
)
def test_warp_puts_real_pixels_at_the_template(scale: float, antialias: bool):
    spec = PreprocessSpec(input_size=(112, 112))
    dst = template(spec.input_size, spec.padding)
    # Dots where a face of the right size would have its landmarks, rotated by 20 degrees.
    to_frame = np.linalg.inv(np.vstack([_similarity(20.0, scale, 0, 0), [0, 0, 1]]))[:2]
    frame_pts = _apply(to_frame, dst)
    frame_pts += 300 - frame_pts.min(axis=0)
    image = _dots((2000, 2000), frame_pts, radius=max(2.0, 3 / scale))
    (chip,) = align_faces(image, frame_pts[None], spec, antialias=antialias)
    centres = _blob_centres(chip)
    assert len(centres) == 5
    # Match each template point to the nearest blob.
    nearest = np.array([centres[np.argmin(np.linalg.norm(centres - p, axis=1))] for p in dst])
    np.testing.assert_allclose(nearest, dst, atol=0.2)  # measured: <= 0.12


def test_large_faces_are_antialiased():
    spec = PreprocessSpec(input_size=(64, 64))
    dst = template(spec.input_size, spec.padding)
    checker = (np.indices((1200, 1200)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=2)
    frame_pts = dst * 11.3 + 100  # the face is 11.3x the chip
    (smooth,) = align_faces(image, frame_pts[None], spec)
    (aliased,) = align_faces(image, frame_pts[None], spec, antialias=False)
    # Area averaging turns a 1-px checkerboard into flat grey; point sampling does not.
    assert abs(float(smooth.mean()) - 127.5) < 3
    assert smooth.std() < 3
    assert aliased.std() > 30


def test_outside_the_frame_is_black_and_spec_shape_is_used(t1_rgb: np.ndarray):
    spec = PreprocessSpec(input_size=(96, 80))
    dst = template(spec.input_size, spec.padding)
    corner = dst * 1.5 - dst.mean(axis=0) * 1.5  # face centred on the frame's corner (0, 0)
    chips = align_faces(t1_rgb, np.stack([corner, corner + 400]), spec)
    assert chips.shape == (2, 96, 80, 3) and chips.dtype == np.uint8
    assert np.all(chips[0, :30, :30] == 0)  # above-left of the corner: outside the frame
    assert chips[0, 60:, 50:].mean() > 20  # inside
    assert chips[1].std() > 10


def test_no_faces_give_an_empty_batch(t1_rgb: np.ndarray):
    spec = PreprocessSpec(input_size=(224, 224))
    chips = align_faces(t1_rgb, np.zeros((0, 5, 2), np.float32), spec)
    assert chips.shape == (0, 224, 224, 3) and chips.dtype == np.uint8
    with pytest.raises(ValueError, match=r"expected shape \(N, 5, 2\)"):
        align_faces(t1_rgb, np.zeros((1, 4, 2), np.float32), spec)
