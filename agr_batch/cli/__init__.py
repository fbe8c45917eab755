"""The ``agr-batch`` command line: each command parses options and calls a typed function.

* :mod:`~agr_batch.cli.run` — ``run`` (:func:`agr_batch.commands.run.run`);
* :mod:`~agr_batch.cli.scan` — ``scan`` (:func:`agr_batch.commands.scan.scan`);
* :mod:`~agr_batch.cli.report` — ``report`` (:mod:`agr_batch.commands.report`);
* :mod:`~agr_batch.cli.misc` — ``info``, ``status``, ``compile``, ``bench``;
* :mod:`~agr_batch.cli.options` — the options ``run`` and ``scan`` share;
* :mod:`~agr_batch.cli.common` — one-line errors, logging (``--quiet``, ``--log-file``).

Importing this package loads click and the standard library only: torch, NumPy and PyArrow
load when a command needs them, so ``--help``, usage errors, ``status`` and ``info`` are
fast. Exit codes: :mod:`agr_batch.exitcodes`.
"""

from __future__ import annotations

import click

from agr_batch import __version__
from agr_batch.cli.misc import bench, compile_engine, info, status
from agr_batch.cli.report import report
from agr_batch.cli.run import run
from agr_batch.cli.scan import scan

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agr-batch")
def main() -> None:
    """Demographic statistics (FairFace age, gender, race) from videos and image folders."""


for _command in (run, scan, report, info, status, compile_engine, bench):
    main.add_command(_command)
