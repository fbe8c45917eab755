"""``agr-batch scan``: options in, :func:`agr_batch.commands.scan.scan` called, summary out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from agr_batch.cli.common import config_errors, fail, log_result, setup_logging
from agr_batch.cli.options import processing_kwargs, processing_options, with_pipeline
from agr_batch.exitcodes import EXIT_LOCKED

__all__ = ["scan"]


def _load_toml_defaults(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """``--config FILE.toml``: every option's default, by option name (dashes or underscores)."""
    if not value:
        return
    from agr_batch.cli.tomlconfig import ConfigFileError, load_defaults

    try:
        defaults = load_defaults(value, ctx)
    except ConfigFileError as e:
        fail(str(e))
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


@click.command()
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
@processing_options
def scan(
    root: str | None,
    dataset: str | None,
    settle_s: float,
    retry_failed: bool,
    dry_run: bool,
    write_faces: bool,
    write_tracks: bool,
    **opts: Any,
) -> None:
    """Process new and changed files under ROOT into a partitioned Parquet dataset.

    Safe for cron: incremental, exactly once, crash-safe, and locked against overlapping
    runs; silent with --quiet unless something failed. Exit codes: 0 all good, 1 some files
    failed in this run, 2 usage error, 3 another scan holds the lock, 4 nothing failed in
    this run but files that failed in earlier runs still fail (see `agr-batch status`,
    --retry-failed), 130/143 interrupted by SIGINT/SIGTERM (files committed before are kept).
    """
    from agr_batch.commands.scan import LockedError, ScanConfig, StateError
    from agr_batch.commands.scan import scan as scan_command
    from agr_batch.signals import exit_code_for, terminate_as_interrupt
    from agr_batch.stages.decode.media import media_kind
    from agr_batch.storage.safety import is_within

    quiet, as_json, log_file = opts["quiet"], opts["as_json"], opts["log_file"]
    if log_file and media_kind(log_file) is not None:
        fail(
            f"--log-file {log_file}: named like media ({media_kind(log_file)}); refusing to "
            "log into it"
        )
    if log_file and dataset and is_within(log_file, dataset):
        # Dataset readers take every file there whose name does not start with _ or . for a
        # part.
        fail(f"--log-file {log_file}: inside the dataset {dataset}; put it elsewhere")
    setup_logging(opts["verbose"], quiet, warnings_only=as_json, log_file=log_file)
    if not root or not dataset:
        fail("scan needs ROOT and --out DATASET (or both in --config)")

    def not_done(message: str, code: int = 2) -> NoReturn:
        log_result(f"scan: not done: {' '.join(message.split())}")
        fail(message, code)

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
            summary = with_pipeline(scan_command, config, opts)
    except LockedError as e:
        not_done(str(e), EXIT_LOCKED)
    except StateError as e:
        not_done(str(e))
    except ValueError as e:
        not_done(str(e))
    except KeyboardInterrupt as e:
        log_result("scan: interrupted")
        fail("interrupted; every file committed before is kept", exit_code_for(e))
    except OSError as e:  # the dataset folder cannot be created or written
        not_done(f"{e.filename or dataset}: {e.strerror or e}")
    except Exception as e:  # config_errors() imports torch: not for usage errors and exits
        if isinstance(e, config_errors()):
            not_done(str(e))
        raise
    log_result(summary.line())
    if dry_run and not as_json:
        for line in summary.plan:
            click.echo(line)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        click.echo(summary.line(), err=True)
    sys.exit(summary.exit_code)
