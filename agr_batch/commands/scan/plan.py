"""What a scan does with each file: skip it, process it, rename its rows, or record a failure.

The identity rule (the README's "Which recording is which"):

- A file unchanged in size, mtime, device, inode and birth time is skipped unread.
- Otherwise its content is hashed. The same content as the path's row (a touched or copied
  back file) is no new data: only the row's identity is updated. The same content as the row
  of a path that no longer exists is a rename: the rows are rewritten under the new name.
- Other content under a known path is either the *same recording modified in place* (its
  rows are replaced) or a *new recording under a reused name* (the old recording's rows are
  kept, retired, and the new one is added). It is the same recording only if it is the same
  file object: same device and inode, the same birth time where the filesystem keeps one,
  never seen missing by a scan in between, and, where no birth time is kept, still beginning
  with the same 64 KiB (a recording that grew). Loop recorders delete and recreate, or write
  a temporary file and rename it over the old one: new recordings, whatever the name.
- Anything that cannot be read (a dangling link, a FIFO, a file without read permission, an
  unlistable folder) is a failed file: in ``_errors.parquet``, ``status`` and the exit code.

Options that change the tables (model, sampling, detector, tracker, voting, window, cell
suppression) are recorded per file by a signature; a scan with other values is refused, so
a dataset never mixes incomparable rows. Tables (``--faces``, ``--tracks``) asked for by an
earlier scan must be asked for again; newly asked ones are backfilled by reprocessing the
files that lack them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agr_batch.clock import tz_label
from agr_batch.commands.scan.fileid import FileStat, file_stat
from agr_batch.commands.scan.state import FileRow, covered
from agr_batch.stages.decode.media import MediaFile, discover, why_missing
from agr_batch.storage.hashing import PREFIX_BYTES, hash_file, prefix_hash, sha256_file

if TYPE_CHECKING:
    from agr_batch.commands.scan import ScanConfig, ScanSummary

log = logging.getLogger(__name__)

TABLE_FLAGS = {"faces": "--faces", "tracks": "--tracks"}


class ScanOptionsError(ValueError):
    """A scan whose options would make the dataset's rows incomparable (exit code 2)."""


@dataclass(frozen=True)
class Work:
    """A file to process.

    Attributes:
        media: The file.
        stat: How it looked when planned.
        sha256: Content hash.
        prefix: (hash, length) of its first bytes.
        reason: ``new``, ``changed``, ``reused`` (a new recording under a known name),
            ``retry`` or ``backfill``.
        replace: Row ids its result replaces.
        retire: Row ids it retires (kept, no longer current).
    """

    media: MediaFile
    stat: FileStat
    sha256: str
    prefix: tuple[str, int] | None
    reason: str
    replace: tuple[int, ...] = ()
    retire: tuple[int, ...] = ()


@dataclass(frozen=True)
class Failure:
    """A file that failed before processing (unreadable, dangling, not a file).

    Attributes:
        path: The file.
        error: One line naming the file and the problem.
        stat: How it looked (``lstat`` when ``stat`` failed), if at all.
        row: The path's current row: a failed one is replaced; an ``ok`` one keeps its data
            and only notes the problem.
    """

    path: str
    error: str
    stat: FileStat | None
    row: FileRow | None = None


@dataclass
class Plan:
    """Everything one scan will do."""

    work: list[Work] = field(default_factory=list)
    renames: list[tuple[FileRow, Work]] = field(default_factory=list)
    touched: list[tuple[FileRow, FileStat, tuple[str, int] | None]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    vanished: list[FileRow] = field(default_factory=list)
    dropped: list[FileRow] = field(default_factory=list)
    gaps: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        """Whether the scan will write anything."""
        return bool(
            self.work or self.renames or self.touched or self.failures or self.vanished
            or self.dropped
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Options that change the tables


def requested_tables(config: ScanConfig) -> frozenset[str]:
    """The table kinds this scan writes."""
    kinds = {"stats"}
    if config.write_faces:
        kinds.add("faces")
    if config.write_tracks:
        kinds.add("tracks")
    return frozenset(kinds)


def table_settings(config: ScanConfig) -> dict[str, Any]:
    """The options that change what the tables hold (not where or how fast).

    Raises:
        agr_batch.checkpoint.CheckpointError: The model file cannot be read.
    """
    try:
        model_sha = sha256_file(config.model)
    except OSError as e:
        from agr_batch.checkpoint import CheckpointError  # torch: only on this error

        raise CheckpointError(
            f"{config.model}: cannot read the checkpoint ({e.strerror})"
        ) from None
    settings = {
        "model_sha256": model_sha,
        "sample_fps": config.sample_fps,
        "keyframes_only": config.keyframes_only,
        "skip_nonref": config.skip_nonref,
        "window_s": config.window_s,
        "detector": vars(config.detector),
        "tracker": vars(config.tracker),
        "vote": vars(config.vote),
        "min_cell_count": config.min_cell_count,
    }
    if config.align_windows != "start":
        # Only when set: datasets built before these options existed stay comparable.
        settings["align_windows"] = config.align_windows
        settings["tz"] = config.tz or tz_label(None)
    # As stored: compared with what earlier scans recorded.
    return dict(json.loads(json.dumps(settings, sort_keys=True, default=str)))


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def signature(settings: dict[str, Any]) -> str:
    """A short stable hash of ``settings``."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kind(part: str) -> str:
    return next((k for k in TABLE_FLAGS if part.startswith(f"_{k}/")), "stats")


def check_options(
    dataset_root: Path,
    rows: list[FileRow],
    known: dict[str, dict[str, Any]],
    sig: str,
    settings: dict[str, Any],
    tables: frozenset[str],
) -> None:
    """Refuse a scan that would mix incomparable rows or leave earlier tables unfed.

    Raises:
        ScanOptionsError: Naming the options that differ, or the table flags to pass.
    """
    ok = [r for r in rows if r.status == "ok"]
    others = {r.options for r in ok if r.options is not None and r.options != sig}
    if others:
        before, now = _flat(known.get(sorted(others)[0], {})), _flat(settings)
        diff = [
            f"{k} {before.get(k)!r} -> {now.get(k)!r}"
            for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)
        ]
        raise ScanOptionsError(
            f"{dataset_root} was built with other processing options "
            f"({'; '.join(diff) or 'unknown'}); its rows would not be comparable. "
            "Scan with the same options, or into a new --out"
        )
    held: set[str] = set()
    for r in ok:
        held |= set(r.tables) if r.tables is not None else {_kind(p) for p in r.parts}
    missing = sorted(held - tables)
    if missing:
        flags = " ".join(TABLE_FLAGS[k] for k in missing)
        raise ScanOptionsError(
            f"{dataset_root} holds {' and '.join(missing)} parts: pass {flags} too, so that "
            "new files get them as well (or scan into a new --out)"
        )


# ---------------------------------------------------------------------------------------------
# Identity


def same_recording(row: FileRow, st: FileStat, path: str) -> bool:
    """Whether ``path`` (other content than ``row``'s) is ``row``'s file modified in place."""
    if row.ino is None:  # recorded by an older version: no identity to compare
        return True
    if row.vanished_at is not None or (row.dev, row.ino) != (st.dev, st.ino):
        return False
    if row.btime_ns is not None and st.btime_ns is not None:
        return row.btime_ns == st.btime_ns
    if row.prefix_sha256 is None or row.prefix_len is None:
        return True
    try:
        return prefix_hash(path, row.prefix_len) == row.prefix_sha256
    except OSError:
        return False


def _unchanged(row: FileRow, st: FileStat) -> bool:
    if row.vanished_at is not None or (row.size, row.mtime_ns) != (st.size, st.mtime_ns):
        return False
    if row.ino is not None and (row.dev, row.ino) != (st.dev, st.ino):
        return False
    return row.btime_ns is None or st.btime_ns is None or row.btime_ns == st.btime_ns


def _lstat_or_none(path: str) -> FileStat | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return FileStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino, None, False)


# ---------------------------------------------------------------------------------------------
# The plan


def make_plan(
    config: ScanConfig,
    root: Path,
    rows: list[FileRow],
    tables: frozenset[str],
    summary: ScanSummary,
    *,
    on_error: Callable[[str], None],
    activity: Callable[[str], None] = lambda _: None,
) -> Plan:
    """Decide what to do with every file under ``root`` (see the module docstring).

    Args:
        config: The scan.
        root: The scan root, resolved.
        rows: Every state row (current and retired).
        tables: Table kinds this scan writes.
        summary: Counters (deferred, unchanged, still failing, skipped) and the dry-run
            listing.
        on_error: Called once per new failure.
        activity: Called with what is being done (the lock file shows it).
    """
    plan = Plan()
    current = {r.path: r for r in rows if r.current}
    found = discover([root])
    summary.skipped = len(found.skipped)
    seen: set[str] = set()

    def fail(path: str, error: str, st: FileStat | None) -> None:
        seen.add(path)
        row = current.get(path)
        message = f"{path}: {error}"
        if row is not None and row.error == message:
            same = st is None or (row.ctime_ns, row.mtime_ns) == (st.ctime_ns, st.mtime_ns)
            if row.status == "ok" or same:
                summary.unchanged += 1  # the same failure as before: already counted
                summary.still_failing += 1
                return
        plan.failures.append(Failure(path, message, st, row))

    for p in found.missing:
        fail(str(p), why_missing(p), _lstat_or_none(str(p)))
    for p, reason in found.errors:
        fail(str(p), f"cannot list folder ({reason})", _lstat_or_none(str(p)))

    now = time.time()
    claimed: set[int] = set()
    for media in found.media:
        path = str(media.path)
        seen.add(path)
        try:
            st = file_stat(path)
        except OSError as e:
            fail(path, f"cannot stat ({e.strerror or e})", _lstat_or_none(path))
            continue
        if not st.regular:
            fail(path, "not a regular file", st)
            continue
        if now - st.mtime_ns / 1e9 < config.settle_s:
            summary.deferred += 1
            summary.plan.append(f"defer    {path} (modified {now - st.mtime_ns / 1e9:.0f} s ago)")
            continue
        row = current.get(path)
        retry = False
        if row is not None and _unchanged(row, st):
            if row.status == "failed":
                # Retried on request, or when its permissions or links changed (ctime).
                retry = config.retry_failed or row.ctime_ns not in (None, st.ctime_ns)
                if not retry:
                    summary.unchanged += 1
                    summary.still_failing += 1
                    continue
            elif not tables <= covered(row):
                known = (row.prefix_sha256, row.prefix_len) if row.prefix_len else None
                plan.work.append(Work(media, st, row.sha256, known, "backfill", (row.id,)))
                continue
            else:
                summary.unchanged += 1
                if row.ino is None or row.prefix_sha256 is None:  # rows of older versions
                    plan.touched.append((row, st, _prefix_or_none(path)))
                elif row.error is not None:  # readable again: the noted problem is over
                    plan.touched.append((row, st, None))
                continue
        activity(f"hashing {path}")
        try:
            sha, prefix_sha, prefix_len = hash_file(path)
        except OSError as e:
            fail(path, f"cannot read ({e.strerror or e})", st)
            continue
        prefix = (prefix_sha, prefix_len)
        if row is not None:
            if row.sha256 == sha and row.status == "ok":
                if tables <= covered(row):
                    plan.touched.append((row, st, prefix))
                else:
                    plan.work.append(Work(media, st, sha, prefix, "backfill", (row.id,)))
            elif row.status == "failed" or same_recording(row, st, path):
                # A failure holds no data to keep; an in-place change replaces its rows.
                reason = "retry" if retry else "changed"
                plan.work.append(Work(media, st, sha, prefix, reason, (row.id,)))
            else:
                plan.work.append(Work(media, st, sha, prefix, "reused", retire=(row.id,)))
            continue
        moved = _moved_from(rows, sha, path, claimed)
        if moved is not None:
            claimed.add(moved.id)
            plan.renames.append((moved, Work(media, st, sha, prefix, "rename", (moved.id,))))
            continue
        plan.work.append(Work(media, st, sha, prefix, "new"))

    prefix_root = str(root).rstrip(os.sep) + os.sep
    for row in current.values():
        if row.path in seen or row.id in claimed or not row.path.startswith(prefix_root):
            continue
        if os.path.lexists(row.path):
            continue
        if row.status == "failed":
            plan.dropped.append(row)  # nothing to keep of a failure whose file is gone
        elif row.vanished_at is None:
            plan.vanished.append(row)
    gone = {r.id for r in plan.vanished}
    for kind in tables:
        gaps = sum(
            1 for r in rows if r.status == "ok" and kind not in covered(r)
            and (not r.current or r.vanished_at is not None or r.id in gone)
        )  # fmt: skip
        if gaps:
            plan.gaps[kind] = gaps
    for w in plan.work:
        summary.plan.append(f"{w.reason:<8} {w.media.path}")
    for old, w in plan.renames:
        summary.plan.append(f"rename   {old.path} -> {w.media.path}")
    for f in plan.failures:
        summary.plan.append(f"fail     {f.error}")
    return plan


def _prefix_or_none(path: str) -> tuple[str, int] | None:
    """(hash, length) of a file's first bytes, or None if it cannot be read."""
    try:
        length = min(PREFIX_BYTES, os.path.getsize(path))
        return prefix_hash(path, length), length
    except OSError:
        return None


def _moved_from(rows: list[FileRow], sha: str, path: str, claimed: set[int]) -> FileRow | None:
    """The current row this file was renamed from, if any (same content, old path gone).

    A row whose path still exists but resolves to this very file (a dataset recorded through
    another spelling of the root by an older version) counts as renamed too.
    """
    for r in rows:
        if not r.current or r.status != "ok" or r.sha256 != sha or r.id in claimed:
            continue
        if r.path == path:
            continue
        if not os.path.lexists(r.path) or os.path.realpath(r.path) == path:
            return r
    return None
