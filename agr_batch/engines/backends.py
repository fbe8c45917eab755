"""The registered classifier backends: eager, channels_last, compiled, inductor, tensorrt.

Backends tagged ``isolated`` compile native code; :func:`agr_batch.engines.build_engine`
first builds and runs them in a child process (:mod:`agr_batch.engines.isolate`) and only
then calls their constructor here, in the main process.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import time

import torch
from torch import nn

from agr_batch.engines.base import (
    BACKENDS,
    ISOLATED,
    BackendUnavailableError,
    BuildContext,
    Engine,
    PrecisionWrapper,
    cache_fields,
    export_dynamic_batch,
    pad_sizes_for,
)
from agr_batch.engines.cache import EngineCache

log = logging.getLogger(__name__)

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@BACKENDS.register(
    "eager", description="plain PyTorch, fp32: the reference every backend must match"
)
def eager(ctx: BuildContext) -> Engine:
    """The model as trained, in fp32."""
    return Engine("eager", "fp32", ctx.model, output_type=ctx.kind.output_type)


@BACKENDS.register(
    "channels_last", description="eager PyTorch, channels_last + autocast (bf16 CPU, fp16 GPU)"
)
def channels_last(ctx: BuildContext) -> Engine:
    """Eager execution in channels_last memory format with reduced-precision autocast.

    No compilation and no start-up cost; on CPUs with native bf16 (AVX512-BF16/AMX) it runs
    the paper preset about 3× faster than fp32 eager on this machine (BENCHMARKS.md).
    """
    model = ctx.model.to(memory_format=torch.channels_last)
    wrapper = PrecisionWrapper(model, ctx.device.type, _DTYPES[ctx.precision]).eval()
    return Engine("channels_last", ctx.precision, wrapper, output_type=ctx.kind.output_type)


def _aoti_build(ctx: BuildContext):
    wrapper = PrecisionWrapper(
        ctx.model.to(memory_format=torch.channels_last), ctx.device.type, _DTYPES[ctx.precision]
    ).eval()

    def build(path) -> None:
        ep = export_dynamic_batch(wrapper, ctx)
        # Freezing folds BN into convolutions and pre-packs weights for oneDNN on CPU.
        torch._inductor.aoti_compile_and_package(
            ep, package_path=str(path), inductor_configs={"freezing": True}
        )

    return build


class HalfWrapper(nn.Module):
    """The model with its weights in ``dtype`` and channels_last; float32 outputs.

    On CUDA, casting the weights (rather than autocasting) lets Inductor emit pure
    half-precision kernels and capture them in one CUDA graph.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype=dtype, memory_format=torch.channels_last)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run ``x``; outputs come back as float32."""
        out = self.model(x.to(self.dtype).contiguous(memory_format=torch.channels_last))
        return tuple(o.float() for o in out)


def _compile_target(ctx: BuildContext) -> nn.Module:
    """A private copy of the model prepared for compilation at ``ctx.precision``."""
    model = copy.deepcopy(ctx.model).to(ctx.device).eval()
    dtype = _DTYPES[ctx.precision]
    if ctx.device.type == "cuda" and dtype is not None:
        return HalfWrapper(model, dtype).eval()
    model = model.to(memory_format=torch.channels_last)
    return PrecisionWrapper(model, ctx.device.type, dtype).eval()


@BACKENDS.register(
    "compiled",
    description="torch.compile with freezing on fixed batch buckets (CUDA graphs on GPU)",
    tags=(ISOLATED,),
)
def compiled(ctx: BuildContext) -> Engine:
    """``torch.compile`` of the model for each batch bucket; inputs are padded to a bucket.

    Freezing folds batch norm into the convolutions and treats weights as constants; on
    CUDA the ``reduce-overhead`` mode replays each bucket as one CUDA graph. Compilation
    happens here, once per process; Inductor's on-disk cache (filled by the child-process
    check) makes it quick after the first time.
    """
    target = _compile_target(ctx)
    cuda = ctx.device.type == "cuda"
    # Shapes are fixed per bucket; dynamic shapes would cost speed and CUDA graphs.
    fn = torch.compile(target, mode="reduce-overhead" if cuda else None, dynamic=False)
    buckets = ctx.buckets
    t0 = time.perf_counter()
    with torch._inductor.config.patch(freezing=True), torch.inference_mode():
        for b in buckets:
            x = torch.zeros(b, *ctx.sample_shape, device=ctx.device)
            # CUDA graphs are recorded on the second call and replayed from the third.
            for _ in range(3 if cuda else 1):
                if cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                fn(x)
    if cuda:
        torch.cuda.synchronize(ctx.device)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            if not x.is_inference():
                # The graphs were traced on inference tensors; a normal tensor has another
                # dispatch key set and would trigger a recompilation.
                x = x.clone()
            if cuda:
                torch.compiler.cudagraph_mark_step_begin()
            # A CUDA graph's outputs live in buffers the next replay overwrites.
            return tuple(o.clone() for o in fn(x))

    details = {"buckets": list(buckets), "compile_s": round(time.perf_counter() - t0, 2)}
    return Engine(
        "compiled",
        ctx.precision,
        run,
        pad_sizes=buckets,
        details=details,
        max_batch=buckets[-1],
        output_type=ctx.kind.output_type,
    )


def _aoti_build(ctx: BuildContext):
    wrapper = PrecisionWrapper(
        copy.deepcopy(ctx.model).to(memory_format=torch.channels_last),
        ctx.device.type,
        _DTYPES[ctx.precision],
    ).eval()

    def build(path) -> None:
        ep = export_dynamic_batch(wrapper, ctx)
        # Freezing folds BN into convolutions and pre-packs weights for oneDNN on CPU.
        torch._inductor.aoti_compile_and_package(
            ep, package_path=str(path), inductor_configs={"freezing": True}
        )

    return build


@BACKENDS.register(
    "inductor",
    description="torch.export + AOTInductor package, cached on disk (CPU; CUDA where it loads)",
    tags=(ISOLATED,),
)
def inductor(ctx: BuildContext) -> Engine:
    """An AOTInductor package with a dynamic batch dimension, built once and cached.

    The exported graph includes channels_last and the precision cast. The package is built
    and first loaded in the child-process check, so here it is normally a cache hit.
    """
    cache: EngineCache = ctx.cache or EngineCache()
    fields = cache_fields(ctx, "inductor")
    path = cache.lookup("inductor", fields, ".pt2")
    details: dict[str, object] = {"cache_hit": path is not None}
    if path is None:
        t0 = time.perf_counter()
        log.info("inductor: compiling %s engine (once per checkpoint and machine)", ctx.precision)
        path = cache.store("inductor", fields, ".pt2", _aoti_build(ctx))
        details["compile_s"] = round(time.perf_counter() - t0, 1)
    runner = torch._inductor.aoti_load_package(str(path))
    details["path"] = str(path)

    def fn(x: torch.Tensor):
        # The compiled code assumes the exported example's (contiguous NCHW) strides and
        # does not check them: a channels_last view would be read as garbage.
        return runner(x.contiguous())

    return Engine(
        "inductor",
        ctx.precision,
        fn,
        details=details,
        max_batch=ctx.max_batch,
        output_type=ctx.kind.output_type,
    )


def tensorrt_available() -> bool:
    """True when CUDA and the ``torch_tensorrt`` package are both present."""
    return torch.cuda.is_available() and importlib.util.find_spec("torch_tensorrt") is not None


TENSORRT_MISSING = (
    "--backend tensorrt needs CUDA and TensorRT (Torch-TensorRT); install the extra with "
    "`pip install 'agr-batch[tensorrt]'` on a machine with an NVIDIA GPU"
)


@BACKENDS.register(
    "tensorrt",
    description="Torch-TensorRT dynamo path, fp16, cached on disk (CUDA only)",
    tags=(ISOLATED,),
)
def tensorrt(ctx: BuildContext) -> Engine:
    """A TensorRT engine built by Torch-TensorRT's dynamo frontend, saved and reloaded.

    Runs only where TensorRT is installed (the ``tensorrt`` extra and an NVIDIA GPU).
    Inputs are padded to fixed batch sizes, the engine's optimisation profile covers
    1..``max_batch`` and is tuned for the run's batch size.
    """
    if not tensorrt_available() or ctx.device.type != "cuda":
        raise BackendUnavailableError(TENSORRT_MISSING)
    import torch_tensorrt  # type: ignore[import-not-found]

    shape = ctx.sample_shape
    dtype = torch.float16 if ctx.precision == "fp16" else torch.float32
    cache: EngineCache = ctx.cache or EngineCache()
    fields = cache_fields(ctx, "tensorrt")
    path = cache.lookup("tensorrt", fields, ".ep")

    if path is None:
        # Explicit typing (the default since Torch-TensorRT 2.9) follows the model's dtypes,
        # so (a copy of) the model is cast to half instead of passing enabled_precisions.
        model = copy.deepcopy(ctx.model).to(ctx.device, dtype=dtype).eval()
        trt_input = torch_tensorrt.Input(
            min_shape=(1, *shape),
            opt_shape=(ctx.opt_batch, *shape),
            max_shape=(ctx.max_batch, *shape),
            dtype=dtype,
        )

        def build(tmp) -> None:
            trt_gm = torch_tensorrt.compile(model, ir="dynamo", inputs=[trt_input])
            example = torch.randn(ctx.opt_batch, *shape, device=ctx.device, dtype=dtype)
            torch_tensorrt.save(
                trt_gm, str(tmp), output_format="exported_program", arg_inputs=[example]
            )

        path = cache.store("tensorrt", fields, ".ep", build)
    module = torch.export.load(str(path)).module()

    def fn(x: torch.Tensor):
        return module(x.to(dtype).contiguous())

    return Engine(
        "tensorrt",
        ctx.precision,
        fn,
        pad_sizes=pad_sizes_for(ctx.max_batch),
        details={"path": str(path)},
        output_type=ctx.kind.output_type,
    )
