"""``agr-batch info | status | compile | bench``: options in, typed functions called."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agr_batch.cli.common import config_errors, fail, setup_logging
from agr_batch.cli.options import DETECTOR_BACKENDS

__all__ = ["bench", "compile_engine", "info", "status"]


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(checkpoint: str, as_json: bool) -> None:
    """Print a checkpoint's metadata, parameter count and GFLOPs per face."""
    from agr_batch.checkpoint import CheckpointError
    from agr_batch.commands.info import checkpoint_info

    setup_logging(0, quiet=True)
    try:
        result = checkpoint_info(checkpoint)
    except CheckpointError as e:
        fail(str(e))
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())


@click.command()
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option(
    "--stuck-after",
    default=3600.0,
    show_default=True,
    help="Flag a running scan whose current step has lasted longer than this, seconds.",
)
def status(dataset: str, as_json: bool, stuck_after: float) -> None:
    """Files processed, failed and pending, last run, lock holder and totals of a dataset.

    Reads the dataset only: works on a read-only dataset and while a scan runs.
    """
    from agr_batch.commands.scan.state import StateError
    from agr_batch.commands.scan.status import dataset_status, format_status
    from agr_batch.limits import MAX_SETTLE_S, check_number

    try:
        check_number("--stuck-after", stuck_after, low=0, high=MAX_SETTLE_S, unit="seconds")
        st = dataset_status(Path(dataset), stuck_after_s=stuck_after)
    except (FileNotFoundError, StateError, ValueError) as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    for line in format_status(st):
        click.echo(line)


@click.command(name="compile")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--backend", default="inductor", show_default=True, help="compiled, inductor or tensorrt."
)
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
)
@click.option("--batch-size", default=64, show_default=True, help="Batch size to optimise for.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Engine cache (default ~/.cache/agr-batch).",
)
def compile_engine(
    checkpoint: str,
    backend: str,
    device: str,
    precision: str,
    batch_size: int,
    cache_dir: str | None,
) -> None:
    """Build a compiled engine ahead of time (for containers and cron) and print its path."""
    from agr_batch.commands.compile import compile_checkpoint

    setup_logging(0, quiet=False)
    try:
        engine = compile_checkpoint(
            checkpoint,
            backend=backend,
            device=device,
            precision=precision,
            batch_size=batch_size,
            cache_dir=cache_dir,
        )
    except Exception as e:
        if isinstance(e, (ValueError, *config_errors())):
            fail(str(e))
        raise
    if "path" in engine.details:
        click.echo(engine.details["path"])
    else:
        click.echo(
            f"{engine.name}: built and checked in {engine.details.get('build_s', 0):.1f}s "
            "(no file to ship: the check is cached, compiled code lives in Inductor's cache)"
        )


@click.command(name="bench")
@click.option("--model", envvar="AGR_MODEL", type=click.Path(dir_okay=False), help="Checkpoint.")
@click.option("--arch", default="compact", show_default=True, help="Untrained model if no --model.")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    default=("eager", "channels_last"),
    show_default=True,
    help="Backend to measure (repeatable): auto, eager, channels_last, compiled, inductor, "
    "tensorrt.",
)
@click.option("--batch-sizes", default="1,16,64", show_default=True, help="Comma-separated.")
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option("--seconds", default=10.0, show_default=True, help="Length of the generated video.")
@click.option(
    "--video",
    type=click.Path(exists=True, dir_okay=False),
    help="Benchmark end to end on this video instead of a generated 720p one.",
)
@click.option(
    "--sample-fps", default=2.0, show_default=True, help="End to end: frames per second (0 = all)."
)
@click.option("--per-face", is_flag=True, help="End to end: classify every face.")
@click.option(
    "--detector-backend",
    default="auto",
    show_default=True,
    type=click.Choice(DETECTOR_BACKENDS),
    help="End to end: how CenterFace runs (see `run --help`).",
)
@click.option(
    "--decoder",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "pyav", "nvdec", "torchcodec"]),
    help="End to end: the video decoder (decode-only uses it too).",
)
@click.option(
    "--only",
    type=click.Choice(["classifier", "pipeline"]),
    help="Run only the classifier or only the end-to-end benchmark.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Engine cache.")
def bench(
    model: str | None,
    arch: str,
    backends: tuple[str, ...],
    batch_sizes: str,
    device: str,
    seconds: float,
    video: str | None,
    sample_fps: float,
    per_face: bool,
    detector_backend: str,
    decoder: str,
    only: str | None,
    cache_dir: str | None,
) -> None:
    """Measure faces/s per backend and batch size, and end-to-end against decode-only."""
    from agr_batch.commands.bench import bench as run_bench

    setup_logging(0, quiet=True)
    try:
        sizes = [int(v) for v in batch_sizes.split(",") if v.strip()]
        text = run_bench(
            model=model,
            arch=arch,
            backends=backends,
            batch_sizes=sizes,
            device=device,
            video_seconds=seconds,
            cache_dir=cache_dir,
            video=video,
            sample_fps=sample_fps,
            per_face=per_face,
            detector_backend=detector_backend,
            decoder=decoder,
            classifier=only != "pipeline",
            pipeline=only != "classifier",
        )
    except Exception as e:
        if isinstance(e, (ValueError, *config_errors())):
            fail(str(e))
        raise
    click.echo(text)
