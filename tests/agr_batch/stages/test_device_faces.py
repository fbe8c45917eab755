"""The device face stage equals the host path: same faces, same chips, same sharpness."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from agr_batch.records import Frame
from agr_batch.stages.align import align_faces
from agr_batch.stages.decode.media import frames
from agr_batch.stages.detect.centerface_torch import CenterFaceTorch
from agr_batch.stages.device_faces import DeviceFaceStage, laplacian_variance
from agr_batch.stages.preprocess import PreprocessSpec, chips_to_tensor
from tests import media


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    det = CenterFaceTorch(backend="eager", device="cpu", cache_dir=tmp_path_factory.mktemp("e"))
    return DeviceFaceStage(det, PreprocessSpec(input_size=(64, 64)))


def test_faces_chips_and_sharpness_equal_the_host_path(stage, scene_video):
    video = list(frames(scene_video.path, sample_fps=1))
    t1 = media.load_rgb("t1.jpg")
    photos = [Frame("t1", 0, 0.0, t1), Frame("blank", 0, 0.0, np.zeros((300, 400, 3), np.uint8))]
    batch = video + photos  # two frame sizes and a frame without faces in one call
    got = stage(batch)
    assert len(got) == len(batch)
    assert [len(g.detections) for g in got[-2:]] == [6, 0]
    for frame, faces in zip(batch, got, strict=True):
        want = stage.detector.detect([frame.image])[0]
        np.testing.assert_allclose(faces.detections.boxes, want.boxes, atol=1e-3)
        if len(want) == 0:
            assert faces.chips.shape == (0, 3, 64, 64)
            continue
        host_chips = align_faces(frame.image, want.landmarks, stage.spec)
        expected = chips_to_tensor(host_chips, stage.spec)
        assert faces.chips.shape == expected.shape and faces.chips.is_contiguous()
        # One grey level of rounding at most, in normalised units (1/255 / std).
        assert (faces.chips - expected).abs().max().item() <= 1.0 / 255 / 0.224 + 1e-5
        host_sharp = [
            cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var() for c in host_chips
        ]
        np.testing.assert_allclose(faces.sharpness, host_sharp, rtol=0.05, atol=1.0)


def test_laplacian_variance_is_opencvs():
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, (5, 32, 40, 3), dtype=np.uint8)
    want = [cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var() for c in chips]
    got = laplacian_variance(torch.from_numpy(chips)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
