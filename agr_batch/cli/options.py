"""The options ``run`` and ``scan`` share, and what they become.

A processing configuration, an executor (local or Ray) and, on a terminal, progress bars.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agr_batch.cli.common import echo_error, fail

DETECTOR_BACKENDS = [
    "auto", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "eager",
    "channels_last", "compiled", "inductor", "tensorrt",
]  # fmt: skip
"""``--detector-backend`` choices (``agr_batch.stages.detect.detector_backends()``)."""

if TYPE_CHECKING:
    from agr_batch.config import ProcessingConfig
    from agr_batch.pipeline import Pipeline
    from agr_batch.pipeline.progress import Progress

__all__ = [
    "NO_MODEL_HELP",
    "make_pipeline",
    "processing_kwargs",
    "processing_options",
    "progress_for",
    "with_pipeline",
]

T = TypeVar("T")

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
        help="Skip decoding all B-frames, sampled ones too (a little faster than the "
        "default, which skips only unsampled ones; samples may move by a frame or two).",
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
        "--detector-backend",
        default="auto",
        show_default=True,
        # Spelled out (not asked of the engine registry) so that --help loads no torch.
        type=click.Choice(DETECTOR_BACKENDS),
        help="How CenterFace runs: auto (on CPU OpenVINO bf16 where the CPU has bf16, else "
        "onnxruntime; the compiled engine on CUDA), onnxruntime, onnxruntime-int8, openvino, "
        "openvino-bf16, or a classifier backend in PyTorch.",
    ),
    click.option(
        "--detector-model", type=click.Path(dir_okay=False), help="Detector weights (scrfd)."
    ),
    click.option("--det-threshold", default=0.5, show_default=True, help="Min detection score."),
    click.option("--min-face", default=20, show_default=True, help="Min face size, pixels."),
    click.option(
        "--det-size", default=640, show_default=True, help="Detector resolution (longest side)."
    ),
    click.option(
        "--redetect-every",
        "redetect_s",
        default=1.0,
        show_default=True,
        help="In videos, search whole frames for new faces this often (seconds of video); "
        "in between only around the faces being tracked. 0 = every sampled frame.",
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
        type=click.Choice(["auto", "pyav", "nvdec", "torchcodec"]),
        help="Video decoder: auto (PyAV), pyav, nvdec (NVIDIA GPUs, pynvvideocodec) or torchcodec.",
    ),
    click.option(
        "--min-cell-count",
        default=0,
        show_default=True,
        help="Drop stats cells with fewer distinct people or faces than this (0 = keep all).",
    ),
    click.option(
        "--executor",
        default="local",
        show_default=True,
        type=click.Choice(["local", "ray"]),
        help="Run here, or on a Ray cluster (the `ray` extra).",
    ),
    click.option(
        "--engine",
        "engine_alias",
        type=click.Choice(["local", "ray"]),
        hidden=True,
        help="Old name of --executor.",
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
        help="Ray: split videos into overlapping segments of this many seconds (0 = never).",
    ),
    click.option(
        "--log-file",
        type=click.Path(dir_okay=False),
        help="Also log to this file: warnings, failures and one summary line per run.",
    ),
    click.option("--quiet", "-q", is_flag=True, help="Nothing on stderr but errors."),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."),
    click.option("-v", "--verbose", count=True, help="More logging (-vv for debug)."),
]


def processing_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Add the options shared by ``run`` and ``scan``."""
    for option in reversed(_PROCESSING_OPTIONS):
        fn = option(fn)
    return fn


def executor(opts: dict[str, Any]) -> str:
    """``--executor``, or the hidden old ``--engine`` (with a warning that it is deprecated)."""
    alias = opts.get("engine_alias")
    if alias is None:
        return str(opts["executor"])
    logging.getLogger("agr_batch.cli").warning(
        "--engine is deprecated and will be removed: use --executor %s", alias
    )
    return str(alias)


def processing_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    """Turn the shared options into :class:`agr_batch.config.ProcessingConfig` keywords."""
    from agr_batch.config import DetectorConfig, TrackerConfig, VoteConfig
    from agr_batch.limits import MAX_SEGMENT_S, check_number

    if not opts.get("model"):
        fail(NO_MODEL_HELP)
    # Checked here as well as by the Ray executor: with --executor local it is otherwise
    # unused, and a NaN there must not pass silently.
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
            backend=opts["detector_backend"],
            redetect_s=opts["redetect_s"],
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


def with_pipeline(command: Callable[..., T], config: ProcessingConfig, opts: dict[str, Any]) -> T:
    """Call ``command`` with the pipeline and progress bars the options ask for; close both.

    ``command`` is called as ``command(config, pipeline=..., progress=..., on_error=...)``,
    each failed input reported in one line on stderr.
    """
    pipeline = make_pipeline(config, opts)
    progress = progress_for(opts)
    try:
        return command(config, pipeline=pipeline, progress=progress, on_error=echo_error)
    finally:
        if progress is not None:
            progress.close()
        pipeline.close()


def make_pipeline(config: ProcessingConfig, opts: dict[str, Any]) -> Pipeline:
    """The pipeline the options ask for (its models load on first use).

    Raises:
        agr_batch.pipeline.ray.RayUnavailableError: ``--executor ray`` without Ray.
    """
    from agr_batch.pipeline import create_pipeline

    if executor(opts) == "ray":
        return create_pipeline(
            config,
            executor="ray",
            address=opts["ray_address"],
            workers=opts["workers"],
            segment_s=opts["segment_s"] or None,
        )
    return create_pipeline(config)


def progress_for(opts: dict[str, Any]) -> Progress | None:
    """Progress bars on stderr when it is a terminal, unless ``--quiet`` or ``--json``."""
    if opts["quiet"] or opts["as_json"] or not sys.stderr.isatty():
        return None
    from agr_batch.pipeline.progress import BarProgress

    return BarProgress()
