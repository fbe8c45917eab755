"""The ``agr-batch`` command line: commands parse options and call typed functions."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agr_batch import __version__
from agr_batch.checkpoint import CheckpointError, load_checkpoint

if TYPE_CHECKING:
    from agr_batch.runner import RunSummary

EXIT_OK = 0
EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2


def _setup_logging(verbose: int, quiet: bool, *, warnings_only: bool = False) -> None:
    """Log to stderr at the level the output options ask for.

    INFO by default (``-v``: more), warnings and errors with ``warnings_only`` (``--json``),
    only errors with ``--quiet`` (silent on success: cron mails stderr). Python warnings
    become log records, so ``--quiet`` silences them too.
    """
    if quiet:
        level = logging.ERROR
    elif warnings_only:
        level = logging.WARNING
    else:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger().setLevel(level)
    logging.captureWarnings(True)
    if quiet:
        # e.g. "No CUDA runtime is found, using CUDA_HOME=..." on every compile on a CPU host.
        # Torch resets its logger's level when imported, unless TORCH_LOGS says otherwise.
        if "torch" in sys.modules:
            logging.getLogger("torch").setLevel(logging.ERROR)
        else:
            os.environ.setdefault("TORCH_LOGS", "-torch")


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print one line to stderr and exit with ``code``."""
    # Library messages sometimes carry newlines; the contract is one line.
    click.echo(f"agr-batch: error: {' '.join(str(message).split())}", err=True)
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


_PROCESSING_OPTIONS = [
    click.option(
        "--model",
        envvar="AGR_MODEL",
        type=click.Path(dir_okay=False),
        help="Checkpoint (default: $AGR_MODEL).",
    ),
    click.option(
        "--sample-fps",
        default=2.0,
        show_default=True,
        help="Video frames sampled per second (0 = all).",
    ),
    click.option("--keyframes-only", is_flag=True, help="Decode keyframes only (fast scan)."),
    click.option(
        "--skip-nonref",
        is_flag=True,
        help="Skip decoding B-frames (faster; samples may move by a frame or two).",
    ),
    click.option(
        "--window", "window_s", default=60.0, show_default=True, help="Aggregation window, s."
    ),
    click.option(
        "--align-windows",
        default="start",
        show_default=True,
        type=click.Choice(["start", "clock"]),
        help="Windows from each file's start, or on the wall clock (:00, :15, … for 900 s).",
    ),
    click.option(
        "--tz", help="Time zone of clock windows, e.g. Europe/Berlin (default: local time)."
    ),
    click.option("--detector", default="centerface", show_default=True, help="Face detector."),
    click.option(
        "--detector-model", type=click.Path(dir_okay=False), help="Detector weights (scrfd)."
    ),
    click.option("--det-threshold", default=0.5, show_default=True, help="Min detection score."),
    click.option("--min-face", default=20, show_default=True, help="Min face size, pixels."),
    click.option(
        "--det-size", default=640, show_default=True, help="Detector resolution (longest side)."
    ),
    click.option("--batch-size", default=64, show_default=True, help="Faces per classifier call."),
    click.option(
        "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
    ),
    click.option(
        "--backend",
        default="auto",
        show_default=True,
        help="Classifier backend: auto, eager, channels_last, compiled, inductor, tensorrt.",
    ),
    click.option(
        "--precision",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    ),
    click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        help="Compiled-engine cache (default ~/.cache/agr-batch).",
    ),
    click.option("--best-k", default=3, show_default=True, help="Best faces classified per track."),
    click.option(
        "--refresh-every",
        default=20,
        show_default=True,
        help="Classify a fresh face each time a track grows by this many faces.",
    ),
    click.option("--per-face", is_flag=True, help="Classify every face instead of voting."),
    click.option(
        "--max-gap", default=3.0, show_default=True, help="Seconds a track may go unseen."
    ),
    click.option(
        "--decoder",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "pyav", "torchcodec"]),
        help="Video decoder; torchcodec decodes on the GPU (NVDEC) when installed.",
    ),
    click.option(
        "--min-cell-count",
        default=0,
        show_default=True,
        help="Drop stats cells with fewer distinct people or faces than this (0 = keep all).",
    ),
    click.option(
        "--engine",
        default="local",
        show_default=True,
        type=click.Choice(["local", "ray"]),
        help="Run here, or on a Ray cluster (the `ray` extra).",
    ),
    click.option(
        "--ray-address", help="Ray cluster address (default $RAY_ADDRESS, else a local cluster)."
    ),
    click.option("--workers", type=click.IntRange(min=1), help="Ray: pipelines (actors) to run."),
    click.option(
        "--segment",
        "segment_s",
        default=0.0,
        show_default=True,
        type=float,
        help="Ray: split videos into segments of this many seconds (0 = never).",
    ),
    click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary; errors only."),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."),
    click.option("-v", "--verbose", count=True, help="More logging (-vv for debug)."),
]


def processing_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Add the options shared by ``run`` and ``scan``."""
    for option in reversed(_PROCESSING_OPTIONS):
        fn = option(fn)
    return fn


def processing_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    """Turn the shared options into :class:`agr_batch.config.ProcessingConfig` keywords."""
    from agr_batch.config import DetectorConfig
    from agr_batch.limits import MAX_SEGMENT_S, check_number
    from agr_batch.track import TrackerConfig
    from agr_batch.vote import VoteConfig

    if not opts.get("model"):
        fail(NO_MODEL_HELP)
    # Checked here as well as by the Ray engine: with --engine local it is otherwise unused,
    # and a NaN there must not pass silently.
    check_number(
        "--segment (0 = never split)", opts["segment_s"], low=0, high=MAX_SEGMENT_S, unit="seconds"
    )
    return {
        "model": Path(opts["model"]),
        "sample_fps": opts["sample_fps"],
        "keyframes_only": opts["keyframes_only"],
        "skip_nonref": opts["skip_nonref"],
        "window_s": opts["window_s"],
        "detector": DetectorConfig(
            name=opts["detector"],
            score_threshold=opts["det_threshold"],
            min_face=opts["min_face"],
            max_side=opts["det_size"],
            model_path=opts["detector_model"],
        ),
        "batch_size": opts["batch_size"],
        "device": opts["device"],
        "backend": opts["backend"],
        "precision": opts["precision"],
        "cache_dir": Path(opts["cache_dir"]) if opts["cache_dir"] else None,
        "tracker": TrackerConfig(max_gap_s=opts["max_gap"]),
        "vote": VoteConfig(
            best_k=opts["best_k"], refresh_every=opts["refresh_every"], per_face=opts["per_face"]
        ),
        "min_cell_count": opts["min_cell_count"],
        "decoder": opts["decoder"],
        "align_windows": opts["align_windows"],
        "tz": opts["tz"],
    }


def _ray_opts(opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": opts["ray_address"],
        "workers": opts["workers"],
        "segment_s": opts["segment_s"] or None,
    }


def _config_errors() -> tuple[type[BaseException], ...]:
    from agr_batch.detect import DetectorError
    from agr_batch.engines import BackendUnavailableError
    from agr_batch.registry import RegistryError

    return (CheckpointError, RegistryError, ValueError, BackendUnavailableError, DetectorError)


def _echo_error(message: str) -> None:
    click.echo(f"agr-batch: {message}", err=True)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="Stats table (Parquet)."
)
@click.option(
    "--faces", "faces_out", type=click.Path(dir_okay=False), help="Also write a per-face table."
)
@click.option(
    "--tracks", "tracks_out", type=click.Path(dir_okay=False), help="Also write a per-track table."
)
@click.option(
    "--sequence",
    is_flag=True,
    help="Treat each folder's images as one timestamped sequence (tracked like a video).",
)
@processing_options
def run(
    inputs: tuple[str, ...],
    out: str,
    faces_out: str | None,
    tracks_out: str | None,
    sequence: bool,
    **opts: Any,
) -> None:
    """Detect and classify faces in videos, images and folders; write Parquet statistics."""
    from agr_batch.config import RunConfig
    from agr_batch.runner import run as run_pipeline
    from agr_batch.signals import exit_code_for, terminate_as_interrupt

    quiet, as_json = opts["quiet"], opts["as_json"]
    _setup_logging(opts["verbose"], quiet, warnings_only=as_json)
    try:
        with terminate_as_interrupt():  # SIGTERM unwinds like Ctrl-C: temporary files go
            config = RunConfig(
                inputs=tuple(inputs),
                out=Path(out),
                faces_out=Path(faces_out) if faces_out else None,
                tracks_out=Path(tracks_out) if tracks_out else None,
                sequence=sequence,
                **processing_kwargs(opts),
            )
            progress = not (quiet or as_json) and sys.stderr.isatty()
            if opts["engine"] == "ray":
                from agr_batch.distributed import run_ray

                summary = run_ray(
                    config, progress=progress, on_error=_echo_error, **_ray_opts(opts)
                )
            else:
                summary = run_pipeline(config, progress=progress, on_error=_echo_error)
    except _config_errors() as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        if getattr(e, "after_commit", False):
            fail("interrupted after the outputs were written", exit_code_for(e))
        fail("interrupted; nothing was written under the output names", exit_code_for(e))
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        click.echo(format_summary(summary), err=True)
    sys.exit(EXIT_INPUT_FAILED if summary.files_failed else EXIT_OK)


def _load_toml_defaults(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """``--config FILE.toml``: every option's default, by option name (dashes or underscores)."""
    if not value:
        return
    from agr_batch.tomlconfig import ConfigFileError, load_defaults

    try:
        defaults = load_defaults(value, ctx)
    except ConfigFileError as e:
        fail(str(e))
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


@main.command()
@click.argument("root", required=False, type=click.Path(file_okay=True))
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    is_eager=True,
    expose_value=False,
    callback=_load_toml_defaults,
    help="TOML file holding any of these options (command-line options win).",
)
@click.option("--out", "dataset", type=click.Path(file_okay=False), help="Dataset folder.")
@click.option(
    "--settle",
    "settle_s",
    default=60.0,
    show_default=True,
    help="Seconds a file must be unmodified.",
)
@click.option("--retry-failed", is_flag=True, help="Retry files that failed before.")
@click.option("--dry-run", is_flag=True, help="List what would be processed; change nothing.")
@click.option("--faces", "write_faces", is_flag=True, help="Also write per-face parts.")
@click.option("--tracks", "write_tracks", is_flag=True, help="Also write per-track parts.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Also log to this file.")
@processing_options
def scan(
    root: str | None,
    dataset: str | None,
    settle_s: float,
    retry_failed: bool,
    dry_run: bool,
    write_faces: bool,
    write_tracks: bool,
    log_file: str | None,
    **opts: Any,
) -> None:
    """Process new and changed files under ROOT into a partitioned Parquet dataset.

    Safe for cron: incremental, exactly once, crash-safe, and locked against overlapping
    runs. Exit codes: 0 all good, 1 some files failed, 2 usage error, 3 another scan holds
    the lock, 130/143 interrupted by SIGINT/SIGTERM (files committed before are kept).
    """
    from agr_batch.safety import is_within
    from agr_batch.scan import EXIT_LOCKED, LockedError, ScanConfig, StateError
    from agr_batch.scan import scan as run_scan
    from agr_batch.signals import exit_code_for, terminate_as_interrupt
    from agr_batch.sources import media_kind

    quiet, as_json = opts["quiet"], opts["as_json"]
    _setup_logging(opts["verbose"], quiet, warnings_only=as_json)
    file_log = logging.getLogger("agr_batch.scan.log")
    if log_file and media_kind(log_file) is not None:
        fail(
            f"--log-file {log_file}: named like media ({media_kind(log_file)}); refusing to "
            "log into it"
        )
    if log_file and dataset and is_within(log_file, dataset):
        # Dataset readers take every file there whose name does not start with _ or . for a
        # part.
        fail(f"--log-file {log_file}: inside the dataset {dataset}; put it elsewhere")
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        # Everything agr-batch logs goes to the file; errors also get their stderr line.
        for name in ("agr_batch", "agr_batch.scan.log"):
            logging.getLogger(name).addHandler(handler)
        logging.getLogger("agr_batch").setLevel(logging.INFO)
        file_log.propagate = False
    if not root or not dataset:
        fail("scan needs ROOT and --out DATASET (or both in --config)")

    def on_error(message: str) -> None:
        _echo_error(message)
        if log_file:
            file_log.error("%s", message)

    try:
        with terminate_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the run is recorded
            config = ScanConfig(
                root=Path(root),
                dataset=Path(dataset),
                settle_s=settle_s,
                retry_failed=retry_failed,
                dry_run=dry_run,
                write_faces=write_faces,
                write_tracks=write_tracks,
                **processing_kwargs(opts),
            )
            if not Path(root).exists():
                fail(f"{root}: no such folder")
            progress = not (quiet or as_json) and sys.stderr.isatty()
            if opts["engine"] == "ray":
                from agr_batch.distributed import scan_ray

                summary = scan_ray(config, progress=progress, on_error=on_error, **_ray_opts(opts))
            else:
                summary = run_scan(config, progress=progress, on_error=on_error)
    except LockedError as e:
        fail(str(e), EXIT_LOCKED)
    except StateError as e:
        fail(str(e))
    except _config_errors() as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        fail("interrupted; every file committed before is kept", exit_code_for(e))
    except OSError as e:  # the dataset folder cannot be created or written
        fail(f"{e.filename or dataset}: {e.strerror or e}")
    if dry_run and not as_json:
        for line in summary.plan:
            click.echo(line)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        click.echo(
            f"scan: {summary.processed} processed, {summary.failed} failed, "
            f"{summary.deferred} deferred (settling), {summary.unchanged} unchanged, "
            f"{summary.renamed} renamed; {summary.faces} faces, {summary.visitors} visitors "
            f"({summary.suppressed_faces} faces in suppressed small cells) "
            f"in {summary.wall_s:.1f}s"
            + (f" (engine build {summary.build_s:.1f}s)" if summary.build_s >= 0.05 else ""),
            err=True,
        )
    sys.exit(summary.exit_code)


@main.command()
@click.argument("stats", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--png-dir", type=click.Path(file_okay=False), help="Also save each chart as PNG.")
@click.option(
    "--min-cell-count",
    default=5,
    show_default=True,
    help="Suppress chart cells with fewer distinct people or faces than this (0 = show all).",
)
@click.option("--tz", help="Time zone of the time charts, e.g. Europe/Berlin (default: local).")
def report(stats: str, out: str, png_dir: str | None, min_cell_count: int, tz: str | None) -> None:
    """Write a self-contained HTML report of a stats table or scanned dataset."""
    from agr_batch.report import build_report

    _setup_logging(0, quiet=True)
    try:
        data = build_report(stats, out, min_cell_count=min_cell_count, png_dir=png_dir, tz=tz)
    except (FileNotFoundError, ValueError, OSError) as e:
        fail(str(e))
    click.echo(data.summary_line(out), err=True)
    if data.notice:
        click.echo(f"agr-batch: {data.notice}", err=True)


@main.command()
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
    from agr_batch.limits import MAX_SETTLE_S, check_number
    from agr_batch.scan import StateError, dataset_status, format_status

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


@main.command(name="compile")
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
    from agr_batch.engines import BackendUnavailableError, engine_for_checkpoint
    from agr_batch.registry import RegistryError

    _setup_logging(0, quiet=False)
    try:
        dev = resolve_device(device)
        ckpt = load_checkpoint(checkpoint, device=dev)
        engine = engine_for_checkpoint(
            backend,
            ckpt,
            device=dev,
            precision=precision,
            cache_dir=cache_dir,
            opt_batch=batch_size,
        )
    except (CheckpointError, RegistryError, ValueError, BackendUnavailableError) as e:
        fail(str(e))
    if "path" in engine.details:
        click.echo(engine.details["path"])
    else:
        click.echo(
            f"{engine.name}: built and checked in {engine.details.get('build_s', 0):.1f}s "
            "(no file to ship: the check is cached, compiled code lives in Inductor's cache)"
        )


@main.command(name="bench")
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
    "--only",
    type=click.Choice(["classifier", "pipeline"]),
    help="Run only the classifier or only the end-to-end benchmark.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Engine cache.")
def bench_cmd(
    model: str | None,
    arch: str,
    backends: tuple[str, ...],
    batch_sizes: str,
    device: str,
    seconds: float,
    video: str | None,
    sample_fps: float,
    per_face: bool,
    only: str | None,
    cache_dir: str | None,
) -> None:
    """Measure faces/s per backend and batch size, and end-to-end against decode-only."""
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
            video=video,
            sample_fps=sample_fps,
            per_face=per_face,
            classifier=only != "pipeline",
            pipeline=only != "classifier",
        )
    except _config_errors() as e:
        fail(str(e))
    click.echo(report)


def format_summary(summary: RunSummary) -> str:
    """The end-of-run summary lines."""
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary.stage_s.items())
    lines = [
        f"files: {summary.files_ok} ok, {summary.files_failed} failed, {summary.skipped} skipped",
        f"frames: {summary.frames}, faces: {summary.faces} ({summary.classified_faces} "
        f"classified), visitors: {summary.visitors}, wall {summary.wall_s:.1f}s "
        + (f"(engine build {summary.build_s:.1f}s, " if summary.build_s >= 0.05 else "(")
        + f"{summary.frames_per_s:.1f} frames/s) on {summary.device}",
        f"stage time: {stages}",
        "wrote: " + ", ".join(f"{k} {v}" for k, v in summary.outputs.items()),
    ]
    if summary.suppressed_cells:
        lines.append(
            f"suppressed: {summary.suppressed_cells} small cells ({summary.suppressed_faces} faces)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
