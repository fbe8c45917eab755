"""``agr-batch compile``: build a checkpoint's classifier engine ahead of time."""

from __future__ import annotations

from pathlib import Path

from agr_batch.checkpoint import load_checkpoint
from agr_batch.device import resolve_device
from agr_batch.engines import Engine, engine_for_checkpoint

__all__ = ["compile_checkpoint"]


def compile_checkpoint(
    checkpoint: str | Path,
    *,
    backend: str,
    device: str,
    precision: str,
    batch_size: int,
    cache_dir: str | Path | None,
) -> Engine:
    """Build (or find in the cache) the engine of ``checkpoint`` for ``backend``.

    Raises:
        agr_batch.checkpoint.CheckpointError: The checkpoint cannot be loaded.
        agr_batch.device.DeviceError: The device is unavailable.
        agr_batch.engines.BackendUnavailableError: The backend cannot run here.
    """
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, device=dev)
    return engine_for_checkpoint(
        backend,
        ckpt,
        device=dev,
        precision=precision,
        cache_dir=cache_dir,
        opt_batch=batch_size,
    )
