"""``agr-train fit --device cuda``: one epoch on a GPU. Skipped without CUDA."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from agr_batch.checkpoint import load_checkpoint
from tests.conftest import CUDA_TESTS_DEVICE
from trainer.cli import main

pytestmark = pytest.mark.cuda


def test_fit_one_epoch_on_cuda(small_data, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["fit", "--data", str(small_data.root), "--arch", "tiny", "--out", str(out),
         "--epochs", "1", "--device", CUDA_TESTS_DEVICE, "--workers", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.meta.training["device"].startswith(CUDA_TESTS_DEVICE)
