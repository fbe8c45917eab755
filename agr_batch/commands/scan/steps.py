"""The steps of a scan once its lock is held: repair, plan, apply, process and commit.

Imported by :func:`agr_batch.commands.scan.scan` after it took the dataset's lock (or for a
dry run), so an overlapping scan is turned away before PyArrow and the models load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agr_batch.commands.scan import ScanConfig, ScanSummary
from agr_batch.commands.scan.dataset import KIND_DIRS, Dataset, identity_fields, partition_date
from agr_batch.commands.scan.plan import (
    Plan,
    Work,
    check_options,
    make_plan,
    requested_tables,
    signature,
    table_settings,
)
from agr_batch.commands.scan.state import DatasetLock, FileRow, State, StateError
from agr_batch.pipeline import Pipeline, SourceResult, WorkItem, create_pipeline
from agr_batch.pipeline.progress import Progress
from agr_batch.pipeline.sink import ResultSink
from agr_batch.signals import exit_code_for

log = logging.getLogger(__name__)

__all__ = ["dry_run", "scan_locked"]


def scan_locked(
    config: ScanConfig,
    root: Path,
    lock: DatasetLock,
    summary: ScanSummary,
    *,
    pipeline: Pipeline | None,
    progress: Progress | None,
    on_error: Callable[[str], None],
) -> None:
    """Everything :func:`~agr_batch.commands.scan.scan` does under the lock."""
    dataset = Dataset(config.dataset)
    tables = requested_tables(config)
    settings = table_settings(config)
    sig = signature(settings)
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
                config, dataset, state, plan.work, run_id, summary, pipeline, progress,
                on_error, sig, tables, lock,
            )  # fmt: skip
            if summary.faces and summary.suppressed_faces == summary.faces:
                from agr_batch.stages.aggregate import everything_suppressed

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


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def dry_run(
    config: ScanConfig, root: Path, summary: ScanSummary, on_error: Callable[[str], None]
) -> None:
    """Plan without the lock, a repair or a write: the state is opened read-only."""
    dataset = Dataset(config.dataset)
    tables = requested_tables(config)
    settings = table_settings(config)
    sig = signature(settings)
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
    pipeline: Pipeline | None,
    progress: Progress | None,
    on_error: Callable[[str], None],
    sig: str,
    tables: frozenset[str],
    lock: DatasetLock,
) -> None:
    with contextlib.ExitStack() as stack:
        if pipeline is None:
            pipeline = create_pipeline(config)
            stack.callback(pipeline.close)
        info = pipeline.info()
        summary.build_s = info.build_s
        metadata = info.metadata(config)
        by_path = {str(w.media.path): w for w in work}
        state_rows = {r.id: r for r in state.all_files()}

        def on_source(result: SourceResult) -> None:
            w = by_path[result.item.source]
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
            parts: dict[str, pa.Table] = {}
            faces: list[pa.Table] = []
            sink = ResultSink(
                info.labels,
                window_s=config.window_s,
                align=config.align_windows,
                tz=config.tz,
                faces=faces.append if config.write_faces else None,
                keep_tracks=config.write_tracks,
            )
            sink.add(result)
            stats = sink.stats(min_cell_count=config.min_cell_count)
            summary.suppressed_faces += sink.suppressed.faces
            if len(stats):  # a file processed has rows: its windows, with faces = 0 if nobody
                parts["stats"] = stats
            if faces:
                parts["faces"] = faces[0]
            if config.write_tracks and result.tracks:
                parts["tracks"] = sink.tracks()
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

        pipeline.process([WorkItem(w.media) for w in work], on_source, progress)
