"""Device alignment (agr_batch.stages.align_torch) against cv2 (agr_batch.stages.align).

Frames are real photos (insightface's t1.jpg with CenterFace's landmarks, and Tom Hanks),
scaled down (faces of ~20 px), up (faces up to ~8x the chip, area-averaged first) and cut so
that frame edges cross faces, with the landmarks also turned and scaled at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch

from agr_batch.checkpoint import load_checkpoint
from agr_batch.records import Detections
from agr_batch.stages import align, align_torch
from agr_batch.stages.preprocess import PreprocessSpec, chips_to_tensor
from tests.conftest import CUDA_TESTS_DEVICE

# The acceptance bound: a chip's mean absolute difference from cv2's, on the 0-255 scale.
MEAN_BOUND = 2.0


@dataclass(frozen=True)
class Scene:
    """A frame and the landmarks of faces in it."""

    name: str
    frame: np.ndarray
    landmarks: np.ndarray


def _scaled(frame: np.ndarray, landmarks: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    out = cv2.resize(frame, None, fx=s, fy=s, interpolation=interp)
    # Pixel centres at integer coordinates: x' = (x + 1/2) s - 1/2.
    return out, (landmarks.astype(np.float64) + 0.5) * s - 0.5


def _jittered(landmarks: np.ndarray, copies: int, rng: np.random.Generator) -> np.ndarray:
    """Each face ``copies`` times, turned (±25°), scaled (±15%) and shifted about its centre."""
    out = []
    for lm in landmarks.astype(np.float64):
        centre = lm.mean(axis=0)
        size = np.linalg.norm(lm[1] - lm[0])
        for _ in range(copies):
            a = np.deg2rad(rng.uniform(-25, 25))
            s = rng.uniform(0.85, 1.15)
            rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            shift = rng.normal(0, 0.05 * size, 2)
            out.append((lm - centre) @ rot.T + centre + shift)
    return np.array(out)


@pytest.fixture(scope="module")
def hanks_landmarks(centerface, hanks_rgb) -> np.ndarray:
    found = centerface.detect([hanks_rgb])[0]
    assert len(found.landmarks) == 1
    return found.landmarks


@pytest.fixture(scope="module")
def scenes(t1_rgb, t1_detections: Detections, hanks_rgb, hanks_landmarks) -> list[Scene]:
    """Real faces at many sizes, some cut by the frame's edge."""
    out: list[Scene] = []
    for s in (0.3, 0.6, 1.0, 2.0, 3.5):
        frame, lm = _scaled(t1_rgb, t1_detections.landmarks, s)
        out.append(Scene(f"t1 x{s}", frame, lm))
    # Windows of t1 x2 whose edges run through faces.
    frame, lm = _scaled(t1_rgb, t1_detections.landmarks, 2.0)
    for x, y in ((300, 250), (900, 500), (1500, 420)):
        out.append(Scene(f"t1 x2 cut at {x},{y}", frame[y : y + 480, x : x + 640], lm - [x, y]))
    for s in (0.5, 1.0, 4.0):  # the face fills the photo: the chip reaches past its edges
        frame, lm = _scaled(hanks_rgb, hanks_landmarks, s)
        out.append(Scene(f"hanks x{s}", frame, lm))
    return out


def _compare(scenes: list[Scene], spec: PreprocessSpec, rng: np.random.Generator | None = None):
    """Per-chip mean abs differences (torch vs cv2), max pixel difference, chip scales."""
    means, scales, worst = [], [], 0
    for scene in scenes:
        lm = scene.landmarks if rng is None else _jittered(scene.landmarks, 2, rng)
        want = align.align_faces(scene.frame, lm, spec)
        got = align_torch.align_faces(torch.from_numpy(scene.frame), torch.from_numpy(lm), spec)
        assert got.dtype == torch.uint8 and tuple(got.shape) == want.shape
        diff = np.abs(got.numpy().astype(np.int16) - want.astype(np.int16))
        means.extend(diff.mean(axis=(1, 2, 3)))
        worst = max(worst, int(diff.max()))
        scales.extend(np.sqrt(np.abs(np.linalg.det(align.chip_transforms(lm, spec)[:, :, :2]))))
    return np.array(means), worst, np.array(scales)


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (96, 80)])
def test_chips_equal_the_cv2_chips(scenes: list[Scene], size: tuple[int, int]):
    spec = PreprocessSpec(input_size=size)
    means, worst, scales = _compare(scenes, spec)
    jmeans, jworst, jscales = _compare(scenes, spec, np.random.default_rng(7))
    means, scales = np.concatenate([means, jmeans]), np.concatenate([scales, jscales])
    # Both paths ran, often: faces shrunk more than 2x (area-averaged first) and enlarged.
    assert (scales < 0.5).sum() >= 10 and (scales > 1.5).sum() >= 10
    assert np.all(means <= MEAN_BOUND)
    # Measured on this CPU: mean per chip <= 0.003, max pixel difference 1 (rounding), except
    # one chip at scale 0.4985 (an area factor of 2.006, which cv2's INTER_AREA sums with
    # fractional float32 weights, against the exact float64 integral here): 1 level on 7 % of
    # its pixels, a mean of 0.074.
    assert means.max() < 0.1, means.max()
    assert max(worst, jworst) <= 2


def test_area_averaging_is_what_makes_large_faces_match(scenes: list[Scene]):
    """Without the area averaging the large faces differ clearly: the check above has teeth."""
    spec = PreprocessSpec(input_size=(64, 64))
    scene = next(s for s in scenes if s.name == "t1 x3.5")
    want = align.align_faces(scene.frame, scene.landmarks, spec)
    frame, lm = torch.from_numpy(scene.frame), torch.from_numpy(scene.landmarks)
    plain = align_torch.align_faces(frame, lm, spec, antialias=False).numpy()
    smooth = align_torch.align_faces(frame, lm, spec).numpy()
    diff_plain = np.abs(plain.astype(np.int16) - want).mean(axis=(1, 2, 3))
    diff_smooth = np.abs(smooth.astype(np.int16) - want).mean(axis=(1, 2, 3))
    assert diff_plain.min() > 1.0 > 0.05 > diff_smooth.max()
    # And without it on both sides the plain warps agree too.
    want_plain = align.align_faces(scene.frame, scene.landmarks, spec, antialias=False)
    assert np.abs(plain.astype(np.int16) - want_plain).mean(axis=(1, 2, 3)).max() < 0.05


def test_checkerboard_is_area_averaged_to_grey():
    spec = PreprocessSpec(input_size=(64, 64))
    dst = align.template(spec.input_size, spec.padding)
    checker = (np.indices((1200, 1200)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = torch.from_numpy(np.repeat(checker[..., None], 3, axis=2))
    lm = torch.from_numpy(dst * 11.3 + 100)[None]  # the face is 11.3x the chip
    (smooth,) = align_torch.align_faces(image, lm, spec).float()
    (aliased,) = align_torch.align_faces(image, lm, spec, antialias=False).float()
    assert abs(float(smooth.mean()) - 127.5) < 3 and float(smooth.std()) < 3
    assert float(aliased.std()) > 30


def test_faces_of_many_frames_in_one_call(scenes: list[Scene]):
    """Six 480x640 frames (faces cut by their edges) in one batch, in both layouts."""
    spec = PreprocessSpec(input_size=(64, 64))
    frames = [s for s in scenes if s.frame.shape == (480, 640, 3)]
    # Mirrored copies: x -> W - 1 - x, and the left/right landmarks swap roles.
    frames += [
        Scene(
            f"{s.name} mirrored",
            np.ascontiguousarray(s.frame[:, ::-1]),
            (s.landmarks * [-1, 1] + [639, 0])[:, [1, 0, 2, 4, 3]],
        )
        for s in frames
    ]
    assert len(frames) == 6
    batch = np.stack([s.frame for s in frames])
    landmarks = np.concatenate([s.landmarks for s in frames])
    index = np.concatenate([np.full(len(s.landmarks), i) for i, s in enumerate(frames)])
    want = np.concatenate([align.align_faces(s.frame, s.landmarks, spec) for s in frames])
    hwc = torch.from_numpy(batch)
    for frames_tensor, layout in ((hwc, "auto"), (hwc.permute(0, 3, 1, 2), "chw")):
        got = align_torch.align_faces(
            frames_tensor, landmarks, spec, frame_index=torch.from_numpy(index), layout=layout
        ).numpy()
        diff = np.abs(got.astype(np.int16) - want)
        assert diff.mean(axis=(1, 2, 3)).max() < 0.05
        assert diff.max() <= 2
    # A face read from the wrong frame would not match (faces partly or wholly off their
    # frame are black in both: compare the chips that show something).
    wrong = align_torch.align_faces(hwc, landmarks, spec, frame_index=(index + 3) % 6).numpy()
    shown = (want.reshape(len(want), -1) > 0).mean(axis=1) > 0.5
    assert shown.sum() >= 6
    assert np.abs(wrong[shown].astype(np.int16) - want[shown]).mean(axis=(1, 2, 3)).min() > 5


def test_normalized_batch_is_chips_to_tensor_of_the_chips(scenes: list[Scene]):
    spec = PreprocessSpec(input_size=(96, 80), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    scene = next(s for s in scenes if s.name == "t1 x2.0")
    frame, lm = torch.from_numpy(scene.frame), torch.from_numpy(scene.landmarks)
    chips = align_torch.align_faces(frame, lm, spec)
    batch = align_torch.align_faces_normalized(frame, lm, spec)
    assert batch.dtype == torch.float32 and batch.is_contiguous()
    assert tuple(batch.shape) == (len(lm), 3, 96, 80)
    torch.testing.assert_close(batch, chips_to_tensor(chips.numpy(), spec), rtol=0, atol=1e-6)
    half = align_torch.align_faces_normalized(frame, lm, spec, dtype=torch.float16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), batch, rtol=0, atol=2e-3)


def test_similarity_transforms_equal_the_numpy_ones(t1_detections: Detections):
    rng = np.random.default_rng(3)
    spec = PreprocessSpec(input_size=(224, 224))
    dst = align.template(spec.input_size, spec.padding)
    src = np.concatenate(
        [
            t1_detections.landmarks.astype(np.float64),
            rng.uniform(0, 2000, (200, 5, 2)),
            dst[None] * [-1, 1],  # mirrored: a reflection would fit best, and is refused
            (rng.normal(0, 1e-3, (20, 5, 2)) + rng.uniform(0, 4000, (20, 1, 2))),  # tiny faces
        ]
    )
    got, valid = align_torch.chip_transforms(torch.from_numpy(src), spec)
    assert got.dtype == torch.float64 and bool(valid.all())
    want = align.chip_transforms(src, spec)
    scale = np.abs(want).max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_less(np.abs(got.numpy() - want) / scale, 1e-6)
    assert np.abs(got.numpy() - want).max() / np.abs(want).max() < 1e-9  # measured ~1e-13

    bad = np.stack([np.ones((5, 2)), np.full((5, 2), np.nan)])
    matrices, valid = align_torch.chip_transforms(torch.from_numpy(bad), spec)
    assert not bool(valid.any()) and bool(matrices.isnan().all())


def test_degenerate_empty_and_off_frame_faces(t1_rgb: np.ndarray, t1_detections: Detections):
    spec = PreprocessSpec(input_size=(64, 64))
    frame = torch.from_numpy(t1_rgb)
    good = t1_detections.landmarks[:1].astype(np.float64)
    off = good + 5000  # wholly outside the frame
    lm = np.concatenate([good, np.ones((1, 5, 2)), off])
    chips = align_torch.align_faces(frame, lm, spec).numpy()
    np.testing.assert_array_equal(chips[1], 0)  # coinciding landmarks: black, no exception
    np.testing.assert_array_equal(chips[2], align.align_faces(t1_rgb, off, spec)[0])
    np.testing.assert_array_equal(chips[2], 0)
    assert np.abs(chips[0].astype(int) - align.align_faces(t1_rgb, good, spec)[0]).max() <= 1

    empty = align_torch.align_faces(frame, np.zeros((0, 5, 2)), spec)
    assert tuple(empty.shape) == (0, 64, 64, 3) and empty.dtype == torch.uint8
    assert tuple(align_torch.align_faces_normalized(frame, np.zeros((0, 5, 2)), spec).shape) == (
        0,
        3,
        64,
        64,
    )


def test_bad_arguments_are_refused(t1_rgb: np.ndarray, t1_detections: Detections):
    spec = PreprocessSpec(input_size=(64, 64))
    frame = torch.from_numpy(t1_rgb)
    lm = torch.from_numpy(t1_detections.landmarks)
    with pytest.raises(ValueError, match=r"expected shape \(N, 5, 2\)"):
        align_torch.align_faces(frame, lm[:, :4], spec)
    with pytest.raises(ValueError, match="uint8"):
        align_torch.align_faces(frame.float(), lm, spec)
    with pytest.raises(ValueError, match="frame_index is required"):
        align_torch.align_faces(torch.stack([frame, frame]), lm, spec)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        align_torch.align_faces(torch.stack([frame, frame]), lm, spec, frame_index=[0] * 5 + [2])
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        align_torch.align_faces(torch.zeros((3, 8, 3), dtype=torch.uint8), lm, spec)


@pytest.mark.slow
def test_trained_tiny_labels_agree_on_device_chips(scenes: list[Scene], tiny_run):
    """Labels of a trained model on the torch batch equal those on cv2 chips (>= 99%)."""
    ckpt = load_checkpoint(tiny_run.best_checkpoint)
    spec = ckpt.meta.preprocess
    rng = np.random.default_rng(11)
    want_x, got_x = [], []
    for scene in scenes:
        lm = np.concatenate([scene.landmarks, _jittered(scene.landmarks, 12, rng)])
        want_x.append(chips_to_tensor(align.align_faces(scene.frame, lm, spec), spec))
        got_x.append(align_torch.align_faces_normalized(torch.from_numpy(scene.frame), lm, spec))
    want_batch, got_batch = torch.cat(want_x), torch.cat(got_x)
    assert len(want_batch) >= 600
    with torch.inference_mode():
        want, got = ckpt.model(want_batch), ckpt.model(got_batch)
    for head in ("age", "gender", "race"):
        w, g = getattr(want, head).argmax(dim=1), getattr(got, head).argmax(dim=1)
        agreement = float((w == g).float().mean())
        assert agreement >= 0.99, (head, agreement)
        # The model does not answer one class for everything: agreement means something.
        assert len(torch.unique(w)) > 1, head


@pytest.mark.cuda
def test_chips_on_cuda_equal_the_cv2_chips(scenes: list[Scene]):
    """Frames and landmarks on the GPU; the chips come back only to be compared."""
    device = torch.device(CUDA_TESTS_DEVICE)
    spec = PreprocessSpec(input_size=(64, 64))
    rng = np.random.default_rng(5)
    worst_mean = 0.0
    for scene in scenes:
        lm = _jittered(scene.landmarks, 4, rng)
        want = align.align_faces(scene.frame, lm, spec)
        frame = torch.from_numpy(scene.frame).to(device)
        for landmarks in (torch.from_numpy(lm), torch.from_numpy(lm).to(device)):
            got = align_torch.align_faces(frame, landmarks, spec)
            assert got.device.type == device.type
            diff = np.abs(got.cpu().numpy().astype(np.int16) - want)
            worst_mean = max(worst_mean, float(diff.mean(axis=(1, 2, 3)).max()))
            assert diff.max() <= 2
        batch = align_torch.align_faces_normalized(frame, torch.from_numpy(lm).to(device), spec)
        assert batch.device.type == device.type and batch.is_contiguous()
    assert worst_mean < 0.05
