"""``agr-batch status``: what a scanned dataset holds, read without taking its lock."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from pathlib import Path
from typing import Any

from agr_batch.commands.scan.state import STATE_DIR, State, StateError, covered, inspect_lock

__all__ = ["STUCK_AFTER_S", "dataset_status", "format_status"]

STUCK_AFTER_S = 3600.0
"""``status`` flags a running scan whose current step has lasted longer than this."""


def dataset_status(dataset_dir: Path, *, stuck_after_s: float = STUCK_AFTER_S) -> dict[str, Any]:
    """Files processed and failed, totals, the last run and the lock of a dataset.

    Opens the state read-only and takes no lock, so it works on a read-only dataset and
    while a scan runs.

    Raises:
        FileNotFoundError: If ``dataset_dir`` holds no scan state.
        StateError: If the state is corrupt or unreadable.
    """
    root = Path(os.path.realpath(dataset_dir))
    state_dir = root / STATE_DIR
    db_path = state_dir / "state.sqlite"
    if not db_path.exists():
        raise FileNotFoundError(f"{dataset_dir}: no scan state here (run `agr-batch scan` first)")
    state = State(state_dir, read_only=True)
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
    lock = inspect_lock(state_dir)
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
        "dataset": str(root),
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
