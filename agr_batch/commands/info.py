"""``agr-batch info``: describe a checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agr_batch.checkpoint import describe_model, load_checkpoint
from agr_batch.models import count_parameters, gflops_per_face


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``agr-batch info`` reports."""

    path: str
    arch: str
    overrides: dict[str, Any]
    parameters: int
    gflops_per_face: float
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    alignment: str
    padding: float
    labels: dict[str, tuple[str, ...]]
    training: dict[str, Any]
    format_version: int
    tool_version: str
    created: str
    weights_sha256: str
    file_sha256: str
    dataset: str | None
    synthetic: bool | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def to_text(self) -> str:
        """Human-readable lines; a synthetic model's start with a banner that says so."""
        lines = []
        if self.synthetic:
            lines += [
                "!" * 78,
                "!! SYNTHETIC MODEL: trained on `agr-train synth` cartoon faces, not on photos",
                "!! of people. Its age, gender and race labels are MEANINGLESS on real faces,",
                "!! and its validation accuracy below is measured on synthetic faces.",
                "!! For real labels train on FairFace (README: Getting a real model).",
                "!" * 78,
            ]
        lines += [
            f"checkpoint    {self.path}",
            f"arch          {self.arch} {self.overrides or ''}".rstrip(),
            f"parameters    {self.parameters:,} ({self.parameters / 1e6:.2f} M)",
            f"GFLOPs/face   {self.gflops_per_face:.3f}",
            f"input         {self.input_size[0]}x{self.input_size[1]} RGB, "
            f"mean {self.mean}, std {self.std}",
            f"alignment     {self.alignment}, padding {self.padding}",
        ]
        for head, names in self.labels.items():
            lines.append(f"{head + ' labels':<14}{', '.join(names)}")
        if self.synthetic is None:
            data = f"{self.dataset} (not recorded whether synthetic)" if self.dataset else None
        else:
            data = f"{self.dataset} ({'SYNTHETIC' if self.synthetic else 'not synthetic'})"
        lines.append(f"{'trained on':<14}{data or 'not recorded'}")
        for key, value in self.training.items():
            lines.append(f"{'training':<14}{key}: {value}")
        lines += [
            f"format        v{self.format_version}, written by agr-batch {self.tool_version} "
            f"at {self.created}",
            f"weights hash  {self.weights_sha256}",
            f"file hash     {self.file_sha256}",
        ]
        return "\n".join(lines)


def checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Load ``path`` and summarise it."""
    ckpt = load_checkpoint(path)
    meta = ckpt.meta
    described = describe_model(meta)
    return CheckpointInfo(
        path=str(path),
        arch=meta.arch,
        overrides=dict(meta.overrides),
        parameters=count_parameters(ckpt.model),
        gflops_per_face=gflops_per_face(ckpt.model, meta.preprocess.input_size),
        input_size=meta.preprocess.input_size,
        mean=meta.preprocess.mean,
        std=meta.preprocess.std,
        alignment=meta.preprocess.alignment,
        padding=meta.preprocess.padding,
        labels=dict(meta.labels),
        training=dict(meta.training),
        format_version=meta.format_version,
        tool_version=meta.tool_version,
        created=meta.created,
        weights_sha256=meta.weights_sha256,
        file_sha256=ckpt.file_sha256,
        dataset=described["dataset"],
        synthetic=described["synthetic"],
    )
