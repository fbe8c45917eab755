from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from agr_batch.samples import SceneVideo


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``tiny`` checkpoint: its labels are arbitrary, its counts are exact."""
    # Imported here: the decode tests run where torch is not installed.
    import torch

    from agr_batch.checkpoint import save_checkpoint
    from agr_batch.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_checkpoint(path, create_model("tiny"), training={"note": "untrained test weights"})
    return path


@pytest.fixture(scope="session")
def scene_video(tmp_path_factory: pytest.TempPathFactory) -> SceneVideo:
    """6 s, 960x540, 30 fps: insightface's t1.jpg (six people) swaying slowly."""
    path = tmp_path_factory.mktemp("videos") / "scene.mp4"
    from agr_batch.samples import write_scene_video

    return write_scene_video(path, seconds=6.0, size=(960, 540), sway_px=80)
