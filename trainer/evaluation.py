"""``agr-train eval``: score a checkpoint on one split of a FairFace-layout folder.

Reports accuracy per head, accuracy per group (race × gender, age bin) with the worst-group
gap, confusion matrices and expected calibration error, and formats the paper's Table-1 row
(Model, Age %, Gender %, Race %, Params M). Images go through the checkpoint's own
preprocessing (:func:`agr_batch.stages.preprocess.chips_to_tensor`), as in the processor.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agr_batch.checkpoint import load_checkpoint
from agr_batch.device import resolve_device
from agr_batch.labels import HEADS
from agr_batch.models import count_parameters
from trainer.data import FaceDataset, SkippedImage, default_workers, make_loader, read_split
from trainer.engine import MultiHeadLoss, evaluate
from trainer.evaluators import full_evaluator, nan_to_none
from trainer.runtime import precision_for

log = logging.getLogger(__name__)

TABLE1_HEADER = ("Model", "Age %", "Gender %", "Race %", "Params M")


@dataclass(frozen=True)
class EvalReport:
    """Scores of one checkpoint on one split.

    Attributes:
        model: Architecture name.
        checkpoint: The checkpoint file.
        data: The data folder.
        split: The split scored.
        n: Images scored (unreadable ones excluded).
        params: Parameter count.
        loss: Mean unweighted sum of the heads' cross-entropies.
        accuracy: Accuracy per head.
        per_group: Accuracy per race × gender and per age bin, with worst-group gaps.
        confusion: Confusion matrix per head (rows: true class, columns: predicted).
        ece: Expected calibration error per head (15 bins).
        reliability: The calibration bins per head.
        skipped: Unreadable images.
    """

    model: str
    checkpoint: Path
    data: Path
    split: str
    n: int
    params: int
    loss: float
    accuracy: dict[str, float]
    per_group: dict[str, Any]
    confusion: dict[str, Any]
    ece: dict[str, float]
    reliability: dict[str, Any]
    skipped: tuple[SkippedImage, ...] = ()

    @property
    def params_m(self) -> float:
        """Parameters in millions."""
        return self.params / 1e6

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``nan`` becomes ``null``)."""
        return nan_to_none(
            {
                "model": self.model,
                "checkpoint": str(self.checkpoint),
                "data": str(self.data),
                "split": self.split,
                "n": self.n,
                "params": self.params,
                "params_m": self.params_m,
                "loss": self.loss,
                "accuracy": dict(self.accuracy),
                "mean_accuracy": sum(self.accuracy.values()) / len(self.accuracy),
                "per_group": self.per_group,
                "confusion": self.confusion,
                "ece": dict(self.ece),
                "reliability": self.reliability,
                "skipped": [{"file": s.file, "reason": s.reason} for s in self.skipped],
            }
        )

    def table1_cells(self) -> tuple[str, str, str, str, str]:
        """The Table-1 row's cells: model, age/gender/race accuracy in %, params in M."""
        a = self.accuracy
        return (
            self.model,
            f"{100 * a['age']:.1f}",
            f"{100 * a['gender']:.1f}",
            f"{100 * a['race']:.1f}",
            f"{self.params_m:.2f}",
        )

    def summary_lines(self) -> list[str]:
        """Human-readable calibration and fairness lines (for logs)."""
        lines = [
            "ECE (15 bins): " + ", ".join(f"{h} {self.ece[h]:.3f}" for h in HEADS),
        ]
        for grouping, result in self.per_group.items():
            gaps = result["worst_group_gap"]
            parts = []
            for h in HEADS:
                g = gaps[h]
                if g.get("worst") is None:
                    continue
                parts.append(f"{h} {100 * g['gap']:.1f} pts (worst {g['worst']})")
            lines.append(f"worst-group gap by {grouping}: " + "; ".join(parts))
        return lines


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def evaluate_checkpoint(
    data: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    split: str = "val",
    device: str = "auto",
    batch_size: int = 128,
    workers: int | None = None,
    limit: int | None = None,
) -> EvalReport:
    """Score ``checkpoint`` on ``split`` of the FairFace-layout folder ``data``.

    Args:
        data: The data folder.
        checkpoint: A checkpoint written by ``agr-train fit``.
        split: Split to score (``val`` by default).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: Images per batch.
        workers: Loader worker processes (``None``: :func:`default_workers`).
        limit: Score only the first ``limit`` rows.

    Raises:
        agr_batch.checkpoint.CheckpointError: Unusable checkpoint.
        trainer.data.DataError: Unusable CSV.
        agr_batch.device.DeviceError: Unavailable device.
    """
    samples = read_split(data, split, limit=limit)
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, device=dev)
    loader, _ = make_loader(
        FaceDataset(samples, ckpt.meta.preprocess, augment=None),
        batch_size=batch_size,
        shuffle=False,
        workers=default_workers() if workers is None else workers,
        pin_memory=dev.type == "cuda",
    )
    stats = evaluate(
        ckpt.model,
        loader,
        device=dev,
        criterion=MultiHeadLoss().to(dev),
        evaluators=[full_evaluator()],
        amp_dtype=precision_for(dev).dtype,
    )
    if stats.skipped:
        log.warning("skipped %d unreadable image(s):", len(stats.skipped))
        for s in stats.skipped:
            log.warning("  %s: %s", s.file, s.reason)
    m = stats.metrics
    return EvalReport(
        model=ckpt.meta.arch,
        checkpoint=Path(checkpoint),
        data=Path(data),
        split=split,
        n=stats.n,
        params=count_parameters(ckpt.model),
        loss=stats.loss,
        accuracy=dict(stats.accuracy),
        per_group=m["per_group"],
        confusion=m["confusion"],
        ece=m["ece"],
        reliability=m["reliability"],
        skipped=stats.skipped,
    )


def write_json(report: EvalReport, path: str | os.PathLike[str]) -> Path:
    """Write ``report.to_dict()`` as strict JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    return path
