"""Classifier backends: a registry, precision and ``auto`` resolution, and the engine cache.

Backends (``agr-batch run --backend``):

- ``eager``: plain fp32 PyTorch, the reference.
- ``channels_last``: eager with channels_last and autocast (bf16 on CPUs with native bf16,
  fp16 on CUDA); no start-up cost.
- ``compiled``: ``torch.compile`` with freezing on fixed batch buckets, replayed as CUDA
  graphs on GPUs (fp16 weights).
- ``inductor``: ``torch.export`` + AOTInductor package with a dynamic batch, cached on disk.
- ``tensorrt``: Torch-TensorRT's dynamo path in fp16, cached on disk; only where TensorRT and
  an NVIDIA GPU are installed (the ``tensorrt`` extra).

The last three compile native code: each is first built, loaded and run in a child process
and compared with eager (:mod:`agr_batch.engines.isolate`); a crash, hang or disagreement
there marks the engine bad and never reaches the main process.

``auto`` picks ``tensorrt`` when CUDA and Torch-TensorRT are present, else ``compiled`` on
CUDA, and on CPU ``inductor`` when a compiled engine for this checkpoint is already cached
(``agr-batch compile``) or ``channels_last`` otherwise, so no CPU run pays a surprise compile.
If the chosen engine fails its check, ``auto`` logs one warning and uses ``channels_last``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from agr_batch.engines import backends as _backends  # noqa: F401  (registers the backends)
from agr_batch.engines.backends import TENSORRT_MISSING, tensorrt_available
from agr_batch.engines.base import (
    BACKENDS,
    DEFAULT_BUILD_TIMEOUT_S,
    ISOLATED,
    MAX_BATCH,
    BackendUnavailableError,
    BuildContext,
    Engine,
    EngineBuildError,
    cache_fields,
)
from agr_batch.engines.cache import EngineCache, default_cache_dir
from agr_batch.engines.kinds import KINDS, CenterFaceMaps, ModelKind, ModelSource, model_kind

if TYPE_CHECKING:
    from agr_batch.checkpoint import Checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "KINDS",
    "MAX_BATCH",
    "TENSORRT_MISSING",
    "BackendUnavailableError",
    "BuildContext",
    "CenterFaceMaps",
    "Engine",
    "EngineBuildError",
    "EngineCache",
    "ModelKind",
    "ModelSource",
    "build_engine",
    "default_cache_dir",
    "engine_for_checkpoint",
    "list_backends",
    "model_kind",
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
        choice = "tensorrt" if tensorrt_available() else "compiled"
        reason = "CUDA with Torch-TensorRT" if choice == "tensorrt" else "CUDA without TensorRT"
    else:
        cached = False
        if ctx_for_cache is not None:
            cache = ctx_for_cache.cache or EngineCache()
            fields = cache_fields(ctx_for_cache, "inductor")
            verdict = cache.verdict("inductor", fields) or {}
            cached = (
                verdict.get("ok", True) and cache.lookup("inductor", fields, ".pt2") is not None
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
    source: ModelSource,
    device: torch.device,
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    opt_batch: int = 64,
    max_batch: int = MAX_BATCH,
    batch_sizes: tuple[int, ...] = (),
    build_timeout_s: float | None = None,
) -> Engine:
    """Build (or load from cache) the engine ``backend`` for ``model``.

    Backends that compile native code are first built and run in a child process
    (:func:`agr_batch.engines.isolate.ensure_verified`), which rebuilds the network from
    ``source``. The returned engine's ``details["build_s"]`` holds the seconds spent building.

    Args:
        backend: A registered backend name or ``auto``.
        model: The network (fp32, eval mode).
        source: Its file, hash, kind and input shape.
        device: Where the engine runs.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        cache_dir: Engine cache folder (default: :func:`default_cache_dir`).
        opt_batch: Batch size to optimise for.
        max_batch: Largest batch a dynamic engine accepts; larger inputs are split.
        batch_sizes: Buckets for per-shape engines (default: a small one and ``opt_batch``).
        build_timeout_s: Seconds a child build may take (default ``$AGR_BATCH_BUILD_TIMEOUT``
            or 900).

    Raises:
        BackendUnavailableError: If the backend cannot run here (e.g. TensorRT missing), or
            (as :class:`EngineBuildError`) an explicitly requested engine crashed, hung or
            disagreed with eager in its check.
        agr_batch.registry.RegistryError: For an unknown backend name.
    """
    if opt_batch > max_batch:
        raise ValueError(f"batch size {opt_batch} exceeds the engines' maximum of {max_batch}")
    cache = EngineCache(cache_dir)
    timeout = build_timeout_s or float(
        os.environ.get("AGR_BATCH_BUILD_TIMEOUT") or DEFAULT_BUILD_TIMEOUT_S
    )

    def context(name: str) -> BuildContext:
        return BuildContext(
            model=model,
            source=source,
            device=device,
            precision=resolve_precision(precision, device, name),
            cache=cache,
            max_batch=max_batch,
            opt_batch=opt_batch,
            batch_sizes=tuple(batch_sizes),
            build_timeout_s=timeout,
        )

    name = resolve_backend(backend, ctx_for_cache=context("inductor"), device=device)
    if name == "tensorrt" and not tensorrt_available():
        raise BackendUnavailableError(TENSORRT_MISSING)
    ctx = context(name)
    t0 = time.perf_counter()
    try:
        checked_s = None
        if ISOLATED in BACKENDS.entry(name).tags:
            from agr_batch.engines.isolate import ensure_verified

            checked_s = ensure_verified(name, ctx).build_s
        engine = BACKENDS.create(name, ctx=ctx)
        if checked_s is not None:
            # Seconds of the child-process check; 0 when an earlier run's verdict was reused.
            engine.details["child_check_s"] = round(checked_s, 2)
    except Exception as e:
        if backend != "auto":
            raise
        # ``auto`` never fails a run over an optimisation: one line, then the eager path.
        log.warning("%s engine unusable here (%s); using channels_last", name, e)
        engine = BACKENDS.create("channels_last", ctx=context("channels_last"))
    engine.details["build_s"] = round(time.perf_counter() - t0, 2)
    return engine


def engine_for_checkpoint(
    backend: str,
    checkpoint: Checkpoint,
    *,
    device: torch.device,
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    opt_batch: int = 64,
    batch_sizes: tuple[int, ...] = (),
    build_timeout_s: float | None = None,
) -> Engine:
    """:func:`build_engine` for a loaded checkpoint (its model, input size, file and hash)."""
    h, w = checkpoint.meta.preprocess.input_size
    return build_engine(
        backend,
        checkpoint.model,
        source=ModelSource("classifier", checkpoint.path, checkpoint.file_sha256, (3, h, w)),
        device=device,
        precision=precision,
        cache_dir=cache_dir,
        opt_batch=opt_batch,
        max_batch=max(MAX_BATCH, opt_batch, *batch_sizes),
        batch_sizes=batch_sizes,
        build_timeout_s=build_timeout_s,
    )
