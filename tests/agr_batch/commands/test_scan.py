from __future__ import annotations

import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from click.testing import CliRunner
from PIL import Image

from agr_batch.cli import main
from agr_batch.commands.scan import ScanConfig, scan
from agr_batch.commands.scan.dataset import Dataset
from agr_batch.commands.scan.fileid import birth_time_ns
from agr_batch.commands.scan.state import DatasetLock, State
from agr_batch.samples import photo

GROUP, SINGLE = 6, 1  # faces in t1.jpg and in the Tom Hanks photo


def _jpeg(path: Path, name: str, variant: int) -> Path:
    """A photo re-encoded so that each variant has different bytes (and hash)."""
    img = photo(name).copy()
    img[0, 0] = variant % 256  # one pixel: same faces, different content
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def _camera(root: Path, n_group: int = 2, n_single: int = 1) -> dict[str, int]:
    expected = {}
    for i in range(n_group):
        expected[str(_jpeg(root / "cam1" / f"group_{i}.jpg", "t1.jpg", i))] = GROUP
    for i in range(n_single):
        expected[str(_jpeg(root / "cam2" / f"single_{i}.jpg", "Tom_Hanks_54745.png", 100 + i))] = (
            SINGLE
        )
    return expected


def _faces_by_source(dataset: Path) -> dict[str, int]:
    if not list(dataset.glob("date=*/part-*.parquet")):
        return {}
    table = pads.dataset(dataset, partitioning="hive").to_table()
    out: dict[str, int] = {}
    for src, n in zip(
        table.column("source").to_pylist(), table.column("faces").to_pylist(), strict=True
    ):
        out[src] = out.get(src, 0) + n
    return out


def _config(root: Path, dataset: Path, model: Path, **kw) -> ScanConfig:
    return ScanConfig(root=root, dataset=dataset, model=model, settle_s=0, backend="eager", **kw)


def _data_files(dataset: Path) -> dict[str, float]:
    return {
        str(p): p.stat().st_mtime_ns for p in dataset.rglob("*.parquet") if "_state" not in p.parts
    }


def test_first_scan_then_unchanged_rerun_writes_nothing(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    s1 = scan(_config(root, ds, tiny_checkpoint))
    assert s1.processed == 3 and s1.failed == 0 and s1.exit_code == 0
    assert _faces_by_source(ds) == expected
    parts = _data_files(ds)
    s2 = scan(_config(root, ds, tiny_checkpoint))
    assert s2.processed == 0 and s2.unchanged == 3
    assert _data_files(ds) == parts
    # Partitioned by the source's start date; readable as one table.
    table = pads.dataset(ds, partitioning="hive").to_table()
    assert "date" in table.column_names and table.num_rows > 0
    import pandas as pd

    assert pd.read_parquet(ds).faces.sum() == sum(expected.values())


def test_modified_file_rows_are_replaced_not_added(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    scan(_config(root, ds, tiny_checkpoint))
    target = root / "cam1" / "group_0.jpg"
    if birth_time_ns(target) is None:
        pytest.skip("no birth times here: a rewrite with another beginning is a new recording")
    _jpeg(target, "Tom_Hanks_54745.png", 7)  # same name, new content: one face now
    os.utime(target, (time.time() - 600, time.time() - 600))
    s = scan(_config(root, ds, tiny_checkpoint))
    assert s.processed == 1
    expected[str(target)] = SINGLE
    assert _faces_by_source(ds) == expected


def test_touched_file_is_not_reprocessed(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=1, n_single=0)
    scan(_config(root, ds, tiny_checkpoint))
    (path,) = expected
    os.utime(path, (time.time() - 100, time.time() - 100))
    s = scan(_config(root, ds, tiny_checkpoint))
    assert s.processed == 0 and s.touched == 1
    assert scan(_config(root, ds, tiny_checkpoint)).unchanged == 1


def test_renamed_file_keeps_its_rows_under_the_new_name(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    scan(_config(root, ds, tiny_checkpoint))
    old = root / "cam1" / "group_1.jpg"
    new = root / "cam1" / "renamed ü.jpg"
    old.rename(new)
    s = scan(_config(root, ds, tiny_checkpoint))
    assert s.renamed == 1 and s.processed == 0
    expected[str(new)] = expected.pop(str(old))
    assert _faces_by_source(ds) == expected


def test_settle_window_defers_fresh_files(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    path = _jpeg(root / "fresh.jpg", "t1.jpg", 1)
    os.utime(path, None)  # modified just now: maybe still being written
    s = scan(ScanConfig(root=root, dataset=ds, model=tiny_checkpoint, settle_s=60))
    assert s.deferred == 1 and s.processed == 0
    assert _faces_by_source(ds) == {}
    os.utime(path, (time.time() - 61, time.time() - 61))
    s = scan(ScanConfig(root=root, dataset=ds, model=tiny_checkpoint, settle_s=60))
    assert s.processed == 1 and _faces_by_source(ds) == {str(path): GROUP}


def test_failed_files_are_recorded_and_retried_on_request(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=1, n_single=0)
    bad = root / "broken.mp4"
    bad.write_text("not a video")
    os.utime(bad, (time.time() - 600, time.time() - 600))
    errors: list[str] = []
    s = scan(_config(root, ds, tiny_checkpoint), on_error=errors.append)
    assert s.exit_code == 1 and s.failed == 1 and len(errors) == 1 and "broken.mp4" in errors[0]
    assert _faces_by_source(ds) == expected
    errors_table = pads.dataset(ds / "_errors.parquet").to_table().to_pylist()
    assert [r["path"] for r in errors_table] == [str(bad)]
    # Unchanged, so not retried; nothing failed in this scan, but the file still fails: the
    # exit code says so (cron must not read it as all good), with its own code.
    later = scan(_config(root, ds, tiny_checkpoint))
    assert (later.failed, later.still_failing, later.exit_code) == (0, 1, 4)
    assert "0 failed, 1 still failing from earlier scans" in later.line()
    again = scan(_config(root, ds, tiny_checkpoint, retry_failed=True))
    assert again.failed == 1 and again.exit_code == 1
    bad.unlink()
    assert scan(_config(root, ds, tiny_checkpoint)).exit_code == 0  # the failure is gone


def test_dry_run_changes_nothing(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root)
    s = scan(_config(root, ds, tiny_checkpoint, dry_run=True))
    assert len([p for p in s.plan if p.startswith("new")]) == 3
    assert _data_files(ds) == {}


def test_overlapping_scan_exits_3_naming_the_holder(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root, n_group=1, n_single=0)
    lock = DatasetLock(ds / "_state")
    lock.acquire()
    try:
        result = CliRunner().invoke(
            main,
            ["scan", str(root), "--out", str(ds), "--model", str(tiny_checkpoint), "--settle", "0"],
        )
    finally:
        lock.release()
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0]


def test_config_file_and_status(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=1, n_single=1)
    cfg = tmp_path / "scan.toml"
    cfg.write_text(
        f'root = "{root}"\nout = "{ds}"\nmodel = "{tiny_checkpoint}"\nsettle = 0\n'
        f'sample-fps = 1.0\nbackend = "eager"\ntracks = true\n'
    )
    result = CliRunner().invoke(main, ["scan", "--config", str(cfg), "--quiet"])
    assert result.exit_code == 0, result.output
    assert _faces_by_source(ds) == expected
    assert list((ds / "_tracks").glob("date=*/part-*.parquet"))
    status = CliRunner().invoke(main, ["status", str(ds), "--json"])
    import json

    st = json.loads(status.output)
    assert st["files_ok"] == 2 and st["faces"] == GROUP + SINGLE and st["files_failed"] == 0
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text('colour = "red"\n')
    assert CliRunner().invoke(main, ["scan", "--config", str(bad_cfg)]).exit_code == 2


def test_reconcile_repairs_each_crash_window(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    scan(_config(root, ds, tiny_checkpoint))
    dataset = Dataset(ds)
    state = State(dataset.state_dir)
    rows = state.files()
    part_dir = next(ds.glob("date=*"))
    # 1. Crash while writing a part: a hidden temp no row references.
    (part_dir / ".tmp-deadbeef.parquet").write_bytes(b"partial")
    # 2. Crash after commit, before the rename: the part sits under its temp name.
    row = rows[str(root / "cam1" / "group_0.jpg")]
    final = ds / row.parts[0]
    tmp = final.with_name(".tmp-" + final.name.removeprefix("part-"))
    os.replace(final, tmp)
    with state.transaction() as db:
        db.execute(
            "INSERT INTO pending_moves (src, dst) VALUES (?, ?)", (dataset.rel(tmp), row.parts[0])
        )
    # 3. A recorded part went missing: that file must be redone.
    lost = rows[str(root / "cam2" / "single_0.jpg")]
    (ds / lost.parts[0]).unlink()
    # 4. A complete part no row references (crash between rename and commit).
    (part_dir / "part-0123456789abcdef.parquet").write_bytes(b"orphan")
    state.close()
    s = scan(_config(root, ds, tiny_checkpoint))
    assert s.repaired == {"rolled_forward": 1, "garbage": 0, "redone": 1, "orphans": 2}
    assert s.processed == 1
    assert _faces_by_source(ds) == expected


@pytest.mark.slow
def test_exactly_once_under_kill_9(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=4, n_single=3)
    cmd = [
        sys.executable, "-m", "agr_batch.cli", "scan", str(root), "--out", str(ds),
        "--model", str(tiny_checkpoint), "--settle", "0", "--backend", "eager",
        "--batch-size", "2", "--quiet",
    ]  # fmt: skip
    # How long one whole scan takes here: the kills fall inside that span, however fast or
    # slow the machine (a fixed schedule let fast scans finish before any kill). The shorter
    # of two timings: a one-off delay in the first (a cold disk cache after other tests) made
    # every later kill land after its scan had finished.
    durations = []
    for attempt in range(2):
        t0 = time.monotonic()
        timing = subprocess.run(
            [*cmd[:6], str(tmp_path / f"timing{attempt}"), *cmd[7:]], capture_output=True
        )
        assert timing.returncode == 0, timing.stderr
        durations.append(time.monotonic() - t0)
    whole = min(durations)
    rng = random.Random(1234)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, 0.6) * whole)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # Whatever was committed so far is counted exactly once.
        seen = _faces_by_source(ds)
        assert all(seen[k] == expected[k] for k in seen), seen
    final = subprocess.run(cmd, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert _faces_by_source(ds) == expected
    assert kills >= 2, durations  # the randomised schedule really interrupted scans
    parts = list(ds.glob("date=*/part-*.parquet"))
    assert len(parts) == len(expected)
    assert not list(ds.rglob(".tmp-*"))


def test_scan_rejects_dataset_inside_root(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="must not be inside"):
        ScanConfig(root=tmp_path, dataset=tmp_path / "ds", model=tiny_checkpoint)


def test_symlink_loop_and_dangling_link(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=1, n_single=0)
    (root / "loop").symlink_to(root)
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    errors: list[str] = []
    s = scan(_config(root, ds, tiny_checkpoint), on_error=errors.append)
    assert s.processed == 1 and _faces_by_source(ds) == expected
    assert len(errors) == 1 and "dangling.jpg" in errors[0]
    assert np.isclose(s.faces, GROUP)


def test_every_file_scanned_has_rows_even_without_faces_on_clock_windows(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=1, n_single=0)
    empty = root / "cam3" / "nobody.png"
    empty.parent.mkdir(parents=True)
    Image.fromarray(np.full((240, 320, 3), 96, np.uint8)).save(empty)
    os.utime(empty, (time.time() - 600, time.time() - 600))
    s = scan(_config(root, ds, tiny_checkpoint, align_windows="clock", tz="UTC", window_s=900))
    assert s.processed == 2 and s.exit_code == 0
    table = pads.dataset(ds, partitioning="hive").to_table().to_pandas()
    nobody = table[table.source == str(empty)]
    assert nobody.faces.tolist() == [0] and nobody.race.isna().all()  # processed: nobody
    assert _faces_by_source(ds) == {**expected, str(empty): 0}
    assert {"people", "footage_s"} <= set(table.columns)


def test_a_scan_whose_rows_are_all_suppressed_says_why(tmp_path, tiny_checkpoint, caplog):
    caplog.set_level(logging.WARNING, logger="agr_batch")  # whatever earlier tests set
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root, n_group=1, n_single=0)  # six people
    s = scan(_config(root, ds, tiny_checkpoint, min_cell_count=7))
    assert s.processed == 1 and s.suppressed_faces == s.faces == GROUP
    (warning,) = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert "everything in the rows of this scan was suppressed" in warning
    assert "--min-cell-count 7" in warning and "lower --min-cell-count" in warning
    # The file's window is still there, its counts withheld (null), not zero.
    table = pads.dataset(ds, partitioning="hive").to_table().to_pandas()
    assert len(table) == 1 and table.faces.isna().all()
