"""CenterFace in PyTorch against the onnxruntime detector, on real photos and a real video."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from agr_batch.stages.decode.media import frames
from agr_batch.stages.detect import create_detector
from agr_batch.stages.detect.base import DetectorError
from agr_batch.stages.detect.centerface import _ALIGN, _resize
from agr_batch.stages.detect.centerface_net import load_centerface_net
from agr_batch.stages.detect.centerface_torch import CenterFaceTorch
from tests import media
from tests.conftest import CUDA_TESTS_DEVICE


@pytest.fixture(scope="module")
def ort_detector():
    return create_detector("centerface", max_side=640, input_width=None, threads=2)


@pytest.fixture(scope="module")
def torch_detector(tmp_path_factory):
    return CenterFaceTorch(
        backend="eager", device="cpu", max_side=640, cache_dir=tmp_path_factory.mktemp("c")
    )


def _photos():
    t1, hanks = media.load_rgb("t1.jpg"), media.load_rgb("Tom_Hanks_54745.png")
    return {
        "t1": t1,
        "t1 half": cv2.resize(t1, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
        "t1 double": cv2.resize(t1, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR),
        "t1 portrait crop": np.ascontiguousarray(t1[:, 300:900]),
        "hanks 2x": cv2.resize(hanks, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR),
        "hanks on a tall frame": np.pad(hanks, ((150, 150), (20, 20), (0, 0))),
    }


def _assert_same_faces(a, b, *, px=1.0, score=1e-3):
    assert len(a) == len(b)
    if len(a) == 0:
        return
    # Same score order is not guaranteed for equal scores: pair faces by position.
    oa, ob = np.lexsort(a.boxes.T[::-1]), np.lexsort(b.boxes.T[::-1])
    assert np.abs(a.boxes[oa] - b.boxes[ob]).max() <= px
    assert np.abs(a.landmarks[oa] - b.landmarks[ob]).max() <= px
    assert np.abs(a.scores[oa] - b.scores[ob]).max() <= score


def test_converted_network_equals_onnxruntime_on_the_same_input(ort_detector, torch_detector):
    """Same blob in, same maps and the same decoded faces out (fp32)."""
    for name, image in _photos().items():
        h, w = image.shape[:2]
        nh, nw = ort_detector.working_size(h, w)
        resized, cover = _resize(image, nw, nh)
        canvas = torch_detector.canvas
        blob = np.zeros((1, 3, canvas, canvas), np.float32)
        blob[0, :, :nh, :nw] = resized.transpose(2, 0, 1)
        ort_maps = ort_detector._session.run(None, {"input.1": blob})
        with torch.inference_mode():
            maps = torch_detector.engine(torch.from_numpy(blob))
        for ours, theirs in zip(maps, ort_maps, strict=True):
            np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-4, err_msg=name)
        sx, sy = nw / cover[0], nh / cover[1]
        heat, scale, offset, landmarks = (m[0] for m in ort_maps)
        peaks = ort_detector._peaks(heat, scale, offset, landmarks)
        want = ort_detector._finish(*peaks, sx, sy, w, h)
        got = torch_detector._decode(
            maps,
            torch.tensor([sx]),
            torch.tensor([sy]),
            torch.tensor([[float(w), float(h)]]),
            1,
        )[0]
        assert len(want) >= 1, name
        _assert_same_faces(got, want)


def test_torch_detector_finds_what_onnxruntime_finds_on_photos(ort_detector, torch_detector):
    # Resizing on the device is OpenCV's arithmetic in float, rounded: pixels differ by one
    # level here and there, which moves scores by up to ~1e-3 (the network alone: 1e-5).
    for name, image in _photos().items():
        want = ort_detector.detect([image])[0]
        got = torch_detector.detect([image])[0]
        assert len(want) == (6 if name.startswith("t1") and "crop" not in name else len(want))
        _assert_same_faces(got, want, score=2e-3)


def test_a_batch_of_mixed_sizes_equals_one_frame_at_a_time(torch_detector):
    images = list(_photos().values())
    batched = torch_detector.detect(images)
    for image, got in zip(images, batched, strict=True):
        _assert_same_faces(got, torch_detector.detect([image])[0], px=1e-3, score=1e-6)


def test_torch_detector_on_a_generated_video(ort_detector, torch_detector, clip_3s):
    video = [f.image for f in frames(clip_3s.path, sample_fps=5)]
    assert len(video) == 15
    got = torch_detector.detect(video)
    for image, dets in zip(video, got, strict=True):
        _assert_same_faces(dets, ort_detector.detect([image])[0], score=2e-3)
    assert sum(len(d) for d in got) >= 15  # the photo's faces are found in every frame


def test_no_faces_and_small_faces(torch_detector, tmp_path):
    blank = np.full((480, 640, 3), 128, np.uint8)
    assert len(torch_detector.detect([blank])[0]) == 0
    picky = CenterFaceTorch(
        backend="eager", device="cpu", max_side=640, min_face_size=10_000, cache_dir=tmp_path
    )
    assert len(picky.detect([media.load_rgb("t1.jpg")])[0]) == 0


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(DetectorError, match="score_threshold"):
        CenterFaceTorch(backend="eager", score_threshold=1.5, cache_dir=tmp_path)
    with pytest.raises(DetectorError, match="max_side"):
        CenterFaceTorch(backend="eager", max_side=8, cache_dir=tmp_path)
    with pytest.raises(DetectorError, match="not found"):
        CenterFaceTorch(backend="eager", model_path=tmp_path / "none.onnx", cache_dir=tmp_path)


def test_canvas_is_one_shape_for_every_frame(torch_detector):
    assert torch_detector.canvas == math.ceil(640 / _ALIGN) * _ALIGN
    assert torch_detector.working_size(1080, 1920) == (360, 640)
    assert torch_detector.working_size(1920, 1080) == (640, 360)


def test_network_loader_refuses_other_graphs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Softmax", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(DetectorError, match="unsupported ONNX operator 'Softmax'"):
        load_centerface_net(path)


@pytest.mark.slow
def test_compiled_detector_engine_is_checked_and_agrees(ort_detector, tmp_path):
    det = CenterFaceTorch(backend="compiled", device="cpu", max_side=320, cache_dir=tmp_path)
    assert det.engine.name == "compiled" and det.engine.details["child_check_s"] > 0
    image = media.load_rgb("t1.jpg")
    ref = create_detector("centerface", max_side=320, input_width=None, threads=2)
    _assert_same_faces(det.detect([image])[0], ref.detect([image])[0], score=2e-3)


@pytest.mark.cuda
def test_detector_on_cuda_matches_the_cpu_detector(ort_detector, tmp_path):
    det = CenterFaceTorch(
        backend="auto", device=CUDA_TESTS_DEVICE, max_side=640, cache_dir=tmp_path
    )
    for name, image in _photos().items():
        # fp16 on the GPU: boxes within 2 px, scores within 0.02 of onnxruntime's fp32.
        (
            _assert_same_faces(
                det.detect([image])[0], ort_detector.detect([image])[0], px=2.0, score=0.02
            ),
            name,
        )
