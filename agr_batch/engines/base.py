"""The engine contract and the helpers every backend shares."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from agr_batch.engines.kinds import ModelKind, ModelSource, model_kind
from agr_batch.models import HeadLogits
from agr_batch.registry import Registry

log = logging.getLogger(__name__)

MAX_BATCH = 1024
"""Largest batch every compiled engine accepts (the exported batch dimension is 1..1024)."""

ISOLATED = "isolated"
"""Registry tag of backends whose compiled artefacts are built, loaded and run in a child
process first: native code that crashes there cannot take the run down."""

DEFAULT_BUILD_TIMEOUT_S = 900.0
"""How long a child build may take before it is killed and its engine marked bad."""


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (missing library or device)."""


class EngineBuildError(BackendUnavailableError):
    """A compiled engine crashed, hung or disagreed with eager in its child-process check."""


@dataclass(frozen=True)
class BuildContext:
    """What a backend needs to build (or load from cache) an engine.

    Attributes:
        model: The network in eval mode (fp32).
        source: The file it came from and the shape of one input (a child process rebuilds
            the network from it; its hash is part of every cache key).
        device: Where the engine runs.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        cache: Engine cache for backends that compile ahead of time.
        max_batch: Largest batch the engine must accept.
        opt_batch: Batch size to optimise for (the run's ``--batch-size``).
        batch_sizes: Fixed batch sizes (buckets) for engines compiled per shape; inputs are
            padded up to the next one. Empty: :func:`default_buckets` of ``opt_batch``.
        in_child: True inside the child process that builds and checks an artefact.
        build_timeout_s: Seconds a child build may take.
    """

    model: nn.Module
    source: ModelSource
    device: torch.device
    precision: str
    cache: Any = None
    max_batch: int = MAX_BATCH
    opt_batch: int = 64
    batch_sizes: tuple[int, ...] = ()
    in_child: bool = False
    build_timeout_s: float = DEFAULT_BUILD_TIMEOUT_S

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes a per-shape engine is compiled for, ascending."""
        return tuple(sorted(set(self.batch_sizes))) or default_buckets(self.opt_batch)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input."""
        return self.source.sample_shape

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of one input."""
        return self.source.sample_shape[1], self.source.sample_shape[2]

    @property
    def kind(self) -> ModelKind:
        """What network this is (loading, checking, output type)."""
        return model_kind(self.source.kind)


@dataclass
class Engine:
    """A compiled or eager network: float32 (B, C, H, W) → its float32 outputs.

    Attributes:
        name: Backend name.
        precision: Compute precision.
        fn: The underlying callable (returns a tuple of tensors).
        pad_sizes: Batch sizes inputs are padded up to (empty: no padding), so engines built
            for fixed shapes never see a new one.
        details: Facts worth logging (cache path, build time, ...).
        max_batch: Largest batch the compiled engine accepts; larger inputs are split (an
            AOT engine given a batch outside its exported range computes garbage silently).
        output_type: Wraps the outputs (:class:`HeadLogits` for the classifier).
    """

    name: str
    precision: str
    fn: Callable[[torch.Tensor], Sequence[torch.Tensor]]
    pad_sizes: tuple[int, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    max_batch: int = MAX_BATCH
    output_type: Callable[..., Any] = HeadLogits

    def __call__(self, x: torch.Tensor) -> Any:
        """Run ``x``, padding the batch when the engine wants fixed sizes."""
        if x.shape[0] > self.max_batch:
            parts = [self(chunk) for chunk in x.split(self.max_batch)]
            return self.output_type(*(torch.cat(p) for p in zip(*parts, strict=True)))
        return self._call(x)

    def _call(self, x: torch.Tensor) -> Any:
        n = x.shape[0]
        target = next((s for s in self.pad_sizes if s >= n), n)
        if target != n:
            pad = x.new_zeros((target - n, *x.shape[1:]))
            x = torch.cat([x, pad])
        out = self.fn(x)
        return self.output_type(*(o[:n].float() for o in out))


BACKENDS: Registry[Engine] = Registry("backend")


def default_buckets(opt_batch: int) -> tuple[int, ...]:
    """A small bucket for the last, partial batches and the run's batch size.

    Each bucket is one compilation (seconds each), and padding a few faces up to 16 costs
    almost nothing, so two buckets serve a run whose calls are at most ``opt_batch`` faces.
    """
    return tuple(sorted({min(16, opt_batch), opt_batch}))


def pad_sizes_for(max_batch: int) -> tuple[int, ...]:
    """Powers of two from 8 up to ``max_batch`` (and ``max_batch`` itself)."""
    sizes = [8]
    while sizes[-1] < max_batch:
        sizes.append(min(sizes[-1] * 2, max_batch))
    return tuple(sizes)


class PrecisionWrapper(nn.Module):
    """Runs ``model`` in channels_last with autocast to ``dtype``; returns float32 outputs.

    This is the module exported by the ahead-of-time backends, so the cast is part of the
    compiled graph.
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run ``x``; outputs come back as float32."""
        x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            out = self.model(x)
        else:
            with torch.autocast(self.device_type, dtype=self.dtype):
                out = self.model(x)
        return tuple(o.float() for o in out)


def export_dynamic_batch(module: nn.Module, ctx: BuildContext) -> torch.export.ExportedProgram:
    """``torch.export`` ``module`` with a dynamic batch dimension 1..``ctx.max_batch``."""
    example = torch.randn(2, *ctx.sample_shape, device=ctx.device)
    batch = Dim("batch", min=1, max=ctx.max_batch)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def cache_fields(ctx: BuildContext, backend: str) -> dict[str, Any]:
    """The cache key fields of an engine built from ``ctx`` by ``backend``."""
    from agr_batch.engines.cache import device_name, library_versions

    fields: dict[str, Any] = {
        "model": ctx.source.kind,
        "model_sha256": ctx.source.sha256,
        "backend": backend,
        "precision": ctx.precision,
        "batch_range": [1, ctx.max_batch],
        "opt_batch": ctx.opt_batch,
        "sample_shape": list(ctx.sample_shape),
        "device": device_name(ctx.device),
        "versions": library_versions(),
    }
    if backend == "compiled":
        fields["buckets"] = list(ctx.buckets)
    return fields
