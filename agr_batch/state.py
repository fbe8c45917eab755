"""Scan state: which files were processed into which dataset parts, in SQLite (WAL).

The state database lives inside the dataset (``DATASET/_state/state.sqlite``). A file's
result and its state row are committed together with a two-phase protocol (see
:mod:`agr_batch.scan`): the row, the pending renames of its new parts and the old parts to
delete are written in one transaction, then applied, so a crash at any moment is repaired on
the next start by rolling forward or discarding work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    parts TEXT NOT NULL DEFAULT '[]',
    frames INTEGER NOT NULL DEFAULT 0,
    faces INTEGER NOT NULL DEFAULT 0,
    visitors INTEGER NOT NULL DEFAULT 0,
    processed_at TEXT NOT NULL,
    run_id INTEGER
);
CREATE INDEX IF NOT EXISTS files_sha ON files (sha256);
CREATE TABLE IF NOT EXISTS pending_moves (src TEXT NOT NULL, dst TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS garbage (path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL,
    finished TEXT,
    pid INTEGER,
    host TEXT,
    processed INTEGER DEFAULT 0,
    failed INTEGER DEFAULT 0,
    deferred INTEGER DEFAULT 0,
    exit_code INTEGER
);
"""


class LockedError(RuntimeError):
    """Another scan holds the dataset's lock."""


def now_iso() -> str:
    """The current UTC time, ISO-8601, seconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class FileRow:
    """A file's state row."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    status: str
    error: str | None
    parts: tuple[str, ...]
    frames: int
    faces: int
    visitors: int
    processed_at: str
    run_id: int | None


class DatasetLock:
    """An exclusive ``fcntl`` lock on ``DATASET/_state/lock``, released when the process ends.

    The lock file holds the holder's pid, host and start time, for the message a second
    scan prints.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockedError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockedError(
                    f"{self.path.parent.parent} is being scanned by {holder}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}\n".encode(), 0
        )
        self._fd = fd

    def release(self) -> None:
        """Release the lock (also released by the OS if the process dies)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class State:
    """The SQLite state of one dataset.

    Args:
        state_dir: ``DATASET/_state``.
    """

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "state.sqlite"
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @staticmethod
    def _row(r: Sequence[object]) -> FileRow:
        return FileRow(
            path=str(r[0]),
            size=int(r[1]),  # type: ignore[arg-type]
            mtime_ns=int(r[2]),  # type: ignore[arg-type]
            sha256=str(r[3]),
            status=str(r[4]),
            error=None if r[5] is None else str(r[5]),
            parts=tuple(json.loads(str(r[6]))),
            frames=int(r[7]),  # type: ignore[arg-type]
            faces=int(r[8]),  # type: ignore[arg-type]
            visitors=int(r[9]),  # type: ignore[arg-type]
            processed_at=str(r[10]),
            run_id=None if r[11] is None else int(r[11]),  # type: ignore[arg-type]
        )

    _COLUMNS = (
        "path, size, mtime_ns, sha256, status, error, parts, frames, faces, visitors, "
        "processed_at, run_id"
    )

    def files(self) -> dict[str, FileRow]:
        """Every file row by path."""
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM files").fetchall()
        return {r[0]: self._row(r) for r in rows}

    def start_run(self) -> int:
        """Record a new run; returns its id."""
        cur = self.db.execute(
            "INSERT INTO runs (started, pid, host) VALUES (?, ?, ?)",
            (now_iso(), os.getpid(), socket.gethostname()),
        )
        return int(cur.lastrowid or 0)

    def finish_run(
        self, run_id: int, *, processed: int, failed: int, deferred: int, exit_code: int
    ) -> None:
        """Record a run's outcome."""
        self.db.execute(
            "UPDATE runs SET finished=?, processed=?, failed=?, deferred=?, exit_code=? WHERE id=?",
            (now_iso(), processed, failed, deferred, exit_code, run_id),
        )

    def last_run(self) -> dict[str, object] | None:
        """The most recent run, as a dict."""
        cur = self.db.execute(
            "SELECT id, started, finished, pid, host, processed, failed, deferred, exit_code "
            "FROM runs ORDER BY id DESC LIMIT 1"
        )
        row = cur.fetchone()
        if row is None:
            return None
        names = [d[0] for d in cur.description]
        return dict(zip(names, row, strict=True))
