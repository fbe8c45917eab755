"""scan counts each recording once whatever the path, keeps recordings whose name is reused,
and never leaves silent gaps when its options change."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pyarrow.dataset as pads
import pytest
from click.testing import CliRunner

from agr_batch.cli import main
from agr_batch.commands.scan import ScanConfig, ScanOptionsError, scan
from agr_batch.commands.scan.fileid import FileStat, birth_time_ns, file_stat
from agr_batch.commands.scan.plan import same_recording
from agr_batch.commands.scan.state import FileRow, State
from agr_batch.storage.hashing import hash_file
from tests.agr_batch.commands.test_scan import (
    GROUP,
    SINGLE,
    _camera,
    _config,
    _faces_by_source,
    _jpeg,
)


def _faces_rows(dataset) -> int:
    files = list((dataset / "_faces").glob("date=*/part-*.parquet"))
    return pads.dataset(files).count_rows() if files else 0


def _status(dataset) -> dict:
    result = CliRunner().invoke(main, ["status", str(dataset), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _old(path):
    os.utime(path, (time.time() - 600, time.time() - 600))


# ---------------------------------------------------------------------------------------------
# the same files through another path


@pytest.mark.parametrize("spelling", ["symlink", "dotdot", "relative"])
def test_same_folder_through_another_path_is_the_same_files(
    tmp_path, tiny_checkpoint, spelling, monkeypatch
):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    first = scan(_config(root, ds, tiny_checkpoint))
    assert first.processed == 3
    if spelling == "symlink":
        (tmp_path / "link").symlink_to(root)
        other = tmp_path / "link"
    elif spelling == "dotdot":
        other = root / "cam1" / ".." / ".." / "root"
    else:
        monkeypatch.chdir(tmp_path)
        other = root.relative_to(tmp_path)
    again = scan(_config(other, ds, tiny_checkpoint))
    assert again.processed == 0 and again.renamed == 0 and again.unchanged == 3
    assert _faces_by_source(ds) == expected  # not doubled
    st = _status(ds)
    assert st["files_ok"] == 3 and st["faces"] == 2 * GROUP + SINGLE


def test_dataset_inside_the_root_is_refused_whatever_the_spelling(tmp_path, tiny_checkpoint):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "link").symlink_to(root)
    for ds in (tmp_path / "link" / "ds", root / "x" / ".." / "ds"):
        with pytest.raises(ValueError, match="must not be inside"):
            ScanConfig(root=root, dataset=ds, model=tiny_checkpoint)
    with pytest.raises(ValueError, match="is inside --out"):
        ScanConfig(root=root / "sub", dataset=tmp_path / "link", model=tiny_checkpoint)


# ---------------------------------------------------------------------------------------------
# reused names


def test_name_reused_after_the_old_recording_was_deleted_keeps_both(tmp_path, tiny_checkpoint):
    # A loop recorder deletes its oldest file and records anew under the same name. The
    # inode number is usually reused at once; the birth time tells the files apart.
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root, n_group=2, n_single=0)
    scan(_config(root, ds, tiny_checkpoint))
    target = root / "cam1" / "group_0.jpg"
    target.unlink()
    _jpeg(target, "Tom_Hanks_54745.png", 7)  # a new recording, one face
    s = scan(_config(root, ds, tiny_checkpoint))
    assert s.processed == 1
    faces = _faces_by_source(ds)
    assert faces[str(target)] == GROUP + SINGLE  # the old recording's rows are kept
    assert sum(faces.values()) == sum(expected.values()) + SINGLE
    st = _status(ds)
    assert st["earlier_recordings"] == 1 and st["files_ok"] == 2
    assert st["faces"] == 2 * GROUP + SINGLE
    assert scan(_config(root, ds, tiny_checkpoint)).processed == 0  # and counted once


def test_name_reused_by_rename_over_the_old_file_keeps_both(tmp_path, tiny_checkpoint):
    # Cameras and rsync write a temporary file and rename it over the old name.
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root, n_group=1, n_single=0)
    scan(_config(root, ds, tiny_checkpoint))
    target = root / "cam1" / "group_0.jpg"
    _jpeg(root / "incoming.tmp", "Tom_Hanks_54745.png", 9)
    os.replace(root / "incoming.tmp", target)
    scan(_config(root, ds, tiny_checkpoint))
    assert _faces_by_source(ds) == {str(target): GROUP + SINGLE}


def test_name_back_after_a_scan_saw_it_missing_is_a_new_recording(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root, n_group=1, n_single=0)
    scan(_config(root, ds, tiny_checkpoint))
    target = root / "cam1" / "group_0.jpg"
    hidden = root / ".aside"
    os.replace(target, hidden)  # gone for one scan (same inode and birth time when back)
    assert scan(_config(root, ds, tiny_checkpoint)).processed == 0
    assert _status(ds)["vanished"] == 1
    os.replace(hidden, target)
    with open(target, "r+b") as f:  # and written to while away
        f.seek(2000)
        f.write(b"\x00" * 64)
    _old(target)
    scan(_config(root, ds, tiny_checkpoint))
    assert _faces_by_source(ds)[str(target)] > GROUP  # kept, plus the new recording's


def test_same_content_back_under_its_name_is_not_new_data(tmp_path, tiny_checkpoint):
    # A folder unmounted for one scan and mounted again: nothing is reprocessed.
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    scan(_config(root, ds, tiny_checkpoint))
    aside = tmp_path / "aside"
    os.replace(root / "cam1", aside)
    assert scan(_config(root, ds, tiny_checkpoint)).processed == 0
    os.replace(aside, root / "cam1")
    s = scan(_config(root, ds, tiny_checkpoint))
    assert s.processed == 0
    assert _faces_by_source(ds) == expected
    assert _status(ds)["vanished"] == 0


def test_file_grown_in_place_replaces_its_rows(tmp_path, tiny_checkpoint, t1_rgb):
    # The same file object written to again (a recording that was still growing): one
    # recording, its rows replaced.
    from tests import media

    root, ds = tmp_path / "root", tmp_path / "ds"
    clip = root / "cam" / "rec.mp4"
    clip.parent.mkdir(parents=True)
    media.make_video(tmp_path / "short.mp4", [t1_rgb], seconds=1, size=(640, 480), fps=10)
    media.make_video(tmp_path / "long.mp4", [t1_rgb], seconds=2, size=(640, 480), fps=10)
    clip.write_bytes((tmp_path / "short.mp4").read_bytes())
    if birth_time_ns(clip) is None:
        pytest.skip("this filesystem keeps no birth times (the prefix rule applies)")
    _old(clip)
    scan(_config(root, ds, tiny_checkpoint, sample_fps=2.0))
    with open(clip, "r+b") as f:  # same inode and birth time, new content
        f.write((tmp_path / "long.mp4").read_bytes())
    _old(clip)
    s = scan(_config(root, ds, tiny_checkpoint, sample_fps=2.0))
    assert s.processed == 1
    assert _faces_by_source(ds) == {str(clip): 4 * GROUP}  # 2 s at 2 fps, not added to 1 s
    assert _status(ds)["earlier_recordings"] == 0


# ---------------------------------------------------------------------------------------------
# options that change the tables


def test_faces_asked_for_later_are_backfilled(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    scan(_config(root, ds, tiny_checkpoint))
    assert _faces_rows(ds) == 0
    s = scan(_config(root, ds, tiny_checkpoint, write_faces=True))
    assert s.processed == 3 and s.backfilled == 3
    assert _faces_rows(ds) == sum(expected.values())
    assert _faces_by_source(ds) == expected  # stats replaced, not added
    assert scan(_config(root, ds, tiny_checkpoint, write_faces=True)).processed == 0


def test_scan_without_faces_on_a_faces_dataset_is_refused(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    scan(_config(root, ds, tiny_checkpoint, write_faces=True))
    target = root / "cam1" / "group_0.jpg"
    _jpeg(target, "t1.jpg", 55)  # changed: would be reprocessed without its faces part
    with pytest.raises(ScanOptionsError, match="pass --faces"):
        scan(_config(root, ds, tiny_checkpoint))
    result = CliRunner().invoke(
        main, ["scan", str(root), "--out", str(ds), "--model", str(tiny_checkpoint),
               "--settle", "0", "--backend", "eager"],
    )  # fmt: skip
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--faces" in result.stderr
    assert _faces_rows(ds) == sum(expected.values())  # nothing lost


def test_other_processing_options_are_refused_with_the_difference(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root, n_group=1, n_single=0)
    scan(_config(root, ds, tiny_checkpoint))
    _jpeg(root / "cam2" / "new.jpg", "t1.jpg", 3)
    with pytest.raises(ScanOptionsError, match=r"sample_fps 2\.0 -> 1\.0"):
        scan(_config(root, ds, tiny_checkpoint, sample_fps=1.0))
    with pytest.raises(ScanOptionsError, match="window_s"):
        scan(_config(root, ds, tiny_checkpoint, window_s=10.0))
    with pytest.raises(ScanOptionsError, match=r"align_windows None -> 'clock'"):
        scan(_config(root, ds, tiny_checkpoint, align_windows="clock", tz="UTC"))
    with pytest.raises(ScanOptionsError, match="model_sha256"):
        other = tmp_path / "other.pt"
        other.write_bytes(tiny_checkpoint.read_bytes() + b"x")
        scan(_config(root, ds, other))
    assert scan(_config(root, ds, tiny_checkpoint)).processed == 1  # same options: fine


def test_options_are_recorded_per_file(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root, n_group=1, n_single=1)
    scan(_config(root, ds, tiny_checkpoint, write_tracks=True))
    state = State(ds / "_state", read_only=True)
    try:
        rows = list(state.files().values())
        settings = state.settings()
    finally:
        state.close()
    assert {r.tables for r in rows} == {("stats", "tracks")}
    (sig,) = {r.options for r in rows}
    assert settings[sig]["sample_fps"] == 2.0 and len(settings[sig]["model_sha256"]) == 64


def test_recordings_that_cannot_be_backfilled_are_listed(tmp_path, tiny_checkpoint, caplog):
    root, ds = tmp_path / "root", tmp_path / "ds"
    _camera(root)
    scan(_config(root, ds, tiny_checkpoint))
    (root / "cam2" / "single_0.jpg").unlink()  # its recording stays, without faces parts
    s = scan(_config(root, ds, tiny_checkpoint, write_faces=True))
    assert s.backfilled == 2
    assert "1 recording(s) whose files are gone or replaced have no faces parts" in caplog.text
    st = _status(ds)
    assert st["missing_parts"] == {"faces": 1} and st["vanished"] == 1
    text = CliRunner().invoke(main, ["status", str(ds)]).stdout
    assert "gaps         1 recording(s) without faces parts" in text


V1_FILES = """CREATE TABLE files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('ok', 'failed')), error TEXT,
    parts TEXT NOT NULL DEFAULT '[]', frames INTEGER NOT NULL DEFAULT 0,
    faces INTEGER NOT NULL DEFAULT 0, visitors INTEGER NOT NULL DEFAULT 0,
    processed_at TEXT NOT NULL, run_id INTEGER)"""
V1_COLUMNS = (
    "path, size, mtime_ns, sha256, status, error, parts, frames, faces, visitors, processed_at, "
    "run_id"
)


def _downgrade_to_v1(ds, rename=lambda p: p) -> None:
    """Turn a dataset's state into what an older agr-batch wrote (paths as typed)."""
    import sqlite3

    db = sqlite3.connect(ds / "_state" / "state.sqlite", isolation_level=None)
    rows = db.execute(f"SELECT {V1_COLUMNS} FROM files").fetchall()
    db.execute("DROP TABLE files")
    db.execute("DROP TABLE settings")
    db.execute(V1_FILES)
    db.executemany(
        f"INSERT INTO files ({V1_COLUMNS}) VALUES ({', '.join('?' * 12)})",
        [(rename(r[0]), *r[1:]) for r in rows],
    )
    db.execute("PRAGMA user_version = 0")
    db.close()


def test_state_of_an_older_version_is_migrated_without_reprocessing(tmp_path, tiny_checkpoint):
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    scan(_config(root, ds, tiny_checkpoint, write_tracks=True))
    _downgrade_to_v1(ds)
    s = scan(_config(root, ds, tiny_checkpoint, write_tracks=True))
    assert s.processed == 0 and s.unchanged == 3
    assert _faces_by_source(ds) == expected
    state = State(ds / "_state", read_only=True)
    try:
        rows = list(state.files().values())
    finally:
        state.close()
    assert all(r.ino is not None and r.prefix_sha256 for r in rows)  # identities recorded
    # Without --tracks it is refused: the old rows' parts show the dataset has tracks.
    with pytest.raises(ScanOptionsError, match="--tracks"):
        scan(_config(root, ds, tiny_checkpoint))


def test_dataset_recorded_through_a_symlink_by_an_older_version_is_not_doubled(
    tmp_path, tiny_checkpoint
):
    # Older versions keyed files by the root as typed: a dataset built through `link` holds
    # link/... paths. Scanning the real folder renames those rows instead of adding new ones.
    root, ds = tmp_path / "root", tmp_path / "ds"
    expected = _camera(root)
    (tmp_path / "link").symlink_to(root)
    scan(_config(root, ds, tiny_checkpoint))
    _downgrade_to_v1(ds, rename=lambda p: p.replace(str(root), str(tmp_path / "link")))
    s = scan(_config(tmp_path / "link", ds, tiny_checkpoint))
    assert s.processed == 0 and s.renamed == 3
    assert _faces_by_source(ds) == expected
    assert _status(ds)["files_ok"] == 3


def test_without_birth_times_a_recording_that_grew_is_the_same_one(tmp_path):
    # NFS and some FUSE mounts keep no birth time: then the same inode is the same
    # recording only if it still begins as it did.
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"A" * 100_000)
    sha, prefix, length = hash_file(path)
    st = file_stat(path)
    row = FileRow(
        path=str(path), size=st.size, mtime_ns=st.mtime_ns, sha256=sha, status="ok",
        dev=st.dev, ino=st.ino, btime_ns=None, prefix_sha256=prefix, prefix_len=length,
    )  # fmt: skip
    with open(path, "ab") as f:  # it grew
        f.write(b"B" * 5000)
    grown = dataclasses.replace(file_stat(path), btime_ns=None)
    assert same_recording(row, grown, str(path))
    with open(path, "r+b") as f:  # same inode, another beginning: another recording
        f.write(b"C" * 10)
    assert not same_recording(row, dataclasses.replace(file_stat(path), btime_ns=None), str(path))
    # With birth times they decide; a recording seen missing is never the same again.
    if birth_time_ns(path) is not None:
        other_birth = dataclasses.replace(row, btime_ns=1)
        assert not same_recording(other_birth, file_stat(path), str(path))
    assert not same_recording(dataclasses.replace(row, vanished_at="x"), grown, str(path))
    other_inode = FileStat(**{**vars(grown), "ino": grown.ino + 1})
    assert not same_recording(row, other_inode, str(path))
