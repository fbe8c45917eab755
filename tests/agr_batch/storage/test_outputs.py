"""`run` never writes over an input, writes its output set whole or not at all, and cleans up
after SIGINT, SIGTERM and SIGKILL."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from agr_batch.cli import main
from agr_batch.samples import photos_dir
from agr_batch.storage.sinks import ParquetStreamWriter, clean_stale_temps, read_metadata
from tests import media
from tests.signals import default_sigint

PHOTO = photos_dir() / "t1.jpg"  # six people


def _run(*args: str, cwd: Path | None = None):
    if cwd is not None:
        old = os.getcwd()
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, ["run", *args, "--quiet", "--backend", "eager"])
    finally:
        if cwd is not None:
            os.chdir(old)


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def cams(tmp_path, t1_rgb):
    """Two small videos of six people."""
    for name in ("cam1.mp4", "cam2.mp4"):
        media.make_video(tmp_path / name, [t1_rgb], seconds=1, size=(640, 480), fps=10)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# outputs that are inputs


def test_input_named_as_output_is_refused_and_untouched(cams, tiny_checkpoint):
    video = cams / "cam1.mp4"
    before = video.read_bytes()
    err = _one_line_error(_run(str(video), "--out", str(video), "--model", str(tiny_checkpoint)))
    assert "--out" in err and "video file name" in err
    assert video.read_bytes() == before


def test_faces_flag_slip_never_destroys_a_video(cams, tiny_checkpoint):
    # scan --faces is a flag; run --faces takes a file name: the natural slip.
    before = _tree(cams)
    result = _run(
        "--faces", str(cams / "cam1.mp4"), str(cams / "cam2.mp4"),
        "--out", str(cams / "s.parquet"), "--model", str(tiny_checkpoint),
    )  # fmt: skip
    err = _one_line_error(result)
    assert "--faces" in err and "faces.parquet" in err
    assert _tree(cams) == before


@pytest.mark.parametrize("spelling", ["hardlink", "symlink-dir", "dotdot"])
def test_output_that_is_an_input_by_another_spelling_is_refused(
    tmp_path, tiny_checkpoint, spelling
):
    # Non-media inputs (the model) are inputs too; compared by identity, not by spelling.
    model = tmp_path / "m" / "model.pt"
    model.parent.mkdir()
    shutil.copy(tiny_checkpoint, model)
    if spelling == "hardlink":
        out = tmp_path / "stats.parquet"
        os.link(model, out)
    elif spelling == "symlink-dir":
        (tmp_path / "alias").symlink_to(model.parent)
        out = tmp_path / "alias" / "model.pt"
    else:
        out = tmp_path / "m" / ".." / "m" / "model.pt"
    before = model.read_bytes()
    err = _one_line_error(_run(str(PHOTO), "--out", str(out), "--model", str(model)))
    assert "refusing to overwrite an input" in err
    assert model.read_bytes() == before


def test_one_file_named_twice_is_refused(tmp_path, tiny_checkpoint):
    (tmp_path / "dir").mkdir()
    result = _run(
        str(PHOTO), "--out", str(tmp_path / "dir" / "s.parquet"), "--faces", "dir/s.parquet",
        "--model", str(tiny_checkpoint), cwd=tmp_path,
    )  # fmt: skip
    err = _one_line_error(result)
    assert "name the same file" in err
    assert not (tmp_path / "dir" / "s.parquet").exists()


def test_output_under_a_file_fails_before_processing(tmp_path, tiny_checkpoint):
    (tmp_path / "afile").write_text("x")
    t0 = time.monotonic()
    result = _run(str(PHOTO), "--out", str(tmp_path / "afile" / "s.parquet"),
                  "--model", str(tiny_checkpoint))  # fmt: skip
    err = _one_line_error(result)
    assert "not a folder" in err and time.monotonic() - t0 < 20


# ---------------------------------------------------------------------------------------------
# the output set: all or nothing


def _old_set(folder: Path) -> dict[str, bytes]:
    for name in ("s.parquet", "f.parquet", "t.parquet"):
        (folder / name).write_bytes(f"old {name}".encode())
    return _tree(folder)


def test_tracks_under_a_file_leaves_the_old_set_intact(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    old = _old_set(out)
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = _run(
        str(PHOTO), "--out", str(out / "s.parquet"), "--faces", str(out / "f.parquet"),
        "--tracks", str(tmp_path / "blocker" / "t.parquet"), "--model", str(tiny_checkpoint),
    )  # fmt: skip
    assert "--tracks" in _one_line_error(result)
    assert _tree(out) == old


def test_write_failure_at_the_end_keeps_the_old_set_and_leaves_no_temp(tmp_path, tiny_checkpoint):
    # A file-size limit makes writes fail as a full disk or a quota does, after all the
    # processing is done.
    out = tmp_path / "out"
    out.mkdir()
    old = _old_set(out)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    proc = subprocess.run(
        [sys.executable, "-m", "agr_batch.cli", "run", str(PHOTO), "--out", str(out / "s.parquet"),
         "--faces", str(out / "f.parquet"), "--tracks", str(out / "t.parquet"),
         "--model", str(tiny_checkpoint), "--backend", "eager", "--quiet"],
        capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no output was replaced" in lines[0], lines
    assert "File too large" in lines[0]
    assert _tree(out) == old  # old set intact, no temporary file left


def test_a_complete_set_belongs_together(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    result = _run(
        str(PHOTO), "--out", str(out / "s.parquet"), "--faces", str(out / "f.parquet"),
        "--tracks", str(out / "t.parquet"), "--model", str(tiny_checkpoint),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tokens = {read_metadata(out / n)["output_set"] for n in ("s.parquet", "f.parquet", "t.parquet")}
    assert len(tokens) == 1
    stats = pq.read_table(out / "s.parquet")
    assert sum(stats.column("faces").to_pylist()) == pq.read_metadata(out / "f.parquet").num_rows
    assert sorted(p.name for p in out.iterdir()) == ["f.parquet", "s.parquet", "t.parquet"]


@pytest.mark.slow
def test_two_runs_at_once_leave_one_consistent_set(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    inputs = {"a": [str(PHOTO)], "b": [str(PHOTO), str(photos_dir() / "Tom_Hanks_54745.png")]}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agr_batch.cli",
                "run",
                *paths,
                "--out",
                str(out / "s.parquet"),
                "--faces",
                str(out / "f.parquet"),
                "--tracks",
                str(out / "t.parquet"),
                "--model",
                str(tiny_checkpoint),
                "--backend",
                "eager",
                "--quiet",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for paths in inputs.values()
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read() if p.stderr else ""
    tokens = {read_metadata(out / n)["output_set"] for n in ("s.parquet", "f.parquet", "t.parquet")}
    assert len(tokens) == 1  # the three files come from the same run
    stats = pq.read_table(out / "s.parquet")
    assert sum(stats.column("faces").to_pylist()) == pq.read_metadata(out / "f.parquet").num_rows
    assert sorted(p.name for p in out.iterdir()) == ["f.parquet", "s.parquet", "t.parquet"]


# ---------------------------------------------------------------------------------------------
# signals


def _start_run(tmp_path: Path, video: Path, model: Path) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agr_batch.cli", "run", str(video), "--out", str(out / "s.parquet"),
         "--faces", str(out / "f.parquet"), "--model", str(model), "--backend", "eager",
         "--sample-fps", "0", "--quiet"],
        stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )  # fmt: skip
    # The temporary files are reserved once the model is loaded, before processing starts.
    deadline = time.monotonic() + 120
    while not list(out.glob(".*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended too early"
        time.sleep(0.05)
    time.sleep(0.5)  # well into processing
    return proc, out


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_remove_temporaries_and_keep_old_outputs(
    tmp_path, tiny_checkpoint, scene_video, sig, code
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "s.parquet").write_bytes(b"previous stats")
    (out / "f.parquet").write_bytes(b"previous faces")
    proc, out = _start_run(tmp_path, scene_video.path, tiny_checkpoint)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    stderr = proc.stderr.read() if proc.stderr else ""
    assert stderr.strip().splitlines() == [
        "agr-batch: error: interrupted; nothing was written under the output names"
    ]
    assert _tree(out) == {"f.parquet": b"previous faces", "s.parquet": b"previous stats"}


def test_sigkill_leaves_temporaries_the_next_run_removes(tmp_path, tiny_checkpoint, scene_video):
    out = tmp_path / "out"
    out.mkdir()
    (out / "s.parquet").write_bytes(b"previous stats")
    proc, out = _start_run(tmp_path, scene_video.path, tiny_checkpoint)
    proc.kill()
    proc.wait(timeout=60)
    assert (out / "s.parquet").read_bytes() == b"previous stats"  # untouched
    stale = sorted(p.name for p in out.glob(".*.tmp"))
    assert len(stale) == 2  # .s.parquet.agr-….tmp and .f.parquet.agr-….tmp
    # Look-alikes that are not ours stay.
    (out / ".s.parquet.notes.tmp").write_text("mine")
    (out / "s.parquet.agr-0123456789ab.tmp").write_text("mine too")
    result = _run(str(PHOTO), "--out", str(out / "s.parquet"), "--faces", str(out / "f.parquet"),
                  "--model", str(tiny_checkpoint))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        ".s.parquet.notes.tmp", "f.parquet", "s.parquet", "s.parquet.agr-0123456789ab.tmp",
    ]  # fmt: skip


def test_a_live_writers_temporary_is_never_removed(tmp_path):
    final = tmp_path / "s.parquet"
    with ParquetStreamWriter(final, pa.schema([("x", pa.int64())]), metadata={}) as w:
        (tmp,) = tmp_path.glob(".s.parquet.agr-*.tmp")
        assert clean_stale_temps(final) == 0 and tmp.exists()  # locked by this writer
        w.write(pa.table({"x": [1, 2, 3]}))
    assert pq.read_table(final).num_rows == 3 and not tmp.exists()


# ---------------------------------------------------------------------------------------------
# row groups


def test_faces_table_is_written_in_few_row_groups(tmp_path, tiny_checkpoint):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(10):
        shutil.copy(PHOTO, folder / f"{i}.jpg")
    faces = tmp_path / "f.parquet"
    result = _run(str(folder), "--out", str(tmp_path / "s.parquet"), "--faces", str(faces),
                  "--model", str(tiny_checkpoint))  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = pq.read_metadata(faces)
    assert meta.num_rows == 60 and meta.num_row_groups == 1  # was one group per track: 60


def test_stream_writer_batches_rows_into_row_groups(tmp_path):
    schema = pa.schema([("x", pa.int64())])
    path = tmp_path / "x.parquet"
    with ParquetStreamWriter(path, schema, metadata={}, row_group_rows=1000) as w:
        for i in range(2500):
            w.write(pa.table({"x": [i]}, schema=schema))
    meta = pq.read_metadata(path)
    assert meta.num_rows == 2500 and meta.num_row_groups == 3
    assert pq.read_table(path).column("x").to_pylist() == list(range(2500))


@pytest.mark.slow
def test_memory_does_not_grow_with_video_length(tmp_path, tiny_checkpoint, t1_rgb):
    def peak_rss_mb(seconds: int) -> float:
        video = media.make_video(
            tmp_path / f"v{seconds}.mp4", [t1_rgb], fps=30, seconds=seconds, size=(640, 480),
            gop=30, preset="ultrafast",
        )  # fmt: skip
        code = (
            "import resource, sys; from agr_batch.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, "run", str(video.path), "--out",
             str(tmp_path / "s.parquet"), "--faces", str(tmp_path / "f.parquet"),
             "--model", str(tiny_checkpoint), "--backend", "eager", "--quiet"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rss, status = proc.stdout.split()
        assert status == "0", proc.stderr
        return int(rss) / 1024

    short, long = peak_rss_mb(5), peak_rss_mb(40)
    assert long - short < 150, (short, long)


# ---------------------------------------------------------------------------------------------
# permissions


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path, tiny_checkpoint, umask):
    """Every file agr-batch and agr-train write gets 0666 less the umask (0664, 0600 here)."""
    from agr_batch.checkpoint import save_checkpoint
    from agr_batch.models import create_model

    want = 0o666 & ~umask
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "t1.jpg")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")  # for the scan's _errors.parquet
    old = os.umask(umask)
    try:
        out = tmp_path / "out"
        result = _run(
            str(photos / "t1.jpg"), "--out", str(out / "stats.parquet"), "--model",
            str(tiny_checkpoint), "--faces", str(out / "faces.parquet"),
            "--tracks", str(out / "tracks.parquet"),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        report = CliRunner().invoke(
            main, ["report", str(out / "stats.parquet"), "--out", str(out / "report.html")]
        )
        assert report.exit_code == 0, report.output
        ds = tmp_path / "ds"
        scan = CliRunner().invoke(
            main,
            ["scan", str(photos), "--out", str(ds), "--model", str(tiny_checkpoint), "--settle",
             "0", "--faces", "--tracks", "--backend", "eager", "--quiet"],
        )  # fmt: skip
        assert scan.exit_code == 1, scan.output  # the broken photo
        save_checkpoint(tmp_path / "ckpt" / "model.pt", create_model("tiny"))
    finally:
        os.umask(old)
    written = [*out.iterdir(), *ds.rglob("*.parquet"), tmp_path / "ckpt" / "model.pt"]
    names = {p.name for p in written}
    assert {"stats.parquet", "faces.parquet", "tracks.parquet", "report.html"} <= names
    assert {"_errors.parquet", "model.pt"} <= names
    assert sum(p.name.startswith("part-") for p in written) == 3  # stats, faces, tracks
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written}
    assert set(modes.values()) == {oct(want)}, modes
