"""Torch device selection, shared by inference and training."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "DeviceError", "resolve_device"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """A requested device that this machine does not have, or an unknown device name."""


def resolve_device(name: str) -> torch.device:
    """Map ``auto`` to CUDA when available, else the CPU; check ``cpu``, ``cuda``, ``cuda:N``.

    Raises:
        DeviceError: ``cuda`` was asked for but is not available, or the name is unknown.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name} requested but CUDA is not available on this machine"
            )
        try:
            return torch.device(name)
        except RuntimeError:
            pass
    raise DeviceError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)} or cuda:N")
