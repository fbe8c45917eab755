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

The commit protocol is in :mod:`agr_batch.dataset`, what happens to each file (which
recording is which, renames, failures, options) in :mod:`agr_batch.scan_plan`. The scan root
and the dataset are resolved first (symlinks, ``..``), so the same files reached through
another spelling are the same files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agr_batch.aggregate import (
    StatsAggregator,
    everything_suppressed,
    faces_table,
    tracks_table,
)
from agr_batch.config import ProcessingConfig
from agr_batch.dataset import KIND_DIRS, Dataset, identity_fields, partition_date
from agr_batch.limits import MAX_SETTLE_S, check_number
from agr_batch.safety import is_within
from agr_batch.scan_plan import (
    Plan,
    ScanOptionsError,
    Work,
    check_options,
    covered,
    make_plan,
    requested_tables,
    signature,
    table_settings,
)
from agr_batch.signals import exit_code_for
from agr_batch.state import DatasetLock, FileRow, LockedError, State, StateError, inspect_lock

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3
STUCK_AFTER_S = 3600.0
"""``status`` flags a running scan whose current step has lasted longer than this."""

__all__ = [
    "EXIT_LOCKED",
    "Dataset",
    "LockedError",
    "ScanConfig",
    "ScanOptionsError",
    "ScanSummary",
    "StateError",
    "dataset_status",
    "format_status",
    "partition_date",
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
        """0 when every file met in this scan was processed or skipped cleanly, else 1."""
        return EXIT_FAILED if self.failed else EXIT_OK

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
    progress: bool = False,
    on_error: Callable[[str], None] = lambda m: log.error("%s", m),
    pipeline_factory: Callable[[ProcessingConfig], Any] | None = None,
) -> ScanSummary:
    """Process new and changed files under ``config.root`` into ``config.dataset``.

    A dry run takes no lock and writes nothing (it works on a read-only dataset).

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
    dataset = Dataset(config.dataset)
    summary = ScanSummary()
    tables = requested_tables(config)
    settings = table_settings(config)
    sig = signature(settings)
    if config.dry_run:
        _dry_run(config, root, dataset, summary, tables, settings, sig, on_error)
        summary.wall_s = time.perf_counter() - t0
        return summary
    lock = DatasetLock(dataset.state_dir)
    lock.acquire()
    state: State | None = None
    run_id: int | None = None
    try:
        state = State(dataset.state_dir)
        summary.repaired = dataset.reconcile(state)
        if any(summary.repaired.values()):
            log.warning("repaired the dataset after an interrupted scan: %s", summary.repaired)
        rows = state.all_files()
        check_options(dataset.root, rows, state.settings(), sig, settings, tables)
        run_id = state.start_run()  # before planning: hashing may take long, and be interrupted
        lock.activity(f"planning {root}")
        plan = make_plan(
            config, root, rows, tables, summary, on_error=on_error, activity=lock.activity
        )
        with state.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO settings (signature, settings) VALUES (?, ?)",
                (sig, _json(settings)),
            )
        _apply(config, dataset, state, plan, run_id, summary, on_error, lock, sig, tables)
        if plan.work:
            lock.activity(f"processing {len(plan.work)} file(s)")
            _process(
                config, dataset, state, plan.work, run_id, summary, progress, on_error,
                pipeline_factory, sig, tables, lock,
            )  # fmt: skip
            if summary.faces and summary.suppressed_faces == summary.faces:
                where = "the rows of this scan"
                msg = everything_suppressed(config.min_cell_count, faces=summary.faces, where=where)
                log.warning("%s", msg)
        if plan.changes or not (dataset.root / "_errors.parquet").exists():
            dataset.write_errors(state)
        state.finish_run(
            run_id,
            processed=summary.processed,
            failed=summary.failed,
            deferred=summary.deferred,
            exit_code=summary.exit_code,
        )
    except KeyboardInterrupt as e:
        if state is not None and run_id is not None:
            state.finish_run(
                run_id,
                processed=summary.processed,
                failed=summary.failed,
                deferred=summary.deferred,
                exit_code=exit_code_for(e),
            )
        raise
    except sqlite3.DatabaseError as e:
        raise StateError(f"{dataset.state_dir / 'state.sqlite'}: unusable scan state ({e})") from e
    finally:
        if state is not None:
            state.close()
        lock.release()
    summary.wall_s = time.perf_counter() - t0
    return summary


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _dry_run(
    config: ScanConfig,
    root: Path,
    dataset: Dataset,
    summary: ScanSummary,
    tables: frozenset[str],
    settings: dict[str, Any],
    sig: str,
    on_error: Callable[[str], None],
) -> None:
    """Plan without the lock, a repair or a write: the state is opened read-only."""
    rows: list[FileRow] = []
    known: dict[str, dict[str, Any]] = {}
    if (dataset.state_dir / "state.sqlite").exists():
        state = State(dataset.state_dir, read_only=True)
        try:
            rows, known = state.all_files(), state.settings()
        except sqlite3.DatabaseError as e:
            raise StateError(f"{state.path}: unusable scan state ({e})") from e
        finally:
            state.close()
    check_options(dataset.root, rows, known, sig, settings, tables)
    plan = make_plan(config, root, rows, tables, summary, on_error=on_error)
    summary.failed = len(plan.failures)
    summary.failures = [f.error for f in plan.failures]


def _apply(
    config: ScanConfig,
    dataset: Dataset,
    state: State,
    plan: Plan,
    run_id: int,
    summary: ScanSummary,
    on_error: Callable[[str], None],
    lock: DatasetLock,
    sig: str,
    tables: frozenset[str],
) -> None:
    """Everything of the plan that needs no processing: failures, identities, renames."""
    for f in plan.failures:
        on_error(f.error)
        summary.failed += 1
        summary.failures.append(f.error)
        if f.row is not None and f.row.status == "ok":
            # Processed before: its rows stay valid; the problem is noted until it is over.
            dataset.note_problem(state, f.row, f.error)
            continue
        row = {
            "path": f.path, "size": f.stat.size if f.stat else -1,
            "mtime_ns": f.stat.mtime_ns if f.stat else -1, "sha256": "", "status": "failed",
            "error": f.error, "run_id": run_id, **identity_fields(f.stat),
        }  # fmt: skip
        dataset.commit(state, row=row, replace=(f.row.id,) if f.row is not None else ())
    for row, st, prefix in plan.touched:
        dataset.update_identity(state, row, st, prefix)
        summary.touched += row.size != st.size or row.mtime_ns != st.mtime_ns
    if plan.vanished:
        dataset.mark_vanished(state, plan.vanished)
    if plan.dropped:
        dataset.drop(state, plan.dropped)
    for old, new in plan.renames:
        lock.activity(f"renaming {old.path}")
        _rename(dataset, state, old, new, run_id)
        summary.renamed += 1
    # Said loudly when a table is being added (the scan that backfills), quietly after;
    # ``status`` always lists such gaps.
    level = logging.WARNING if any(w.reason == "backfill" for w in plan.work) else logging.INFO
    for kind, n in plan.gaps.items():
        log.log(
            level,
            "%d recording(s) whose files are gone or replaced have no %s parts; they "
            "cannot be backfilled",
            n,
            kind,
        )


def _row(w: Work, run_id: int, **values: Any) -> dict[str, Any]:
    return {
        "path": str(w.media.path),
        "size": w.stat.size,
        "mtime_ns": w.stat.mtime_ns,
        "sha256": w.sha256,
        "run_id": run_id,
        "prefix_sha256": w.prefix[0] if w.prefix else None,
        "prefix_len": w.prefix[1] if w.prefix else None,
        **identity_fields(w.stat),
        **values,
    }


def _rename(dataset: Dataset, state: State, old: FileRow, new: Work, run_id: int) -> None:
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
    row = _row(
        new, run_id, status="ok", frames=old.frames, faces=old.faces, visitors=old.visitors,
        tables=old.tables, options=old.options,
    )  # fmt: skip
    dataset.commit(state, row=row, moves=moves, replace=(old.id,))


def _process(
    config: ScanConfig,
    dataset: Dataset,
    state: State,
    work: list[Work],
    run_id: int,
    summary: ScanSummary,
    progress: bool,
    on_error: Callable[[str], None],
    pipeline_factory: Callable[[ProcessingConfig], Any] | None,
    sig: str,
    tables: frozenset[str],
    lock: DatasetLock,
) -> None:
    from agr_batch.runner import Pipeline, SourceResult

    pipeline = (pipeline_factory or Pipeline)(config)
    summary.build_s = float(getattr(pipeline.engine, "details", {}).get("build_s", 0.0))
    metadata = pipeline.metadata(config)
    by_path = {str(w.media.path): w for w in work}
    state_rows = {r.id: r for r in state.all_files()}

    def on_source(result: SourceResult) -> None:
        w = by_path[str(result.media.path)]
        lock.activity(f"committing {w.media.path}")
        if result.error is not None:
            on_error(result.error)
            summary.failed += 1
            summary.failures.append(result.error)
            if w.reason == "backfill":  # the rows it has stay; only the new table is missing
                dataset.note_problem(state, state_rows[w.replace[0]], result.error)
                return
            row = _row(w, run_id, status="failed", error=result.error)
            # A new recording under a reused name keeps the old one's rows even if it fails.
            dataset.commit(state, row=row, replace=w.replace, retire=w.retire)
            return
        source = str(result.media.path)
        agg = StatsAggregator(
            pipeline.labels, window_s=config.window_s, align=config.align_windows, tz=config.tz
        )
        agg.add_source(source, result.media.kind, result.start_time)
        for track in result.tracks:
            agg.add(track)
        agg.finish_source(source, duration_s=result.duration_s, covered_s=result.covered_s)
        parts: dict[str, pa.Table] = {}
        stats = agg.table(min_cell_count=config.min_cell_count)
        summary.suppressed_faces += agg.suppressed.faces
        if len(stats):  # a file processed has rows: its windows, with faces = 0 if nobody
            parts["stats"] = stats
        if config.write_faces and result.tracks:
            parts["faces"] = pa.concat_tables(
                [faces_table(t, pipeline.labels) for t in result.tracks]
            )
        if config.write_tracks and result.tracks:
            parts["tracks"] = tracks_table(list(result.tracks), pipeline.labels)
        moves = dataset.write_parts(parts, partition_date(result.start_time), metadata)
        row = _row(
            w, run_id, status="ok", frames=result.frames, faces=result.faces,
            visitors=len(result.tracks), tables=sorted(tables), options=sig,
        )  # fmt: skip
        dataset.commit(state, row=row, moves=moves, replace=w.replace, retire=w.retire)
        summary.processed += 1
        summary.backfilled += w.reason == "backfill"
        summary.faces += result.faces
        summary.visitors += len(result.tracks)

    pipeline.process([w.media for w in work], on_source, progress=progress)


def dataset_status(dataset_dir: Path, *, stuck_after_s: float = STUCK_AFTER_S) -> dict[str, Any]:
    """Files processed and failed, totals, the last run and the lock of a dataset.

    Opens the state read-only and takes no lock, so it works on a read-only dataset and
    while a scan runs.

    Raises:
        FileNotFoundError: If ``dataset_dir`` holds no scan state.
        StateError: If the state is corrupt or unreadable.
    """
    dataset = Dataset(dataset_dir)
    db_path = dataset.state_dir / "state.sqlite"
    if not db_path.exists():
        raise FileNotFoundError(f"{dataset_dir}: no scan state here (run `agr-batch scan` first)")
    state = State(dataset.state_dir, read_only=True)
    try:
        rows = state.all_files()
        last = state.last_run()
    except sqlite3.DatabaseError as e:
        raise StateError(f"{db_path}: unusable scan state ({e})") from None
    finally:
        state.close()
    current = [r for r in rows if r.current]
    ok = [r for r in rows if r.status == "ok"]
    held = {k for r in ok for k in (r.tables or ())}
    gaps = {k: sum(1 for r in ok if k not in covered(r)) for k in sorted(held)}
    failed = [r for r in current if r.status == "failed" or r.error is not None]
    lock = inspect_lock(dataset.state_dir)
    lock["stuck"] = False
    if lock["held"] and lock["doing_since"]:
        try:
            since = dt.datetime.fromisoformat(lock["doing_since"])
            lock["doing_for_s"] = round((dt.datetime.now(dt.UTC) - since).total_seconds())
            lock["stuck"] = lock["doing_for_s"] > stuck_after_s
        except ValueError:
            pass
    if last is not None:
        last["state"] = _run_state(last, lock)
    return {
        "dataset": str(dataset.root),
        "files_ok": sum(1 for r in current if r.status == "ok" and r.error is None),
        "files_failed": len(failed),
        "earlier_recordings": sum(1 for r in ok if not r.current),
        "vanished": sum(1 for r in current if r.vanished_at is not None),
        "pending_at_last_run": (last or {}).get("deferred", 0),
        "frames": sum(r.frames for r in ok),
        "faces": sum(r.faces for r in ok),
        "visitors": sum(r.visitors for r in ok),
        "missing_parts": {k: n for k, n in gaps.items() if n},
        "last_run": last,
        "lock": lock,
        "failed": [{"path": r.path, "error": r.error} for r in failed],
    }


def format_status(st: dict[str, Any]) -> list[str]:
    """The lines ``agr-batch status`` prints for :func:`dataset_status`'s result."""
    last = st["last_run"] or {}
    lock = st["lock"]
    lines = [
        f"dataset      {st['dataset']}",
        f"files        {st['files_ok']} processed, {st['files_failed']} failed, "
        f"{st['pending_at_last_run']} pending at the last run",
    ]
    if st["earlier_recordings"] or st["vanished"]:
        lines.append(
            f"recordings   {st['earlier_recordings']} earlier recording(s) under reused names "
            f"kept, {st['vanished']} whose file is gone (their rows are kept)"
        )
    lines.append(
        f"totals       {st['frames']} frames, {st['faces']} faces, {st['visitors']} visitors"
    )
    for kind, n in st["missing_parts"].items():
        lines.append(f"gaps         {n} recording(s) without {kind} parts")
    outcome = {
        "died": "did not finish: killed or crashed (the next scan repairs the dataset)",
        "interrupted": "interrupted",
        "running": "running",
    }.get(str(last.get("state", "")), "")
    lines.append(
        f"last run     #{last.get('id', '-')} started {last.get('started', '-')}, "
        f"finished {last.get('finished') or 'not finished'}, exit {last.get('exit_code', '-')}"
        + (f" ({outcome})" if outcome else "")
    )
    if lock["held"]:
        doing = f"; {lock['doing']} for {lock.get('doing_for_s', '?')} s" if lock["doing"] else ""
        stuck = " (STUCK? no progress for longer than --stuck-after)" if lock["stuck"] else ""
        lines.append(f"scan now     {lock['holder'] or 'a scan'}{doing}{stuck}")
    lines += [f"failed       {f['error']}" for f in st["failed"][:20]]
    return lines


def _run_state(last: dict[str, Any], lock: dict[str, Any]) -> str:
    """``running``, ``finished``, ``interrupted`` or ``died`` (killed, crashed, power cut)."""
    if last.get("finished") is None:
        return "running" if lock["held"] else "died"
    code = last.get("exit_code")
    return "interrupted" if isinstance(code, int) and code >= 128 else "finished"
