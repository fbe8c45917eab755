from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from agr_batch.records import Detections
from agr_batch.stages.detect import (
    DETECTORS,
    CenterFace,
    Detector,
    DetectorError,
    RegistryError,
    create_detector,
    list_detectors,
    nms,
)
from agr_batch.stages.detect.scrfd import find_model


def _check_geometry(dets: Detections, width: int, height: int) -> None:
    """Boxes inside the frame, landmarks inside their boxes and in image order."""
    assert np.all(dets.boxes[:, 0] >= 0) and np.all(dets.boxes[:, 2] <= width)
    assert np.all(dets.boxes[:, 1] >= 0) and np.all(dets.boxes[:, 3] <= height)
    for box, lm in zip(dets.boxes, dets.landmarks, strict=True):
        x1, y1, x2, y2 = box
        assert np.all((lm[:, 0] >= x1) & (lm[:, 0] <= x2)), (box, lm)
        assert np.all((lm[:, 1] >= y1) & (lm[:, 1] <= y2)), (box, lm)
        left_eye, right_eye, nose, left_mouth, right_mouth = lm
        assert left_eye[0] < right_eye[0]
        assert left_mouth[0] < right_mouth[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_registry_lists_detectors_and_rejects_unknown_names():
    assert list_detectors() == ["centerface", "scrfd"]
    assert "centerface" in DETECTORS
    with pytest.raises(
        RegistryError, match=r"unknown detector 'yolo'; registered: centerface, scrfd"
    ):
        create_detector("yolo")


def test_centerface_finds_the_six_faces_of_t1(t1_detections: Detections, t1_rgb: np.ndarray):
    assert len(t1_detections) == 6
    assert np.all(t1_detections.scores > 0.5)
    assert np.all(np.diff(t1_detections.scores) <= 0)  # best first
    _check_geometry(t1_detections, t1_rgb.shape[1], t1_rgb.shape[0])
    sides = t1_detections.boxes[:, 2:] - t1_detections.boxes[:, :2]
    assert np.all((sides > 60) & (sides < 200))  # the faces are about 100 px


def test_centerface_finds_tom_hanks(centerface: CenterFace, hanks_rgb: np.ndarray):
    (dets,) = centerface.detect([hanks_rgb])
    assert len(dets) == 1
    assert dets.scores[0] > 0.5
    _check_geometry(dets, 112, 112)
    cx, cy = dets.boxes[0, ::2].mean(), dets.boxes[0, 1::2].mean()
    assert 30 < cx < 82 and 30 < cy < 82


def test_landmarks_are_in_image_order_on_a_mirrored_frame(
    centerface: CenterFace, t1_rgb: np.ndarray
):
    (dets,) = centerface.detect([np.ascontiguousarray(t1_rgb[:, ::-1])])
    assert len(dets) == 6
    _check_geometry(dets, t1_rgb.shape[1], t1_rgb.shape[0])


def test_frame_size_not_a_multiple_of_32_maps_back_exactly(t1_rgb: np.ndarray):
    native = create_detector("centerface", threads=2, input_width=None)
    # t1 at a 32-aligned offset in a 1401 x 999 canvas: same network input up to padding.
    canvas = np.zeros((999, 1401, 3), np.uint8)
    canvas[64 : 64 + 886, 96 : 96 + 1280] = t1_rgb
    (ref,) = native.detect([t1_rgb])
    (got,) = native.detect([canvas])
    assert len(got) == len(ref) == 6
    order_ref, order_got = np.argsort(ref.boxes[:, 0]), np.argsort(got.boxes[:, 0])
    shift = np.array([96, 64], np.float32)
    np.testing.assert_allclose(
        got.boxes[order_got], ref.boxes[order_ref] + np.tile(shift, 2), atol=1.0
    )
    np.testing.assert_allclose(got.landmarks[order_got], ref.landmarks[order_ref] + shift, atol=1.0)


def test_working_resolution_scales_back_to_frame_pixels(
    centerface: CenterFace, t1_rgb: np.ndarray, t1_detections: Detections
):
    big = cv2.resize(t1_rgb, (2560, 1772), interpolation=cv2.INTER_LINEAR)
    assert centerface.working_size(1772, 2560) == (443, 640)
    (got,) = centerface.detect([big])
    assert len(got) == 6
    order_ref, order_got = np.argsort(t1_detections.boxes[:, 0]), np.argsort(got.boxes[:, 0])
    np.testing.assert_allclose(got.boxes[order_got] / 2, t1_detections.boxes[order_ref], atol=1.5)
    np.testing.assert_allclose(
        got.landmarks[order_got] / 2, t1_detections.landmarks[order_ref], atol=1.5
    )


def test_odd_sizes_map_back_when_halving_drops_a_column(
    centerface: CenterFace, t1_rgb: np.ndarray, t1_detections: Detections
):
    odd = np.zeros((887, 1281, 3), np.uint8)  # one more row and column than t1
    odd[:886, :1280] = t1_rgb
    (got,) = centerface.detect([odd])
    assert len(got) == 6
    np.testing.assert_allclose(got.boxes, t1_detections.boxes, atol=1.0)
    np.testing.assert_allclose(got.landmarks, t1_detections.landmarks, atol=1.0)


def test_max_side_controls_portrait_frames(t1_rgb: np.ndarray):
    det = create_detector("centerface", threads=2, max_side=640)
    assert det.working_size(1920, 1080) == (640, 360)
    portrait = np.ascontiguousarray(t1_rgb[:, :600])  # 600 x 886, the three left faces
    assert det.working_size(886, 600) == (640, 433)
    (dets,) = det.detect([portrait])
    assert len(dets) == 3
    _check_geometry(dets, 600, 886)


def test_empty_frames_give_no_faces(centerface: CenterFace):
    blank = np.zeros((480, 640, 3), np.uint8)
    gray = np.full((333, 517, 3), 128, np.uint8)
    results = centerface.detect([blank, gray])
    assert [len(r) for r in results] == [0, 0]
    assert results[0].boxes.shape == (0, 4) and results[0].landmarks.shape == (0, 5, 2)
    assert centerface.detect([]) == []


def test_min_face_size_filters_in_frame_pixels(t1_rgb: np.ndarray, t1_detections: Detections):
    sides = np.minimum(
        t1_detections.boxes[:, 2] - t1_detections.boxes[:, 0],
        t1_detections.boxes[:, 3] - t1_detections.boxes[:, 1],
    )
    limit = float(np.sort(sides)[2]) - 0.01  # keeps the four largest faces
    det = create_detector("centerface", threads=2, min_face_size=limit)
    (got,) = det.detect([t1_rgb])
    assert len(got) == 4
    got_sides = np.minimum(got.boxes[:, 2] - got.boxes[:, 0], got.boxes[:, 3] - got.boxes[:, 1])
    assert np.all(got_sides >= limit)


def test_batch_matches_single_frames(
    centerface: CenterFace, t1_rgb: np.ndarray, hanks_rgb: np.ndarray, t1_detections: Detections
):
    both = centerface.detect([t1_rgb, hanks_rgb, t1_rgb])
    assert [len(d) for d in both] == [6, 1, 6]
    np.testing.assert_allclose(both[0].boxes, t1_detections.boxes, atol=1e-3)
    np.testing.assert_allclose(both[2].landmarks, t1_detections.landmarks, atol=1e-3)


def test_bad_input_is_rejected(centerface: CenterFace):
    with pytest.raises(ValueError, match=r"image 1: expected \(H, W, 3\) uint8 RGB"):
        centerface.detect([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="image 0"):
        centerface.detect([np.zeros((8, 8, 3), np.float32)])


def test_config_is_json_and_identifies_the_model(centerface: CenterFace):
    assert isinstance(centerface, Detector)
    cfg = json.loads(json.dumps(centerface.config()))
    assert cfg["name"] == "centerface"
    assert len(cfg["model_sha256"]) == 64
    assert cfg["model"].endswith("centerface.onnx")
    assert cfg["providers"][0] == "CPUExecutionProvider"
    assert cfg["threads"] == 2
    assert cfg["input_width"] == 640 and cfg["score_threshold"] == 0.5


def test_detector_threads_do_not_spin_while_the_decoder_waits(centerface: CenterFace):
    # Spinning intra-op threads took the cores the decoder needed (BENCHMARKS.md).
    options = centerface._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == centerface.threads


def test_centerface_rejects_bad_settings():
    with pytest.raises(DetectorError, match="score_threshold"):
        create_detector("centerface", score_threshold=1.5)
    with pytest.raises(DetectorError, match="provider"):
        create_detector("centerface", providers=["NoSuchExecutionProvider"])
    with pytest.raises(TypeError):
        create_detector("centerface", bogus=1)


def test_nms_suppresses_overlaps_and_keeps_best_first():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.6, 0.9, 0.7, 0.5], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 0]  # IoU 1.0 duplicate dropped
    assert nms(boxes[:0], scores[:0], 0.3).shape == (0,)


def test_scrfd_without_weights_says_where_it_looked_and_the_license(tmp_path: Path):
    with pytest.raises(DetectorError) as info:
        create_detector("scrfd", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "models") in message
    assert "det_*.onnx" in message
    assert "non-commercial research only" in message
    assert "pass --detector-model FILE" in message and "model_path" not in message

    with pytest.raises(DetectorError, match=r"model file .*nope\.onnx not found.*non-commercial"):
        create_detector("scrfd", model_path=tmp_path / "nope.onnx")


def test_scrfd_on_real_weights(t1_rgb: np.ndarray):
    path = find_model()
    if path is None:
        pytest.skip(
            "no SCRFD weights in ~/.insightface/models (insightface ships none, and its "
            "pretrained packs are non-commercial); detection itself cannot be tested here"
        )
    det = create_detector("scrfd", model_path=path, threads=2)
    (dets,) = det.detect([t1_rgb])
    assert len(dets) == 6
    _check_geometry(dets, t1_rgb.shape[1], t1_rgb.shape[0])
