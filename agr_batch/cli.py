"""The ``agr-batch`` command line: commands parse options and call typed functions."""

from __future__ import annotations

import json
import logging
import sys

import click

from agr_batch import __version__
from agr_batch.checkpoint import CheckpointError

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


if __name__ == "__main__":
    main()
