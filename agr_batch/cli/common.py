"""What every ``agr-batch`` command shares: one-line errors, exit codes and logging.

This module, like every module of :mod:`agr_batch.cli`, imports only the standard library and
click at import time, so ``--help``, usage errors, ``status`` and ``info`` answer at once;
commands import the heavy stacks (torch, NumPy, PyArrow) when they run.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

import click

from agr_batch.exitcodes import EXIT_USAGE

__all__ = ["config_errors", "echo_error", "fail", "log_result", "setup_logging"]

RESULT_LOGGER = "agr_batch.result"
"""The logger of each run's one-line summary: always written to ``--log-file``."""


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line to stderr and exit with ``code``."""
    # Library messages sometimes carry newlines; the contract is one line.
    click.echo(f"agr-batch: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def echo_error(message: str) -> None:
    """One failed input: one line on stderr (and in the log file, when there is one)."""
    click.echo(f"agr-batch: {message}", err=True)
    logging.getLogger(RESULT_LOGGER).error("%s", message, extra=_FILE_ONLY)


def config_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a usage or configuration error (exit 2)."""
    from agr_batch.checkpoint import CheckpointError
    from agr_batch.engines import BackendUnavailableError
    from agr_batch.registry import RegistryError
    from agr_batch.stages.detect import DetectorError

    return (CheckpointError, RegistryError, ValueError, BackendUnavailableError, DetectorError)


# Records marked so reach the log file only (errors have their own stderr line already).
_FILE_ONLY = {"agr_batch_file_only": True}


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    _agr_batch = True

    @property
    def stream(self) -> Any:  # type: ignore[override]
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        del value

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        """Everything but the records meant for the log file alone."""
        return not getattr(record, "agr_batch_file_only", False) and super().filter(record)


class _FileHandler(logging.FileHandler):
    _agr_batch = True


def setup_logging(
    verbose: int, quiet: bool, *, warnings_only: bool = False, log_file: str | None = None
) -> None:
    """Log to stderr at the level the output options ask for, and everything to ``log_file``.

    stderr gets INFO by default (``-v``: more), warnings and errors with ``warnings_only``
    (``--json``), only errors with ``--quiet`` (silent on success: cron mails stderr). The
    log file gets INFO and above (``-vv``: debug) whatever the stderr level, including
    Python warnings and the messages of libraries (torch's own stderr logging is routed to
    these handlers once torch is imported), and one summary line per run.
    """
    if quiet:
        level = logging.ERROR
    elif warnings_only:
        level = logging.WARNING
    else:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_agr_batch", False):  # commands run again in one process (tests)
            root.removeHandler(h)
            h.close()
    stderr = _StderrHandler()
    stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    stderr.setLevel(level)
    root.addHandler(stderr)
    levels = [level]
    if log_file:
        handler = _FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_level = logging.DEBUG if verbose > 1 else logging.INFO
        handler.setLevel(file_level)
        root.addHandler(handler)
        levels.append(file_level)
    root.setLevel(min(levels))
    logging.captureWarnings(True)
    _route_library_logging(("torch",))


def log_result(line: str) -> None:
    """The run's one-line summary, for the log file (never on stderr)."""
    logging.getLogger(RESULT_LOGGER).info("%s", line, extra=_FILE_ONLY)


def _adopt(module: ModuleType) -> None:
    """Hand a library's own stderr logging to the root logger's handlers."""
    name = module.__name__
    for qname in [name, *(n for n in logging.root.manager.loggerDict if n.startswith(name + "."))]:
        logger = logging.getLogger(qname)
        for h in list(logger.handlers):
            if not getattr(h, "_agr_batch", False):
                logger.removeHandler(h)
        logger.propagate = True


def _route_library_logging(names: Sequence[str]) -> None:
    """Route the loggers of ``names`` (libraries that log to stderr on their own) to ours.

    Torch installs its own stderr handler on its loggers when it is imported, which would
    bypass ``--quiet`` and ``--log-file``; torch is imported lazily, so this happens as soon
    as it is (or now, if it already was).
    """
    for name in names:
        module = sys.modules.get(name)
        if module is not None:
            _adopt(module)
        elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport(name))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls :func:`_adopt` on a module right after it is imported."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """Wrap the real loader of ``self.name`` so that its import ends with the adoption."""
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_adopt(module: ModuleType) -> None:
            exec_module(module)
            _adopt(module)

        loader.exec_module = exec_then_adopt  # type: ignore[method-assign]
        return spec
