"""The models engines are built for: the classifier and the CenterFace detector.

An engine backend does not care what network it compiles, but three things do depend on it:
how a (child) process rebuilds the module from a file, what a representative input looks
like for the child-process check, and how the engine's outputs are compared with eager fp32.
A :class:`ModelKind` holds those three, registered by name; a :class:`ModelSource` names a
kind and a file, and is everything a child process needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from agr_batch.models import HeadLogits
from agr_batch.registry import Registry

__all__ = ["KINDS", "CenterFaceMaps", "ModelKind", "ModelSource", "model_kind"]


class CenterFaceMaps(NamedTuple):
    """CenterFace's outputs (stride 4): heatmap, log box size, centre offset, landmarks."""

    heatmap: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    landmarks: torch.Tensor


@dataclass(frozen=True)
class ModelSource:
    """The file an engine is built from, and the shape of one input.

    Attributes:
        kind: Registered :class:`ModelKind` name (``classifier``, ``centerface``).
        path: Checkpoint or ONNX file; a child process rebuilds the module from it.
        sha256: The file's SHA-256 (part of every engine's cache key).
        sample_shape: (C, H, W) of one input.
    """

    kind: str
    path: Path
    sha256: str
    sample_shape: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the child-process request)."""
        return {
            "kind": self.kind,
            "path": str(self.path),
            "sha256": self.sha256,
            "sample_shape": list(self.sample_shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSource:
        """Inverse of :meth:`to_dict`."""
        c, h, w = (int(v) for v in d["sample_shape"])
        return cls(str(d["kind"]), Path(d["path"]), str(d["sha256"]), (c, h, w))


@dataclass(frozen=True)
class ModelKind:
    """What engines need to know about one kind of network.

    Attributes:
        name: Registered name.
        load: ``load(path, device)`` → the fp32 module in eval mode.
        example: ``example(n, sample_shape, generator)`` → a representative CPU batch.
        compare: ``compare(got, want)`` → (agreement, largest difference) of two outputs.
        output_type: Wraps an engine's output tensors (a NamedTuple).
        max_diff: Largest difference the child-process check accepts.
        min_agreement: Lowest agreement the check accepts.
    """

    name: str
    load: Callable[[Path, torch.device], nn.Module]
    example: Callable[[int, tuple[int, int, int], torch.Generator], torch.Tensor]
    compare: Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], tuple[float, float]]
    output_type: Callable[..., Any]
    max_diff: float
    min_agreement: float


KINDS: Registry[ModelKind] = Registry("engine model kind")


def model_kind(name: str) -> ModelKind:
    """The registered kind ``name`` (unknown names fail loudly)."""
    return KINDS.create(name)


# ---------------------------------------------------------------------------------------------
# Classifier


def _load_classifier(path: Path, device: torch.device) -> nn.Module:
    from agr_batch.checkpoint import load_checkpoint

    return load_checkpoint(path, device=device).model


def _classifier_example(n: int, shape: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    # Normalised chips are roughly standard normal.
    return torch.randn(n, *shape, generator=gen)


def _compare_logits(
    got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]
) -> tuple[float, float]:
    agreement, diff = 1.0, 0.0
    for g, w in zip(got, want, strict=True):
        g, w = g.float(), w.float()
        if g.shape != w.shape or not torch.isfinite(g).all():
            return 0.0, float("inf")
        agreement = min(agreement, (g.argmax(1) == w.argmax(1)).float().mean().item())
        diff = max(diff, (g.softmax(1) - w.softmax(1)).abs().max().item())
    return agreement, diff


@KINDS.register("classifier", description="age / gender / race CNN from a checkpoint")
def _classifier() -> ModelKind:
    # Low precision moves probabilities by about 1e-3 (fp16) to 2e-2 (bf16) on random inputs,
    # a broken engine by far more. Random inputs give near-ties that bf16 may flip (0.93
    # label agreement measured for a trained ``tiny``), so the probability bound is the test.
    return ModelKind(
        "classifier",
        _load_classifier,
        _classifier_example,
        _compare_logits,
        HeadLogits,
        max_diff=0.1,
        min_agreement=0.5,
    )


# ---------------------------------------------------------------------------------------------
# CenterFace


def _load_centerface(path: Path, device: torch.device) -> nn.Module:
    from agr_batch.stages.detect.centerface_net import load_centerface_net

    return load_centerface_net(path).to(device)


@functools.lru_cache(maxsize=4)
def _photo(height: int, width: int) -> torch.Tensor | None:
    """The six-face group photo from insightface, fitted into (height, width), RGB 0–255."""
    try:
        from agr_batch.samples import photo

        image = torch.from_numpy(photo("t1.jpg").copy()).permute(2, 0, 1)[None].float()
    except Exception:  # no photo available: the check falls back to noise
        return None
    scale = min(height / image.shape[2], width / image.shape[3])
    h, w = max(1, int(image.shape[2] * scale)), max(1, int(image.shape[3] * scale))
    small = torch.nn.functional.interpolate(image, size=(h, w), mode="bilinear", antialias=True)
    canvas = torch.zeros(1, 3, height, width)
    canvas[:, :, :h, :w] = small
    return canvas


def _centerface_example(n: int, shape: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    # Faces make the heatmap light up, so the check compares real detections, not noise.
    noise = torch.rand(n, *shape, generator=gen) * 255.0
    photo = _photo(shape[1], shape[2])
    if photo is None:
        return noise
    return (photo.expand(n, -1, -1, -1) * 0.9 + noise * 0.1).contiguous()


def _compare_maps(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> tuple[float, float]:
    g_heat, w_heat = got[0].float(), want[0].float()
    if g_heat.shape != w_heat.shape or not all(torch.isfinite(g.float()).all() for g in got):
        return 0.0, float("inf")
    diff = (g_heat - w_heat).abs().max().item()
    # Agreement: cells above the detection threshold in either map that are above in both.
    g_on, w_on = g_heat > 0.5, w_heat > 0.5
    union = (g_on | w_on).sum().item()
    agreement = (g_on & w_on).sum().item() / union if union else 1.0
    # Where faces are, the regressed maps must match too (scaled: they are logs and offsets).
    mask = w_on.expand_as(want[1])
    for g, w in zip(got[1:], want[1:], strict=True):
        m = w_on.expand_as(w) if w.shape[1] != mask.shape[1] else mask
        if m.any():
            diff = max(diff, (g.float() - w.float())[m].abs().max().item() / 10.0)
    return agreement, diff


@KINDS.register("centerface", description="CenterFace face detector from its ONNX file")
def _centerface() -> ModelKind:
    # fp16 moved CenterFace's outputs by at most 0.04 on an H200.
    return ModelKind(
        "centerface",
        _load_centerface,
        _centerface_example,
        _compare_maps,
        CenterFaceMaps,
        max_diff=0.1,
        min_agreement=0.9,
    )
