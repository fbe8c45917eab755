"""The int8 CenterFace against fp32: the same faces, nothing new, landmarks close."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agr_batch.config import DetectorConfig
from agr_batch.stages.decode.media import frames
from agr_batch.stages.detect import DetectorError, build_detector, detector_backends
from agr_batch.stages.detect.centerface import CenterFace
from agr_batch.stages.detect.centerface_torch import CenterFaceTorch
from agr_batch.stages.track import iou_matrix
from tests import media


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    cache = tmp_path_factory.mktemp("int8")
    fp32 = CenterFace(max_side=640, input_width=None, threads=2)
    int8 = CenterFace(max_side=640, input_width=None, threads=2, int8=True, cache_dir=cache)
    return fp32, int8, cache


def test_int8_finds_the_fp32_faces_and_nothing_else(detectors, scene_video):
    fp32, int8, _ = detectors
    t1 = media.load_rgb("t1.jpg")
    images = [f.image for f in frames(scene_video.path, sample_fps=2)]
    images += [t1, cv2.resize(t1, None, fx=0.5, fy=0.5), media.load_rgb("Tom_Hanks_54745.png")]
    found = matched = extra = 0
    rel_errors = []
    for image in images:
        want, got = fp32.detect([image])[0], int8.detect([image])[0]
        found += len(want)
        if len(want) == 0 or len(got) == 0:
            extra += len(got)
            continue
        iou = iou_matrix(want.boxes, got.boxes)
        best = iou.argmax(1)
        ok = iou.max(1) >= 0.5
        matched += int(ok.sum())
        extra += len(got) - len(set(best[ok]))
        width = want.boxes[ok, 2] - want.boxes[ok, 0]
        err = np.abs(want.landmarks[ok] - got.landmarks[best[ok]]).max(axis=(1, 2))
        rel_errors += list(err / width)
    assert found >= 80
    assert matched / found >= 0.99 and extra == 0
    # Landmarks move by a few pixels (measured up to ~8 % of the face width): the reason
    # int8 is opt-in rather than the default.
    assert max(rel_errors) <= 0.12 and float(np.median(rel_errors)) <= 0.03


def test_int8_sees_no_faces_where_there_are_none(detectors):
    _, int8, _ = detectors
    assert [len(d) for d in int8.detect(media.faceless_frames())] == [0, 0]


def test_int8_model_is_cached_and_a_corrupt_one_rebuilt(detectors):
    _, int8, cache = detectors
    assert int8.config()["precision"] == "int8"
    models = list((cache / "centerface-int8").glob("*.onnx"))
    assert len(models) == 1
    models[0].write_bytes(b"garbage")
    again = CenterFace(max_side=640, input_width=None, threads=2, int8=True, cache_dir=cache)
    assert len(again.detect([media.load_rgb("t1.jpg")])[0]) == 6


def test_build_detector_resolves_backends(tmp_path):
    assert detector_backends()[:3] == ["auto", "onnxruntime", "onnxruntime-int8"]
    assert "compiled" in detector_backends()
    auto = build_detector(DetectorConfig(), device="cpu", cache_dir=tmp_path)
    assert isinstance(auto, CenterFace) and not auto.int8
    eager = build_detector(DetectorConfig(backend="eager"), device="cpu", cache_dir=tmp_path)
    assert isinstance(eager, CenterFaceTorch) and eager.engine.name == "eager"
    assert len(eager.detect([media.load_rgb("t1.jpg")])[0]) == 6
    with pytest.raises(DetectorError, match="unknown detector backend 'fast'"):
        build_detector(DetectorConfig(backend="fast"), device="cpu")
    with pytest.raises(DetectorError, match="scrfd runs on onnxruntime only"):
        build_detector(DetectorConfig(name="scrfd", backend="compiled"), device="cpu")
