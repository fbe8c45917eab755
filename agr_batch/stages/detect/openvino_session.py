"""CenterFace's ONNX graph on OpenVINO's CPU plugin, in bf16 where the CPU computes it natively.

On x86 CPUs with bf16 instructions (AVX-512 BF16, AMX) OpenVINO runs the detector about twice
as fast as onnxruntime in fp32, which has no bf16 convolutions; the same faces come out and
landmarks move by well under a pixel on video faces (BENCHMARKS.md, tests). Where the CPU has
no bf16, OpenVINO computes in fp32 and is no faster than onnxruntime, so ``auto`` does not
pick it there.

:class:`OpenVinoSession` offers the one method of onnxruntime's ``InferenceSession`` that
:class:`~agr_batch.stages.detect.centerface.CenterFace` calls, so the detector's resizing
and decoding are shared.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]

_HOT = 16  # calls with one input shape before it gets a network of its own
_SHAPES_KEPT = 4  # such networks kept


def available() -> bool:
    """Whether the ``openvino`` package imports here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _core() -> Any:
    """One OpenVINO runtime per process (it loads its plugins once; compiling is thread-safe)."""
    import openvino as ov

    return ov.Core()


@functools.cache
def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively on this CPU (else it emulates)."""
    if not available():
        return False
    try:
        caps = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:  # no CPU plugin
        return False
    return "BF16" in caps


class OpenVinoSession:
    """CenterFace's network on OpenVINO, called like an onnxruntime session.

    One network takes any input shape; a new shape costs ~30 ms once. A shape seen
    :data:`_HOT` times (the frames of a video share one) gets a network compiled for it
    alone (~0.13 s once), 13 % faster per call than the shape-agnostic one; the last few are
    kept. Image folders of many sizes thus never compile per image.

    Args:
        model: The ONNX model, serialised.
        threads: Inference threads; the CPU plugin's threads are not pinned to cores, since
            they share the cores with the decoder's.
        precision: ``bf16`` asks for bf16 inference (honoured only where the CPU computes
            it natively; :attr:`precision` says what was used), ``fp32`` keeps fp32.
    """

    def __init__(self, model: bytes, *, threads: int, precision: Precision) -> None:
        self._core = _core()
        self._model = self._core.read_model(model)  # parsed once; reshaped copies per shape
        self._config = {
            "INFERENCE_NUM_THREADS": int(threads),
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        self._any_shape = self._compile(None)
        self._fixed: OrderedDict[tuple[int, ...], tuple[Any, Any]] = OrderedDict()
        self._uses: dict[tuple[int, ...], int] = {}
        used = str(self._any_shape[0].get_property("INFERENCE_PRECISION_HINT"))
        self.precision: str = "bf16" if "bf16" in used or "bfloat16" in used else "fp32"
        logger.info("centerface on OpenVINO %s, %d thread(s)", self.precision, threads)

    def get_providers(self) -> list[str]:
        """Named as onnxruntime names its providers, for the recorded configuration."""
        return [f"OpenVINO CPU ({self.precision})"]

    def run(self, names: Sequence[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs ``names`` for the one input in ``feed``, as onnxruntime returns them."""
        (blob,) = feed.values()
        return self._infer(self._network(tuple(blob.shape)), names, blob)

    def run_any_shape(
        self, names: Sequence[str], feed: Mapping[str, np.ndarray]
    ) -> list[np.ndarray]:
        """:meth:`run` on the shape-agnostic network, however often the shape recurs.

        For inputs whose shape changes from frame to frame (tiles around faces): compiling
        a network per shape (~0.13 s of CPU each) costs more than it saves: a 60 s 720p
        run took 2.58 s with one per tile shape, 2.37 s without.
        """
        (blob,) = feed.values()
        return self._infer(self._any_shape, names, blob)

    @staticmethod
    def _infer(
        network: tuple[Any, Any, dict[str, int]], names: Sequence[str], blob: np.ndarray
    ) -> list[np.ndarray]:
        compiled, request, outputs = network
        result = request.infer({0: np.ascontiguousarray(blob)})
        # The request reuses its output buffers on the next call: copy.
        return [np.array(result[compiled.outputs[outputs[name]]]) for name in names]

    def _compile(self, shape: tuple[int, ...] | None) -> tuple[Any, Any, dict[str, int]]:
        model = self._model
        if shape is not None:
            model = model.clone()
            model.reshape({0: list(shape)})
        compiled = self._core.compile_model(model, "CPU", self._config)
        outputs = {port.get_any_name(): i for i, port in enumerate(compiled.outputs)}
        return compiled, compiled.create_infer_request(), outputs

    def _network(self, shape: tuple[int, ...]) -> tuple[Any, Any, dict[str, int]]:
        if shape in self._fixed:
            self._fixed.move_to_end(shape)
            return self._fixed[shape]
        uses = self._uses[shape] = self._uses.get(shape, 0) + 1
        if uses < _HOT:
            if len(self._uses) > 64:  # forget rarely seen shapes (one per image size)
                self._uses = {shape: uses}
            return self._any_shape
        self._fixed[shape] = self._compile(shape)
        while len(self._fixed) > _SHAPES_KEPT:
            self._fixed.popitem(last=False)
        return self._fixed[shape]
