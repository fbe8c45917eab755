"""The Ray executor against the local one, on a local 2-CPU Ray cluster started by the module."""

from __future__ import annotations

import importlib.util
import json
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
from agr_batch.commands.run import run
from agr_batch.commands.scan import ScanConfig, scan
from agr_batch.config import RunConfig
from agr_batch.pipeline import SourceResult, create_pipeline
from agr_batch.pipeline.ray import INSTALL_HINT, RayUnavailableError, require_ray
from agr_batch.pipeline.stitch import stitch_segments
from agr_batch.pipeline.work import plan_segments, segment_overlap_s
from agr_batch.records import Predictions, TrackResult
from agr_batch.samples import photos_dir, write_scene_video
from agr_batch.stages.decode.media import MediaFile
from agr_batch.storage.sinks import read_metadata

HAVE_RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(
    not HAVE_RAY, reason=f"ray is not installed (the ray executor's extra: {INSTALL_HINT})"
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


def run_ray(config: RunConfig, *, on_error=None, **options):
    """``run`` on a Ray pipeline, as the command line does with ``--executor ray``."""
    with create_pipeline(config, executor="ray", **options) as pipeline:
        return run(config, pipeline=pipeline, on_error=_Errors() if on_error is None else on_error)


def scan_ray(config: ScanConfig, **options):
    with create_pipeline(config, executor="ray", **options) as pipeline:
        return scan(config, pipeline=pipeline)


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


def test_segments_overlap_on_the_sampling_grid():
    video = MediaFile(Path("v.mp4"), "video")
    # Twice the effective gap (max(3 s, 2.5 samples)), on the 2 fps grid.
    overlap = segment_overlap_s(max_gap_s=3.0, gap_samples=2.5, sample_fps=2, keyframes_only=False)
    assert overlap == 6.0
    short = segment_overlap_s(max_gap_s=0.5, gap_samples=2.5, sample_fps=3, keyframes_only=False)
    assert short == 2.0  # at least 2 s
    segs = plan_segments(video, 30.0, segment_s=10, sample_fps=2, overlap_s=overlap)
    spans = [(s.decode_start, s.decode_end) for s in segs]
    assert spans == [(None, 16.0), (4.0, 26.0), (14.0, None)]
    assert [s.owns(9.99) for s in segs] == [True, False, False]
    assert [s.owns(9.9995) for s in segs] == [False, True, False]  # the decoders' tolerance
    assert [s.owns(10.0) for s in segs] == [False, True, False]


def test_segments_sit_on_the_sampling_grid():
    video = MediaFile(Path("v.mp4"), "video")
    assert [(s.start, s.end) for s in plan_segments(video, 59.0, segment_s=60, sample_fps=2)] == [
        (None, None)
    ]  # fmt: skip
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
    windows = plan_segments(video, 6.0, segment_s=2, sample_fps=2)
    parts = [
        SourceResult(windows[0], 4, None, None, (_track(1, 1.0), _track(0, 0.0)), None),
        SourceResult(windows[1], 4, None, None, (), "v.mp4: decoding failed"),
        SourceResult(windows[2], 2, None, None, (_track(0, 4.0),), "v.mp4: truncated"),
    ]
    merged = stitch_segments(parts, per_face=False, duration_s=5.0)
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
    assert set(meta) - set(local_meta) == {"executor", "ray"}
    assert meta["executor"] == "ray" and meta["ray"]["workers"] == 2
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
def test_split_video_keeps_faces_and_visitors_whole(
    ray_cluster, local_run, inputs, tiny_checkpoint, tmp_path
):
    local, local_summary, _ = local_run
    config = _config(inputs, tmp_path, tiny_checkpoint)
    summary = run_ray(config, workers=1, segment_s=2.0)  # the 6 s video in three segments
    meta = read_metadata(config.out)
    assert meta["ray"]["segment_s"] == 2.0

    def by_source(path: Path, column: str) -> dict[str, int]:
        t = pq.read_table(path).group_by("source").aggregate([(column, "sum")])
        return dict(zip(t["source"].to_pylist(), t[f"{column}_sum"].to_pylist(), strict=True))

    assert by_source(config.out, "faces") == by_source(local.out, "faces")
    assert by_source(config.out, "visitors") == by_source(local.out, "visitors")
    # The same frames and boxes, each face once: overlaps only link tracks.
    keys = ["source", "frame_index", "time_s", "x1", "y1", "x2", "y2", "det_score"]
    mine = pq.read_table(config.faces_out).select(keys)
    assert mine.equals(pq.read_table(local.faces_out).select(keys))
    # Six people are in view at both boundaries: stitched, they are six tracks again, with
    # the ids and faces of a whole-file pass.
    video = str(inputs[0])
    tracks = pq.read_table(config.tracks_out).to_pandas()
    local_tracks = pq.read_table(local.tracks_out).to_pandas()
    cols = ["source", "track_id", "first_time_s", "last_time_s", "faces"]
    assert tracks[cols].equals(local_tracks[cols])
    assert sorted(tracks[tracks.source == video].track_id) == list(range(6))
    faces = pq.read_table(config.faces_out).to_pandas()
    assert faces[faces.source == video].groupby("track_id").size().tolist() == [12] * 6
    assert summary.visitors == local_summary.visitors == 6 + 6 + 1 and summary.faces == 79
    assert summary.frames == local_summary.frames
    assert summary.files_failed == 1


@requires_ray
def test_cli_segments_on_a_longer_video_keep_the_visitors(ray_cluster, tiny_checkpoint, tmp_path):
    """20 s of six people cut into 5 s segments (three boundaries) by two workers."""
    from click.testing import CliRunner

    from agr_batch.cli import main

    video = write_scene_video(tmp_path / "long.mp4", seconds=20.0, size=(640, 360), sway_px=60)

    def cli(*extra: str) -> dict:
        out = tmp_path / ("-".join(extra) or "local")
        result = CliRunner().invoke(
            main,
            ["run", str(video.path), "--out", str(out / "s.parquet"),
             "--faces", str(out / "f.parquet"), "--model", str(tiny_checkpoint),
             "--backend", "eager", "--window", "5", "--json", *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return {**json.loads(result.stdout), "faces_table": pq.read_table(out / "f.parquet")}

    local = cli()
    ray = cli("--executor", "ray", "--workers", "2", "--segment", "5")
    assert local["visitors"] == 6
    assert abs(ray["visitors"] - local["visitors"]) <= 1
    assert ray["faces"] == local["faces"] == 6 * 40 and ray["frames"] == local["frames"] == 40
    keys = ["source", "frame_index", "time_s", "x1", "y1", "x2", "y2"]
    assert ray["faces_table"].select(keys).equals(local["faces_table"].select(keys))


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
    assert read_metadata(part)["executor"] == "ray"
    again = _scan_on_ray(config(tmp_path / "ray"))  # nothing to do: no actor starts
    assert again.processed == 0 and again.unchanged == 3


def _scan_on_ray(config: ScanConfig):
    return scan_ray(config, workers=1, segment_s=2.0)


@pytest.mark.parametrize("flag", ["--executor", "--engine"])
def test_cli_executor_ray_without_ray_exits_2(monkeypatch, tmp_path, tiny_checkpoint, flag):
    from click.testing import CliRunner

    from agr_batch.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path), "--out", str(tmp_path / "o.parquet"),
         "--model", str(tiny_checkpoint), flag, "ray", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "agr-batch[ray]" in result.stderr


def test_cli_engine_is_a_hidden_deprecated_alias(tmp_path, tiny_checkpoint):
    from click.testing import CliRunner

    from agr_batch.cli import main

    assert "--engine" not in CliRunner().invoke(main, ["run", "--help"]).output
    result = CliRunner().invoke(
        main,
        ["run", str(photos_dir() / "t1.jpg"), "--out", str(tmp_path / "o.parquet"),
         "--model", str(tiny_checkpoint), "--backend", "eager", "--engine", "local"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if "--engine is deprecated" in ln]
    assert len(warnings) == 1 and "--executor local" in warnings[0]
