"""One training epoch and one evaluation pass, as plain functions (torchvision-reference style).

The loss is a weighted sum of one cross-entropy per head. Mixed precision is used on CUDA
only (bfloat16 where supported, else float16 with a gradient scaler).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from agr_batch.labels import HEADS, VOCABULARIES
from agr_batch.models import HeadLogits
from trainer.data import Batch, SkippedImage
from trainer.evaluators import AccuracyEvaluator, Evaluator

log = logging.getLogger(__name__)


class MultiHeadLoss(nn.Module):
    """Weighted sum of the three heads' cross-entropies.

    Args:
        head_weights: Weight of each head's loss (age, gender, race).
        class_weights: Optional per-class weights per head (e.g. for age imbalance).
    """

    def __init__(
        self,
        *,
        head_weights: Sequence[float] = (1.0, 1.0, 1.0),
        class_weights: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if len(head_weights) != len(HEADS) or any(w < 0 for w in head_weights):
            raise ValueError(f"head_weights must be 3 non-negative numbers, got {head_weights}")
        self.register_buffer("head_weights", torch.tensor([float(w) for w in head_weights]))
        for h in HEADS:
            weight = None if class_weights is None else class_weights.get(h)
            if weight is not None and weight.shape != (len(VOCABULARIES[h]),):
                raise ValueError(f"{h} class weights must have {len(VOCABULARIES[h])} values")
            self.register_buffer(f"{h}_class_weights", None if weight is None else weight.float())

    def forward(
        self, logits: HeadLogits, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the weighted total loss and the (3,) per-head losses (not weighted)."""
        losses = torch.stack(
            [
                F.cross_entropy(
                    logits[k].float(), targets[:, k], weight=getattr(self, f"{h}_class_weights")
                )
                for k, h in enumerate(HEADS)
            ]
        )
        return (losses * self.head_weights).sum(), losses


def balanced_class_weights(counts: Sequence[int]) -> torch.Tensor:
    """``n / (k · count)`` per class (scikit-learn's "balanced"); absent classes get 0."""
    n = sum(counts)
    k = sum(1 for c in counts if c > 0)
    return torch.tensor([n / (k * c) if c > 0 else 0.0 for c in counts], dtype=torch.float32)


@dataclass(frozen=True)
class StepStats:
    """Running statistics after one training step (for progress displays).

    Attributes:
        epoch: 1-based epoch.
        step: 1-based step within the epoch.
        steps: Steps in the epoch.
        loss: Running mean of the weighted loss.
        head_loss: Running mean loss per head.
        accuracy: Running accuracy per head.
        n: Samples seen so far this epoch.
    """

    epoch: int
    step: int
    steps: int
    loss: float
    head_loss: dict[str, float]
    accuracy: dict[str, float]
    n: int


@dataclass(frozen=True)
class EpochStats:
    """Statistics of one pass over a loader.

    Attributes:
        loss: Mean weighted loss per sample.
        head_loss: Mean loss per head and sample.
        accuracy: Accuracy per head.
        n: Samples used.
        steps: Batches.
        seconds: Wall time.
        skipped: Images that could not be read.
        metrics: Further evaluator results (evaluation only).
    """

    loss: float
    head_loss: dict[str, float]
    accuracy: dict[str, float]
    n: int
    steps: int
    seconds: float
    skipped: tuple[SkippedImage, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        """Mean accuracy over the three heads."""
        return sum(self.accuracy.values()) / len(self.accuracy)


class _Running:
    """Sums of the weighted loss, per-head losses and hits."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.head_loss = [0.0] * len(HEADS)
        self.correct = [0] * len(HEADS)
        self.n = 0

    def add(
        self, loss: torch.Tensor, head_loss: torch.Tensor, logits: HeadLogits, targets: torch.Tensor
    ) -> None:
        b = int(targets.shape[0])
        self.loss += float(loss) * b
        for k, value in enumerate(head_loss.tolist()):
            self.head_loss[k] += value * b
        for k, head_logits in enumerate(logits):
            self.correct[k] += int((head_logits.argmax(1) == targets[:, k]).sum())
        self.n += b

    def means(self) -> tuple[float, dict[str, float], dict[str, float]]:
        n = self.n or 1
        nan = float("nan")
        return (
            self.loss / n if self.n else nan,
            {h: self.head_loss[k] / n if self.n else nan for k, h in enumerate(HEADS)},
            {h: self.correct[k] / n if self.n else nan for k, h in enumerate(HEADS)},
        )


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> Any:
    if amp_dtype is None or device.type != "cuda":
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    criterion: MultiHeadLoss,
    *,
    device: torch.device,
    epoch: int = 1,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    on_step: Callable[[StepStats], None] | None = None,
) -> EpochStats:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: The multi-head model (put in train mode here).
        loader: Batches from :func:`trainer.data.make_loader`.
        optimizer: Its optimizer.
        criterion: The multi-head loss.
        device: Where the model lives.
        epoch: 1-based epoch number, for ``on_step``.
        amp_dtype: Autocast dtype on CUDA, or ``None`` for full precision.
        scaler: Gradient scaler for float16 autocast.
        on_step: Called after every step with running statistics.

    Returns:
        Per-sample means over the epoch.
    """
    model.train()
    running = _Running()
    skipped: list[SkippedImage] = []
    steps = len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
    start = time.perf_counter()
    step = 0
    for step, batch in enumerate(loader, start=1):
        skipped.extend(batch.skipped)
        if len(batch) == 0:
            continue
        images = batch.images.to(device, non_blocking=True)
        targets = batch.targets.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(images)
            loss, head_loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # float16: the scaler skips steps with non-finite gradients
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}, step {step}: loss is {float(loss)}")
            loss.backward()
            optimizer.step()
        running.add(loss.detach(), head_loss.detach(), HeadLogits(*logits), targets)
        if on_step is not None:
            mean, head_mean, acc = running.means()
            on_step(StepStats(epoch, step, steps, mean, head_mean, acc, running.n))
    mean, head_mean, acc = running.means()
    return EpochStats(
        loss=mean,
        head_loss=head_mean,
        accuracy=acc,
        n=running.n,
        steps=step,
        seconds=time.perf_counter() - start,
        skipped=tuple(skipped),
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    device: torch.device,
    criterion: MultiHeadLoss | None = None,
    evaluators: Sequence[Evaluator] = (),
    amp_dtype: torch.dtype | None = None,
) -> EpochStats:
    """Run ``model`` over ``loader`` in eval mode; loss, accuracy and evaluator results.

    Args:
        model: The multi-head model (put in eval mode here).
        loader: Batches from :func:`trainer.data.make_loader` (no augmentation).
        device: Where the model lives.
        criterion: Loss to report; ``None`` reports ``nan`` losses.
        evaluators: Further evaluators; their merged results go to ``metrics``.
        amp_dtype: Autocast dtype on CUDA, or ``None`` for full precision.

    Returns:
        Loss, accuracy per head and evaluator results.
    """
    model.eval()
    accuracy = AccuracyEvaluator()
    for e in evaluators:
        e.reset()
    total_loss = 0.0
    head_loss = [0.0] * len(HEADS)
    skipped: list[SkippedImage] = []
    start = time.perf_counter()
    steps = 0
    for batch in loader:
        steps += 1
        skipped.extend(batch.skipped)
        if len(batch) == 0:
            continue
        images = batch.images.to(device, non_blocking=True)
        targets = batch.targets.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            out = model(images)
        logits = HeadLogits(*(t.float() for t in out))
        if criterion is not None:
            loss, per_head = criterion(logits, targets)
            b = int(targets.shape[0])
            total_loss += float(loss) * b
            for k, value in enumerate(per_head.tolist()):
                head_loss[k] += value * b
        accuracy.process(logits, targets)
        for e in evaluators:
            e.process(logits, targets)
    acc = accuracy.evaluate()
    n = acc["n"]
    metrics: dict[str, Any] = {}
    for e in evaluators:
        metrics.update(e.evaluate())
    has_loss = criterion is not None and n > 0
    return EpochStats(
        loss=total_loss / n if has_loss else float("nan"),
        head_loss={h: head_loss[k] / n if has_loss else float("nan") for k, h in enumerate(HEADS)},
        accuracy=acc["accuracy"],
        n=n,
        steps=steps,
        seconds=time.perf_counter() - start,
        skipped=tuple(skipped),
        metrics=metrics,
    )
