"""The command line answers fast and stays quiet for cron: nothing on stderr but errors with
--quiet, everything (library warnings too) and one summary line per run in --log-file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from agr_batch.cli import main
from agr_batch.samples import photos_dir

REPO = Path(__file__).resolve().parents[3]


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def test_importing_the_cli_loads_no_heavy_stack():
    proc = _python(
        "import sys, agr_batch.cli\n"
        "print([m for m in ('torch', 'numpy', 'pyarrow', 'cv2', 'av') if m in sys.modules])"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_library_logging_and_warnings_go_to_the_log_file_not_stderr(tmp_path):
    log = tmp_path / "cron.log"
    proc = _python(
        "import logging, sys, warnings\n"
        "from agr_batch.cli.common import setup_logging\n"
        "setup_logging(0, True, log_file=sys.argv[1])\n"
        "import torch  # installs its own stderr handler on its loggers when imported\n"
        "logging.getLogger('torch.utils.cpp_extension').warning('No CUDA runtime is found')\n"
        "warnings.warn('a library warning')\n"
        "logging.getLogger('agr_batch.x').error('an error')\n",
        str(log),
    )
    assert proc.returncode == 0
    assert proc.stderr == "ERROR agr_batch.x: an error\n"
    text = log.read_text()
    assert "WARNING torch.utils.cpp_extension: No CUDA runtime is found" in text
    assert "UserWarning: a library warning" in text and "an error" in text


def _camera(tmp_path: Path, scene_video) -> Path:
    root = tmp_path / "cams"
    root.mkdir()
    shutil.copy(scene_video.path, root / "lobby.mp4")
    shutil.copy(photos_dir() / "t1.jpg", root / "group.jpg")
    old = time.time() - 3600
    for p in root.iterdir():
        os.utime(p, (old, old))
    return root


def test_quiet_scan_prints_nothing_and_logs_one_line_per_run(
    tmp_path, scene_video, tiny_checkpoint
):
    root = _camera(tmp_path, scene_video)
    log = tmp_path / "cron.log"
    args = ["scan", str(root), "--out", str(tmp_path / "ds"), "--model", str(tiny_checkpoint),
            "--backend", "eager", "--quiet", "--log-file", str(log)]  # fmt: skip
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == "" and first.stderr == ""
    (root / "broken.mp4").write_bytes(b"not a video")
    os.utime(root / "broken.mp4", (time.time() - 3600,) * 2)
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 1
    assert second.stderr.count("\n") == 1 and "broken.mp4" in second.stderr
    third = CliRunner().invoke(main, args)  # nothing new; the broken file still fails
    assert third.exit_code == 4 and third.stderr == ""
    summaries = [ln for ln in log.read_text().splitlines() if "INFO agr_batch.result" in ln]
    assert [s.split("agr_batch.result: ")[1].split(";")[0] for s in summaries] == [
        "scan: 2 processed, 0 failed, 0 still failing from earlier scans, 0 deferred "
        "(settling), 0 unchanged, 0 renamed",
        "scan: 0 processed, 1 failed, 0 still failing from earlier scans, 0 deferred "
        "(settling), 2 unchanged, 0 renamed",
        "scan: 0 processed, 0 failed, 1 still failing from earlier scans, 0 deferred "
        "(settling), 3 unchanged, 0 renamed",
    ]
    assert sum("ERROR agr_batch.result: " in ln and "broken.mp4" in ln
               for ln in log.read_text().splitlines()) == 1  # fmt: skip


def test_run_log_file_gets_the_summary_and_json_stays_on_stdout(tmp_path, tiny_checkpoint):
    log = tmp_path / "run.log"
    result = CliRunner().invoke(
        main,
        ["run", str(photos_dir() / "t1.jpg"), "--out", str(tmp_path / "o.parquet"),
         "--model", str(tiny_checkpoint), "--backend", "eager", "--json",
         "--log-file", str(log)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["faces"] == 6
    lines = [ln for ln in log.read_text().splitlines() if "agr_batch.result" in ln]
    assert len(lines) == 1
    assert "run: 1 processed, 0 failed, 0 skipped; 1 frames, 6 faces" in lines[0]


def test_a_usage_error_is_logged_as_a_run_that_was_not_done(tmp_path, tiny_checkpoint):
    log = tmp_path / "run.log"
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path), "--out", str(tmp_path / "o.parquet"),
         "--model", str(tiny_checkpoint), "--window", "0", "--log-file", str(log)],
    )  # fmt: skip
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "run: not done: --window" in log.read_text()
