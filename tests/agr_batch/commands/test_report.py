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
    assert data.suppressed_cells >= 1
    assert data.cells["race"].frame.loc["Middle Eastern"].suppressed  # the lone person
    for title in ("Age and gender", "Race", "Over time", "Hour of day", "Per source"):
        assert f"<h2>{title}" in page
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


# ---------------------------------------------------------------------------------------------
# What the page says


def _build(tmp_path, frame_path, **kw):
    out = tmp_path / "r.html"
    data = build_report(frame_path, out, **kw)
    return data, out.read_text()


def test_two_same_named_sources_are_two_bars_keyed_by_relative_path(tmp_path, tiny_checkpoint,
                                                                    t1_rgb):  # fmt: skip
    from tests import media

    for cam, seconds in (("camA", 1.0), ("camB", 0.5)):
        (tmp_path / cam).mkdir()
        media.make_video(tmp_path / cam / "video.mp4", [t1_rgb], seconds=seconds, fps=10,
                         size=(640, 480))  # fmt: skip
    stats = tmp_path / "out" / "stats.parquet"
    run = CliRunner().invoke(main, [
        "run", str(tmp_path / "camA"), str(tmp_path / "camB"), "--out", str(stats), "--model",
        str(tiny_checkpoint), "--backend", "eager", "--quiet",
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    faces = pq.read_table(stats).to_pandas().groupby("source").faces.sum()
    data, page = _build(tmp_path, stats)
    sources = data.cells["per_source"].frame
    assert list(sources.index) == ["camA/video.mp4", "camB/video.mp4"]
    assert sources.faces.tolist() == [
        faces[str(tmp_path / c / "video.mp4")] for c in ("camA", "camB")
    ]
    assert not sources.suppressed.any()  # six people each
    assert ">camA/video.mp4<" in page and ">camB/video.mp4<" in page  # SVG text, not glyphs
    # No absolute local path anywhere: not in the heading, the charts or the configuration.
    assert str(tmp_path) not in page and "/tmp" not in page
    assert '"model": "…/tiny.pt"' in page


def test_k_zero_suppresses_nothing_and_says_so(tmp_path):
    data, page = _build(tmp_path, _stats_file(tmp_path / "stats.parquet"), min_cell_count=0)
    assert data.suppressed_cells == 0
    assert "fewer than 0" not in page
    assert "Nothing is suppressed (--min-cell-count 0)" in page


def test_everything_suppressed_says_why_and_which_option_changes_it(tmp_path):
    stats = _stats_file(tmp_path / "stats.parquet", people_per_cell=1)  # 9 people in all
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(stats), "--out", str(out), "--min-cell-count",
                                       "10", "--png-dir", str(tmp_path / "png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<h2>Everything suppressed</h2>" in page and "<svg" not in page
    assert "every cell has fewer than 10 distinct people or 10 faces" in page
    assert "--min-cell-count" in page
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"wrote {out}: ")
    assert "everything in the report was suppressed" in lines[1]
    assert "lower --min-cell-count" in lines[1]
    assert not (tmp_path / "png").exists()  # nothing to save, and the CLI said why


def _with_model(tmp_path, training):
    stats = _stats_file(tmp_path / "stats.parquet")
    table = pq.read_table(stats)
    meta = {"tool": "agr-batch", "window_s": 3600, "arch": "compact"}
    if training is not None:
        meta["model_training"] = training
    write_table(stats, table, metadata=meta)
    return _build(tmp_path, stats)[1]


def test_the_page_names_the_model_from_its_training_metadata(tmp_path):
    page = _with_model(tmp_path, {"dataset": "agr-train synth (synthetic drawn faces)",
                                  "synthetic": True, "arch": "compact"})  # fmt: skip
    assert "Synthetic model." in page and "meaningless" in page
    assert "trained on synthetic drawn faces" in page and "FairFace" not in page.split(
        "categories")[1].split("</p>")[0]  # fmt: skip
    page = _with_model(tmp_path, {"dataset": "fairface (FairFace layout)", "synthetic": False})
    assert "trained on fairface (FairFace layout)" in page and "Synthetic model" not in page
    page = _with_model(tmp_path, None)
    assert "whose training data is not recorded" in page


def test_time_charts_follow_the_time_zone_named_on_the_page(tmp_path):
    stats = _stats_file(tmp_path / "stats.parquet")  # cam1 at 08:00 UTC, cam2 at 14:00 UTC
    utc, _ = _build(tmp_path, stats, tz="UTC", min_cell_count=0)
    tokyo, page_tokyo = _build(tmp_path, stats, tz="Asia/Tokyo", min_cell_count=0)
    hours = lambda d: [h for h, f in d.cells["hour"].frame.faces.items() if f > 0]  # noqa: E731
    assert hours(utc) == [8, 14] and hours(tokyo) == [17, 23]
    assert "hour of day, Asia/Tokyo" in page_tokyo and "<td>Asia/Tokyo</td>" in page_tokyo
    assert "2026-11-23 17:00" in page_tokyo  # the time range, in the zone shown
    bad = CliRunner().invoke(main, ["report", str(stats), "--out", str(tmp_path / "x.html"),
                                    "--tz", "Mars/Olympus"])  # fmt: skip
    assert bad.exit_code == 2 and "not a known time zone" in bad.stderr


def test_a_dataset_with_parts_of_two_versions_is_read_as_one_table(tmp_path):
    ds = tmp_path / "ds" / "date=2026-11-23"
    ds.mkdir(parents=True)
    _stats_file(ds / "part-new.parquet")
    old = pq.read_table(ds / "part-new.parquet").drop(["people", "footage_s"])
    pq.write_table(old, ds / "part-old.parquet")  # written before those columns existed
    frame, _ = load_stats(tmp_path / "ds")
    assert len(frame) == 2 * old.num_rows
    assert frame.people.isna().sum() == old.num_rows


# ---------------------------------------------------------------------------------------------
# Charts people can read


def _many_windows(path):
    """Three cameras over two days in 15-minute windows, with small groups here and there."""
    agg = StatsAggregator(VOCABULARIES, window_s=900, align="clock", tz="UTC")
    rng = np.random.default_rng(3)
    tid = 0
    for cam in ("site/a/cam.mp4", "site/b/cam.mp4", "site/c/cam.mp4"):
        start = dt.datetime(2026, 11, 23, 7, 3, tzinfo=dt.UTC)
        agg.add_source(cam, "video", start)
        for i in range(400):  # about 3 people per camera and window: some windows are small
            t = float(rng.uniform(0, 30 * 3600))
            n = int(rng.integers(2, 30))
            race = int(rng.choice(7, p=[0.4, 0.2, 0.2, 0.1, 0.05, 0.03, 0.02]))
            age = 8 if i < 2 else 3  # two people over 70 per camera: a small group
            agg.add(TrackResult(
                source=cam, kind="video", start_time=start, track_id=tid,
                frame_index=np.arange(n, dtype=np.int64), time_s=t + np.arange(n) * 0.5,
                boxes=np.zeros((n, 4), np.float32), det_scores=np.full(n, 0.9, np.float32),
                face_predictions=Predictions(_onehot(n, 9, age), _onehot(n, 2, tid % 2),
                                             _onehot(n, 7, race)),
                classified=np.ones(n, bool),
                vote=Predictions(_onehot(1, 9, age), _onehot(1, 2, tid % 2), _onehot(1, 7, race)),
            ))  # fmt: skip
            tid += 1
        agg.finish_source(cam, duration_s=30 * 3600.0, covered_s=30 * 3600.0)
    meta = {"tool": "agr-batch", "window_s": 900, "arch": "tiny", "vote": {"per_face": False}}
    write_table(path, agg.table(), metadata=meta)
    return path


def _overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _check_readable(fig, count_axes):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, axis in count_axes:
        ticks = (ax.get_xticks() if axis == "x" else ax.get_yticks()).tolist()
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # integer ticks
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:  # outside every plotting area: it covers no bar
            assert not _overlaps(box, ax.get_window_extent(renderer)), legend


def test_charts_have_separate_visitor_panels_integer_ticks_unique_labels_outside_legends(
    tmp_path,
):
    from agr_batch.commands import charts
    from agr_batch.labels import AGE

    data = build_report(_many_windows(tmp_path / "stats.parquet"), tmp_path / "r.html")
    cells = data.cells
    assert cells["over_time"].suppressed.any() and cells["pyramid"].suppressed.any()
    fig = charts.over_time(cells["over_time"], data.footage_s, absolute=True, window_s=900,
                           tz_name="UTC")  # fmt: skip
    faces_ax, visitors_ax, footage_ax = fig.axes
    assert [a.get_ylabel() for a in fig.axes] == ["faces", "visitors", "footage (min)"]
    labels = [t.get_text() for t in footage_ax.get_xticklabels()]
    assert len(labels) >= 6 and len(labels) == len(set(labels)) and all(labels)
    assert labels[0].startswith("2026-11-23 ") and any(la.startswith("2026-11-24 ") for la in
                                                       labels)  # fmt: skip
    assert sum(la.count("-") == 2 for la in labels) == 2  # the date only where it changes
    _check_readable(fig, [(faces_ax, "y"), (visitors_ax, "y")])
    fig = charts.pyramid(cells["pyramid"], AGE, "visitors")
    _check_readable(fig, [(fig.axes[0], "x")])
    fig = charts.race_bars(cells["race"], "visitors")
    _check_readable(fig, [(fig.axes[0], "x")])
    fig = charts.hour_and_day(cells["hour"], cells["day"], tz_name="UTC")
    _check_readable(fig, [(ax, "y") for ax in fig.axes])
    fig = charts.per_source(cells["per_source"])
    # Relative paths as given: three cam.mp4 are three bars.
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "site/a/cam.mp4", "site/b/cam.mp4", "site/c/cam.mp4"
    ]  # fmt: skip
    _check_readable(fig, [(ax, "x") for ax in fig.axes])


def _pixels(png, rgb, tolerance=12):
    from PIL import Image

    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
    return int((np.abs(a - np.array(rgb)).max(axis=2) <= tolerance).sum())


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"
)
def test_a_busy_report_renders_with_visitors_and_suppressed_bands_visible(tmp_path):
    out = tmp_path / "report.html"
    build_report(_many_windows(tmp_path / "stats.parquet"), out)
    shot = tmp_path / "report.png"
    code, console = _chromium(out, shot, tmp_path / "profile")
    assert code == 0 and console == []
    # Visitors have their own panels (orange bars, tall enough to see), suppressed cells are
    # grey bands, and the faces bars are there too.
    assert _pixels(shot, (0xF5, 0x85, 0x18)) > 5_000
    assert _pixels(shot, (0x72, 0xB7, 0xB2)) > 5_000
    assert _pixels(shot, (0xB0, 0xB0, 0xB0), tolerance=6) > 500  # the bands' hatching


def test_counts_withheld_by_the_table_are_not_shown_as_exact(tmp_path, tiny_checkpoint, t1_rgb):
    from tests import media

    grey = np.full_like(t1_rgb, 96)
    # A camera with six people for a second, then one person (t1's crop) for a second: with
    # run --min-cell-count 5 the lone person's window is written with its counts withheld.
    lone = t1_rgb[:, : t1_rgb.shape[1] // 6]
    media.make_video(tmp_path / "cam.mp4", [t1_rgb, lone, grey], seconds=3, fps=10,
                     size=(640, 480))  # fmt: skip
    stats = tmp_path / "stats.parquet"
    run = CliRunner().invoke(main, [
        "run", str(tmp_path / "cam.mp4"), "--out", str(stats), "--model", str(tiny_checkpoint),
        "--window", "1", "--min-cell-count", "5", "--backend", "eager", "--quiet",
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    table = pq.read_table(stats).to_pandas()
    if not table.faces.isna().any():
        pytest.skip("the crop's face was not detected: nothing was withheld")
    data, page = _build(tmp_path, stats, min_cell_count=0)
    over_time = data.cells["over_time"].frame
    assert over_time.withheld.sum() == 1 and over_time[over_time.withheld].suppressed.all()
    assert f"<td>at least {int(table.faces.sum())}</td>" in page
    assert "1 cell hidden because the stats table withheld some of the counts" in page
