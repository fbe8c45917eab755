"""Model registry: one constructor per architecture name, created through one factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from agr_batch.registry import Entry, Registry, RegistryError

MODELS: Registry[nn.Module] = Registry("model")

__all__ = [
    "MODELS",
    "RegistryError",
    "create_model",
    "list_models",
    "model_entry",
    "register_model",
]


def register_model(
    name: str, *, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model constructor under ``name`` (duplicates raise :class:`RegistryError`)."""
    return MODELS.register(name, description=description)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def model_entry(name: str) -> Entry[nn.Module]:
    """Return the registry entry of ``name`` (unknown names raise :class:`RegistryError`)."""
    return MODELS.entry(name)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name`` with constructor keyword ``overrides``.

    Raises:
        RegistryError: If ``name`` is not registered.
        TypeError: If an override is not a keyword of the constructor.
    """
    model = MODELS.create(name, **overrides)
    # Recorded so that a checkpoint can rebuild exactly this model.
    model.arch = name
    model.arch_overrides = dict(overrides)
    return model
