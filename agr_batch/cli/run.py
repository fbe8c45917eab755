"""``agr-batch run``: options in, :func:`agr_batch.commands.run.run` called, summary out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from agr_batch.cli.common import config_errors, fail, log_result, setup_logging
from agr_batch.cli.options import processing_kwargs, processing_options, with_pipeline
from agr_batch.exitcodes import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from agr_batch.commands.run import RunSummary

__all__ = ["format_summary", "run"]


@click.command()
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
    from agr_batch.signals import exit_code_for, terminate_as_interrupt

    quiet, as_json = opts["quiet"], opts["as_json"]
    setup_logging(opts["verbose"], quiet, warnings_only=as_json, log_file=opts["log_file"])
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
            from agr_batch.commands.run import run as run_command  # after the usage checks

            summary = with_pipeline(run_command, config, opts)
    except ValueError as e:
        _not_done(e)
    except KeyboardInterrupt as e:
        log_result("run: interrupted")
        if getattr(e, "after_commit", False):
            fail("interrupted after the outputs were written", exit_code_for(e))
        fail("interrupted; nothing was written under the output names", exit_code_for(e))
    except Exception as e:  # config_errors() imports torch: not for usage errors and exits
        if isinstance(e, config_errors()):
            _not_done(e)
        raise
    log_result(summary.line())
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        click.echo(format_summary(summary), err=True)
    sys.exit(EXIT_FAILED if summary.files_failed else EXIT_OK)


def _not_done(e: BaseException) -> NoReturn:
    log_result(f"run: not done: {' '.join(str(e).split())}")
    fail(str(e))


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
        "wrote: " + ", ".join(f"{k} {v}" for k, v in summary.outputs.items())
        if summary.outputs
        else "wrote: nothing (no input could be processed; earlier outputs are untouched)",
    ]
    if summary.suppressed_cells:
        lines.append(
            f"suppressed: {summary.suppressed_cells} small cells ({summary.suppressed_faces} faces)"
        )
    return "\n".join(lines)
