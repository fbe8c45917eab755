"""``agr-train table1``: the seed paper's Table 1 — several architectures, one recipe.

Each architecture is trained by :func:`trainer.fit.fit` into ``OUT/<arch>/`` (resumable: a
rerun continues unfinished runs and reuses finished ones), its ``best.pt`` is scored on the
validation split by :func:`trainer.evaluation.evaluate_checkpoint`, and the comparison is
written to ``OUT/table1.csv`` (columns ``model,age,gender,race,params_m``; accuracies in %)
and ``OUT/table1.md``, which also lists the paper's reported numbers for reference.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.augment import AugmentConfig
from trainer.evaluation import (
    TABLE1_HEADER,
    EvalReport,
    evaluate_checkpoint,
    markdown_table,
    write_json,
)
from trainer.fit import FitConfig, fit

log = logging.getLogger(__name__)

DEFAULT_ARCHS: tuple[str, ...] = ("paper", "resnet34", "densenet161", "alexnet", "mobilenet_v2")
"""The architectures of the paper's Table 1 (``paper`` is the proposed model)."""

CSV_COLUMNS: tuple[str, ...] = ("model", "age", "gender", "race", "params_m")

PAPER_TABLE1: tuple[tuple[str, float, float, float, float], ...] = (
    ("Resnet34", 53.2, 90.9, 63.5, 21.8),
    ("Densenet61", 53.5, 90.8, 63.6, 26.6),
    ("AlexNet", 44.5, 83.3, 54.3, 61.1),
    ("MobileNet_v2", 41.9, 80.3, 47.5, 3.5),
    ("Proposed", 56.3, 94.6, 58.4, 35.3),
)
"""The paper's reported Table 1 (FairFace validation accuracy %, parameters in M)."""


@dataclass(frozen=True)
class Table1Config:
    """The comparison: which architectures, where, and the shared recipe.

    Attributes:
        data: FairFace-layout folder.
        out: Output folder (one run folder per architecture, plus the tables).
        archs: Architectures to train, in table order.
        epochs: Maximum epochs per architecture.
        batch_size: Training batch size.
        lr: Adam learning rate.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: Loader worker processes (``None``: automatic).
        patience: Early-stopping patience (0 disables).
        seed: Seed shared by every run.
        input_size: Square input side for every model (``None``: each model's default).
        limit: First ``limit`` rows of each split only (quick runs).
        class_weights: Balanced per-class loss weights.
        augment: Augmentation of training chips.
        progress: Progress bars on stderr.
    """

    data: Path
    out: Path
    archs: tuple[str, ...] = DEFAULT_ARCHS
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    device: str = "auto"
    workers: int | None = None
    patience: int = 10
    seed: int = 0
    input_size: int | None = None
    limit: int | None = None
    class_weights: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "archs", tuple(self.archs))
        if not self.archs:
            raise ValueError("archs must name at least one architecture")
        if len(set(self.archs)) != len(self.archs):
            raise ValueError(f"archs has duplicates: {self.archs}")

    def fit_config(self, arch: str) -> FitConfig:
        """The :class:`FitConfig` of one architecture (resumable, in ``out/arch``)."""
        return FitConfig(
            data=self.data,
            arch=arch,
            out=self.out / arch,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            device=self.device,
            workers=self.workers,
            resume=True,
            patience=self.patience,
            class_weights=self.class_weights,
            seed=self.seed,
            input_size=self.input_size,
            limit=self.limit,
            augment=self.augment,
            progress=self.progress,
        )


@dataclass(frozen=True)
class Table1Row:
    """One architecture's line of the table.

    Attributes:
        model: Architecture name.
        age: Validation age accuracy in %.
        gender: Validation gender accuracy in %.
        race: Validation race accuracy in %.
        params_m: Parameters in millions.
        best_epoch: Epoch of the scored checkpoint.
        checkpoint: The scored checkpoint.
    """

    model: str
    age: float
    gender: float
    race: float
    params_m: float
    best_epoch: int
    checkpoint: Path

    @classmethod
    def from_report(cls, report: EvalReport, best_epoch: int) -> Table1Row:
        """Build a row from an evaluation report."""
        a = report.accuracy
        return cls(
            model=report.model,
            age=100 * a["age"],
            gender=100 * a["gender"],
            race=100 * a["race"],
            params_m=report.params_m,
            best_epoch=best_epoch,
            checkpoint=report.checkpoint,
        )


@dataclass(frozen=True)
class Table1Result:
    """What :func:`run_table1` wrote.

    Attributes:
        rows: One row per architecture, in table order.
        markdown: ``table1.md``.
        csv: ``table1.csv``.
    """

    rows: tuple[Table1Row, ...]
    markdown: Path
    csv: Path


def render_markdown(rows: Sequence[Table1Row], config: Table1Config) -> str:
    """The ``table1.md`` text: this run's table, its recipe, and the paper's numbers."""
    ours = markdown_table(
        TABLE1_HEADER,
        [
            (r.model, f"{r.age:.1f}", f"{r.gender:.1f}", f"{r.race:.1f}", f"{r.params_m:.2f}")
            for r in rows
        ],
    )
    paper = markdown_table(
        TABLE1_HEADER,
        [(m, f"{a:.1f}", f"{g:.1f}", f"{r:.1f}", f"{p:.1f}") for m, a, g, r, p in PAPER_TABLE1],
    )
    size = "each model's default" if config.input_size is None else f"{config.input_size} px"
    recipe = (
        f"Adam lr {config.lr:g}, batch {config.batch_size}, up to {config.epochs} epochs "
        f"(early-stopping patience {config.patience}), seed {config.seed}, input size {size}, "
        f"class weights {'on' if config.class_weights else 'off'}; accuracy of the checkpoint "
        "with the best mean validation accuracy."
    )
    return "\n".join(
        [
            "# Table 1: architectures compared under one recipe",
            "",
            f"Data: `{config.data}` (validation split). Recipe: {recipe}",
            "",
            ours,
            "",
            "## Reported in the paper (FairFace, for reference)",
            "",
            paper,
            "",
            'The paper\'s "Densenet61" is DenseNet-161 by its parameter count; '
            '"Proposed" is `paper`.',
            "",
        ]
    )


def write_tables(rows: Sequence[Table1Row], config: Table1Config) -> tuple[Path, Path]:
    """Write ``table1.csv`` and ``table1.md`` under ``config.out``."""
    config.out.mkdir(parents=True, exist_ok=True)
    csv_path = config.out / "table1.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(
                [r.model, f"{r.age:.2f}", f"{r.gender:.2f}", f"{r.race:.2f}", f"{r.params_m:.3f}"]
            )
    md_path = config.out / "table1.md"
    md_path.write_text(render_markdown(rows, config), encoding="utf-8")
    return md_path, csv_path


def run_table1(config: Table1Config) -> Table1Result:
    """Train and score every architecture of ``config`` and write the tables.

    Raises:
        trainer.data.DataError: Unusable CSV (before any training).
        trainer.fit.FitError: A run that cannot start or continue.
    """
    rows: list[Table1Row] = []
    for i, arch in enumerate(config.archs, start=1):
        log.info("table1: [%d/%d] %s", i, len(config.archs), arch)
        fit_config = config.fit_config(arch)
        result = fit(fit_config)
        report = evaluate_checkpoint(
            config.data,
            result.best_checkpoint,
            split=fit_config.val_split,
            device=config.device,
            workers=config.workers,
            limit=config.limit,
        )
        write_json(report, fit_config.out / "eval_val.json")
        rows.append(Table1Row.from_report(report, result.best_epoch))
    md_path, csv_path = write_tables(rows, config)
    log.info("table1: wrote %s and %s", md_path, csv_path)
    return Table1Result(rows=tuple(rows), markdown=md_path, csv=csv_path)
