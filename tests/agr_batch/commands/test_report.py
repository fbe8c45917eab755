from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from agr_batch.cli import main
from agr_batch.commands.report import build_report, load_stats
from agr_batch.labels import VOCABULARIES
from agr_batch.records import Predictions, TrackResult
from agr_batch.stages.aggregate import StatsAggregator
from agr_batch.storage.sinks import write_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]  # fmt: skip


def _onehot(n, k, i):
    p = np.zeros((n, k), np.float32)
    p[:, i] = 1
    return p


def _stats_file(path, *, people_per_cell=6):
    """Two cameras over two days; each (age, gender, race) group has several people."""
    agg = StatsAggregator(VOCABULARIES, window_s=3600)
    rng = np.random.default_rng(0)
    tid = 0
    for cam, start in (("cam1.mp4", dt.datetime(2026, 11, 23, 8, tzinfo=dt.UTC)),
                       ("cam2.mp4", dt.datetime(2026, 11, 24, 14, tzinfo=dt.UTC))):  # fmt: skip
        agg.add_source(cam, "video", start)
        for age, gender, race in ((3, 0, 0), (4, 1, 3), (2, 1, 1), (8, 0, 5)):
            for _ in range(people_per_cell):
                t = float(rng.uniform(0, 3600))
                n = 3
                agg.add(
                    TrackResult(
                        source=cam, kind="video", start_time=start, track_id=tid,
                        frame_index=np.arange(n, dtype=np.int64),
                        time_s=np.full(n, t), boxes=np.zeros((n, 4), np.float32),
                        det_scores=np.full(n, 0.9, np.float32),
                        face_predictions=Predictions(_onehot(n, 9, age), _onehot(n, 2, gender),
                                                     _onehot(n, 7, race)),
                        classified=np.ones(n, bool),
                        vote=Predictions(
                            _onehot(1, 9, age), _onehot(1, 2, gender), _onehot(1, 7, race)
                        ),
                    )
                )  # fmt: skip
                tid += 1
    # A lone person: a small cell the report must suppress.
    agg.add(
        TrackResult(
            source="cam1.mp4", kind="video", start_time=None, track_id=tid,
            frame_index=np.zeros(1, np.int64), time_s=np.zeros(1),
            boxes=np.zeros((1, 4), np.float32),
            det_scores=np.full(1, 0.9, np.float32),
            face_predictions=Predictions(_onehot(1, 9, 0), _onehot(1, 2, 0), _onehot(1, 7, 6)),
            classified=np.ones(1, bool),
            vote=Predictions(_onehot(1, 9, 0), _onehot(1, 2, 0), _onehot(1, 7, 6)),
        )
    )  # fmt: skip
    write_table(path, agg.table(), metadata={"tool": "agr-batch", "window_s": 3600, "arch": "tiny"})
    return path


def test_report_is_self_contained_and_suppresses_small_cells(tmp_path):
    stats = _stats_file(tmp_path / "stats.parquet")
    out = tmp_path / "report.html"
    data = build_report(stats, out, min_cell_count=5, png_dir=tmp_path / "png")
    page = out.read_text()
    assert data.suppressed_cells >= 1 and data.suppressed_faces >= 1
    assert "Middle Eastern" not in set(data.table.race)
    for title in (
        "Age by gender",
        "Race",
        "Faces and visitors per window",
        "by hour",
        "Per source",
    ):
        assert title in page
    assert page.count("<svg") == 5
    # No external requests: no scripts, stylesheets, images or fonts fetched from anywhere.
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert not re.search(r"url\((https?:)?//", page)
    assert '"arch": "tiny"' in page  # the configuration recorded in the data
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "age_pyramid.png", "hour_day.png", "over_time.png", "per_source.png", "race.png",
    ]  # fmt: skip


def test_report_cli_and_bad_input(tmp_path):
    stats = _stats_file(tmp_path / "stats.parquet")
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        main, ["report", str(stats), "--out", str(out), "--min-cell-count", "0"]
    )
    assert result.exit_code == 0 and out.exists()
    assert "0 small cells suppressed" in result.stderr
    bad = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(stats).drop(["faces"]), bad)
    result = CliRunner().invoke(main, ["report", str(bad), "--out", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "not an agr-batch stats table" in result.stderr
    missing = CliRunner().invoke(
        main, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "y.html")]
    )
    assert missing.exit_code == 2


def test_report_reads_a_scanned_dataset_folder(tmp_path):
    ds = tmp_path / "ds" / "date=2026-11-23"
    ds.mkdir(parents=True)
    _stats_file(ds / "part-1.parquet")
    frame, config = load_stats(tmp_path / "ds")
    assert "date" not in frame.columns and frame.faces.sum() > 0 and config["arch"] == "tiny"


def _chromium(html_path, png_path, profile):
    proc = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1100,3200",
         f"--screenshot={png_path}", html_path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    return proc.returncode, console


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"
)
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    stats = _stats_file(tmp_path / "stats.parquet")
    out = tmp_path / "report.html"
    build_report(stats, out)
    shot = tmp_path / "report.png"
    code, console = _chromium(out, shot, tmp_path / "profile")
    assert code == 0 and console == []
    assert shot.stat().st_size > 20_000  # a real rendering, not a blank page
    # The check can fail: a page that throws is caught.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>throw new Error('boom')</script></body></html>")
    _, console = _chromium(broken, tmp_path / "broken.png", tmp_path / "profile2")
    assert any("boom" in ln for ln in console)


def test_report_on_an_empty_folder_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        main, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "no stats here" in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_on_a_new_dataset_without_parts_is_an_empty_report(tmp_path, tiny_checkpoint):
    # "scan, then report" from cron: the first scan may have found nothing yet.
    (tmp_path / "root").mkdir()
    ds = tmp_path / "ds"
    scan = CliRunner().invoke(
        main,
        ["scan", str(tmp_path / "root"), "--out", str(ds), "--model", str(tiny_checkpoint),
         "--quiet"],
    )  # fmt: skip
    assert scan.exit_code == 0, scan.output
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(ds), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and "0 faces" in result.stderr
    assert "Nothing to show yet" in out.read_text()


def test_report_never_overwrites_its_input_or_writes_into_the_dataset(tmp_path):
    stats = _stats_file(tmp_path / "stats.parquet")
    before = stats.read_bytes()
    (tmp_path / "alias").symlink_to(tmp_path)
    for out in (stats, tmp_path / "alias" / "stats.parquet", tmp_path / "x" / ".." / stats.name):
        result = CliRunner().invoke(main, ["report", str(stats), "--out", str(out)])
        assert result.exit_code == 2 and "refusing to overwrite" in result.stderr, out
    assert stats.read_bytes() == before
    ds = tmp_path / "ds" / "date=2026-11-23"
    ds.mkdir(parents=True)
    _stats_file(ds / "part-1.parquet")
    for args in (
        ["--out", str(ds / "r.html")],
        ["--out", str(tmp_path / "r.html"), "--png-dir", str(tmp_path / "ds" / "png")],
    ):
        result = CliRunner().invoke(main, ["report", str(tmp_path / "ds"), *args])
        assert result.exit_code == 2 and "inside the dataset" in result.stderr, args
    assert sorted(p.name for p in ds.iterdir()) == ["part-1.parquet"]


def test_report_on_a_fifo_does_not_block(tmp_path):
    import os

    os.mkfifo(tmp_path / "stats.parquet")
    result = CliRunner().invoke(
        main, ["report", str(tmp_path / "stats.parquet"), "--out", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 2 and "not a regular file" in result.stderr
