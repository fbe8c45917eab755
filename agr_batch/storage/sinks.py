"""Parquet sinks: atomic files and output sets replaced together, with the configuration.

Every file is written under a temporary name in the destination folder and renamed over the
final name only when complete, so a crash never leaves a half-written file under that name.

Temporary files are named ``.<final name>.agr-<random>.tmp`` and hold an ``flock`` for as
long as their writer lives. A run killed with SIGKILL (or a power cut) leaves its temporary
files behind; the next write of the same final name removes those whose lock is free, and
only those: a concurrent run's files are locked, and nothing else matches the name.

:class:`OutputSet` replaces several files (``run``'s stats, faces and tracks tables) as one:
all are written and verified under temporary names first; then, with SIGINT and SIGTERM held
back and the output folders locked against a concurrent commit, each old file is kept as a
hard-linked backup and the new ones are renamed in. If a rename fails, the ones already done
are rolled back, so readers see the old set or the new set, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agr_batch.signals import deferred_signals
from agr_batch.storage.safety import OutputError

log = logging.getLogger(__name__)

METADATA_KEY = b"agr_batch"
ROW_GROUP_ROWS = 65_536
"""Rows per Parquet row group of streamed tables (one group per track made footers huge)."""

__all__ = [
    "METADATA_KEY",
    "ROW_GROUP_ROWS",
    "OutputSet",
    "ParquetStreamWriter",
    "atomic_path",
    "clean_stale_temps",
    "read_metadata",
    "with_metadata",
    "write_table",
]


class _TempFile:
    """A new temporary file beside ``final``, locked (``flock``) until closed."""

    def __init__(self, final: Path) -> None:
        self.final = final
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            path = final.parent / f".{final.name}.agr-{secrets.token_hex(6)}.tmp"
            try:
                # 0666 less the umask, as any Unix tool creates files.
                self._fd = os.open(path, flags, 0o666)
                break
            except FileExistsError:
                continue
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.path = path

    @classmethod
    def adopt(cls, final: Path, path: Path) -> _TempFile:
        """Lock an existing temporary file (a backup link) like a new one."""
        tmp = cls.__new__(cls)
        tmp.final, tmp.path = final, path
        tmp._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        # The link shares the output's inode: never wait on someone else's lock of it.
        with contextlib.suppress(OSError):
            fcntl.flock(tmp._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return tmp

    def fsync(self) -> None:
        """Flush the file's data to disk (through its current name)."""
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())

    def close(self, *, remove: bool) -> None:
        """Release the lock; delete the file when ``remove``."""
        if self._fd < 0:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = -1


def clean_stale_temps(final: str | os.PathLike[str]) -> int:
    """Delete temporary files of ``final`` left by killed writers; returns how many.

    Only regular files named as agr-batch names its temporary files, now
    (``.<final name>.agr-<hex>.tmp``) and before (``.<final name>.<8 letters>.tmp``), whose
    ``flock`` is free are removed.
    """
    final = Path(final)
    ours = re.compile(
        rf"\.{re.escape(final.name)}\.(agr-[0-9a-f]{{12}}|agr-old-[0-9a-f]{{12}}|[a-z0-9_]{{8}})\.tmp"
    )
    removed = 0
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return 0
    for entry in entries:
        if not ours.fullmatch(entry.name):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            if os.path.samestat(os.fstat(fd), os.lstat(entry.path)):
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d temporary file(s) of %s left by an interrupted run", removed, final)
    return removed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` on success.

    On an exception the temporary file is removed and ``final`` is left untouched. Stale
    temporary files of ``final`` from killed runs are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final)
    tmp = _TempFile(final)
    try:
        yield tmp.path
        tmp.fsync()
        os.replace(tmp.path, final)
        _fsync_dir(final.parent)
    finally:
        tmp.close(remove=True)


def with_metadata(schema: pa.Schema, metadata: Mapping[str, Any]) -> pa.Schema:
    """``schema`` with ``metadata`` stored as JSON under the ``agr_batch`` key."""
    existing = dict(schema.metadata or {})
    existing[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
    return schema.with_metadata(existing)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The configuration recorded in a Parquet file written by agr-batch (``{}`` if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_table(
    path: str | os.PathLike[str], table: pa.Table, *, metadata: Mapping[str, Any]
) -> None:
    """Write ``table`` atomically with ``metadata``."""
    table = table.replace_schema_metadata(with_metadata(table.schema, metadata).metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class ParquetStreamWriter:
    """Stream tables into one Parquet file in row groups of ``row_group_rows`` rows.

    Use as a context manager: with ``atomic=True`` (the default) the file is written under a
    temporary name and renamed on a clean exit, and an exception discards it; with
    ``atomic=False`` it is written at ``path`` directly (an :class:`OutputSet` temporary).

    Args:
        path: File name.
        schema: Arrow schema of every table.
        metadata: Configuration recorded in the file's key-value metadata.
        row_group_rows: Rows buffered per row group.
        atomic: Write under a temporary name and rename on success.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: pa.Schema,
        *,
        metadata: Mapping[str, Any],
        row_group_rows: int = ROW_GROUP_ROWS,
        atomic: bool = True,
    ) -> None:
        self.path = Path(path)
        self.schema = with_metadata(schema, metadata)
        self.rows = 0
        self.row_group_rows = row_group_rows
        self.atomic = atomic
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetStreamWriter:
        target = self.path
        if self.atomic:
            self._ctx = atomic_path(self.path)
            target = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(target, self.schema)
        return self

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (its schema must match, metadata aside)."""
        if self._writer is None:
            raise RuntimeError("ParquetStreamWriter.write() outside its with-block")
        if len(table):
            self._buffer.append(table.cast(self.schema))
            self._buffered += len(table)
            self.rows += len(table)
            if self._buffered >= self.row_group_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer or self._writer is None:
            return
        batch = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        self._writer.write_table(batch, row_group_size=self.row_group_rows)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._writer is not None
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._buffer = []
            self._writer.close()
            self._writer = None
            if self._ctx is not None:
                self._ctx.__exit__(exc_type, exc, tb)


class OutputSet:
    """Output files replaced together, or not at all (see the module docstring).

    Use as a context manager: entering removes stale temporary files and reserves a locked
    temporary file per output (so an unwritable folder fails before any work); write each
    output to :meth:`temp` (or through :meth:`write_table` / :meth:`stream`), then call
    :meth:`commit`. Leaving without a commit removes every temporary file.

    Args:
        finals: Final paths by the option that names them (``--out``); None is skipped.
    """

    def __init__(self, finals: Mapping[str, Path | None]) -> None:
        self.finals = {opt: Path(p) for opt, p in finals.items() if p is not None}
        self.token = secrets.token_hex(8)
        self.rows: dict[str, int] = {}
        self._temps: dict[str, _TempFile] = {}
        self.committed = False

    def __enter__(self) -> OutputSet:
        try:
            for opt, final in self.finals.items():
                try:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    clean_stale_temps(final)
                    self._temps[opt] = _TempFile(final)
                except OSError as e:
                    raise OutputError(
                        f"{opt} {final}: cannot be written ({e.strerror or e})"
                    ) from None
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._discard()

    def _discard(self) -> None:
        for t in self._temps.values():
            t.close(remove=not self.committed)
        self._temps.clear()

    def temp(self, opt: str) -> Path:
        """The temporary file standing for ``opt``'s output until the commit."""
        return self._temps[opt].path

    def _failed(self, opt: str, e: OSError) -> OutputError:
        return OutputError(
            f"{opt} {self.finals[opt]}: could not be written ({e.strerror or e}); "
            "no output was replaced"
        )

    def write_table(self, opt: str, table: pa.Table, *, metadata: Mapping[str, Any]) -> None:
        """Write ``opt``'s whole table to its temporary file."""
        table = table.replace_schema_metadata(with_metadata(table.schema, metadata).metadata)
        try:
            pq.write_table(table, self.temp(opt))
        except OSError as e:
            raise self._failed(opt, e) from None
        self.rows[opt] = len(table)

    @contextlib.contextmanager
    def stream(
        self, opt: str, schema: pa.Schema, *, metadata: Mapping[str, Any]
    ) -> Iterator[ParquetStreamWriter]:
        """A :class:`ParquetStreamWriter` into ``opt``'s temporary file."""
        writer = ParquetStreamWriter(self.temp(opt), schema, metadata=metadata, atomic=False)
        try:
            with writer:
                yield writer
        except OSError as e:
            raise self._failed(opt, e) from None
        self.rows[opt] = writer.rows

    def commit(self) -> None:
        """Verify every temporary file, then rename them all over their final names.

        Raises:
            OutputError: A file is missing, unreadable or holds other rows than written, or a
                rename failed (the renames already done are rolled back).
            agr_batch.signals.Interrupted: A SIGINT/SIGTERM arrived during the renames; it
                was held back until the whole set was in place.
        """
        missing = sorted(set(self.finals) - set(self.rows))
        if missing:
            raise RuntimeError(f"outputs never written: {missing}")
        for opt, tmp in self._temps.items():
            try:
                rows = pq.read_metadata(tmp.path).num_rows
                tmp.fsync()
            except (OSError, pa.ArrowInvalid) as e:
                raise OutputError(
                    f"{opt} {self.finals[opt]}: written file unreadable ({e}); "
                    "no output was replaced"
                ) from None
            if rows != self.rows[opt]:
                raise OutputError(
                    f"{opt} {self.finals[opt]}: wrote {self.rows[opt]} rows but the file "
                    f"holds {rows}; no output was replaced"
                )
        with deferred_signals(), _locked_folders({f.parent for f in self.finals.values()}):
            self._replace_all()
            self.committed = True

    def _replace_all(self) -> None:
        backups: dict[str, _TempFile] = {}
        done: list[str] = []
        try:
            for opt, final in self.finals.items():
                backup = _backup(final) if final.is_file() else None
                if backup is not None:
                    backups[opt] = backup
            for opt, final in self.finals.items():
                os.replace(self._temps[opt].path, final)
                done.append(opt)
        except OSError as e:
            failed = next(o for o in self.finals if o not in done)
            for opt in reversed(done):
                with contextlib.suppress(OSError):
                    if opt in backups:
                        os.replace(backups[opt].path, self.finals[opt])
                    else:
                        self.finals[opt].unlink()
            raise OutputError(
                f"{failed} {self.finals[failed]}: could not be replaced ({e.strerror or e}); "
                "the previous outputs were restored"
            ) from None
        finally:
            for b in backups.values():
                b.close(remove=True)
        for folder in {f.parent for f in self.finals.values()}:
            _fsync_dir(folder)


def _backup(final: Path) -> _TempFile | None:
    """A locked hard link to ``final`` under a temporary name, to restore on a rollback.

    None where the filesystem has no hard links (the rollback then removes the new file).
    """
    while True:
        path = final.parent / f".{final.name}.agr-old-{secrets.token_hex(6)}.tmp"
        try:
            os.link(final, path)
            break
        except FileExistsError:
            continue
        except OSError as e:
            log.debug("no backup of %s (%s)", final, e)
            return None
    return _TempFile.adopt(final, path)


@contextlib.contextmanager
def _locked_folders(folders: set[Path]) -> Iterator[None]:
    """Exclusive ``flock`` on each folder (in a fixed order), so two commits never mix."""
    fds: list[int] = []
    try:
        for folder in sorted({os.path.realpath(f) for f in folders}):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)
