"""A plain epoch loop with hooks: progress bar, metrics table, early stopping, checkpoints.

:class:`TrainLoop` alternates :func:`trainer.engine.train_one_epoch` and
:func:`trainer.engine.evaluate` and calls its hooks around them (detectron2's pattern, one
level simpler: hooks see whole epochs and training steps). All state needed to continue a
run exactly — model, optimizer, scheduler, scaler, loop counters, history and the global
random generators — round-trips through :meth:`TrainLoop.state_dict`; the data order and
augmentation follow from the seed and the epoch number.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from agr_batch.checkpoint import save_checkpoint
from agr_batch.labels import HEADS
from agr_batch.stages.preprocess import PreprocessSpec
from trainer.data import Batch, EpochSampler, SkippedImage, prepare_epoch
from trainer.engine import EpochStats, MultiHeadLoss, StepStats, evaluate, train_one_epoch
from trainer.evaluators import Evaluator
from trainer.runtime import FULL_PRECISION, Precision, capture_rng_state, restore_rng_state

log = logging.getLogger(__name__)

METRIC_COLUMNS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    *(f"train_loss_{h}" for h in HEADS),
    *(f"train_acc_{h}" for h in HEADS),
    "val_loss",
    *(f"val_loss_{h}" for h in HEADS),
    *(f"val_acc_{h}" for h in HEADS),
    "val_mean_acc",
    "lr",
    "best",
    "train_images",
    "val_images",
    "skipped",
    "seconds",
)
"""Columns of ``metrics.csv``, one row per epoch."""


@dataclass
class TrainState:
    """Counters of a run (mutable; saved in ``last.pt``).

    Attributes:
        epoch: Epochs completed.
        best_score: Best mean validation accuracy so far.
        best_epoch: Epoch that reached it (0 before the first epoch).
        bad_epochs: Epochs since the last improvement.
        stop: Set by a hook to end the run after the current epoch.
        stopped_early: Whether early stopping ended the run.
        history: One :data:`METRIC_COLUMNS` row per completed epoch.
        skipped: Unreadable images seen so far, file → reason.
    """

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stop: bool = False
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def observe(self, epoch: int, score: float) -> bool:
        """Record an epoch's score; return whether it is a new best (``nan`` never is)."""
        improved = self.best_epoch == 0 or score > self.best_score
        if improved:
            self.best_score = score
            self.best_epoch = epoch
        return improved

    def state_dict(self) -> dict[str, Any]:
        """Plain-data copy for checkpoints."""
        return {
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stop": self.stop,
            "stopped_early": self.stopped_early,
            "history": [dict(r) for r in self.history],
            "skipped": dict(self.skipped),
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.epoch = int(d["epoch"])
        self.best_score = float(d["best_score"])
        self.best_epoch = int(d["best_epoch"])
        self.bad_epochs = int(d["bad_epochs"])
        self.stop = bool(d["stop"])
        self.stopped_early = bool(d["stopped_early"])
        self.history = [dict(r) for r in d["history"]]
        self.skipped = dict(d["skipped"])


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch produced.

    Attributes:
        epoch: 1-based epoch number.
        train: Training statistics.
        val: Validation statistics.
        lr: Learning rate used during the epoch.
        seconds: Wall time of training and validation.
        improved: Whether the mean validation accuracy is a new best.
    """

    epoch: int
    train: EpochStats
    val: EpochStats
    lr: float
    seconds: float
    improved: bool

    @property
    def score(self) -> float:
        """Checkpoint selection score: mean validation accuracy over the three heads."""
        return self.val.mean_accuracy

    def row(self) -> dict[str, float]:
        """The epoch's ``metrics.csv`` row."""
        r: dict[str, float] = {"epoch": self.epoch, "train_loss": self.train.loss}
        r.update({f"train_loss_{h}": self.train.head_loss[h] for h in HEADS})
        r.update({f"train_acc_{h}": self.train.accuracy[h] for h in HEADS})
        r["val_loss"] = self.val.loss
        r.update({f"val_loss_{h}": self.val.head_loss[h] for h in HEADS})
        r.update({f"val_acc_{h}": self.val.accuracy[h] for h in HEADS})
        r["val_mean_acc"] = self.score
        r["lr"] = self.lr
        r["best"] = int(self.improved)
        r["train_images"] = self.train.n
        r["val_images"] = self.val.n
        r["skipped"] = len(self.train.skipped) + len(self.val.skipped)
        r["seconds"] = round(self.seconds, 3)
        return r


class Hook:
    """Callbacks around the loop; override what you need."""

    def before_train(self, loop: TrainLoop) -> None:
        """Called once before the first epoch (also when resuming)."""

    def before_epoch(self, loop: TrainLoop, epoch: int) -> None:
        """Called before training epoch ``epoch`` (1-based)."""

    def after_step(self, loop: TrainLoop, stats: StepStats) -> None:
        """Called after every optimizer step."""

    def after_epoch(self, loop: TrainLoop, record: EpochRecord) -> None:
        """Called after an epoch's validation, in hook order."""

    def after_train(self, loop: TrainLoop) -> None:
        """Called once when the loop ends, also when it ends with an exception."""


class TrainLoop:
    """Epochs of training and validation with hooks.

    Args:
        model: The model, on ``device``.
        train_loader: Training batches (a loader from :func:`trainer.data.make_loader`).
        val_loader: Validation batches (same kind, not shuffled).
        optimizer: The optimizer.
        criterion: The multi-head loss (on ``device``).
        device: Where the model lives.
        max_epochs: Total epochs of the run (a resumed run continues up to it).
        scheduler: Optional per-epoch learning-rate scheduler.
        precision: Autocast settings.
        scaler: Gradient scaler for float16 autocast.
        evaluators: Extra validation evaluators (their results land in ``record.val``).
        hooks: Hooks, called in order.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        train_loader: Iterable[Batch],
        val_loader: Iterable[Batch],
        optimizer: torch.optim.Optimizer,
        criterion: MultiHeadLoss,
        device: torch.device,
        max_epochs: int,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        precision: Precision = FULL_PRECISION,
        scaler: torch.amp.GradScaler | None = None,
        evaluators: Sequence[Evaluator] = (),
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.model = model
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.optimizer = optimizer
        self.criterion = criterion
        self.device = device
        self.max_epochs = max_epochs
        self.scheduler = scheduler
        self.precision = precision
        self.scaler = scaler
        self.evaluators = tuple(evaluators)
        self.hooks = list(hooks)
        self.state = TrainState()

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that an exact resumption needs."""
        d: dict[str, Any] = {
            "loop": self.state.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng_state(),
        }
        if self.scheduler is not None:
            d["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            d["scaler"] = self.scaler.state_dict()
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (load the weights separately)."""
        self.state.load_state_dict(d["loop"])
        self.optimizer.load_state_dict(d["optimizer"])
        if self.scheduler is not None and "scheduler" in d:
            self.scheduler.load_state_dict(d["scheduler"])
        if self.scaler is not None and "scaler" in d:
            self.scaler.load_state_dict(d["scaler"])
        restore_rng_state(d["rng"])

    def _after_step(self, stats: StepStats) -> None:
        for h in self.hooks:
            h.after_step(self, stats)

    def run_epoch(self, epoch: int) -> EpochRecord:
        """Train and validate epoch ``epoch`` (1-based) and update the state."""
        for loader in (self.train_loader, self.val_loader):
            if isinstance(getattr(loader, "sampler", None), EpochSampler):
                prepare_epoch(loader, epoch)  # type: ignore[arg-type]
        lr = float(self.optimizer.param_groups[0]["lr"])
        train = train_one_epoch(
            self.model,
            self.train_loader,
            self.optimizer,
            self.criterion,
            device=self.device,
            epoch=epoch,
            amp_dtype=self.precision.dtype,
            scaler=self.scaler,
            on_step=self._after_step,
        )
        val = evaluate(
            self.model,
            self.val_loader,
            device=self.device,
            criterion=self.criterion,
            evaluators=self.evaluators,
            amp_dtype=self.precision.dtype,
        )
        if self.scheduler is not None:
            self.scheduler.step()
        improved = self.state.observe(epoch, val.mean_accuracy)
        record = EpochRecord(epoch, train, val, lr, train.seconds + val.seconds, improved)
        self.state.epoch = epoch
        self.state.history.append(record.row())
        for s in (*train.skipped, *val.skipped):
            self.state.skipped.setdefault(s.file, s.reason)
        return record

    def run(self) -> TrainState:
        """Run epochs until ``max_epochs`` or until a hook sets ``state.stop``."""
        try:
            for h in self.hooks:
                h.before_train(self)
            while self.state.epoch < self.max_epochs and not self.state.stop:
                epoch = self.state.epoch + 1
                for h in self.hooks:
                    h.before_epoch(self, epoch)
                record = self.run_epoch(epoch)
                for h in self.hooks:
                    h.after_epoch(self, record)
        finally:
            for h in self.hooks:
                h.after_train(self)
        return self.state


def _fmt_heads(loss: Mapping[str, float], acc: Mapping[str, float]) -> str:
    return " ".join(f"{h} {loss[h]:.3f}/{100 * acc[h]:.1f}%" for h in HEADS)


class ProgressHook(Hook):
    """A tqdm bar per epoch on stderr with the running loss and accuracy of each head.

    Args:
        enabled: Show the bar.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm[Any] | None = None

    def before_epoch(self, loop: TrainLoop, epoch: int) -> None:
        """Open the epoch's bar."""
        if not self.enabled:
            return
        total = len(loop.train_loader) if hasattr(loop.train_loader, "__len__") else None  # type: ignore[arg-type]
        self.bar = tqdm(
            total=total,
            desc=f"epoch {epoch}/{loop.max_epochs}",
            unit="batch",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
            mininterval=0.5,
        )

    def after_step(self, loop: TrainLoop, stats: StepStats) -> None:
        """Advance the bar and show per-head loss/accuracy."""
        if self.bar is None:
            return
        self.bar.set_postfix_str(
            f"loss {stats.loss:.3f} | {_fmt_heads(stats.head_loss, stats.accuracy)}",
            refresh=False,
        )
        self.bar.update(1)

    def after_epoch(self, loop: TrainLoop, record: EpochRecord) -> None:
        """Close the bar."""
        self._close()

    def after_train(self, loop: TrainLoop) -> None:
        """Close a bar left open by an exception."""
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLogHook(Hook):
    """One log line per epoch: training and validation loss/accuracy per head."""

    def after_epoch(self, loop: TrainLoop, record: EpochRecord) -> None:
        """Log the epoch's summary."""
        log.info(
            "epoch %d/%d  train loss %.3f (%s)  val loss %.3f (%s) mean acc %.1f%%%s  %.1f s",
            record.epoch,
            loop.max_epochs,
            record.train.loss,
            _fmt_heads(record.train.head_loss, record.train.accuracy),
            record.val.loss,
            _fmt_heads(record.val.head_loss, record.val.accuracy),
            100 * record.score,
            "  *best*" if record.improved else "",
            record.seconds,
        )


class EarlyStoppingHook(Hook):
    """Stop after ``patience`` epochs without a new best mean validation accuracy.

    Args:
        patience: Epochs to wait; 0 disables early stopping.
    """

    def __init__(self, patience: int) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.patience = patience

    def after_epoch(self, loop: TrainLoop, record: EpochRecord) -> None:
        """Count epochs without improvement and stop when patience runs out."""
        state = loop.state
        state.bad_epochs = 0 if record.improved else state.bad_epochs + 1
        if self.patience and state.bad_epochs >= self.patience and not state.stop:
            state.stop = True
            state.stopped_early = True
            log.info(
                "early stopping after epoch %d: no better mean val accuracy for %d epochs "
                "(best %.1f%% at epoch %d)",
                record.epoch,
                state.bad_epochs,
                100 * state.best_score,
                state.best_epoch,
            )


class MetricsCsvHook(Hook):
    """Appends each epoch's :data:`METRIC_COLUMNS` row to a CSV file.

    On (re)start the file is rewritten from the loop's history, so after a resumption it
    holds exactly the rows of the epochs the checkpoint had completed.

    Args:
        path: The CSV file (``RUNDIR/metrics.csv``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def before_train(self, loop: TrainLoop) -> None:
        """Write the header and the rows already in the history."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(loop.state.history)

    def after_epoch(self, loop: TrainLoop, record: EpochRecord) -> None:
        """Append the epoch's row."""
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n").writerow(record.row())


class CheckpointHook(Hook):
    """Writes ``best.pt`` when the score improves and ``last.pt`` after every epoch.

    ``last.pt`` carries the loop's :meth:`TrainLoop.state_dict` and ``config`` in its
    ``extra`` block, so ``--resume`` can continue the run exactly. Both files are written
    atomically by :func:`agr_batch.checkpoint.save_checkpoint`.

    Args:
        out_dir: The run folder.
        preprocess: Preprocessing stored in the checkpoints.
        summary: Builds the training summary stored in a checkpoint's metadata.
        config: The run's configuration (plain data), stored for resumption checks.
    """

    BEST = "best.pt"
    LAST = "last.pt"

    def __init__(
        self,
        out_dir: str | Path,
        *,
        preprocess: PreprocessSpec,
        summary: Callable[[TrainLoop, EpochRecord], dict[str, Any]],
        config: Mapping[str, Any],
    ) -> None:
        self.out_dir = Path(out_dir)
        self.preprocess = preprocess
        self.summary = summary
        self.config = dict(config)

    def after_epoch(self, loop: TrainLoop, record: EpochRecord) -> None:
        """Save the checkpoints of this epoch."""
        training = self.summary(loop, record)
        if record.improved:
            save_checkpoint(
                self.out_dir / self.BEST,
                loop.model,
                preprocess=self.preprocess,
                training=training,
            )
        extra = {"trainer": loop.state_dict(), "config": self.config}
        save_checkpoint(
            self.out_dir / self.LAST,
            loop.model,
            preprocess=self.preprocess,
            training=training,
            extra=extra,
        )


def skipped_images(state: TrainState) -> tuple[SkippedImage, ...]:
    """The run's unreadable images, sorted by file."""
    return tuple(SkippedImage(f, r) for f, r in sorted(state.skipped.items()))
