"""A scan dataset's part files, and the exactly-once commit of each recording's rows.

Exactly once: each file's parts are written under hidden temporary names, then one SQLite
transaction records the file's row, the renames still to do and the old parts to delete;
then old parts are deleted and new ones renamed. On start, a scan rolls pending renames
forward, deletes recorded garbage, drops rows whose parts are missing (they are redone) and
deletes any part no row references. ``kill -9`` at any moment therefore leaves every file
counted exactly once after the next scan; SIGINT and SIGTERM are held back during a commit.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agr_batch.commands.scan.fileid import FileStat
from agr_batch.commands.scan.state import STATE_DIR, FileRow, State, now_iso
from agr_batch.signals import deferred_signals
from agr_batch.storage.sinks import write_table

log = logging.getLogger(__name__)

KIND_DIRS = {"stats": "", "faces": "_faces", "tracks": "_tracks"}

ERRORS_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("error", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("processed_at", pa.string()),
    ]
)

_INSERT_COLUMNS = (
    "path", "current", "size", "mtime_ns", "sha256", "status", "error", "parts", "frames",
    "faces", "visitors", "processed_at", "run_id", "dev", "ino", "btime_ns", "ctime_ns",
    "prefix_sha256", "prefix_len", "tables", "options",
)  # fmt: skip


def partition_date(start_time: dt.datetime | None) -> str:
    """Partition value: the UTC date of the source's start, or ``unknown``."""
    if start_time is None:
        return "unknown"
    return start_time.astimezone(dt.UTC).date().isoformat()


def identity_fields(st: FileStat | None) -> dict[str, Any]:
    """The identity columns of a row, from the file's stat."""
    if st is None:
        return {"dev": None, "ino": None, "btime_ns": None, "ctime_ns": None}
    return {"dev": st.dev, "ino": st.ino, "btime_ns": st.btime_ns, "ctime_ns": st.ctime_ns}


class Dataset:
    """Part files and state of one dataset folder.

    Args:
        root: The dataset folder (resolved: symlinks and ``..`` do not make it another).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.state_dir = self.root / STATE_DIR

    def part_dir(self, kind: str, date: str) -> Path:
        """Folder of ``kind`` parts for one date partition."""
        base = self.root / KIND_DIRS[kind] if KIND_DIRS[kind] else self.root
        return base / f"date={date}"

    def rel(self, path: Path) -> str:
        """``path`` relative to the dataset root (as stored in the state)."""
        return path.relative_to(self.root).as_posix()

    def write_parts(
        self, tables: Mapping[str, pa.Table], date: str, metadata: Mapping[str, Any]
    ) -> list[tuple[str, str]]:
        """Write each table to a hidden temporary file; returns (temp, final) relative paths."""
        moves = []
        for kind, table in tables.items():
            folder = self.part_dir(kind, date)
            folder.mkdir(parents=True, exist_ok=True)
            name = uuid.uuid4().hex[:16]
            tmp, final = folder / f".tmp-{name}.parquet", folder / f"part-{name}.parquet"
            table = table.replace_schema_metadata(
                {b"agr_batch": json.dumps(metadata, sort_keys=True, default=str).encode()}
            )
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            moves.append((self.rel(tmp), self.rel(final)))
        return moves

    def commit(
        self,
        state: State,
        *,
        row: Mapping[str, Any],
        moves: Sequence[tuple[str, str]] = (),
        replace: Sequence[int] = (),
        retire: Sequence[int] = (),
    ) -> None:
        """Record ``row`` with its parts, then apply; SIGINT/SIGTERM wait until it is done.

        Args:
            state: The dataset's state.
            row: Column values of the new row (``path``, ``size``, ``status`` …).
            moves: (temporary, final) part names written by :meth:`write_parts`.
            replace: Rows this one replaces: deleted, their parts too.
            retire: Rows whose path this one takes over: kept with their parts, no longer
                current (an earlier recording under a reused name).
        """
        values = {c: row.get(c) for c in _INSERT_COLUMNS}
        values.update(
            current=1,
            parts=json.dumps([dst for _, dst in moves]),
            frames=row.get("frames", 0),
            faces=row.get("faces", 0),
            visitors=row.get("visitors", 0),
            processed_at=now_iso(),
            tables=None if row.get("tables") is None else json.dumps(sorted(row["tables"])),
        )
        with deferred_signals():
            with state.transaction() as db:
                for rid in retire:
                    db.execute("UPDATE files SET current = 0 WHERE id = ?", (rid,))
                doomed = set(replace)
                # Never two current rows for one path: whatever else is current there goes.
                doomed.update(
                    r[0]
                    for r in db.execute(
                        "SELECT id FROM files WHERE path = ? AND current = 1", (values["path"],)
                    )
                )
                old_parts: list[str] = []
                for rid in doomed:
                    r = db.execute("SELECT parts FROM files WHERE id = ?", (rid,)).fetchone()
                    if r is not None:
                        old_parts += json.loads(r[0])
                        db.execute("DELETE FROM files WHERE id = ?", (rid,))
                db.execute(
                    f"INSERT INTO files ({', '.join(_INSERT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})",
                    tuple(values.values()),
                )
                db.executemany("INSERT INTO pending_moves (src, dst) VALUES (?, ?)", moves)
                db.executemany("INSERT INTO garbage (path) VALUES (?)", [(p,) for p in old_parts])
            self.apply_pending(state)

    def update_identity(
        self, state: State, row: FileRow, st: FileStat, prefix: tuple[str, int] | None
    ) -> None:
        """A file found again unchanged in content: record how it looks now."""
        fields = identity_fields(st)
        with state.transaction() as db:
            db.execute(
                "UPDATE files SET size=?, mtime_ns=?, dev=?, ino=?, btime_ns=?, ctime_ns=?, "
                "prefix_sha256=COALESCE(?, prefix_sha256), prefix_len=COALESCE(?, prefix_len), "
                "vanished_at=NULL, error=CASE WHEN status='ok' THEN NULL ELSE error END "
                "WHERE id=?",
                (
                    st.size, st.mtime_ns, fields["dev"], fields["ino"], fields["btime_ns"],
                    fields["ctime_ns"], prefix[0] if prefix else None,
                    prefix[1] if prefix else None, row.id,
                ),
            )  # fmt: skip

    def note_problem(self, state: State, row: FileRow, error: str) -> None:
        """A processed file that cannot be read now: its rows stay, the error is listed."""
        with state.transaction() as db:
            db.execute("UPDATE files SET error=? WHERE id=?", (error, row.id))

    def mark_vanished(self, state: State, rows: Sequence[FileRow]) -> None:
        """Rows whose file is gone: kept, but a later file under the name is new."""
        with state.transaction() as db:
            db.executemany(
                "UPDATE files SET vanished_at=? WHERE id=?", [(now_iso(), r.id) for r in rows]
            )

    def drop(self, state: State, rows: Sequence[FileRow]) -> None:
        """Forget rows without data (failures of files that are gone)."""
        with state.transaction() as db:
            db.executemany("DELETE FROM files WHERE id=? AND parts='[]'", [(r.id,) for r in rows])

    def apply_pending(self, state: State) -> tuple[int, int]:
        """Delete recorded garbage, then finish recorded renames (idempotent)."""
        garbage = [r[0] for r in state.db.execute("SELECT path FROM garbage").fetchall()]
        for p in garbage:
            (self.root / p).unlink(missing_ok=True)
        moves = state.db.execute("SELECT src, dst FROM pending_moves").fetchall()
        for src, dst in moves:
            s, d = self.root / src, self.root / dst
            if s.exists():
                os.replace(s, d)
        with state.transaction() as db:
            db.execute("DELETE FROM garbage")
            db.execute("DELETE FROM pending_moves")
        return len(garbage), len(moves)

    def reconcile(self, state: State) -> dict[str, int]:
        """Repair the dataset after a crash; returns what was repaired."""
        garbage, moves = self.apply_pending(state)
        redo = 0
        referenced: set[str] = set()
        for row in state.all_files():
            if all((self.root / p).exists() for p in row.parts):
                referenced.update(row.parts)
                continue
            # A recorded part is gone: forget the file (it is redone) and its other parts.
            redo += 1
            if not row.current:
                log.warning(
                    "%s: a part of an earlier recording is gone; its rows are lost", row.path
                )
            with state.transaction() as db:
                db.execute("DELETE FROM files WHERE id=?", (row.id,))
            for p in row.parts:
                (self.root / p).unlink(missing_ok=True)
        orphans = 0
        for path in self._data_files():
            if self.rel(path) not in referenced:
                path.unlink()
                orphans += 1
        self._remove_empty_dirs()
        return {"rolled_forward": moves, "garbage": garbage, "redone": redo, "orphans": orphans}

    def _data_files(self) -> list[Path]:
        out = []
        for base in (self.root, self.root / "_faces", self.root / "_tracks"):
            if not base.is_dir():
                continue
            for part_dir in base.glob("date=*"):
                out += [
                    p
                    for p in part_dir.iterdir()
                    if p.name.endswith(".parquet") and p.name.startswith(("part-", ".tmp-"))
                ]
        return out

    def _remove_empty_dirs(self) -> None:
        for base in (self.root, self.root / "_faces", self.root / "_tracks"):
            for part_dir in base.glob("date=*") if base.is_dir() else []:
                if part_dir.is_dir() and not any(part_dir.iterdir()):
                    part_dir.rmdir()

    def write_errors(self, state: State) -> None:
        """``_errors.parquet``: every file whose last processing failed, and why."""
        # Failed files, and processed ones that cannot be read now (their rows are kept).
        failed = [r for r in state.files().values() if r.status == "failed" or r.error]
        table = pa.table(
            {
                "path": [r.path for r in failed],
                "error": [r.error or "" for r in failed],
                "size": [r.size for r in failed],
                "mtime_ns": [r.mtime_ns for r in failed],
                "processed_at": [r.processed_at for r in failed],
            },
            schema=ERRORS_SCHEMA,
        )
        write_table(self.root / "_errors.parquet", table, metadata={"table": "scan errors"})
