"""Parameter and FLOP counts of a model, as reported by ``agr-batch info`` and the docs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def gflops_per_face(model: nn.Module, input_size: tuple[int, int] | None = None) -> float:
    """GFLOPs (2 × multiply-accumulates) of one forward pass on one face chip."""
    size = input_size or model.input_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
