"""Streaming evaluators with detectron2's ``reset`` / ``process`` / ``evaluate`` protocol.

Each evaluator sees batches of logits (:class:`agr_batch.models.HeadLogits`) and targets
((B, 3) class indices: age, gender, race), keeps only counts, and returns a JSON-ready dict.
Accuracies of empty sets are ``nan``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from agr_batch.labels import AGE, GENDER, HEADS, RACE, VOCABULARIES
from agr_batch.models import HeadLogits

ECE_BINS = 15


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


class Evaluator(ABC):
    """Accumulates statistics over batches; :meth:`evaluate` summarises them."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every batch seen so far."""

    @abstractmethod
    def process(self, logits: HeadLogits, targets: torch.Tensor) -> None:
        """Add one batch.

        Args:
            logits: Scores per head, (B, classes) each.
            targets: (B, 3) class indices in :data:`agr_batch.labels.HEADS` order.
        """

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """Summarise everything processed since the last :meth:`reset`."""


class AccuracyEvaluator(Evaluator):
    """Top-1 accuracy per head and their mean (the checkpoint selection score)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.correct = [0] * len(HEADS)
        self.total = 0

    def process(self, logits: HeadLogits, targets: torch.Tensor) -> None:
        """Add one batch."""
        for k, head_logits in enumerate(logits):
            self.correct[k] += int((head_logits.argmax(1) == targets[:, k]).sum())
        self.total += int(targets.shape[0])

    def evaluate(self) -> dict[str, Any]:
        """``{"accuracy": {head: acc}, "mean_accuracy": m, "n": count}``."""
        acc = {h: _ratio(self.correct[k], self.total) for k, h in enumerate(HEADS)}
        return {"accuracy": acc, "mean_accuracy": sum(acc.values()) / len(acc), "n": self.total}


class ConfusionEvaluator(Evaluator):
    """Confusion matrix per head: ``matrix[true][predicted]`` counts."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.matrices = {
            h: torch.zeros(len(VOCABULARIES[h]), len(VOCABULARIES[h]), dtype=torch.long)
            for h in HEADS
        }

    def process(self, logits: HeadLogits, targets: torch.Tensor) -> None:
        """Add one batch."""
        for k, h in enumerate(HEADS):
            n = len(VOCABULARIES[h])
            flat = targets[:, k].cpu() * n + logits[k].argmax(1).cpu()
            self.matrices[h] += torch.bincount(flat, minlength=n * n).view(n, n)

    def evaluate(self) -> dict[str, Any]:
        """``{"confusion": {head: {"labels": [...], "matrix": [[...]]}}}`` (rows: truth)."""
        return {
            "confusion": {
                h: {"labels": list(VOCABULARIES[h]), "matrix": m.tolist()}
                for h, m in self.matrices.items()
            }
        }


def _group_keys(targets: torch.Tensor) -> dict[str, list[str]]:
    race = targets[:, 2].tolist()
    gender = targets[:, 1].tolist()
    age = targets[:, 0].tolist()
    return {
        "race_gender": [f"{RACE[r]} / {GENDER[g]}" for r, g in zip(race, gender, strict=True)],
        "age": [AGE[a] for a in age],
    }


def _group_names() -> dict[str, list[str]]:
    return {
        "race_gender": [f"{r} / {g}" for r in RACE for g in GENDER],
        "age": list(AGE),
    }


class GroupAccuracyEvaluator(Evaluator):
    """Accuracy of every head within groups, and the worst-group gap.

    Groupings: ``race_gender`` (each race × gender, e.g. ``"Indian / Female"``) and ``age``
    (each age bin). For each grouping and head, the gap is the best group's accuracy minus
    the worst group's, over groups with at least ``min_count`` samples.

    Args:
        min_count: Smallest group that takes part in the gap.
    """

    def __init__(self, *, min_count: int = 1) -> None:
        self.min_count = max(1, min_count)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.count: dict[str, dict[str, int]] = {g: {} for g in _group_names()}
        self.correct: dict[str, dict[str, list[int]]] = {g: {} for g in _group_names()}

    def process(self, logits: HeadLogits, targets: torch.Tensor) -> None:
        """Add one batch."""
        hits = torch.stack(
            [logits[k].argmax(1).cpu() == targets[:, k].cpu() for k in range(len(HEADS))], 1
        ).tolist()
        for grouping, keys in _group_keys(targets.cpu()).items():
            for key, row in zip(keys, hits, strict=True):
                self.count[grouping][key] = self.count[grouping].get(key, 0) + 1
                acc = self.correct[grouping].setdefault(key, [0] * len(HEADS))
                for k, hit in enumerate(row):
                    acc[k] += int(hit)

    def evaluate(self) -> dict[str, Any]:
        """``{"per_group": {grouping: {"groups": {...}, "worst_group_gap": {...}}}}``."""
        result: dict[str, Any] = {}
        for grouping, names in _group_names().items():
            groups: dict[str, Any] = {}
            for name in names:
                n = self.count[grouping].get(name, 0)
                correct = self.correct[grouping].get(name, [0] * len(HEADS))
                groups[name] = {
                    "n": n,
                    "accuracy": {h: _ratio(correct[k], n) for k, h in enumerate(HEADS)},
                }
            gaps: dict[str, Any] = {}
            for h in HEADS:
                scored = [
                    (g["accuracy"][h], name)
                    for name, g in groups.items()
                    if g["n"] >= self.min_count
                ]
                if not scored:
                    gaps[h] = {"gap": float("nan"), "best": None, "worst": None}
                    continue
                best = max(scored, key=lambda t: t[0])
                worst = min(scored, key=lambda t: t[0])
                gaps[h] = {
                    "gap": best[0] - worst[0],
                    "best": best[1],
                    "best_accuracy": best[0],
                    "worst": worst[1],
                    "worst_accuracy": worst[0],
                }
            result[grouping] = {"groups": groups, "worst_group_gap": gaps}
        return {"per_group": result}


class CalibrationEvaluator(Evaluator):
    """Expected calibration error per head (Guo et al. 2017), with its reliability bins.

    Confidence is the top softmax probability; bins split (0, 1] into ``bins`` equal-width
    intervals ``(lo, hi]``; ECE = Σ_b (|B_b| / n) · |accuracy(B_b) − confidence(B_b)|.

    Args:
        bins: Number of confidence bins (15 is the standard choice).
    """

    def __init__(self, *, bins: int = ECE_BINS) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = bins
        self.edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        zeros = torch.zeros(self.bins, dtype=torch.float64)
        self.count = {h: zeros.clone() for h in HEADS}
        self.conf_sum = {h: zeros.clone() for h in HEADS}
        self.correct_sum = {h: zeros.clone() for h in HEADS}

    def process(self, logits: HeadLogits, targets: torch.Tensor) -> None:
        """Add one batch."""
        for k, h in enumerate(HEADS):
            probs = torch.softmax(logits[k].detach().double().cpu(), dim=1)
            conf, pred = probs.max(1)
            correct = (pred == targets[:, k].cpu()).double()
            # bucketize(right=False) puts x in bin i when edges[i] < x <= edges[i + 1].
            idx = torch.bucketize(conf, self.edges[1:-1], right=False)
            self.count[h] += torch.bincount(idx, minlength=self.bins).double()
            self.conf_sum[h] += torch.bincount(idx, weights=conf, minlength=self.bins)
            self.correct_sum[h] += torch.bincount(idx, weights=correct, minlength=self.bins)

    def evaluate(self) -> dict[str, Any]:
        """``{"ece": {head: value}, "reliability": {head: [bin, ...]}}``."""
        ece: dict[str, float] = {}
        reliability: dict[str, list[dict[str, Any]]] = {}
        for h in HEADS:
            n = float(self.count[h].sum())
            gaps = (self.correct_sum[h] - self.conf_sum[h]).abs()
            ece[h] = float(gaps.sum() / n) if n else float("nan")
            reliability[h] = [
                {
                    "bin": [float(self.edges[b]), float(self.edges[b + 1])],
                    "n": int(self.count[h][b]),
                    "confidence": _ratio(float(self.conf_sum[h][b]), float(self.count[h][b])),
                    "accuracy": _ratio(float(self.correct_sum[h][b]), float(self.count[h][b])),
                }
                for b in range(self.bins)
            ]
        return {"ece": ece, "reliability": reliability}


class EvaluatorList(Evaluator):
    """Several evaluators run together; their result dicts are merged (keys must not clash)."""

    def __init__(self, evaluators: Iterable[Evaluator]) -> None:
        self.evaluators: Sequence[Evaluator] = tuple(evaluators)

    def reset(self) -> None:
        """Reset every evaluator."""
        for e in self.evaluators:
            e.reset()

    def process(self, logits: HeadLogits, targets: torch.Tensor) -> None:
        """Feed the batch to every evaluator."""
        for e in self.evaluators:
            e.process(logits, targets)

    def evaluate(self) -> dict[str, Any]:
        """Merged results."""
        merged: dict[str, Any] = {}
        for e in self.evaluators:
            result = e.evaluate()
            clash = set(result) & set(merged)
            if clash:
                raise ValueError(f"evaluators report the same keys {sorted(clash)}")
            merged.update(result)
        return merged


def full_evaluator() -> EvaluatorList:
    """Accuracy, confusion matrices, per-group accuracy and calibration together."""
    return EvaluatorList(
        [
            AccuracyEvaluator(),
            ConfusionEvaluator(),
            GroupAccuracyEvaluator(),
            CalibrationEvaluator(),
        ]
    )


def nan_to_none(value: Any) -> Any:
    """Replace NaN floats by ``None`` throughout a JSON-ready structure (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value
