"""``agr-batch scan``: incremental, exactly-once processing of a folder into a Parquet dataset.

Layout of ``DATASET``::

    date=YYYY-MM-DD/part-<id>.parquet          stats rows (the schema of ``run --out``)
    _faces/date=YYYY-MM-DD/part-<id>.parquet   per-face rows (``--faces``)
    _tracks/date=YYYY-MM-DD/part-<id>.parquet  per-track rows (``--tracks``)
    _errors.parquet                            files that failed, with the reason
    _state/state.sqlite                        what was processed into which parts (WAL)
    _state/lock                                held by the running scan

Readers that skip names starting with ``_`` or ``.`` (pyarrow.dataset, pandas, polars,
DuckDB's hive globbing) read ``DATASET`` as one stats table partitioned by ``date``, the UTC
date of each source's absolute start time.

The commit protocol is in :mod:`agr_batch.commands.scan.dataset`, what happens to each file (which
recording is which, renames, failures, options) in :mod:`agr_batch.commands.scan.plan`. The scan
root and the dataset are resolved first (symlinks, ``..``), so the same files reached through
another spelling are the same files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agr_batch.commands.scan.plan import ScanOptionsError
from agr_batch.commands.scan.state import STATE_DIR, DatasetLock, LockedError, StateError
from agr_batch.config import ProcessingConfig
from agr_batch.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_STILL_FAILING
from agr_batch.limits import MAX_SETTLE_S, check_number
from agr_batch.storage.safety import is_within

if TYPE_CHECKING:
    from agr_batch.pipeline import Pipeline
    from agr_batch.pipeline.progress import Progress

log = logging.getLogger(__name__)


__all__ = [
    "LockedError",
    "ScanConfig",
    "ScanOptionsError",
    "ScanSummary",
    "StateError",
    "scan",
]


@dataclass(frozen=True, kw_only=True)
class ScanConfig(ProcessingConfig):
    """``agr-batch scan`` options on top of the processing options.

    Attributes:
        root: Folder (or file) to scan.
        dataset: Output dataset folder.
        settle_s: A file qualifies once its mtime is at least this many seconds old.
        retry_failed: Retry files that failed before even if unchanged.
        dry_run: Only list what would be processed.
        write_faces: Also write per-face parts.
        write_tracks: Also write per-track parts.
    """

    root: Path
    dataset: Path
    settle_s: float = 60.0
    retry_failed: bool = False
    dry_run: bool = False
    write_faces: bool = False
    write_tracks: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("--settle", self.settle_s, low=0, high=MAX_SETTLE_S, unit="seconds")
        # Compared by identity: a symlinked or ``..`` spelling of the root is the root.
        if is_within(self.dataset, self.root):
            raise ValueError(
                f"--out {self.dataset} must not be inside the scanned folder {self.root}"
            )
        if is_within(self.root, self.dataset):
            raise ValueError(f"the scanned folder {self.root} is inside --out {self.dataset}")


@dataclass
class ScanSummary:
    """What one scan did."""

    processed: int = 0
    failed: int = 0
    deferred: int = 0
    unchanged: int = 0
    renamed: int = 0
    touched: int = 0
    skipped: int = 0
    backfilled: int = 0
    still_failing: int = 0
    faces: int = 0
    visitors: int = 0
    suppressed_faces: int = 0
    failures: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    build_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """The exit code: 1, 4 or 0 (:mod:`agr_batch.exitcodes`).

        1 when files failed in this scan, 4 when none did but files that failed in earlier
        scans still fail (unchanged, not retried), else 0.
        """
        if self.failed:
            return EXIT_FAILED
        return EXIT_STILL_FAILING if self.still_failing else EXIT_OK

    def line(self) -> str:
        """The one-line summary (stderr, and the log file of every run)."""
        return (
            f"scan: {self.processed} processed, {self.failed} failed, "
            f"{self.still_failing} still failing from earlier scans, "
            f"{self.deferred} deferred (settling), {self.unchanged} unchanged, "
            f"{self.renamed} renamed; {self.faces} faces, {self.visitors} visitors "
            f"({self.suppressed_faces} faces in suppressed small cells) in {self.wall_s:.1f}s"
            + (f" (engine build {self.build_s:.1f}s)" if self.build_s >= 0.05 else "")
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dict(self.__dict__)
        d["exit_code"] = self.exit_code
        d["wall_s"] = round(self.wall_s, 3)
        d["build_s"] = round(self.build_s, 3)
        return d


def scan(
    config: ScanConfig,
    *,
    pipeline: Pipeline | None = None,
    progress: Progress | None = None,
    on_error: Callable[[str], None] = lambda m: log.error("%s", m),
) -> ScanSummary:
    """Process new and changed files under ``config.root`` into ``config.dataset``.

    A dry run takes no lock and writes nothing (it works on a read-only dataset). Planning,
    the lock and every commit happen here, one file at a time as results arrive (in
    completion order), whatever executes the work: a Ray pipeline only computes.

    Args:
        config: The scan.
        pipeline: The executor (default: a local pipeline made, and closed, here). Nothing
            loads, and no worker starts, when there is nothing to process.
        progress: Where progress is reported (None: nowhere).
        on_error: Called with one line per failed file.

    Raises:
        LockedError: Another scan holds the dataset's lock (exit code 3).
        StateError: The dataset's state is corrupt or unreadable.
        ScanOptionsError: The options differ from those the dataset was built with.
        agr_batch.checkpoint.CheckpointError: The model cannot be loaded.
        KeyboardInterrupt: On SIGINT (or SIGTERM in the CLI); the run is recorded as
            interrupted and every file committed before it is kept.
    """
    t0 = time.perf_counter()
    root = Path(os.path.realpath(config.root))
    summary = ScanSummary()
    if config.dry_run:
        from agr_batch.commands.scan import steps

        steps.dry_run(config, root, summary, on_error)
    else:
        # The lock first: an overlapping scan (cron) is told at once, before the heavy
        # stacks load.
        lock = DatasetLock(Path(os.path.realpath(config.dataset)) / STATE_DIR)
        lock.acquire()
        try:
            from agr_batch.commands.scan import steps

            steps.scan_locked(
                config, root, lock, summary, pipeline=pipeline, progress=progress,
                on_error=on_error,
            )  # fmt: skip
        finally:
            lock.release()
    summary.wall_s = time.perf_counter() - t0
    return summary
