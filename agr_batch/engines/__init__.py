"""Classifier backends: a registry, precision and ``auto`` resolution, and the engine cache.

Backends (``agr-batch run --backend``):

- ``eager``: plain fp32 PyTorch, the reference.
- ``channels_last``: eager with channels_last and autocast (bf16 on CPUs with native bf16,
  fp16 on CUDA); no start-up cost.
- ``inductor``: ``torch.export`` + AOTInductor package with a dynamic batch, cached on disk.
- ``tensorrt``: Torch-TensorRT's dynamo path in fp16, cached on disk; only where TensorRT and
  an NVIDIA GPU are installed (the ``tensorrt`` extra).

``auto`` picks ``tensorrt`` when CUDA and Torch-TensorRT are present, else ``inductor`` on
CUDA, and on CPU ``inductor`` when a compiled engine for this checkpoint is already cached
(``agr-batch compile``) or ``channels_last`` otherwise, so no run pays a surprise compile.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from agr_batch.engines import backends as _backends  # noqa: F401  (registers the backends)
from agr_batch.engines.backends import TENSORRT_MISSING, tensorrt_available
from agr_batch.engines.base import (
    BACKENDS,
    MAX_BATCH,
    BackendUnavailableError,
    BuildContext,
    Engine,
    cache_fields,
)
from agr_batch.engines.cache import EngineCache, default_cache_dir

if TYPE_CHECKING:
    from agr_batch.checkpoint import Checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "MAX_BATCH",
    "TENSORRT_MISSING",
    "BackendUnavailableError",
    "BuildContext",
    "Engine",
    "EngineCache",
    "build_engine",
    "default_cache_dir",
    "engine_for_checkpoint",
    "list_backends",
    "resolve_backend",
    "resolve_precision",
]


def list_backends() -> list[str]:
    """Registered backend names (``auto`` is resolved, not registered)."""
    return BACKENDS.names()


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, backend: str) -> str:
    """Map ``auto`` to the fastest precision that keeps the predictions.

    ``eager`` is always fp32; elsewhere ``auto`` is fp16 on CUDA, bf16 on CPUs with native
    bf16, else fp32.
    """
    if backend == "eager":
        return "fp32"
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {precision!r}; expected auto, fp32, bf16 or fp16")
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("fp16 is a GPU precision; use bf16 or fp32 on CPU")
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve_backend(
    backend: str, *, ctx_for_cache: BuildContext | None = None, device: torch.device
) -> str:
    """Resolve ``auto`` to a registered backend for ``device`` and log the choice."""
    if backend != "auto":
        BACKENDS.entry(backend)  # unknown names fail loudly here
        return backend
    if device.type == "cuda":
        choice = "tensorrt" if tensorrt_available() else "inductor"
        reason = "CUDA with Torch-TensorRT" if choice == "tensorrt" else "CUDA without TensorRT"
    else:
        cached = False
        if ctx_for_cache is not None:
            cache = ctx_for_cache.cache or EngineCache()
            cached = (
                cache.lookup("inductor", cache_fields(ctx_for_cache, "inductor"), ".pt2")
                is not None
            )
        choice = "inductor" if cached else "channels_last"
        reason = (
            "a compiled engine is cached"
            if cached
            else "no compiled engine cached (build one with `agr-batch compile`)"
        )
    log.info("backend auto → %s (%s)", choice, reason)
    return choice


def build_engine(
    backend: str,
    model: torch.nn.Module,
    *,
    input_size: tuple[int, int],
    device: torch.device,
    checkpoint_sha256: str,
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    opt_batch: int = 64,
    max_batch: int = MAX_BATCH,
) -> Engine:
    """Build (or load from cache) the engine ``backend`` for ``model``.

    Raises:
        BackendUnavailableError: If the backend cannot run here (e.g. TensorRT missing).
        agr_batch.registry.RegistryError: For an unknown backend name.
    """
    if opt_batch > max_batch:
        raise ValueError(f"batch size {opt_batch} exceeds the engines' maximum of {max_batch}")
    cache = EngineCache(cache_dir)

    def context(name: str) -> BuildContext:
        return BuildContext(
            model=model,
            input_size=input_size,
            device=device,
            precision=resolve_precision(precision, device, name),
            checkpoint_sha256=checkpoint_sha256,
            cache=cache,
            max_batch=max_batch,
            opt_batch=opt_batch,
        )

    name = resolve_backend(backend, ctx_for_cache=context("inductor"), device=device)
    if name == "tensorrt" and not tensorrt_available():
        raise BackendUnavailableError(TENSORRT_MISSING)
    ctx = context(name)
    try:
        return BACKENDS.create(name, ctx=ctx)
    except BackendUnavailableError:
        raise
    except Exception as e:
        if backend != "auto":
            raise
        # ``auto`` never fails a run over an optimisation: fall back to the eager path.
        log.warning("backend %s failed to build (%s); falling back to channels_last", name, e)
        return BACKENDS.create("channels_last", ctx=context("channels_last"))


def engine_for_checkpoint(
    backend: str,
    checkpoint: Checkpoint,
    *,
    device: torch.device,
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    opt_batch: int = 64,
) -> Engine:
    """:func:`build_engine` for a loaded checkpoint (its model, input size and file hash)."""
    return build_engine(
        backend,
        checkpoint.model,
        input_size=checkpoint.meta.preprocess.input_size,
        device=device,
        checkpoint_sha256=checkpoint.file_sha256,
        precision=precision,
        cache_dir=cache_dir,
        opt_batch=opt_batch,
    )
