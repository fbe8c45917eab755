from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from agr_batch.models import HeadLogits
from trainer.cli import main
from trainer.engine import MultiHeadLoss, balanced_class_weights
from trainer.runtime import capture_rng_state, restore_rng_state


def _batch() -> tuple[HeadLogits, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = HeadLogits(*(torch.randn(6, k, generator=g) for k in (9, 2, 7)))
    targets = torch.tensor([[0, 0, 0], [3, 1, 2], [3, 0, 6], [8, 1, 1], [3, 0, 0], [1, 1, 5]])
    return logits, targets


def test_loss_is_weighted_sum_of_cross_entropies():
    logits, targets = _batch()
    ce = [F.cross_entropy(logits[k], targets[:, k]) for k in range(3)]
    total, per_head = MultiHeadLoss()(logits, targets)
    torch.testing.assert_close(per_head, torch.stack(ce))
    torch.testing.assert_close(total, sum(ce))
    total, _ = MultiHeadLoss(head_weights=(2.0, 0.0, 0.5))(logits, targets)
    torch.testing.assert_close(total, 2 * ce[0] + 0.5 * ce[2])
    with pytest.raises(ValueError, match="head_weights"):
        MultiHeadLoss(head_weights=(1.0, 1.0))


def test_balanced_class_weights():
    w = balanced_class_weights([2, 0, 6])
    torch.testing.assert_close(w, torch.tensor([2.0, 0.0, 8 / 12]))
    logits, targets = _batch()
    age_w = balanced_class_weights([1, 1, 0, 3, 0, 0, 0, 0, 1])
    _, per_head = MultiHeadLoss(class_weights={"age": age_w})(logits, targets)
    expected = F.cross_entropy(logits.age, targets[:, 0], weight=age_w)
    torch.testing.assert_close(per_head[0], expected)


def test_rng_state_round_trip():
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_cli_rejects_bad_head_weights(tmp_path):
    args = ["fit", "--data", str(tmp_path), "--arch", "tiny", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, [*args, "--head-weights", "1,2"])
    assert result.exit_code == 2
    assert "three non-negative numbers" in result.output
