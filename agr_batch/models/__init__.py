"""Model registry and the multi-head model contract.

Example:
    >>> from agr_batch.models import create_model
    >>> model = create_model("tiny")
    >>> model.input_size
    (64, 64)
"""

from __future__ import annotations

from agr_batch.models import residual as _residual  # noqa: F401  (registers paper, compact, tiny)
from agr_batch.models import torchvision_models as _tv  # noqa: F401  (registers Table-1 baselines)
from agr_batch.models.heads import HeadLogits, MultiHeadModel
from agr_batch.models.registry import (
    MODELS,
    RegistryError,
    create_model,
    list_models,
    model_entry,
    register_model,
)
from agr_batch.models.stats import count_parameters, gflops_per_face

__all__ = [
    "MODELS",
    "HeadLogits",
    "MultiHeadModel",
    "RegistryError",
    "count_parameters",
    "create_model",
    "gflops_per_face",
    "list_models",
    "model_entry",
    "register_model",
]
