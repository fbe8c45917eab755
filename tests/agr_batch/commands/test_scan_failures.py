"""scan: every failure is counted, nothing hangs, signals and broken or read-only state give
one clear line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from agr_batch.cli import main
from agr_batch.commands.scan.state import DatasetLock
from tests.agr_batch.commands.test_scan import GROUP, _camera, _faces_by_source, _jpeg
from tests.signals import default_sigint


def _cli(*args: str, bound: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """agr-batch in a subprocess (a hang fails the test instead of blocking the suite).

    ``bound``: file permissions bind it even when the tests run as root.
    """
    prefix = _permissions_bind() if bound else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "agr_batch.cli", *args], capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def _scan_args(root: Path, ds: Path, model: Path, *extra: str) -> list[str]:
    return ["scan", str(root), "--out", str(ds), "--model", str(model), "--settle", "0",
            "--backend", "eager", *extra]  # fmt: skip


def _errors(ds: Path) -> list[str]:
    return sorted(pq.read_table(ds / "_errors.parquet").column("path").to_pylist())


def _status(ds: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["status", str(ds), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _permissions_bind() -> list[str]:
    """A command prefix under which root, too, is bound by file permissions.

    Root ignores them through two capabilities; ``setpriv`` drops those for the child.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot bind")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


# ---------------------------------------------------------------------------------------------
# every failure counts


@pytest.mark.slow
def test_dangling_link_and_unreadable_file_are_counted_failures(tmp_path, tiny_checkpoint):
    root, ds, model = tmp_path / "root", tmp_path / "ds", tiny_checkpoint
    expected = _camera(root, n_group=1, n_single=0)
    (root / "cam1" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    secret = _jpeg(root / "cam1" / "secret.jpg", "t1.jpg", 5)
    secret.chmod(0o000)
    first = _cli(*_scan_args(root, ds, model), bound=True)
    assert first.returncode == 1, first.stderr
    lines = first.stderr.strip().splitlines()
    assert any("dangling.jpg" in ln and "dangling symbolic link" in ln for ln in lines), lines
    assert any("secret.jpg" in ln and "Permission denied" in ln for ln in lines), lines
    assert _faces_by_source(ds) == expected  # the good file is processed
    assert _errors(ds) == [str(root / "cam1" / "dangling.jpg"), str(secret)]
    st = _status(ds)
    assert st["files_failed"] == 2 and st["files_ok"] == 1
    assert st["last_run"]["failed"] == 2 and st["last_run"]["exit_code"] == 1
    # Counted once: an unchanged failure is not reported again, but the exit code (4) says
    # that files still fail ...
    again = _cli(*_scan_args(root, ds, model), bound=True)
    assert again.returncode == 4 and again.stderr.count("error") == 0, again.stderr
    assert "2 still failing from earlier scans" in again.stderr
    # ... and retried once fixed (a chmod changes the file's ctime).
    secret.chmod(0o644)
    (root / "cam1" / "dangling.jpg").unlink()
    fixed = _cli(*_scan_args(root, ds, model), bound=True)
    assert fixed.returncode == 0, fixed.stderr
    assert _faces_by_source(ds)[str(secret)] == GROUP
    assert _errors(ds) == [] and _status(ds)["files_failed"] == 0


@pytest.mark.slow
def test_fifo_named_like_a_photo_never_hangs_a_scan(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=1, n_single=0)
    os.mkfifo(root / "cam1" / "pipe.jpg")
    os.utime(root / "cam1" / "pipe.jpg", (time.time() - 600, time.time() - 600))
    result = _cli(*_scan_args(root, ds, tiny_checkpoint, "--quiet"), timeout=120)
    assert result.returncode == 1, result.stderr
    assert "pipe.jpg: not a regular file" in result.stderr
    assert _faces_by_source(ds) == expected  # the good file beside it is processed
    assert _errors(ds) == [str(root / "cam1" / "pipe.jpg")]
    assert _status(ds)["files_failed"] == 1
    # Still failing, not reported again: exit 4 says so.
    assert _cli(*_scan_args(root, ds, tiny_checkpoint), timeout=120).returncode == 4


def test_fifo_in_a_run_sequence_folder_never_hangs(tmp_path, tiny_checkpoint):
    folder = tmp_path / "snaps"
    folder.mkdir()
    _jpeg(folder / "a.jpg", "t1.jpg", 1)
    os.mkfifo(folder / "b.jpg")
    result = _cli(
        "run", str(folder), "--sequence", "--out", str(tmp_path / "s.parquet"),
        "--model", str(tiny_checkpoint), "--backend", "eager", "--quiet", timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "b.jpg: not a regular file" in result.stderr
    assert pq.read_table(tmp_path / "s.parquet").column("faces").to_pylist() != []


# ---------------------------------------------------------------------------------------------
# signals and dead or stuck scans


def _start_scan(root: Path, ds: Path, model: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agr_batch.cli",
         *_scan_args(root, ds, model, "--batch-size", "1", "--quiet")],
        stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(ds.glob("date=*/part-*.parquet")):  # a first file is committed
        assert proc.poll() is None and time.monotonic() < deadline, "scan ended too early"
        time.sleep(0.05)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_scan_exits_128_plus_signal_and_is_recorded(
    tmp_path, tiny_checkpoint, sig, code
):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=12, n_single=0)
    proc = _start_scan(root, ds, tiny_checkpoint)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    stderr = proc.stderr.read() if proc.stderr else ""
    assert stderr.strip().splitlines() == [
        "agr-batch: error: interrupted; every file committed before is kept"
    ]
    st = _status(ds)
    assert st["last_run"]["exit_code"] == code and st["last_run"]["finished"]
    assert st["last_run"]["state"] == "interrupted" and not st["lock"]["held"]
    seen = _faces_by_source(ds)
    assert seen and all(seen[k] == expected[k] for k in seen)  # committed files, once
    rest = _cli(*_scan_args(root, ds, tiny_checkpoint))
    assert rest.returncode == 0 and _faces_by_source(ds) == expected


def test_status_reports_a_scan_that_died(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root, n_group=12, n_single=0)
    proc = _start_scan(root, ds, tiny_checkpoint)
    proc.kill()
    proc.wait(timeout=60)
    st = _status(ds)
    assert st["last_run"]["state"] == "died" and not st["lock"]["held"]
    text = CliRunner().invoke(main, ["status", str(ds)]).stdout
    assert "did not finish: killed or crashed" in text


def test_status_reports_the_holder_of_the_lock_and_a_stuck_step(tmp_path):
    ds = tmp_path / "ds"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path\n"
         "from agr_batch.commands.scan.state import DatasetLock\n"
         f"lock = DatasetLock(Path({str(ds / '_state')!r})); lock.acquire()\n"
         "lock.activity('hashing /cams/pipe.jpg'); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # A state as a first scan leaves it.
        sqlite3.connect(ds / "_state" / "state.sqlite").execute(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, started TEXT, finished TEXT, pid INT, "
            "host TEXT, processed INT, failed INT, deferred INT, exit_code INT)"
        )
        time.sleep(2.2)
        st = _status(ds, "--stuck-after", "1")
        assert st["lock"]["held"] and f"pid {holder.pid}" in st["lock"]["holder"]
        assert st["lock"]["doing"] == "hashing /cams/pipe.jpg" and st["lock"]["stuck"]
        text = CliRunner().invoke(main, ["status", str(ds), "--stuck-after", "1"]).stdout
        assert "scan now" in text and "STUCK?" in text and "pipe.jpg" in text
        assert not _status(ds)["lock"]["stuck"]  # within the default hour
        # A second scan is told who holds it.
        lock = DatasetLock(ds / "_state")
        with pytest.raises(Exception, match=f"pid {holder.pid}"):
            lock.acquire()
    finally:
        holder.kill()
        holder.wait()
    assert not _status(ds)["lock"]["held"]


# ---------------------------------------------------------------------------------------------
# corrupt, read-only and badly configured


def test_corrupt_state_is_one_line_exit_2(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root, n_group=1, n_single=0)
    assert CliRunner().invoke(main, _scan_args(root, ds, tiny_checkpoint)).exit_code == 0
    (ds / "_state" / "state.sqlite").write_bytes(b"this is not a database" * 100)
    for args in (_scan_args(root, ds, tiny_checkpoint), ["status", str(ds)],
                 _scan_args(root, ds, tiny_checkpoint, "--dry-run")):  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "state.sqlite: unusable scan state" in lines[0], lines


@pytest.mark.slow
def test_read_only_dataset_status_and_dry_run_work(tmp_path, tiny_checkpoint):
    root, ds, model = tmp_path / "root", tmp_path / "ds", tiny_checkpoint
    _camera(root, n_group=1, n_single=1)
    assert _cli(*_scan_args(root, ds, model)).returncode == 0
    (ds / "_state" / "lock").unlink()
    _jpeg(root / "cam1" / "new.jpg", "t1.jpg", 9)
    for p in [ds, *ds.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = {str(p): p.stat().st_mtime_ns for p in ds.rglob("*")}
    status = _cli("status", str(ds), "--json", bound=True)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["files_ok"] == 2
    dry = _cli(*_scan_args(root, ds, model, "--dry-run"), bound=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines() == [f"new      {root / 'cam1' / 'new.jpg'}"]
    assert not (ds / "_state" / "lock").exists()
    assert {str(p): p.stat().st_mtime_ns for p in ds.rglob("*")} == before
    real = _cli(*_scan_args(root, ds, model), bound=True)
    assert real.returncode == 2 and len(real.stderr.strip().splitlines()) == 1, real.stderr
    for p in [ds, *ds.rglob("*")]:  # so that pytest can clean up
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("settle = [1, 2]", "settle must be a float, got [1, 2]"),
        ("sample-fps = true", "sample-fps must be a float, got True"),
        ("faces = 'yes'", "faces must be true or false, got 'yes'"),
        ("batch-size = 2.5", "batch-size must be an integer, got 2.5"),
        ("device = 'tpu'", "device must be one of auto, cpu, cuda, got 'tpu'"),
        ("window = 'nan'", "--window must be a number"),
    ],
)
def test_config_file_with_wrong_types_is_one_line_exit_2(tmp_path, tiny_checkpoint, line, message):
    (tmp_path / "root").mkdir()
    cfg = tmp_path / "scan.toml"
    cfg.write_text(
        f'root = "{tmp_path / "root"}"\nout = "{tmp_path / "ds"}"\n'
        f'model = "{tiny_checkpoint}"\n{line}\n'
    )
    result = CliRunner().invoke(main, ["scan", "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["cam.mp4", "ds/scan.log"])
def test_log_file_that_would_overwrite_media_or_break_the_dataset_is_refused(
    tmp_path, tiny_checkpoint, name
):
    (tmp_path / "root").mkdir()
    log_file = tmp_path / name
    result = CliRunner().invoke(
        main, [*_scan_args(tmp_path / "root", tmp_path / "ds", tiny_checkpoint),
               "--log-file", str(log_file)],
    )  # fmt: skip
    assert result.exit_code == 2 and "--log-file" in result.stderr, result.output
    assert not log_file.exists()
