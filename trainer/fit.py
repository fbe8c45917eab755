"""``agr-train fit``: train one architecture on a FairFace-layout folder.

The recipe follows the seed paper: Adam at 1e-4, batches of 64, up to 100 epochs, the sum of
the three heads' cross-entropies (optionally weighted per head and per class), mild
augmentation of the aligned chips. The run folder receives ``last.pt`` (every epoch, with
everything needed to resume exactly), ``best.pt`` (best mean validation accuracy over the
three heads) and ``metrics.csv``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agr_batch.checkpoint import CheckpointError, default_preprocess, read_payload
from agr_batch.device import DeviceError, resolve_device
from agr_batch.labels import HEADS
from agr_batch.models import RegistryError, create_model
from trainer.augment import AugmentConfig
from trainer.data import (
    FaceDataset,
    SkippedImage,
    default_workers,
    make_loader,
    read_split,
)
from trainer.engine import MultiHeadLoss, balanced_class_weights
from trainer.hooks import (
    CheckpointHook,
    EarlyStoppingHook,
    EpochLogHook,
    EpochRecord,
    Hook,
    MetricsCsvHook,
    ProgressHook,
    TrainLoop,
    skipped_images,
)
from trainer.runtime import precision_for, seed_everything
from trainer.synth import DATASET_NAME, is_synthetic

log = logging.getLogger(__name__)

SCHEDULERS: tuple[str, ...] = ("none", "cosine")

# Settings that must not change when a run is resumed (they change what is trained).
RESUME_KEYS: tuple[str, ...] = (
    "arch",
    "input_size",
    "batch_size",
    "lr",
    "weight_decay",
    "head_weights",
    "class_weights",
    "seed",
    "limit",
    "scheduler",
    "augment",
    "train_split",
    "val_split",
)


class FitError(RuntimeError):
    """A run that cannot start or continue (one-line message)."""


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines a training run.

    Attributes:
        data: FairFace-layout folder (``fairface_label_{train,val}.csv`` + images).
        arch: Registered model name (``agr_batch.models.list_models()``).
        out: Run folder for ``last.pt``, ``best.pt`` and ``metrics.csv``.
        epochs: Maximum number of epochs.
        batch_size: Training batch size.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        workers: Loader worker processes; ``None`` picks :func:`default_workers`.
        resume: Continue from ``out/last.pt`` if it exists.
        patience: Early-stopping patience in epochs (0 disables).
        head_weights: Loss weight of the age, gender and race heads.
        class_weights: Balanced per-class loss weights (counters age imbalance).
        seed: Seed of initialisation, data order, augmentation and dropout.
        input_size: Square input side overriding the model's default.
        limit: Use only the first ``limit`` rows of each split (quick runs).
        scheduler: ``none`` (constant learning rate, the paper's recipe) or ``cosine``.
        augment: Augmentation of training chips.
        amp: Mixed precision on CUDA (never on CPU).
        progress: Show a progress bar on stderr.
        train_split: Name of the training split.
        val_split: Name of the validation split.
    """

    data: Path
    arch: str
    out: Path
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    device: str = "auto"
    workers: int | None = None
    resume: bool = False
    patience: int = 10
    head_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    class_weights: bool = False
    seed: int = 0
    input_size: int | None = None
    limit: int | None = None
    scheduler: str = "none"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: bool = True
    progress: bool = True
    train_split: str = "train"
    val_split: str = "val"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "head_weights", tuple(float(w) for w in self.head_weights))
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr >= 0, f"lr must be >= 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.workers is None or self.workers >= 0, "workers must be >= 0"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (
                len(self.head_weights) == len(HEADS) and min(self.head_weights) >= 0,
                f"head_weights must be 3 non-negative numbers, got {self.head_weights}",
            ),
            (self.input_size is None or self.input_size >= 32, "input_size must be >= 32"),
            (self.limit is None or self.limit >= 1, "limit must be >= 1"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {list(SCHEDULERS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (paths as strings, tuples as lists) for checkpoints."""
        d = dataclasses.asdict(self)
        d["data"] = str(self.data)
        d["out"] = str(self.out)
        d["head_weights"] = list(self.head_weights)
        return d


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        best_checkpoint: ``RUNDIR/best.pt``.
        last_checkpoint: ``RUNDIR/last.pt``.
        metrics_csv: ``RUNDIR/metrics.csv``.
        best_epoch: Epoch of the best checkpoint.
        best_score: Its mean validation accuracy.
        best_val_accuracy: Its validation accuracy per head.
        epochs_completed: Epochs trained in total (over all resumptions).
        stopped_early: Whether early stopping ended the run.
        skipped: Unreadable images (left out of training and validation).
    """

    best_checkpoint: Path
    last_checkpoint: Path
    metrics_csv: Path
    best_epoch: int
    best_score: float
    best_val_accuracy: dict[str, float]
    epochs_completed: int
    stopped_early: bool
    skipped: tuple[SkippedImage, ...]


def _compare_resume_config(stored: Mapping[str, Any], config: FitConfig, path: Path) -> None:
    current = config.to_dict()
    keys = list(RESUME_KEYS) + (["epochs"] if config.scheduler != "none" else [])
    changed = [k for k in keys if k in stored and stored[k] != current[k]]
    if changed:
        detail = ", ".join(f"{k}={stored[k]!r} (now {current[k]!r})" for k in changed)
        raise FitError(f"{path}: cannot resume with changed settings: {detail}")
    if stored.get("data") != current["data"]:
        log.warning(
            "resuming with data %s (run started on %s)", current["data"], stored.get("data")
        )


def _summary(
    config: FitConfig, n_train: int, n_val: int, precision: str, device: torch.device
) -> Any:
    # Recorded so that reports and `agr-batch info` can name the data truthfully: a model
    # trained on `agr-train synth` output knows nothing about real faces.
    synthetic = is_synthetic(config.data)
    dataset = DATASET_NAME if synthetic else f"{config.data.resolve().name} (FairFace layout)"

    def build(loop: TrainLoop, record: EpochRecord) -> dict[str, Any]:
        return {
            "data": str(config.data.resolve()),
            "dataset": dataset,
            "synthetic": synthetic,
            "device": str(device),
            "splits": {"train": n_train, "val": n_val},
            "epoch": record.epoch,
            "epochs": config.epochs,
            "best_epoch": loop.state.best_epoch,
            "val_accuracy": dict(record.val.accuracy),
            "val_mean_accuracy": record.score,
            "val_loss": record.val.loss,
            "train_loss": record.train.loss,
            "recipe": {
                "optimizer": "Adam",
                "lr": config.lr,
                "weight_decay": config.weight_decay,
                "batch_size": config.batch_size,
                "scheduler": config.scheduler,
                "head_weights": list(config.head_weights),
                "class_weights": config.class_weights,
                "augment": dataclasses.asdict(config.augment),
                "seed": config.seed,
                "precision": precision,
            },
        }

    return build


def fit(config: FitConfig, *, hooks: Sequence[Hook] = ()) -> FitResult:
    """Train ``config.arch`` on ``config.data`` and write the run folder.

    Args:
        config: The run.
        hooks: Extra hooks, called after the built-in ones.

    Returns:
        Paths and scores of the run.

    Raises:
        trainer.data.DataError: Unusable CSV (e.g. a label outside FairFace's vocabulary),
            raised before any training.
        FitError: Unknown architecture or device, a run folder that already holds a run
            (without ``resume``), or a resumption with changed settings.
    """
    train_split = read_split(config.data, config.train_split, limit=config.limit)
    val_split = read_split(config.data, config.val_split, limit=config.limit)
    try:
        device = resolve_device(config.device)
    except DeviceError as e:
        raise FitError(str(e)) from None

    out = config.out
    last = out / CheckpointHook.LAST
    payload: dict[str, Any] | None = None
    if last.exists():
        if not config.resume:
            raise FitError(
                f"{out} already holds a run ({last.name}); pass --resume to continue it "
                "or choose another --out"
            )
        try:
            payload = read_payload(last)
        except CheckpointError as e:
            raise FitError(str(e)) from None
        extra = payload.get("extra") or {}
        if "trainer" not in extra or "config" not in extra:
            raise FitError(f"{last}: not a resumable trainer checkpoint (no trainer state)")
        _compare_resume_config(extra["config"], config, last)
    elif config.resume:
        log.info("no %s yet: starting a new run", last)

    seed_everything(config.seed)
    overrides: dict[str, Any] = {}
    if config.input_size is not None:
        overrides["input_size"] = (config.input_size, config.input_size)
    try:
        model = create_model(config.arch, **overrides)
    except RegistryError as e:
        raise FitError(str(e)) from None
    spec = default_preprocess(model)
    model.to(device)

    workers = default_workers() if config.workers is None else config.workers
    pin = device.type == "cuda"
    train_loader, _ = make_loader(
        FaceDataset(train_split, spec, augment=config.augment, seed=config.seed),
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        workers=workers,
        pin_memory=pin,
    )
    val_loader, _ = make_loader(
        FaceDataset(val_split, spec, augment=None),
        batch_size=max(config.batch_size, 128),
        shuffle=False,
        seed=config.seed,
        workers=workers,
        pin_memory=pin,
    )

    class_weights = None
    if config.class_weights:
        class_weights = {h: balanced_class_weights(train_split.class_counts(h)) for h in HEADS}
        log.info("age class weights: %s", [round(w, 2) for w in class_weights["age"].tolist()])
    criterion = MultiHeadLoss(head_weights=config.head_weights, class_weights=class_weights)
    criterion.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        if config.scheduler == "cosine"
        else None
    )
    precision = precision_for(device, amp=config.amp)
    scaler = torch.amp.GradScaler("cuda") if precision.use_scaler else None

    all_hooks: list[Hook] = [
        ProgressHook(enabled=config.progress),
        EarlyStoppingHook(config.patience),
        MetricsCsvHook(out / "metrics.csv"),
        EpochLogHook(),
        CheckpointHook(
            out,
            preprocess=spec,
            summary=_summary(config, len(train_split), len(val_split), precision.name, device),
            config=config.to_dict(),
        ),
        *hooks,
    ]
    loop = TrainLoop(
        model=model,
        train_loader=train_loader,
        val_loader=val_loader,
        optimizer=optimizer,
        criterion=criterion,
        device=device,
        max_epochs=config.epochs,
        scheduler=scheduler,
        precision=precision,
        scaler=scaler,
        hooks=all_hooks,
    )
    if payload is not None:
        model.load_state_dict(payload["state_dict"])
        loop.load_state_dict(payload["extra"]["trainer"])
        log.info(
            "resuming %s from epoch %d/%d (best %.1f%% at epoch %d)",
            out,
            loop.state.epoch,
            config.epochs,
            100 * loop.state.best_score,
            loop.state.best_epoch,
        )
        if loop.state.stop:
            log.info("the run had already stopped early; nothing to do")

    log.info(
        "fit %s (%dx%d) on %s: %d train / %d val images; %s, %s, %d torch threads, "
        "%d loader workers",
        config.arch,
        *spec.input_size,
        config.data,
        len(train_split),
        len(val_split),
        device,
        precision.name,
        torch.get_num_threads(),
        workers,
    )
    state = loop.run()

    skipped = skipped_images(state)
    if skipped:
        log.warning("skipped %d unreadable image(s):", len(skipped))
        for s in skipped:
            log.warning("  %s: %s", s.file, s.reason)
    best_row = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    best = out / CheckpointHook.BEST
    if not best.exists():
        raise FitError(f"{best}: no best checkpoint was written")
    return FitResult(
        best_checkpoint=best,
        last_checkpoint=last,
        metrics_csv=out / "metrics.csv",
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        best_val_accuracy={h: float(best_row.get(f"val_acc_{h}", float("nan"))) for h in HEADS},
        epochs_completed=state.epoch,
        stopped_early=state.stopped_early,
        skipped=skipped,
    )
