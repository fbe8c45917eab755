"""``agr-batch run``: process inputs with any pipeline and write the output tables as one set."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agr_batch.config import RunConfig
from agr_batch.pipeline import Pipeline, SourceResult, WorkItem, create_pipeline
from agr_batch.pipeline.progress import Progress
from agr_batch.pipeline.sink import ResultSink, SourceOrder
from agr_batch.pipeline.work import group_sequences
from agr_batch.stages.aggregate import FACES_SCHEMA, everything_suppressed
from agr_batch.stages.decode.media import Discovery, discover, why_missing
from agr_batch.storage.safety import check_outputs
from agr_batch.storage.sinks import OutputSet

log = logging.getLogger(__name__)

__all__ = ["RunSummary", "run"]

ErrorCallback = Callable[[str], None]


@dataclass
class RunSummary:
    """What a run did; the CLI prints it and ``--json`` emits it."""

    files_ok: int = 0
    files_failed: int = 0
    skipped: int = 0
    frames: int = 0
    faces: int = 0
    classified_faces: int = 0
    visitors: int = 0
    suppressed_faces: int = 0
    suppressed_cells: int = 0
    wall_s: float = 0.0
    build_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    device: str = ""

    @property
    def process_s(self) -> float:
        """Wall time without the engine build (compiling is a one-off, not throughput)."""
        return max(self.wall_s - self.build_s, 0.0)

    @property
    def frames_per_s(self) -> float:
        """Sampled frames processed per second of processing (engine build excluded)."""
        return self.frames / self.process_s if self.process_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dict(self.__dict__)
        d["frames_per_s"] = round(self.frames_per_s, 2)
        d["wall_s"] = round(self.wall_s, 3)
        d["build_s"] = round(self.build_s, 3)
        return d

    def line(self) -> str:
        """One line for a log file: the counts and the wall time."""
        return (
            f"run: {self.files_ok} processed, {self.files_failed} failed, {self.skipped} "
            f"skipped; {self.frames} frames, {self.faces} faces, {self.visitors} visitors "
            f"in {self.wall_s:.1f}s"
        )


_MEDIA_HINTS = {
    "--faces": "run --faces takes the per-face table's file name (as in --faces faces.parquet)",
    "--tracks": "run --tracks takes the per-track table's file name (--tracks tracks.parquet)",
}


def _check_outputs(config: RunConfig, found: Discovery) -> None:
    """Refuse outputs that are inputs (however spelled), each other, or media names."""
    inputs: list[Path] = [Path(p) for p in config.inputs]
    inputs += [m.path for m in found.media] + list(found.skipped) + [Path(config.model)]
    if config.detector.model_path:
        inputs.append(Path(config.detector.model_path))
    check_outputs(
        {"--out": config.out, "--faces": config.faces_out, "--tracks": config.tracks_out},
        inputs,
        hints=_MEDIA_HINTS,
    )


def _log_error(message: str) -> None:
    log.error("%s", message)


def run(
    config: RunConfig,
    *,
    pipeline: Pipeline | None = None,
    progress: Progress | None = None,
    on_error: ErrorCallback = _log_error,
) -> RunSummary:
    """Process ``config.inputs`` and write the stats (and optional faces/tracks) tables.

    Bad inputs are reported through ``on_error`` (one line naming the file and the reason)
    and counted; processing goes on with the rest. The outputs are checked first (none may
    be an input or another output, however spelled), before any model is loaded, then
    written as one set: all or nothing (see :class:`agr_batch.storage.sinks.OutputSet`).
    When every input fails before yielding a frame, nothing is written and the previous
    outputs stay (``outputs`` is then empty).

    Args:
        config: What to process and where to write it.
        pipeline: The executor (default: a :class:`~agr_batch.pipeline.local.LocalPipeline`
            made, and closed, here). Its models load on first use, after the checks.
        progress: Where progress is reported (None: nowhere).
        on_error: Called with one line per failed input.

    Raises:
        agr_batch.checkpoint.CheckpointError: If the model cannot be loaded.
        agr_batch.storage.safety.OutputError: An output that must not or cannot be written
            (nothing was replaced).
        ValueError: For an unusable device or detector configuration.
        KeyboardInterrupt: On SIGINT (and SIGTERM under the CLI); nothing was replaced, or,
            when ``after_commit`` is set, the whole set was.
    """
    t_start = time.perf_counter()
    found = discover(config.inputs)
    _check_outputs(config, found)  # before anything is loaded or written
    if not found.media and (found.missing or found.errors):
        # Nothing can be read (a camera mount that is gone, a typo): say so at once, without
        # loading models for seconds, and keep the previous outputs.
        summary = RunSummary(skipped=len(found.skipped))
        _report_problems(found, summary, on_error)
        summary.wall_s = time.perf_counter() - t_start
        return summary
    with contextlib.ExitStack() as stack:
        if pipeline is None:
            pipeline = create_pipeline(config)
            stack.callback(pipeline.close)
        summary = _run(config, found, pipeline, progress, on_error)
    summary.wall_s = time.perf_counter() - t_start
    return summary


def _report_problems(found: Discovery, summary: RunSummary, on_error: ErrorCallback) -> None:
    """Count and report the inputs that could not even be listed."""
    problems = [f"{p}: {why_missing(p)}" for p in found.missing]
    problems += [f"{p}: {reason}" for p, reason in found.errors]
    for err in problems:
        on_error(err)
        summary.failures.append(err)
        summary.files_failed += 1


def _run(
    config: RunConfig,
    found: Discovery,
    pipeline: Pipeline,
    progress: Progress | None,
    on_error: ErrorCallback,
) -> RunSummary:
    outputs = OutputSet(
        {"--out": config.out, "--faces": config.faces_out, "--tracks": config.tracks_out}
    )
    media = group_sequences(found.media) if config.sequence else list(found.media)
    info = pipeline.info()
    summary = RunSummary(
        backend=f"{info.backend} {info.precision}", device=info.device, build_s=info.build_s
    )
    _report_problems(found, summary, on_error)
    summary.skipped = len(found.skipped)

    # The token ties the files of one run together: a reader can check they belong.
    metadata = {**info.metadata(config), "output_set": outputs.token}

    def count(result: SourceResult) -> None:
        summary.frames += result.frames
        summary.faces += result.faces
        summary.visitors += len(result.tracks)
        if result.error is not None:
            on_error(result.error)
            summary.failures.append(result.error)
            summary.files_failed += 1
        else:
            summary.files_ok += 1

    # All outputs go to locked temporary files (reserved before any work, so an unwritable
    # folder fails at once) and replace the old set together, or not at all.
    with outputs:
        faces_ctx = (
            outputs.stream("--faces", FACES_SCHEMA, metadata=metadata)
            if config.faces_out is not None
            else contextlib.nullcontext()
        )
        with faces_ctx as faces_writer:
            sink = ResultSink(
                info.labels,
                window_s=config.window_s,
                align=config.align_windows,
                tz=config.tz,
                faces=None if faces_writer is None else faces_writer.write,
                keep_tracks=config.tracks_out is not None,
            )
            in_order = SourceOrder((str(m.path) for m in media), sink.add)

            def on_source(result: SourceResult) -> None:
                count(result)
                in_order(result)

            stats = pipeline.process([WorkItem(m) for m in media], on_source, progress)
            in_order.flush()
        times = stats.times
        # Every input failed before a single frame: empty tables would replace the last good
        # ones and look like "nobody came", so nothing is written and the old set stays. (A
        # source that failed part way keeps its good frames' results.)
        if summary.files_ok or summary.frames or not summary.files_failed:
            t_w = time.perf_counter()
            _write_tables(config, outputs, sink, metadata, summary)
            outputs.commit()
            times.write += time.perf_counter() - t_w
    summary.classified_faces = stats.classified_faces
    summary.stage_s = times.as_dict()
    if outputs.committed:
        summary.outputs = {"stats": str(config.out)}
        if config.faces_out is not None:
            summary.outputs["faces"] = str(config.faces_out)
        if config.tracks_out is not None:
            summary.outputs["tracks"] = str(config.tracks_out)
    return summary


def _write_tables(
    config: RunConfig,
    outputs: OutputSet,
    sink: ResultSink,
    metadata: dict[str, Any],
    summary: RunSummary,
) -> None:
    """Write the stats (and tracks) tables to their temporary files; say what was suppressed."""
    outputs.write_table(
        "--out", sink.stats(min_cell_count=config.min_cell_count), metadata=metadata
    )
    summary.suppressed_faces = sink.suppressed.faces
    summary.suppressed_cells = sink.suppressed.cells
    if sink.suppressed.everything:
        faces = sink.suppressed.faces
        msg = everything_suppressed(config.min_cell_count, faces=faces, where=str(config.out))
        log.warning("%s", msg)
    elif sink.suppressed.cells:
        log.info(
            "suppressed %d cells (%d faces) below --min-cell-count %d",
            sink.suppressed.cells,
            sink.suppressed.faces,
            config.min_cell_count,
        )
    if config.tracks_out is not None:
        outputs.write_table("--tracks", sink.tracks(), metadata=metadata)
