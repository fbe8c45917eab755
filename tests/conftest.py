"""Shared fixtures: real face photos, generated media and a loaded detector.

Fixtures import torch and the trainer lazily: the decode tests also run in a light
environment with only PyAV, NumPy and Pillow (``make test-decode``), where neither exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests import media

if TYPE_CHECKING:
    from trainer.fit import FitResult
    from trainer.synth import SynthSummary

# About 1500 faces at 64 px (tiny's input size): 1200 train, 300 val.
SYNTH_N = 1500
SYNTH_SIZE = 64


@pytest.fixture(scope="session")
def t1_rgb() -> np.ndarray:
    """insightface's ``t1.jpg``: six faces, 1280 x 886."""
    return media.load_rgb("t1.jpg")


@pytest.fixture(scope="session")
def hanks_rgb() -> np.ndarray:
    """insightface's ``Tom_Hanks_54745.png``: one face, 112 x 112."""
    return media.load_rgb("Tom_Hanks_54745.png")


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder for generated media."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip_3s(media_dir: Path, t1_rgb: np.ndarray) -> media.WrittenVideo:
    """3 s of 320 x 240 H.264 at 30 fps with a creation time, keyframe every 10 frames."""
    return media.make_video(
        media_dir / "clip_3s.mp4",
        [t1_rgb],
        fps=30,
        seconds=3,
        size=(320, 240),
        gop=10,
        creation_time="2024-05-06T07:08:09Z",
    )


@pytest.fixture(scope="session")
def noisy_clip(media_dir: Path) -> media.WrittenVideo:
    """3 s of moving noise (large packets), MP4 with the index first (truncatable)."""
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    return media.make_video(
        media_dir / "noisy.mp4", [noise], seconds=3, size=(320, 240), pan=True, faststart=True
    )


@pytest.fixture(scope="session")
def centerface():  # type: ignore[no-untyped-def]
    """The default detector, loaded once (2 threads: the CPU is shared)."""
    from agr_batch.stages.detect import create_detector

    return create_detector("centerface", threads=2)


@pytest.fixture(scope="session")
def t1_detections(centerface, t1_rgb):  # type: ignore[no-untyped-def]
    """CenterFace's detections on ``t1.jpg``."""
    return centerface.detect([t1_rgb])[0]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    from trainer.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth") / "data", SYNTH_N, seed=0, size=SYNTH_SIZE)


@pytest.fixture(scope="session")
def tiny_run(synth_data: SynthSummary, tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    """``tiny`` trained for 5 epochs on the synthetic set (lr 1e-3: 5 epochs of 19 steps)."""
    from trainer.fit import FitConfig, fit

    config = FitConfig(
        data=synth_data.root,
        arch="tiny",
        out=tmp_path_factory.mktemp("runs") / "tiny",
        epochs=5,
        lr=1e-3,
        workers=0,
        progress=False,
    )
    return fit(config)


# The device the ``cuda`` tests run on. Setting it to ``cpu`` dry-runs them without a GPU
# (e.g. before spending GPU time): they then compare the CPU with itself.
CUDA_TESTS_DEVICE = os.environ.get("AGR_CUDA_TESTS_DEVICE", "cuda")


def _cuda_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    if CUDA_TESTS_DEVICE == "cpu":
        return True
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` where there is no CUDA device, saying so."""
    if not any("cuda" in item.keywords for item in items) or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
