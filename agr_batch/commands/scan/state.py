"""Scan state: which recordings were processed into which dataset parts, in SQLite (WAL).

The state database lives inside the dataset (``DATASET/_state/state.sqlite``). A file's result and
its state row are committed together with a two-phase protocol (see
:mod:`agr_batch.commands.scan.dataset`): the row, the pending renames of its new parts and the old
parts to delete are written in one transaction, then applied, so a crash at any moment is repaired
on the next start by rolling forward or discarding work.

One row per recording. The row of the file now at a path is *current*; when a new recording
takes over a path (a loop recorder reusing a name), the old row stays, *retired*, with its
parts, so the old recording's statistics are kept (see :mod:`agr_batch.commands.scan.plan`).
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
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

STATE_DIR = "_state"
"""The folder of a dataset that holds its state and lock."""

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    current INTEGER NOT NULL DEFAULT 1,
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
    run_id INTEGER,
    dev INTEGER,
    ino INTEGER,
    btime_ns INTEGER,
    ctime_ns INTEGER,
    prefix_sha256 TEXT,
    prefix_len INTEGER,
    vanished_at TEXT,
    tables TEXT,
    options TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS files_current_path ON files (path) WHERE current = 1;
CREATE INDEX IF NOT EXISTS files_sha ON files (sha256);
CREATE TABLE IF NOT EXISTS pending_moves (src TEXT NOT NULL, dst TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS garbage (path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (signature TEXT PRIMARY KEY, settings TEXT NOT NULL);
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

# Version 1 (before recordings were told apart) keyed files by path.
_V1_COLUMNS = (
    "path, size, mtime_ns, sha256, status, error, parts, frames, faces, visitors, "
    "processed_at, run_id"
)


class LockedError(RuntimeError):
    """Another scan holds the dataset's lock."""


class StateError(RuntimeError):
    """A scan state that cannot be used (corrupt, unreadable, too new); one-line message."""


def now_iso() -> str:
    """The current UTC time, ISO-8601, seconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, kw_only=True)
class FileRow:
    """A recording's state row.

    Attributes:
        id: Row id.
        path: The file's path (under the resolved scan root).
        current: Whether the file now at ``path`` is this recording (False: retired, its
            name reused by a newer recording).
        size: Bytes when processed.
        mtime_ns: Modification time when processed.
        sha256: Content hash.
        status: ``ok`` or ``failed``.
        error: Why it failed.
        parts: Dataset parts (relative paths) holding its rows.
        frames: Sampled frames.
        faces: Faces found.
        visitors: Tracks found.
        processed_at: When the row was written.
        run_id: The scan run that wrote it.
        dev: Device of the file (None in rows of older versions).
        ino: Inode of the file.
        btime_ns: Birth time, where kept.
        ctime_ns: Status change time.
        prefix_sha256: Hash of the first ``prefix_len`` bytes.
        prefix_len: Bytes hashed for ``prefix_sha256``.
        vanished_at: When a scan found the path gone (a later file there is a new recording).
        tables: Table kinds the processing was asked for (None: not recorded).
        options: Signature of the table-changing options (None: not recorded).
    """

    id: int = 0
    path: str
    current: bool = True
    size: int
    mtime_ns: int
    sha256: str
    status: str
    error: str | None = None
    parts: tuple[str, ...] = ()
    frames: int = 0
    faces: int = 0
    visitors: int = 0
    processed_at: str = ""
    run_id: int | None = None
    dev: int | None = None
    ino: int | None = None
    btime_ns: int | None = None
    ctime_ns: int | None = None
    prefix_sha256: str | None = None
    prefix_len: int | None = None
    vanished_at: str | None = None
    tables: tuple[str, ...] | None = None
    options: str | None = None


_ROW_FIELDS = tuple(f.name for f in fields(FileRow))


def _to_row(record: Mapping[str, Any]) -> FileRow:
    values = dict(record)
    values["current"] = bool(values.get("current", 1))
    values["parts"] = tuple(json.loads(values.get("parts") or "[]"))
    tables = values.get("tables")
    values["tables"] = None if tables is None else tuple(json.loads(tables))
    return FileRow(**{k: v for k, v in values.items() if k in _ROW_FIELDS})


class DatasetLock:
    """An exclusive ``flock`` on ``DATASET/_state/lock``, released when the process ends.

    The lock file holds the holder's pid, host and start time (for the message a second scan
    prints), and on a second line what it is doing and since when (for ``status``).
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self._fd: int | None = None
        self._holder = ""

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockedError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateError(f"{self.path}: not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 512, 0).decode(errors="replace").splitlines()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockedError(
                    f"{self.path.parent.parent} is being scanned by "
                    f"{holder[0].strip() if holder else 'another process'}"
                ) from None
            raise
        except BaseException:
            os.close(fd)
            raise
        self._holder = f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}"
        self._fd = fd
        self.activity("starting")

    def activity(self, what: str) -> None:
        """Record what the holder is doing now (read by ``status`` to spot a stuck scan)."""
        if self._fd is None:
            return
        text = f"{self._holder}\ndoing {' '.join(what.split())} since {now_iso()}\n".encode()
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text, 0)

    def release(self) -> None:
        """Release the lock (also released by the OS if the process dies)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def inspect_lock(state_dir: Path) -> dict[str, Any]:
    """Who holds a dataset's lock, and what it is doing, without taking it (read-only).

    Returns:
        ``held`` (a live process holds it), ``holder`` and ``doing`` (the lock file's
        lines) and ``doing_since`` (ISO time) when known.
    """
    path = state_dir / "lock"
    info: dict[str, Any] = {"held": False, "holder": None, "doing": None, "doing_since": None}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return info
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return info
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as e:
            info["held"] = e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
        lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
    finally:
        os.close(fd)
    if lines:
        info["holder"] = lines[0].strip() or None
    if len(lines) > 1 and lines[1].startswith("doing "):
        what, _, since = lines[1].removeprefix("doing ").rpartition(" since ")
        info["doing"], info["doing_since"] = (what, since) if what else (lines[1], None)
    return info


class State:
    """The SQLite state of one dataset.

    Args:
        state_dir: ``DATASET/_state``.
        read_only: Open without writing anything (``status``, ``scan --dry-run``): works on a
            read-only dataset, and creates nothing.

    Raises:
        StateError: The database is corrupt, unreadable or of a newer version.
    """

    def __init__(self, state_dir: Path, *, read_only: bool = False) -> None:
        self.path = state_dir / "state.sqlite"
        self.read_only = read_only
        try:
            if read_only:
                self.db = _connect_read_only(self.path)
            else:
                state_dir.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self._migrate()
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            self._columns = {r[1] for r in self.db.execute("PRAGMA table_info(files)")}
        except sqlite3.DatabaseError as e:
            raise StateError(
                f"{self.path}: unusable scan state ({e}); restore it from a backup, or scan "
                "into a new --out folder"
            ) from None
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: written by a newer agr-batch (state version {version}); upgrade"
            )

    def _migrate(self) -> None:
        """Create the schema, or bring a version-1 state to version 2 in one transaction."""
        with self.transaction() as db:
            cols = {r[1] for r in db.execute("PRAGMA table_info(files)")}
            if cols and "id" not in cols:
                db.execute("DROP INDEX IF EXISTS files_sha")
                db.execute("ALTER TABLE files RENAME TO files_v1")
            # One statement at a time: executescript() would commit the transaction first.
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if cols and "id" not in cols:
                db.execute(f"INSERT INTO files ({_V1_COLUMNS}) SELECT {_V1_COLUMNS} FROM files_v1")
                db.execute("DROP TABLE files_v1")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    def _rows(self, where: str = "", args: tuple[Any, ...] = ()) -> list[FileRow]:
        if not self._columns:  # a read-only look at a state without tables yet
            return []
        names = [c for c in _ROW_FIELDS if c in self._columns]
        cur = self.db.execute(f"SELECT {', '.join(names)} FROM files {where}", args)
        return [_to_row(dict(zip(names, r, strict=True))) for r in cur.fetchall()]

    def files(self) -> dict[str, FileRow]:
        """The current row of every path."""
        where = "WHERE current = 1" if "current" in self._columns else ""
        return {r.path: r for r in self._rows(where)}

    def all_files(self) -> list[FileRow]:
        """Every row, current and retired."""
        return self._rows("ORDER BY id" if "id" in self._columns else "")

    def settings(self) -> dict[str, dict[str, Any]]:
        """The table-changing options recorded, by signature."""
        if "id" not in self._columns:
            return {}
        rows = self.db.execute("SELECT signature, settings FROM settings").fetchall()
        return {sig: json.loads(text) for sig, text in rows}

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
        try:
            cur = self.db.execute(
                "SELECT id, started, finished, pid, host, processed, failed, deferred, "
                "exit_code FROM runs ORDER BY id DESC LIMIT 1"
            )
        except sqlite3.OperationalError:  # read-only look at a state without tables
            return None
        row = cur.fetchone()
        if row is None:
            return None
        names = [d[0] for d in cur.description]
        return dict(zip(names, row, strict=True))


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open ``path`` without writing: ``mode=ro``, or ``immutable`` on a read-only folder.

    A WAL database opened read-only still needs its ``-shm`` file; in a folder nobody may
    write to (a read-only mount or a copy) none can exist, and no scan can be writing either.
    """
    if not path.is_file():
        raise sqlite3.DatabaseError("not a file")
    uri = path.absolute().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=30)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK) and os.access(path, os.W_OK):
            raise
    db = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return db


def covered(row: FileRow) -> frozenset[str]:
    """Table kinds a processed file's rows are complete for."""
    if row.tables is not None:
        return frozenset(row.tables)
    # Rows of older versions: a kind is complete if it has a part, or nothing to hold.
    kinds = {"stats"}
    if row.faces == 0 or any(p.startswith("_faces/") for p in row.parts):
        kinds.add("faces")
    if row.visitors == 0 or any(p.startswith("_tracks/") for p in row.parts):
        kinds.add("tracks")
    return frozenset(kinds)
