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

Exactly once: each file's parts are written under hidden temporary names, then one SQLite
transaction records the file's row, the renames still to do and the old parts to delete;
then old parts are deleted and new ones renamed. On start, a scan rolls pending renames
forward, deletes recorded garbage, drops rows whose parts are missing (they are redone) and
deletes any part no row references. ``kill -9`` at any moment therefore leaves every file
counted exactly once after the next scan.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agr_batch.aggregate import StatsAggregator, faces_table, tracks_table
from agr_batch.config import ProcessingConfig
from agr_batch.limits import MAX_SETTLE_S, check_number
from agr_batch.sinks import write_table
from agr_batch.sources import MediaFile, discover
from agr_batch.state import DatasetLock, FileRow, LockedError, State, now_iso

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3
KIND_DIRS = {"stats": "", "faces": "_faces", "tracks": "_tracks"}

__all__ = [
    "EXIT_LOCKED",
    "Dataset",
    "LockedError",
    "ScanConfig",
    "ScanSummary",
    "dataset_status",
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
        root, dataset = Path(self.root).absolute(), Path(self.dataset).absolute()
        if dataset == root or root in dataset.parents:
            raise ValueError(f"--out {dataset} must not be inside the scanned folder {root}")


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
    faces: int = 0
    visitors: int = 0
    suppressed_faces: int = 0
    failures: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file processed in this scan succeeded, else 1."""
        return EXIT_FAILED if self.failed else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dict(self.__dict__)
        d["exit_code"] = self.exit_code
        d["wall_s"] = round(self.wall_s, 3)
        return d


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def partition_date(start_time: dt.datetime | None) -> str:
    """Partition value: the UTC date of the source's start, or ``unknown``."""
    if start_time is None:
        return "unknown"
    return start_time.astimezone(dt.UTC).date().isoformat()


class Dataset:
    """Part files and state of one dataset folder.

    Args:
        root: The dataset folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.state_dir = self.root / "_state"

    def part_dir(self, kind: str, date: str) -> Path:
        """Folder of ``kind`` parts for one date partition."""
        base = self.root / KIND_DIRS[kind] if KIND_DIRS[kind] else self.root
        return base / f"date={date}"

    def rel(self, path: Path) -> str:
        """``path`` relative to the dataset root (as stored in the state)."""
        return path.relative_to(self.root).as_posix()

    def write_parts(
        self, tables: dict[str, pa.Table], date: str, metadata: dict[str, Any]
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
        row: dict[str, Any],
        moves: list[tuple[str, str]],
        replaces: list[str],
    ) -> None:
        """Record ``row`` (replacing the rows at ``replaces``) with its parts, then apply."""
        with state.transaction() as db:
            old_parts: list[str] = []
            for path in {*replaces, row["path"]}:
                r = db.execute("SELECT parts FROM files WHERE path=?", (path,)).fetchone()
                if r is not None:
                    old_parts += json.loads(r[0])
                    db.execute("DELETE FROM files WHERE path=?", (path,))
            db.execute(
                "INSERT INTO files (path, size, mtime_ns, sha256, status, error, parts, frames,"
                " faces, visitors, processed_at, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row["path"],
                    row["size"],
                    row["mtime_ns"],
                    row["sha256"],
                    row["status"],
                    row.get("error"),
                    json.dumps([dst for _, dst in moves]),
                    row.get("frames", 0),
                    row.get("faces", 0),
                    row.get("visitors", 0),
                    now_iso(),
                    row.get("run_id"),
                ),
            )
            db.executemany("INSERT INTO pending_moves (src, dst) VALUES (?, ?)", moves)
            db.executemany("INSERT INTO garbage (path) VALUES (?)", [(p,) for p in old_parts])
        self.apply_pending(state)

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
        for row in state.files().values():
            if all((self.root / p).exists() for p in row.parts):
                referenced.update(row.parts)
                continue
            # A recorded part is gone: forget the file (it is redone) and its other parts.
            redo += 1
            with state.transaction() as db:
                db.execute("DELETE FROM files WHERE path=?", (row.path,))
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


@dataclass(frozen=True)
class _Work:
    media: MediaFile
    size: int
    mtime_ns: int
    sha256: str
    reason: str  # new, changed, retry


def _plan(
    config: ScanConfig, state: State, summary: ScanSummary, on_error: Callable[[str], None]
) -> tuple[list[_Work], list[tuple[FileRow, _Work]], list[_Work]]:
    """Decide what to process, what was renamed and what was only touched."""
    found = discover([Path(config.root).absolute()])
    summary.skipped = len(found.skipped)
    for p in found.missing:
        msg = f"{p}: dangling link or missing file, skipped"
        on_error(msg)
    for p, reason in found.errors:
        on_error(f"{p}: {reason}")
    rows = state.files()
    now = time.time()
    work: list[_Work] = []
    renames: list[tuple[FileRow, _Work]] = []
    touched: list[_Work] = []
    claimed: set[str] = set()
    for media in found.media:
        path = str(media.path)
        try:
            st = os.stat(path)
        except OSError as e:
            on_error(f"{path}: cannot stat ({e.strerror})")
            continue
        if now - st.st_mtime < config.settle_s:
            summary.deferred += 1
            summary.plan.append(f"defer    {path} (modified {now - st.st_mtime:.0f} s ago)")
            continue
        row = rows.get(path)
        if row is not None and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
            if row.status == "ok" or not config.retry_failed:
                summary.unchanged += 1
                continue
            work.append(_Work(media, st.st_size, st.st_mtime_ns, row.sha256, "retry"))
            continue
        try:
            digest = sha256_file(path)
        except OSError as e:
            on_error(f"{path}: cannot read ({e.strerror})")
            continue
        item = _Work(media, st.st_size, st.st_mtime_ns, digest, "new")
        if row is not None:
            if row.sha256 == digest and (row.status == "ok" or not config.retry_failed):
                touched.append(item)
                continue
            work.append(_Work(media, st.st_size, st.st_mtime_ns, digest, "changed"))
            continue
        moved_from = next(
            (
                r
                for r in rows.values()
                if r.sha256 == digest
                and r.status == "ok"
                and r.path not in claimed
                and not os.path.exists(r.path)
            ),
            None,
        )
        if moved_from is not None:
            claimed.add(moved_from.path)
            renames.append((moved_from, item))
            continue
        work.append(item)
    for w in work:
        summary.plan.append(f"{w.reason:<8} {w.media.path}")
    for old, w in renames:
        summary.plan.append(f"rename   {old.path} -> {w.media.path}")
    return work, renames, touched


def _rename(dataset: Dataset, state: State, old: FileRow, new: _Work, run_id: int) -> None:
    """Rewrite a renamed file's parts with its new path as ``source``; no reprocessing."""
    tables: dict[str, tuple[str, pa.Table, dict[str, Any]]] = {}
    for rel in old.parts:
        path = dataset.root / rel
        table = pq.read_table(path, partitioning=None)
        meta = json.loads((table.schema.metadata or {}).get(b"agr_batch", b"{}"))
        kind = next((k for k, d in KIND_DIRS.items() if d and rel.startswith(d + "/")), "stats")
        date = path.parent.name.removeprefix("date=")
        source = pa.array([str(new.media.path)] * len(table), pa.string())
        tables[kind] = (date, table.set_column(0, "source", source), meta)
    moves = []
    for kind, (date, table, meta) in tables.items():
        moves += dataset.write_parts({kind: table}, date, meta)
    row = {
        "path": str(new.media.path),
        "size": new.size,
        "mtime_ns": new.mtime_ns,
        "sha256": new.sha256,
        "status": "ok",
        "frames": old.frames,
        "faces": old.faces,
        "visitors": old.visitors,
        "run_id": run_id,
    }
    dataset.commit(state, row=row, moves=moves, replaces=[old.path])


def scan(
    config: ScanConfig,
    *,
    progress: bool = False,
    on_error: Callable[[str], None] = lambda m: log.error("%s", m),
    pipeline_factory: Callable[[ProcessingConfig], Any] | None = None,
) -> ScanSummary:
    """Process new and changed files under ``config.root`` into ``config.dataset``.

    Raises:
        LockedError: Another scan holds the dataset's lock (exit code 3).
        agr_batch.checkpoint.CheckpointError: The model cannot be loaded.
    """
    t0 = time.perf_counter()
    dataset = Dataset(config.dataset)
    lock = DatasetLock(dataset.state_dir)
    lock.acquire()
    state = State(dataset.state_dir)
    summary = ScanSummary()
    try:
        summary.repaired = dataset.reconcile(state)
        if any(summary.repaired.values()):
            log.warning("repaired the dataset after an interrupted scan: %s", summary.repaired)
        work, renames, touched = _plan(config, state, summary, on_error)
        if config.dry_run:
            summary.wall_s = time.perf_counter() - t0
            return summary
        run_id = state.start_run()
        for w in touched:
            with state.transaction() as db:
                db.execute(
                    "UPDATE files SET size=?, mtime_ns=? WHERE path=?",
                    (w.size, w.mtime_ns, str(w.media.path)),
                )
            summary.touched += 1
        for old, new in renames:
            _rename(dataset, state, old, new, run_id)
            summary.renamed += 1
        if work:
            _process(
                config, dataset, state, work, run_id, summary, progress, on_error, pipeline_factory
            )
        if work or renames or touched or not (dataset.root / "_errors.parquet").exists():
            _write_errors(dataset, state)
        state.finish_run(
            run_id,
            processed=summary.processed,
            failed=summary.failed,
            deferred=summary.deferred,
            exit_code=summary.exit_code,
        )
    finally:
        state.close()
        lock.release()
    summary.wall_s = time.perf_counter() - t0
    return summary


def _process(
    config: ScanConfig,
    dataset: Dataset,
    state: State,
    work: list[_Work],
    run_id: int,
    summary: ScanSummary,
    progress: bool,
    on_error: Callable[[str], None],
    pipeline_factory: Callable[[ProcessingConfig], Any] | None,
) -> None:
    from agr_batch.runner import Pipeline, SourceResult

    pipeline = (pipeline_factory or Pipeline)(config)
    metadata = pipeline.metadata(config)
    by_path = {str(w.media.path): w for w in work}

    def on_source(result: SourceResult) -> None:
        w = by_path[str(result.media.path)]
        row: dict[str, Any] = {
            "path": str(w.media.path),
            "size": w.size,
            "mtime_ns": w.mtime_ns,
            "sha256": w.sha256,
            "run_id": run_id,
        }
        if result.error is not None:
            on_error(result.error)
            summary.failed += 1
            summary.failures.append(result.error)
            row.update(status="failed", error=result.error)
            dataset.commit(state, row=row, moves=[], replaces=[])
            return
        source = str(result.media.path)
        agg = StatsAggregator(pipeline.labels, window_s=config.window_s)
        agg.add_source(source, result.media.kind, result.start_time)
        for track in result.tracks:
            agg.add(track)
        agg.finish_source(source, duration_s=result.duration_s)
        tables: dict[str, pa.Table] = {}
        stats = agg.table(min_cell_count=config.min_cell_count)
        summary.suppressed_faces += agg.suppressed.faces
        if len(stats):
            tables["stats"] = stats
        if config.write_faces and result.tracks:
            tables["faces"] = pa.concat_tables(
                [faces_table(t, pipeline.labels) for t in result.tracks]
            )
        if config.write_tracks and result.tracks:
            tables["tracks"] = tracks_table(list(result.tracks), pipeline.labels)
        moves = dataset.write_parts(tables, partition_date(result.start_time), metadata)
        row.update(
            status="ok", frames=result.frames, faces=result.faces, visitors=len(result.tracks)
        )
        dataset.commit(state, row=row, moves=moves, replaces=[])
        summary.processed += 1
        summary.faces += result.faces
        summary.visitors += len(result.tracks)

    pipeline.process([w.media for w in work], on_source, progress=progress)


ERRORS_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("error", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("processed_at", pa.string()),
    ]
)


def _write_errors(dataset: Dataset, state: State) -> None:
    failed = [r for r in state.files().values() if r.status == "failed"]
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
    write_table(dataset.root / "_errors.parquet", table, metadata={"table": "scan errors"})


def dataset_status(dataset_dir: Path) -> dict[str, Any]:
    """Files processed, failed and recorded totals of a dataset (for ``agr-batch status``).

    Raises:
        FileNotFoundError: If ``dataset_dir`` holds no scan state.
    """
    dataset = Dataset(dataset_dir)
    db_path = dataset.state_dir / "state.sqlite"
    if not db_path.exists():
        raise FileNotFoundError(f"{dataset_dir}: no scan state here (run `agr-batch scan` first)")
    state = State(dataset.state_dir)
    try:
        rows = list(state.files().values())
        last = state.last_run()
    finally:
        state.close()
    ok = [r for r in rows if r.status == "ok"]
    failed = [r for r in rows if r.status == "failed"]
    return {
        "dataset": str(dataset.root),
        "files_ok": len(ok),
        "files_failed": len(failed),
        "pending_at_last_run": (last or {}).get("deferred", 0),
        "frames": sum(r.frames for r in ok),
        "faces": sum(r.faces for r in ok),
        "visitors": sum(r.visitors for r in ok),
        "last_run": last,
        "failed": [{"path": r.path, "error": r.error} for r in failed],
    }
