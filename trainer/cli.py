"""The ``agr-train`` command line: commands parse options and call typed functions.

stdout carries only results (for ``fit``: the best checkpoint's path as the last line);
progress bars and logs go to stderr. Bad input fails with one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from agr_batch import __version__
from agr_batch.checkpoint import CheckpointError
from agr_batch.device import DEVICES, DeviceError
from agr_batch.exitcodes import EXIT_INTERRUPTED, EXIT_USAGE
from agr_batch.models import list_models
from trainer.augment import AugmentConfig
from trainer.data import DataError
from trainer.fit import SCHEDULERS, FitConfig, FitError

_EXPECTED_ERRORS = (DataError, FitError, CheckpointError, DeviceError)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        del value


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line to stderr and exit with ``code``."""
    click.echo(f"agr-train: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def _parse_head_weights(
    ctx: click.Context, param: click.Parameter, value: str
) -> tuple[float, float, float]:
    del ctx, param
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three numbers like 1,1,1, got {value!r}") from None
    if len(parts) != 3 or min(parts) < 0:
        raise click.BadParameter(
            f"expected three non-negative numbers (age,gender,race), got {value!r}"
        )
    return parts  # type: ignore[return-value]


def _parse_archs(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    del ctx, param
    archs = tuple(a.strip() for a in value.split(",") if a.strip())
    unknown = [a for a in archs if a not in list_models()]
    if unknown or not archs:
        raise click.BadParameter(f"unknown architecture(s) {unknown}; choose from {list_models()}")
    return archs


def _arch_choice() -> click.Choice:
    return click.Choice(list_models())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agr-train")
@click.option("-v", "--verbose", count=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """Train and evaluate agr-batch's multi-head age/gender/race classifiers on FairFace."""
    _setup_logging(verbose, quiet)


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--n", "n", required=True, type=click.IntRange(min=2), help="Number of images.")
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed (same seed, same bytes)."
)
@click.option(
    "--size", default=224, show_default=True, type=click.IntRange(min=32), help="Image side (px)."
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Progress bar on stderr (when it is a terminal).",
)
def synth(out: str, n: int, seed: int, size: int, progress: bool) -> None:
    """Write a synthetic FairFace-layout data set of drawn faces. TEST DATA ONLY.

    The faces are cartoons whose colours and shapes encode the labels (race: skin and hair
    colour; gender: hair shape, brows, lips; age: proportions, wrinkles, grey hair). They
    exercise the trainer and the processor; they say nothing about real faces and must never
    be used to train or measure a model meant for people. The folder is marked synthetic
    (agr_synth.json): models trained on it, and reports made with them, say so. Prints the
    folder.
    """
    from trainer.synth import make_dataset

    summary = make_dataset(out, n, seed=seed, size=size, progress=progress and sys.stderr.isatty())
    click.echo(str(summary.root))


@main.command("fit")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="FairFace-layout folder.",
)
@click.option("--arch", required=True, type=_arch_choice(), help="Architecture.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--lr",
    default=1e-4,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Adam learning rate.",
)
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=0),
    help="Loader processes [default: 0 on <= 2 CPUs, else min(4, CPUs - 1)].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the --out folder's last.pt exactly (starts fresh if absent).",
)
@click.option(
    "--patience",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Early-stopping patience in epochs (0: off).",
)
@click.option(
    "--head-weights",
    default="1,1,1",
    show_default=True,
    callback=_parse_head_weights,
    help="Loss weights age,gender,race.",
)
@click.option(
    "--class-weights/--no-class-weights",
    default=False,
    show_default=True,
    help="Balanced per-class loss weights (age imbalance).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--input-size",
    default=None,
    type=click.IntRange(min=32),
    help="Square input side [default: the model's].",
)
@click.option(
    "--limit", default=None, type=click.IntRange(min=1), help="Use the first N rows of each split."
)
@click.option("--scheduler", default="none", show_default=True, type=click.Choice(SCHEDULERS))
@click.option(
    "--augment/--no-augment",
    default=True,
    show_default=True,
    help="Flip, scale/shift and colour jitter of training chips.",
)
@click.option(
    "--amp/--no-amp", default=True, show_default=True, help="Mixed precision (CUDA only)."
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr."
)
def fit_command(
    data: str,
    arch: str,
    out: str,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    device: str,
    workers: int | None,
    resume: bool,
    patience: int,
    head_weights: tuple[float, float, float],
    class_weights: bool,
    seed: int,
    input_size: int | None,
    limit: int | None,
    scheduler: str,
    augment: bool,
    amp: bool,
    progress: bool,
) -> None:
    """Train --arch on the --data folder (FairFace layout); print the best checkpoint's path.

    Adam (lr 1e-4), batches of 64, up to 100 epochs, loss = weighted sum of the three heads'
    cross-entropies. The --out folder receives last.pt (every epoch; --resume continues it),
    best.pt (best mean validation accuracy over the heads) and metrics.csv. Unreadable images
    are skipped and listed at the end; a label outside FairFace's vocabulary stops the run
    before training with the CSV file and row.
    """
    from trainer.fit import fit

    config = FitConfig(
        data=Path(data),
        arch=arch,
        out=Path(out),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        device=device,
        workers=workers,
        resume=resume,
        patience=patience,
        head_weights=head_weights,
        class_weights=class_weights,
        seed=seed,
        input_size=input_size,
        limit=limit,
        scheduler=scheduler,
        augment=AugmentConfig() if augment else AugmentConfig.none(),
        amp=amp,
        progress=progress,
    )
    try:
        result = fit(config)
    except _EXPECTED_ERRORS as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(
            f"interrupted; continue with: agr-train fit ... --out {out} --resume", EXIT_INTERRUPTED
        )
    click.echo(str(result.best_checkpoint))


@main.command("eval")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="FairFace-layout folder.",
)
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint (best.pt).",
)
@click.option("--split", default="val", show_default=True)
@click.option(
    "--json",
    "json_out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the full report as JSON.",
)
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=None, type=click.IntRange(min=0))
@click.option(
    "--limit", default=None, type=click.IntRange(min=1), help="Score the first N rows only."
)
def eval_command(
    data: str,
    model_path: str,
    split: str,
    json_out: str | None,
    device: str,
    batch_size: int,
    workers: int | None,
    limit: int | None,
) -> None:
    """Score a checkpoint: accuracy, per-group accuracy and gaps, confusion, ECE.

    Prints a Table-1 style row (Model, Age %, Gender %, Race %, Params M); --json writes
    everything (accuracy, per_group, params, confusion, ece, reliability).
    """
    from trainer.evaluation import TABLE1_HEADER, evaluate_checkpoint, markdown_table, write_json

    try:
        report = evaluate_checkpoint(
            data,
            model_path,
            split=split,
            device=device,
            batch_size=batch_size,
            workers=workers,
            limit=limit,
        )
    except _EXPECTED_ERRORS as e:
        fail(str(e))
    for line in report.summary_lines():
        logging.getLogger("trainer.evaluation").info("%s", line)
    if json_out:
        write_json(report, json_out)
    click.echo(markdown_table(TABLE1_HEADER, [report.table1_cells()]))


@main.command("table1")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="FairFace-layout folder.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--archs",
    default="paper,resnet34,densenet161,alexnet,mobilenet_v2",
    show_default=True,
    callback=_parse_archs,
    help="Comma-separated architectures.",
)
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0))
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
@click.option("--workers", default=None, type=click.IntRange(min=0))
@click.option("--patience", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--input-size", default=None, type=click.IntRange(min=32))
@click.option("--limit", default=None, type=click.IntRange(min=1))
@click.option("--class-weights/--no-class-weights", default=False, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def table1_command(
    data: str,
    out: str,
    archs: tuple[str, ...],
    epochs: int,
    batch_size: int,
    lr: float,
    device: str,
    workers: int | None,
    patience: int,
    seed: int,
    input_size: int | None,
    limit: int | None,
    class_weights: bool,
    progress: bool,
) -> None:
    """Train the paper's Table-1 architectures with one recipe; write table1.md and .csv.

    Each architecture trains into the --out folder's <arch>/ (a rerun resumes unfinished
    runs). Prints the Markdown table.
    """
    from trainer.table1 import Table1Config, render_markdown, run_table1

    config = Table1Config(
        data=Path(data),
        out=Path(out),
        archs=archs,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        workers=workers,
        patience=patience,
        seed=seed,
        input_size=input_size,
        limit=limit,
        class_weights=class_weights,
        progress=progress,
    )
    try:
        result = run_table1(config)
    except _EXPECTED_ERRORS as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to continue", EXIT_INTERRUPTED)
    click.echo(render_markdown(result.rows, config).rstrip())


if __name__ == "__main__":
    main()
