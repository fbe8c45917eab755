"""The ``agr-batch`` command line: commands parse options and call typed functions."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agr_batch import __version__
from agr_batch.checkpoint import CheckpointError, load_checkpoint

if TYPE_CHECKING:
    from agr_batch.runner import RunSummary

EXIT_OK = 0
EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print one line to stderr and exit with ``code``."""
    click.echo(f"agr-batch: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agr-batch")
def main() -> None:
    """Demographic statistics (FairFace age, gender, race) from videos and image folders."""


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(checkpoint: str, as_json: bool) -> None:
    """Print a checkpoint's metadata, parameter count and GFLOPs per face."""
    from agr_batch.info import checkpoint_info

    _setup_logging(0, quiet=True)
    try:
        result = checkpoint_info(checkpoint)
    except CheckpointError as e:
        fail(str(e))
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())


NO_MODEL_HELP = (
    "no model given: pass --model CKPT or set AGR_MODEL. Train one on FairFace with "
    "`agr-train fit --data FAIRFACE_DIR --arch compact --out runs/compact` (see README)"
)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="Stats table (Parquet)."
)
@click.option(
    "--model",
    envvar="AGR_MODEL",
    type=click.Path(dir_okay=False),
    help="Checkpoint (default: $AGR_MODEL).",
)
@click.option(
    "--faces", "faces_out", type=click.Path(dir_okay=False), help="Also write a per-face table."
)
@click.option(
    "--sample-fps",
    default=2.0,
    show_default=True,
    help="Video frames sampled per second (0 = all).",
)
@click.option("--keyframes-only", is_flag=True, help="Decode keyframes only (fast scan).")
@click.option(
    "--window", "window_s", default=60.0, show_default=True, help="Aggregation window, seconds."
)
@click.option("--detector", default="centerface", show_default=True, help="Face detector.")
@click.option("--detector-model", type=click.Path(dir_okay=False), help="Detector weights (scrfd).")
@click.option("--det-threshold", default=0.5, show_default=True, help="Minimum detection score.")
@click.option("--min-face", default=20, show_default=True, help="Minimum face size in pixels.")
@click.option(
    "--det-size", default=640, show_default=True, help="Detector working resolution (longest side)."
)
@click.option("--batch-size", default=64, show_default=True, help="Faces per classifier batch.")
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="Classifier backend: auto, eager, channels_last, inductor, tensorrt.",
)
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Compiled-engine cache (default ~/.cache/agr-batch).",
)
@click.option(
    "--tracks", "tracks_out", type=click.Path(dir_okay=False), help="Also write a per-track table."
)
@click.option("--best-k", default=3, show_default=True, help="Best faces classified per track.")
@click.option(
    "--refresh-every",
    default=20,
    show_default=True,
    help="Classify a fresh face each time a track grows by this many faces.",
)
@click.option("--per-face", is_flag=True, help="Classify every face instead of voting per track.")
@click.option(
    "--max-gap",
    default=3.0,
    show_default=True,
    help="Seconds a track may go unseen before it ends.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary; errors only.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def run(
    inputs: tuple[str, ...],
    out: str,
    model: str | None,
    faces_out: str | None,
    sample_fps: float,
    keyframes_only: bool,
    window_s: float,
    detector: str,
    detector_model: str | None,
    det_threshold: float,
    min_face: int,
    det_size: int,
    batch_size: int,
    device: str,
    backend: str,
    precision: str,
    cache_dir: str | None,
    tracks_out: str | None,
    best_k: int,
    refresh_every: int,
    per_face: bool,
    max_gap: float,
    quiet: bool,
    as_json: bool,
    verbose: int,
) -> None:
    """Detect and classify faces in videos, images and folders; write Parquet statistics."""
    from agr_batch.config import DetectorConfig, RunConfig
    from agr_batch.detect import DetectorError
    from agr_batch.engines import BackendUnavailableError
    from agr_batch.registry import RegistryError
    from agr_batch.runner import run as run_pipeline
    from agr_batch.track import TrackerConfig
    from agr_batch.vote import VoteConfig

    _setup_logging(verbose, quiet or as_json)
    if not model:
        fail(NO_MODEL_HELP)
    try:
        config = RunConfig(
            inputs=tuple(inputs),
            out=Path(out),
            model=Path(model),
            faces_out=Path(faces_out) if faces_out else None,
            sample_fps=sample_fps,
            keyframes_only=keyframes_only,
            window_s=window_s,
            detector=DetectorConfig(
                name=detector,
                score_threshold=det_threshold,
                min_face=min_face,
                max_side=det_size,
                model_path=detector_model,
            ),
            batch_size=batch_size,
            device=device,
            backend=backend,
            precision=precision,
            cache_dir=Path(cache_dir) if cache_dir else None,
            tracks_out=Path(tracks_out) if tracks_out else None,
            tracker=TrackerConfig(max_gap_s=max_gap),
            vote=VoteConfig(best_k=best_k, refresh_every=refresh_every, per_face=per_face),
        )
        summary = run_pipeline(
            config,
            progress=not (quiet or as_json) and sys.stderr.isatty(),
            on_error=lambda msg: click.echo(f"agr-batch: {msg}", err=True),
        )
    except (
        CheckpointError,
        RegistryError,
        ValueError,
        BackendUnavailableError,
        DetectorError,
    ) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; nothing was written under the output names", 130)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        click.echo(format_summary(summary), err=True)
    sys.exit(EXIT_INPUT_FAILED if summary.files_failed else EXIT_OK)


@main.command(name="compile")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--backend", default="inductor", show_default=True, help="inductor or tensorrt.")
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
def compile_cmd(
    checkpoint: str,
    backend: str,
    device: str,
    precision: str,
    batch_size: int,
    cache_dir: str | None,
) -> None:
    """Build a compiled engine ahead of time (for containers and cron) and print its path."""
    from agr_batch.classify import resolve_device
    from agr_batch.engines import BackendUnavailableError, build_engine
    from agr_batch.registry import RegistryError

    _setup_logging(0, quiet=False)
    try:
        dev = resolve_device(device)
        ckpt = load_checkpoint(checkpoint, device=dev)
        engine = build_engine(
            backend,
            ckpt.model,
            input_size=ckpt.meta.preprocess.input_size,
            device=dev,
            checkpoint_sha256=ckpt.file_sha256,
            precision=precision,
            cache_dir=cache_dir,
            opt_batch=batch_size,
        )
    except (CheckpointError, RegistryError, ValueError, BackendUnavailableError) as e:
        fail(str(e))
    click.echo(engine.details.get("path", f"{engine.name} needs no compiled artifact"))


@main.command(name="bench")
@click.option("--model", envvar="AGR_MODEL", type=click.Path(dir_okay=False), help="Checkpoint.")
@click.option("--arch", default="compact", show_default=True, help="Untrained model if no --model.")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    default=("eager", "channels_last"),
    show_default=True,
    help="Backend to measure (repeatable).",
)
@click.option("--batch-sizes", default="1,16,64", show_default=True, help="Comma-separated.")
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option("--seconds", default=10.0, show_default=True, help="Length of the generated video.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Engine cache.")
def bench_cmd(
    model: str | None,
    arch: str,
    backends: tuple[str, ...],
    batch_sizes: str,
    device: str,
    seconds: float,
    cache_dir: str | None,
) -> None:
    """Measure faces/s per backend and batch size, and end-to-end speed, as Markdown tables."""
    from agr_batch.bench import bench

    _setup_logging(0, quiet=True)
    try:
        sizes = [int(v) for v in batch_sizes.split(",") if v.strip()]
        report = bench(
            model=model,
            arch=arch,
            backends=backends,
            batch_sizes=sizes,
            device=device,
            video_seconds=seconds,
            cache_dir=cache_dir,
        )
    except (CheckpointError, ValueError) as e:
        fail(str(e))
    click.echo(report)


def format_summary(summary: RunSummary) -> str:
    """The end-of-run summary lines."""
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary.stage_s.items())
    lines = [
        f"files: {summary.files_ok} ok, {summary.files_failed} failed, {summary.skipped} skipped",
        f"frames: {summary.frames}, faces: {summary.faces} ({summary.classified_faces} "
        f"classified), visitors: {summary.visitors}, wall {summary.wall_s:.1f}s "
        f"({summary.frames_per_s:.1f} frames/s) on {summary.device}",
        f"stage time: {stages}",
        "wrote: " + ", ".join(f"{k} {v}" for k, v in summary.outputs.items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
