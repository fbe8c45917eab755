from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from agr_batch.cli import main
from agr_batch.commands.run import run
from agr_batch.config import RunConfig
from agr_batch.samples import photos_dir
from agr_batch.storage.sinks import read_metadata


def _run_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["run", *args, "--quiet"], env=env)


@pytest.fixture(scope="module")
def scene_run(scene_video, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("scene_run")
    config = RunConfig(
        inputs=(str(scene_video.path),),
        out=out / "stats.parquet",
        model=tiny_checkpoint,
        faces_out=out / "faces.parquet",
        tracks_out=out / "tracks.parquet",
        sample_fps=2.0,
        window_s=2.0,
        backend="eager",
    )
    summary = run(config)
    return config, summary


def test_every_sampled_frame_finds_the_six_faces(scene_run):
    config, summary = scene_run
    faces = pq.read_table(config.faces_out).to_pandas()
    per_frame = faces.groupby("frame_index").size()
    assert len(per_frame) == 12  # 6 s at 2 fps
    assert (per_frame == 6).all()
    assert summary.frames == 12 and summary.faces == 72
    assert summary.files_ok == 1 and summary.files_failed == 0
    # Sampled by time: frames 0, 15, 30, ... of a 30 fps video.
    assert sorted(per_frame.index) == list(range(0, 180, 15))
    assert sorted(faces.time_s.unique()) == pytest.approx([i * 0.5 for i in range(12)])


def test_six_people_are_six_tracks_classified_from_a_few_faces(scene_run):
    config, summary = scene_run
    tracks = pq.read_table(config.tracks_out).to_pandas()
    assert len(tracks) == 6 and summary.visitors == 6
    assert (tracks.faces == 12).all()
    assert tracks.dwell_s.tolist() == pytest.approx([5.5] * 6)
    assert summary.classified_faces < summary.faces / 3
    faces = pq.read_table(config.faces_out).to_pandas()
    assert faces.groupby("track_id").size().to_dict() == dict.fromkeys(range(6), 12)


def test_stats_invariant_windows_and_metadata(scene_run, tiny_checkpoint):
    config, _ = scene_run
    stats = pq.read_table(config.out).to_pandas()
    faces = pq.read_table(config.faces_out)
    assert stats.faces.sum() == faces.num_rows
    assert stats.visitors.sum() == 6
    assert list(stats.columns) == [
        "source", "window_start", "window_end", "age", "gender", "race",
        "faces", "visitors", "start_time", "people", "footage_s",
    ]  # fmt: skip
    assert sorted(stats.window_start.unique()) == [0.0, 2.0, 4.0]
    assert stats.window_end.max() == pytest.approx(6.0, abs=0.05)
    # Visitors are counted in the window where each track starts.
    assert stats[stats.window_start > 0].visitors.sum() == 0
    # ... while everyone present in a window counts among its people.
    assert (stats.groupby("window_start").people.sum() == 6).all()
    windows = stats.drop_duplicates(["source", "window_start"])
    assert windows.footage_s.tolist() == pytest.approx([2.0, 2.0, 2.0], abs=0.05)
    assert stats.start_time.notna().all()
    meta = read_metadata(config.out)
    from agr_batch.storage.hashing import sha256_file

    assert meta["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
    assert meta["arch"] == "tiny"
    assert meta["detector"]["name"] == "centerface" and meta["detector"]["score_threshold"] == 0.5
    assert meta["detector"]["redetect_s"] == 1.0
    assert meta["sample_fps"] == 2.0 and meta["window_s"] == 2.0
    assert meta["tool"] == "agr-batch" and meta["backend_resolved"] == "eager"
    assert read_metadata(config.faces_out) == meta
    # No pixels anywhere: no binary or list-of-int columns beyond probabilities.
    assert not [f for f in faces.schema if str(f.type).startswith(("binary", "large_binary"))]


def test_per_face_mode_classifies_every_face(scene_video, tiny_checkpoint, tmp_path):
    result = _run_cli(
        str(scene_video.path), "--out", str(tmp_path / "s.parquet"),
        "--model", str(tiny_checkpoint), "--per-face", "--sample-fps", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["faces"] == 36 and summary["classified_faces"] == 36


@pytest.mark.parametrize(("threads", "decoder_threads"), [(4, 2), (1, 1)])
def test_a_cpu_detector_leaves_the_decoder_half_the_cores(
    scene_video, tiny_checkpoint, tmp_path, monkeypatch, threads, decoder_threads
):
    from agr_batch.config import DetectorConfig
    from agr_batch.pipeline import stream

    seen: list[int | None] = []
    original = stream.open_frames

    def spy(*args, decode_threads=None, **kwargs):
        seen.append(decode_threads)
        return original(*args, decode_threads=decode_threads, **kwargs)

    monkeypatch.setattr(stream, "open_frames", spy)
    summary = run(
        RunConfig(
            inputs=(str(scene_video.path),), out=tmp_path / "s.parquet", model=tiny_checkpoint,
            backend="eager", sample_fps=1.0, detector=DetectorConfig(threads=threads),
        )
    )  # fmt: skip
    assert seen == [decoder_threads]
    assert summary.faces == 36  # the same six faces in each of the six sampled frames


def test_mixed_folder_with_bad_files(tmp_path, tiny_checkpoint):
    folder = tmp_path / "camera"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(photos_dir() / "t1.jpg", folder / "t1.jpg")
    shutil.copy(photos_dir() / "Tom_Hanks_54745.png", folder / "sub" / "hanks.png")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not media")
    (folder / "fake.mp4").write_text("this is text, not a video")
    data = (photos_dir() / "t1.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    out = tmp_path / "stats.parquet"
    result = _run_cli(str(folder), "--out", str(out), "--model", str(tiny_checkpoint))
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("agr-batch:")]
    assert len(errors) == 3, result.stderr
    for name in ("empty.mp4", "fake.mp4", "truncated.jpg"):
        assert sum(name in ln for ln in errors) == 1
    assert "Traceback" not in result.stderr
    stats = pq.read_table(out).to_pandas()
    counts = stats.groupby("source").faces.sum()
    assert counts[str(folder / "t1.jpg")] == 6
    assert counts[str(folder / "sub" / "hanks.png")] == 1
    # Images are one window each, with start = end = 0.
    assert (stats.window_start == 0).all() and (stats.window_end == 0).all()
    assert stats.visitors.sum() == 7


def test_json_summary_and_exit_zero(tmp_path, tiny_checkpoint):
    result = _run_cli(
        str(photos_dir() / "t1.jpg"),
        "--out",
        str(tmp_path / "o.parquet"),
        "--model",
        str(tiny_checkpoint),
        "--json",
    )
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["files_ok"] == 1 and summary["faces"] == 6 and summary["visitors"] == 6
    assert set(summary["stage_s"]) >= {"decode", "detect", "align", "classify", "write"}


def test_missing_model_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.delenv("AGR_MODEL", raising=False)
    result = _run_cli(str(photos_dir() / "t1.jpg"), "--out", str(tmp_path / "o.parquet"))
    assert result.exit_code == 2
    assert "agr-train fit" in result.stderr and "AGR_MODEL" in result.stderr


def test_model_from_environment(tmp_path, tiny_checkpoint):
    out = tmp_path / "o.parquet"
    result = _run_cli(
        str(photos_dir() / "t1.jpg"), "--out", str(out), env={"AGR_MODEL": str(tiny_checkpoint)}
    )
    assert result.exit_code == 0, result.stderr
    assert pq.read_table(out).column("faces").to_pylist() != []


def test_corrupt_model_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    result = _run_cli(
        str(photos_dir() / "t1.jpg"), "--out", str(tmp_path / "o.parquet"), "--model", str(bad)
    )
    assert result.exit_code == 2
    assert str(bad) in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_crash_leaves_previous_output_untouched(tmp_path, tiny_checkpoint, monkeypatch):
    out = tmp_path / "stats.parquet"
    faces = tmp_path / "faces.parquet"
    out.write_bytes(b"previous results")
    import agr_batch.stages.classify as classify

    def boom(self, chips):
        raise RuntimeError("simulated crash in the classifier")

    monkeypatch.setattr(classify.Classifier, "predict", boom)
    config = RunConfig(
        inputs=(str(photos_dir() / "t1.jpg"),), out=out, model=tiny_checkpoint, faces_out=faces
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config)
    assert out.read_bytes() == b"previous results"
    assert not faces.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.parquet"]


def test_when_no_input_can_be_read_the_previous_outputs_stay(tmp_path, tiny_checkpoint):
    out, faces = tmp_path / "stats.parquet", tmp_path / "faces.parquet"
    out.write_bytes(b"yesterday's stats")
    faces.write_bytes(b"yesterday's faces")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    result = _run_cli(str(broken), str(tmp_path / "gone.mp4"), "--out", str(out),
                      "--faces", str(faces), "--model", str(tiny_checkpoint))  # fmt: skip
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "broken.mp4" in errors[0] + errors[1]
    assert any("gone.mp4: no such file or directory" in ln for ln in errors)
    assert out.read_bytes() == b"yesterday's stats"
    assert faces.read_bytes() == b"yesterday's faces"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "faces.parquet",
                                                          "stats.parquet"]  # fmt: skip


def test_inputs_that_do_not_exist_fail_before_any_model_is_loaded(tmp_path):
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"\x00" * 100)  # loading it would be a usage error (exit 2)
    summary = run(RunConfig(inputs=(str(tmp_path / "unmounted"),), out=tmp_path / "s.parquet",
                            model=bad_model))  # fmt: skip
    assert summary.files_failed == 1 and summary.files_ok == 0 and summary.outputs == {}
    assert summary.failures == [f"{tmp_path / 'unmounted'}: no such file or directory"]
    assert not (tmp_path / "s.parquet").exists()


def test_empty_input_folder_writes_empty_table(tmp_path, tiny_checkpoint):
    (tmp_path / "in").mkdir()
    out = tmp_path / "o.parquet"
    result = _run_cli(str(tmp_path / "in"), "--out", str(out), "--model", str(tiny_checkpoint))
    assert result.exit_code == 0
    assert pq.read_table(out).num_rows == 0


def test_usage_errors_exit_2(tmp_path, tiny_checkpoint):
    img = str(photos_dir() / "t1.jpg")
    bad_window = _run_cli(
        img, "--out", str(tmp_path / "o.parquet"), "--model", str(tiny_checkpoint), "--window", "0"
    )
    assert bad_window.exit_code == 2 and "--window" in bad_window.stderr
    dup = str(tmp_path / "o.parquet")
    same = _run_cli(img, "--out", dup, "--faces", dup, "--model", str(tiny_checkpoint))
    assert same.exit_code == 2
    unknown = _run_cli(
        img,
        "--out",
        str(tmp_path / "o.parquet"),
        "--model",
        str(tiny_checkpoint),
        "--detector",
        "yolo",
    )
    assert unknown.exit_code == 2 and "unknown detector 'yolo'" in unknown.stderr
    for bad in ("nan", "-1", "inf"):
        redetect = _run_cli(
            img, "--out", str(tmp_path / "o.parquet"), "--model", str(tiny_checkpoint),
            "--redetect-every", bad,
        )  # fmt: skip
        assert redetect.exit_code == 2, bad
        assert "--redetect-every" in redetect.stderr and redetect.stderr.count("\n") == 1
    assert not Path(tmp_path / "o.parquet").exists()


def test_min_cell_count_suppresses_and_reports(tmp_path, tiny_checkpoint, caplog):
    caplog.set_level(logging.WARNING, logger="agr_batch")  # whatever earlier tests set
    out = tmp_path / "o.parquet"
    result = CliRunner().invoke(main, [
        "run", str(photos_dir() / "t1.jpg"), "--out", str(out), "--model", str(tiny_checkpoint),
        "--min-cell-count", "7", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    # Six people in one photo: every cell has fewer than 7 faces, so all are suppressed.
    assert summary["faces"] == 6 and summary["suppressed_faces"] == 6
    # The photo's coverage row remains: processed, its counts withheld (null), not zero.
    (row,) = pq.read_table(out).to_pylist()
    assert row["faces"] is None and row["race"] is None and row["footage_s"] == 0.0
    # ... and the run says why, and which option changes it (a warning: even with --json).
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "everything in" in warning.message and "--min-cell-count 7" in warning.message
    assert "lower --min-cell-count" in warning.message
    assert read_metadata(out)["min_cell_count"] == 7


def test_decoder_choice(tmp_path, tiny_checkpoint):
    from agr_batch.stages.decode.torchcodec import resolve_decoder

    assert resolve_decoder("auto", "cpu") == "pyav"
    assert resolve_decoder("pyav", "cuda") == "pyav"
    with pytest.raises(ValueError, match="unknown decoder"):
        resolve_decoder("ffmpeg", "cpu")
    # Explicit GPU decoding where it cannot run is a usage error naming the fix.
    result = _run_cli(
        str(photos_dir() / "t1.jpg"), "--out", str(tmp_path / "o.parquet"),
        "--model", str(tiny_checkpoint), "--decoder", "torchcodec",
    )  # fmt: skip
    assert result.exit_code == 2 and "torchcodec" in result.stderr


def test_sequence_tracks_people_across_a_folder_of_snapshots(tmp_path, tiny_checkpoint):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    base = 1_700_000_000
    # Three snapshots of the same six people, 2 s apart, named out of time order.
    for name, offset in (("c.jpg", 0), ("a.jpg", 2), ("b.jpg", 4)):
        shutil.copy(photos_dir() / "t1.jpg", folder / name)
        os.utime(folder / name, (base + offset, base + offset))
    independent = _run_cli(str(folder), "--out", str(tmp_path / "i.parquet"),
                           "--model", str(tiny_checkpoint), "--json")  # fmt: skip
    assert json.loads(independent.stdout)["visitors"] == 18
    tracks = tmp_path / "tracks.parquet"
    seq = _run_cli(
        str(folder), "--out", str(tmp_path / "s.parquet"), "--tracks", str(tracks),
        "--model", str(tiny_checkpoint), "--sequence", "--json",
    )  # fmt: skip
    summary = json.loads(seq.stdout)
    assert summary["visitors"] == 6 and summary["faces"] == 18
    t = pq.read_table(tracks).to_pandas()
    assert set(t.source) == {str(folder)}
    assert t.dwell_s.tolist() == pytest.approx([4.0] * 6)


def test_faces_and_tracks_tables_are_sorted(scene_video, tiny_checkpoint, tmp_path):
    # Inputs given out of order, with ties at t = 0 (six people appear together).
    photo = tmp_path / "a_group.jpg"
    shutil.copy(photos_dir() / "t1.jpg", photo)
    config = RunConfig(
        inputs=(str(scene_video.path), str(photo)),
        out=tmp_path / "s.parquet",
        faces_out=tmp_path / "f.parquet",
        tracks_out=tmp_path / "t.parquet",
        model=tiny_checkpoint,
        backend="eager",
    )
    run(config)
    faces = pq.read_table(config.faces_out).to_pandas()
    keys = ["source", "time_s", "x1"]
    assert faces[keys].equals(faces.sort_values(keys)[keys].reset_index(drop=True))
    assert list(faces.source.unique()) == sorted({str(photo), str(scene_video.path)})
    assert faces.groupby("source").time_s.apply(lambda t: t.is_monotonic_increasing).all()
    tracks = pq.read_table(config.tracks_out).to_pandas()
    keys = ["source", "first_time_s"]
    assert tracks[keys].equals(tracks.sort_values(keys)[keys].reset_index(drop=True))
    assert len(tracks) == 12 and len(faces) == 6 * 12 + 6


def test_windows_where_nobody_was_seen_have_rows_with_zero_faces(tmp_path, tiny_checkpoint, t1_rgb):
    from tests import media

    grey = np.full_like(t1_rgb, 96)
    # Six people during the first second, then an empty scene for three seconds.
    media.make_video(tmp_path / "lobby.mp4", [t1_rgb, grey, grey, grey], seconds=4, fps=10,
                     size=(640, 480))  # fmt: skip
    media.make_video(tmp_path / "empty.mp4", [grey], seconds=2.5, fps=10, size=(320, 240))
    Image.fromarray(grey).save(tmp_path / "nobody.png")
    out = tmp_path / "stats.parquet"
    inputs = [str(tmp_path / n) for n in ("lobby.mp4", "empty.mp4", "nobody.png")]
    result = _run_cli(*inputs, "--out", str(out), "--model", str(tiny_checkpoint), "--window", "1")
    assert result.exit_code == 0, result.output
    stats = pq.read_table(out).to_pandas()
    per_window = stats.groupby(["source", "window_start"]).agg(
        faces=("faces", "sum"), footage=("footage_s", "first"), rows=("faces", "size")
    )
    lobby = per_window.loc[inputs[0]]
    assert lobby.faces.tolist()[:1] == [12] and lobby.faces.tolist()[1:] == [0, 0, 0]
    assert lobby.footage.tolist() == pytest.approx([1.0] * 4, abs=0.05)
    empty = stats[stats.source == inputs[1]]
    assert empty.faces.tolist() == [0, 0, 0] and empty.race.isna().all()
    assert empty.footage_s.tolist() == pytest.approx([1.0, 1.0, 0.5], abs=0.05)
    photo = stats[stats.source == inputs[2]]
    assert photo.faces.tolist() == [0] and photo.footage_s.tolist() == [0.0]
