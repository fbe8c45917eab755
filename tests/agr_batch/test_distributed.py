"""The Ray engine against the local one, on a local 2-CPU Ray cluster started by the module."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from agr_batch.checkpoint import CheckpointError
from agr_batch.commands.scan import ScanConfig, scan
from agr_batch.config import RunConfig
from agr_batch.pipeline.local import SourceResult, run
from agr_batch.pipeline.ray.driver import (
    INSTALL_HINT,
    RayUnavailableError,
    merge_segments,
    plan_segments,
    require_ray,
    run_ray,
    scan_ray,
)
from agr_batch.records import Predictions, TrackResult
from agr_batch.samples import photos_dir
from agr_batch.stages.decode.media import MediaFile
from agr_batch.storage.sinks import read_metadata

HAVE_RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(
    not HAVE_RAY, reason=f"ray is not installed (the ray engine's extra: {INSTALL_HINT})"
)
PHOTOS = ("t1.jpg", "Tom_Hanks_54745.png")  # 6 faces and 1


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(scene_video, tmp_path_factory) -> tuple[str, ...]:
    folder = tmp_path_factory.mktemp("ray_inputs")
    broken = folder / "broken.mp4"
    broken.write_bytes(os.urandom(4096))
    photos = tuple(str(photos_dir() / name) for name in PHOTOS)
    return (str(scene_video.path), *photos, str(broken))


def _config(inputs: tuple[str, ...], out: Path, model: Path) -> RunConfig:
    return RunConfig(
        inputs=inputs,
        out=out / "stats.parquet",
        faces_out=out / "faces.parquet",
        tracks_out=out / "tracks.parquet",
        model=model,
        sample_fps=2.0,
        window_s=2.0,
        backend="eager",
    )


class _Errors(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


@pytest.fixture(scope="module")
def local_run(inputs, tiny_checkpoint, tmp_path_factory):
    config = _config(inputs, tmp_path_factory.mktemp("local"), tiny_checkpoint)
    errors = _Errors()
    return config, run(config, on_error=errors), errors


# --- without Ray


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path, tiny_checkpoint):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayUnavailableError) as info:
        require_ray()
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'agr-batch[ray]'" in message
    config = _config(("nothing.mp4",), tmp_path, tiny_checkpoint)
    with pytest.raises(RayUnavailableError):
        run_ray(config)
    assert not config.out.exists()


def test_segments_sit_on_the_sampling_grid():
    video = MediaFile(Path("v.mp4"), "video")
    assert [(s.start, s.end) for s in plan_segments(video, 59.0, segment_s=60, sample_fps=2)] == [
        (None, None)
    ]
    assert plan_segments(video, None, segment_s=60, sample_fps=2)[0].count == 1
    assert plan_segments(video, 600.0, segment_s=0, sample_fps=2)[0].count == 1
    segs = plan_segments(video, 150.0, segment_s=60, sample_fps=2)
    assert [(s.start, s.end) for s in segs] == [(None, 60.0), (60.0, 120.0), (120.0, None)]
    assert [(s.index, s.count) for s in segs] == [(0, 3), (1, 3), (2, 3)]
    # A short remainder joins the last segment; boundaries are whole sampling periods.
    segs = plan_segments(video, 100.0, segment_s=45.2, sample_fps=3)
    assert [(s.start, s.end) for s in segs] == [(None, 136 / 3), (136 / 3, None)]


def _track(track_id: int, t: float) -> TrackResult:
    def probs(k: int) -> np.ndarray:
        return np.full((1, k), 1.0 / k, np.float32)

    return TrackResult(
        source="v.mp4",
        kind="video",
        start_time=None,
        track_id=track_id,
        frame_index=np.array([int(t * 30)], np.int64),
        time_s=np.array([t]),
        boxes=np.zeros((1, 4), np.float32),
        det_scores=np.ones(1, np.float32),
        face_predictions=Predictions(probs(9), probs(2), probs(7)),
        classified=np.ones(1, bool),
        vote=Predictions(probs(9), probs(2), probs(7)),
    )


def test_merged_segments_get_unique_track_ids_and_the_first_error():
    video = MediaFile(Path("v.mp4"), "video")
    parts = [
        SourceResult(video, 4, None, None, (_track(1, 1.0), _track(0, 0.0)), None),
        SourceResult(video, 4, None, None, (), "v.mp4: decoding failed"),
        SourceResult(video, 2, None, None, (_track(0, 4.0),), "v.mp4: truncated"),
    ]
    merged = merge_segments(parts, duration_s=5.0)
    assert [(t.track_id, t.first_time) for t in merged.tracks] == [(0, 0.0), (1, 1.0), (2, 4.0)]
    assert merged.frames == 10 and merged.duration_s == 5.0 and merged.faces == 3
    assert merged.error == "v.mp4: decoding failed"


# --- on a local Ray cluster


def _assert_same_rows(mine, theirs, name):
    """Identical except float jitter: a worker runs ORT and torch with fewer threads, which
    changes the order of floating-point sums (differences around 1e-6)."""
    a, b = mine.to_pandas(), theirs.to_pandas()
    assert list(a.columns) == list(b.columns) and len(a) == len(b), name
    for col in a.columns:
        x, y = a[col], b[col]
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-3, err_msg=f"{name}.{col}")
        elif x.dtype == object and len(x) and isinstance(x.iloc[0], np.ndarray):
            np.testing.assert_allclose(np.stack(x), np.stack(y), atol=1e-4, err_msg=f"{name}.{col}")
        else:
            assert x.tolist() == y.tolist(), f"{name}.{col}"


@requires_ray
def test_ray_run_equals_local_run(ray_cluster, local_run, inputs, tiny_checkpoint, tmp_path):
    local, local_summary, local_errors = local_run
    config = _config(inputs, tmp_path, tiny_checkpoint)
    errors = _Errors()
    summary = run_ray(config, workers=2, segment_s=0, on_error=errors)

    for name in ("out", "faces_out", "tracks_out"):
        mine, theirs = pq.read_table(getattr(config, name)), pq.read_table(getattr(local, name))
        assert mine.schema.remove_metadata() == theirs.schema.remove_metadata(), name
        _assert_same_rows(mine, theirs, name)
    stats = pq.read_table(config.out)
    assert pc.sum(stats["faces"]).as_py() == 6 * 12 + 6 + 1
    assert errors == local_errors and len(errors) == 1 and "broken.mp4" in errors[0]
    for field in ("files_ok", "files_failed", "frames", "faces", "visitors", "classified_faces"):
        assert getattr(summary, field) == getattr(local_summary, field), field
    assert summary.backend == local_summary.backend and summary.device == "cpu"

    meta, local_meta = read_metadata(config.out), read_metadata(local.out)
    assert set(meta) - set(local_meta) == {"engine", "ray"}
    assert meta["engine"] == "ray" and meta["ray"]["workers"] == 2
    assert meta["ray"]["segment_s"] is None
    assert meta["checkpoint_sha256"] == local_meta["checkpoint_sha256"]


@requires_ray
def test_a_model_that_cannot_load_raises_the_workers_error(ray_cluster, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    config = _config((str(photos_dir() / PHOTOS[0]),), tmp_path, bad)
    with pytest.raises(CheckpointError):
        run_ray(config, workers=1)
    assert not config.out.exists()


@requires_ray
def test_split_video_keeps_faces_and_renumbers_tracks(
    ray_cluster, local_run, inputs, tiny_checkpoint, tmp_path
):
    local, _, _ = local_run
    config = _config(inputs, tmp_path, tiny_checkpoint)
    summary = run_ray(config, workers=1, segment_s=2.0)  # the 6 s video in three segments
    meta = read_metadata(config.out)
    assert meta["ray"]["segment_s"] == 2.0

    def by_source(path: Path, column: str) -> dict[str, int]:
        t = pq.read_table(path).group_by("source").aggregate([(column, "sum")])
        return dict(zip(t["source"].to_pylist(), t[f"{column}_sum"].to_pylist(), strict=True))

    assert by_source(config.out, "faces") == by_source(local.out, "faces")
    # The same frames and boxes: splitting changes tracks, never what is detected.
    keys = ["source", "frame_index", "time_s", "x1", "y1", "x2", "y2", "det_score"]
    mine = pq.read_table(config.faces_out).select(keys).sort_by([(k, "ascending") for k in keys])
    theirs = pq.read_table(local.faces_out).select(keys).sort_by([(k, "ascending") for k in keys])
    assert mine.equals(theirs)
    # Six people are in view at both boundaries: each segment has its own six tracks.
    video = str(inputs[0])
    tracks = pq.read_table(config.tracks_out).to_pandas()
    ids = tracks[tracks.source == video].track_id.tolist()
    assert sorted(ids) == list(range(18))
    first = tracks[tracks.source == video].sort_values("track_id").first_time_s.tolist()
    assert first == pytest.approx([0.0] * 6 + [2.0] * 6 + [4.0] * 6)
    faces = pq.read_table(config.faces_out).to_pandas()
    assert faces[faces.source == video].groupby("track_id").size().tolist() == [4] * 18
    assert summary.visitors == 18 + 6 + 1 and summary.faces == 79
    assert summary.files_failed == 1


@requires_ray
def test_scan_on_ray_commits_the_same_dataset(ray_cluster, scene_video, tiny_checkpoint, tmp_path):
    root = tmp_path / "root"
    (root / "cam").mkdir(parents=True)
    shutil.copy(scene_video.path, root / "cam" / "scene.mp4")
    shutil.copy(photos_dir() / "t1.jpg", root / "cam" / "group.jpg")
    (root / "cam" / "broken.mp4").write_bytes(os.urandom(4096))
    old = time.time() - 3600
    for p in (root / "cam").iterdir():
        os.utime(p, (old, old))

    def config(dataset: Path) -> ScanConfig:
        return ScanConfig(
            root=root,
            dataset=dataset,
            model=tiny_checkpoint,
            settle_s=0,
            backend="eager",
            window_s=2.0,
        )

    local = scan(config(tmp_path / "local"))
    mine = _scan_on_ray(config(tmp_path / "ray"))
    for field in ("processed", "failed", "faces"):
        assert getattr(mine, field) == getattr(local, field), field
    assert (mine.processed, mine.failed, mine.faces) == (2, 1, 78)

    def faces(dataset: Path) -> dict[str, int]:
        t = pads.dataset(dataset, partitioning="hive").to_table()
        t = t.group_by("source").aggregate([("faces", "sum")])
        return dict(zip(t["source"].to_pylist(), t["faces_sum"].to_pylist(), strict=True))

    assert faces(tmp_path / "ray") == faces(tmp_path / "local")
    part = next((tmp_path / "ray").glob("date=*/part-*.parquet"))
    assert read_metadata(part)["engine"] == "ray"
    again = _scan_on_ray(config(tmp_path / "ray"))  # nothing to do: no actor starts
    assert again.processed == 0 and again.unchanged == 3


def _scan_on_ray(config: ScanConfig):
    return scan_ray(config, workers=1, segment_s=2.0)


def test_cli_engine_ray_without_ray_exits_2(monkeypatch, tmp_path, tiny_checkpoint):
    from click.testing import CliRunner

    from agr_batch.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path), "--out", str(tmp_path / "o.parquet"),
         "--model", str(tiny_checkpoint), "--engine", "ray", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "agr-batch[ray]" in result.stderr
