"""CPU levers side by side: each one alone against the default, with faces and visitors.

On a generated 60 s 1080p30 video of six people (and a 720p one), all in one run: decode-only
(every frame decoded as before, and with exact skipping; the sampled ones converted), the
default run (`compact`, 2 fps, per-track voting), the default as it was before (every frame
decoded, the decoder on every core, onnxruntime fp32 detector, every frame searched whole),
then one lever at a time (detector runtime, whole-frame search interval, searching ahead,
decoding, decoder threads, int8, detector resolution, --skip-nonref, keyframes only) and the
naive loop (OpenCV reads every frame, detects, classifies one face at a time). Faces and
visitors are printed for every row, because a faster run that loses people is not faster;
the labels of the default are compared face by face with the default before. A floor row
adds up what decoding and the face step cost alone on one thread each (CPU seconds, nothing
waiting) and spreads it over every core: no run of the default can be faster. Prints a
Markdown table.

    .venv/bin/python benchmarks/cpu_levers.py [--seconds 60] [--only-1080p] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import agr_batch.pipeline.faces as faces_module
import agr_batch.pipeline.stream as stream_module
import agr_batch.stages.decode.video as video_module
from agr_batch.commands.bench import checkpoint_for
from agr_batch.commands.run import run
from agr_batch.config import DetectorConfig, RunConfig
from agr_batch.samples import write_scene_video
from agr_batch.stages.decode.media import frames

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import naive_loop

CACHE = Path(__file__).resolve().parent / ".cache"


def face_step_alone(video: Path, cache_dir: Path) -> tuple[float, float]:
    """(wall s, CPU s) of the default face step (detect, align, track) on frames decoded first.

    With nothing else running: what detection costs the run at the least, for the floor
    below.
    """
    from agr_batch.pipeline.faces import FaceStep
    from agr_batch.stages.detect import build_detector
    from agr_batch.stages.detect.regions import RegionPolicy
    from agr_batch.stages.preprocess import PreprocessSpec
    from agr_batch.stages.track import TrackerConfig

    # One detector thread and no look-ahead: the work itself, without threads that wait
    # (spinning) or two searches at once (which the floor's sum over the cores assumes).
    config = DetectorConfig(threads=1)
    detector = build_detector(config, device="cpu", cache_dir=cache_dir)
    step = FaceStep(
        detector, PreprocessSpec(input_size=(128, 128)), TrackerConfig(),
        regions=RegionPolicy(redetect_s=config.redetect_s),
    )  # fmt: skip
    decoded = list(frames(video, sample_fps=2.0))
    for frame in decoded[:10]:  # first calls compile the network for the frame size
        step.step(frame)
    step.start_source()
    c0, t0 = os.times(), time.perf_counter()
    for frame in decoded:
        step.step(frame)
    c1 = os.times()
    return time.perf_counter() - t0, (c1.user - c0.user) + (c1.system - c0.system)


def decode_only(video: Path, **kw: object) -> tuple[float, float]:
    """(wall s, CPU s) of decoding with the run's sampling and nothing else."""
    c0, t0 = os.times(), time.perf_counter()
    for _ in frames(video, **kw):  # type: ignore[arg-type]
        pass
    c1 = os.times()
    return time.perf_counter() - t0, (c1.user - c0.user) + (c1.system - c0.system)


@contextlib.contextmanager
def every_frame_decoded() -> Any:
    """The decoder as before exact skipping: every frame decoded, sampled or not."""
    original = video_module._exact_skip_applies
    video_module._exact_skip_applies = lambda container, stream: False
    try:
        yield
    finally:
        video_module._exact_skip_applies = original


@contextlib.contextmanager
def no_lookahead() -> Any:
    """The face step as before: whole-frame searches in turn with the tiles, one detector."""
    original = faces_module.FaceStep.__init__

    def alone(self: Any, *args: Any, lookahead: Any = None, **kwargs: Any) -> None:
        original(self, *args, **kwargs)

    faces_module.FaceStep.__init__ = alone  # type: ignore[method-assign]
    try:
        yield
    finally:
        faces_module.FaceStep.__init__ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def decoder_on_every_core() -> Any:
    """The decoder's threads as before: FFmpeg's choice, not half the cores."""
    original = stream_module.open_frames

    def every_core(*args: Any, **kwargs: Any) -> Any:
        kwargs["decode_threads"] = None
        return original(*args, **kwargs)

    stream_module.open_frames = every_core  # type: ignore[assignment]
    try:
        yield
    finally:
        stream_module.open_frames = original  # type: ignore[assignment]


@contextlib.contextmanager
def as_before(full: bool, every_core: bool) -> Any:
    with contextlib.ExitStack() as stack:
        if full:
            stack.enter_context(every_frame_decoded())
        if every_core:
            stack.enter_context(decoder_on_every_core())
        yield


def one_run(video: Path, ckpt: Path, out: Path, **kw: object) -> tuple[float, float, Any]:
    c0 = os.times()
    config = RunConfig(
        inputs=(str(video),), out=out / "s.parquet", faces_out=out / "faces.parquet",
        model=ckpt, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    summary = run(config)
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return summary.wall_s - summary.build_s, cpu, summary


def agreement(a: Path, b: Path) -> str:
    """Share of faces (paired by frame and nearest box) with the same labels in two runs."""
    fa, fb = pd.read_parquet(a), pd.read_parquet(b)
    fa["face"] = range(len(fa))
    pairs = fa.merge(fb, on="frame_index", suffixes=("_a", "_b"))
    pairs["d"] = (pairs.x1_a - pairs.x1_b).abs() + (pairs.y1_a - pairs.y1_b).abs()
    pairs = pairs[pairs.d <= 16].sort_values("d").drop_duplicates("face")
    same = {h: (pairs[f"{h}_a"] == pairs[f"{h}_b"]).mean() for h in ("age", "gender", "race")}
    return f"{len(pairs)}/{len(fa)} faces paired; same " + ", ".join(
        f"{h} {v:.1%}" for h, v in same.items()
    )


ONNX = DetectorConfig(backend="onnxruntime")
WAS = DetectorConfig(backend="onnxruntime", redetect_s=0)  # every frame searched whole


def bench_video(video: Path, seconds: float, ckpt: Path, work: Path, repeat: int) -> list[str]:
    rows = []
    # One untimed run first: the first pipeline of a process pays one-off costs (library
    # initialisation, first inferences) that would otherwise land on the first row (~1 s).
    warm = work / f"{video.stem}-warm-up"
    warm.mkdir()
    one_run(video, ckpt, warm, cache_dir=work / "cache")
    one_run(video, ckpt, warm, cache_dir=work / "cache", detector=ONNX)

    def timed(
        name: str, full: bool, kw: dict[str, object], every_core: bool = False,
        alone: bool = False,
    ) -> tuple[float, float, Any, Path]:  # fmt: skip
        out = work / f"{video.stem}-{name}-{time.monotonic_ns()}"
        out.mkdir()
        with as_before(full, every_core), no_lookahead() if alone else contextlib.nullcontext():
            wall, cpu, s = one_run(video, ckpt, out, cache_dir=work / "cache", **kw)
        return wall, cpu, s, out

    # The headline rows, interleaved `repeat` times (medians): this VM's speed drifts by
    # ±15 % between runs, more than some differences between rows.
    # The naive loop is among them: it is the denominator of the "× faster" ratio.
    heads: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("full", "skip", "now", "was", "naive")
    }
    runs: dict[str, tuple[Any, Path]] = {}
    naive_faces = 0
    for _ in range(repeat):
        naive_wall, naive_faces = naive_loop(video, ckpt, 2.0)
        heads["naive"].append((naive_wall, 0.0))
        with every_frame_decoded():
            heads["full"].append(decode_only(video, sample_fps=2.0))
        heads["skip"].append(decode_only(video, sample_fps=2.0))
        for key, full, kw in (("now", False, {}), ("was", True, {"detector": WAS})):
            wall, cpu, s, out = timed(key, full, kw, every_core=key == "was")
            heads[key].append((wall, cpu))
            runs[key] = (s, out)

    def med(key: str) -> tuple[float, float]:
        walls, cpus = zip(*heads[key], strict=True)
        return float(np.median(walls)), float(np.median(cpus))

    def spread(key: str) -> str:
        walls = [w for w, _ in heads[key]]
        return f"runs {min(walls):.2f}–{max(walls):.2f} s; " if len(walls) > 1 else ""

    base_wall, base_cpu = med("full")
    skip_wall, skip_cpu = med("skip")
    default_wall, default_cpu = med("now")
    rows.append(f"| decode-only, every frame decoded | {base_wall:.2f} | 1.00 | {base_cpu:.1f} "
                f"| - | - | {spread('full')}|")  # fmt: skip
    rows.append(
        f"| decode-only, exact skipping (the default) | {skip_wall:.2f} "
        f"| {skip_wall / base_wall:.2f} | {skip_cpu:.1f} | - | - | {spread('skip')}"
        f"the default run is {default_wall / skip_wall:.2f}× this |"
    )
    kf_wall, _ = decode_only(video, sample_fps=2.0, keyframes_only=True)
    rows.append(f"| decode-only, keyframes | {kf_wall:.2f} | {kf_wall / base_wall:.2f} | | | | |")

    # The floor: decoding (with exact skipping) and the face step each alone, added up and
    # spread over every core with no waiting. No overlap of the two can beat it.
    # (Decoding on one thread: FFmpeg's frame threads add CPU time of their own.)
    _, one_cpu = decode_only(video, sample_fps=2.0, threads=1)
    face_wall, face_cpu = face_step_alone(video, work / "cache")
    cores = os.cpu_count() or 1
    floor = (one_cpu + face_cpu) / cores
    rows.append(
        f"| face step alone, one thread (detect, align, track on frames decoded first) "
        f"| {face_wall:.2f} "
        f"| {face_wall / base_wall:.2f} | {face_cpu:.1f} | | | with decode-only (exact "
        f"skipping, one thread: {one_cpu:.1f} CPU s) {one_cpu + face_cpu:.1f} CPU s: on "
        f"{cores} cores at least {floor:.2f} s, {floor / base_wall:.2f}× decode-only, "
        "before classification |"
    )

    def row(name: str, wall: float, cpu: float, s: Any, note: str = "") -> str:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in s.stage_s.items() if v >= 0.05)
        return (
            f"| {name} | {wall:.2f} | {wall / base_wall:.2f} | {cpu:.1f} | {s.faces} "
            f"| {s.visitors} | {seconds / wall:.1f}× real time; {note}{stages} |"
        )

    now_name = (
        "default (exact skipping, decoder on half the cores, OpenVINO bf16, whole-frame "
        "search every 1 s, ahead of the tiles)"
    )
    rows.append(row(now_name, default_wall, default_cpu, runs["now"][0],
                    spread("now")))  # fmt: skip
    was_wall, was_cpu = med("was")
    was_name = (
        "default before (every frame decoded on every core, onnxruntime fp32, every frame "
        "searched whole)"
    )
    rows.append(row(was_name, was_wall, was_cpu, runs["was"][0],
                    spread("was")))  # fmt: skip
    plan: list[tuple[str, dict[str, object]]] = [
        ("onnxruntime fp32 detector", {"detector": ONNX}),
        ("every frame searched whole (--redetect-every 0)",
         {"detector": DetectorConfig(redetect_s=0)}),
        ("whole-frame searches in turn with the tiles (no look-ahead)", {"alone": True}),
        ("every frame decoded", {"full_decode": True}),
        ("decoder on every core (FFmpeg's default)", {"every_core": True}),
        ("int8 detector (onnxruntime)", {"detector": DetectorConfig(backend="onnxruntime-int8")}),
        ("whole-frame search every 2 s", {"detector": DetectorConfig(redetect_s=2)}),
        ("detector at 480 px", {"detector": DetectorConfig(max_side=480)}),
        ("--skip-nonref", {"skip_nonref": True}),
        ("--keyframes-only", {"keyframes_only": True}),
    ]  # fmt: skip
    for name, kw in plan:
        full = bool(kw.pop("full_decode", False))
        every_core = bool(kw.pop("every_core", False))
        alone = bool(kw.pop("alone", False))
        wall, cpu, s, _ = timed(name.split()[0], full, kw, every_core, alone)
        rows.append(row(name, wall, cpu, s))
        print(rows[-1], file=sys.stderr, flush=True)
    t_naive, _ = med("naive")
    rows.append(
        f"| naive loop | {t_naive:.2f} | {t_naive / base_wall:.2f} | | {naive_faces} | - "
        f"| {spread('naive')}the default is {t_naive / default_wall:.1f}× faster |"
    )
    rows.append("")
    rows.append(
        "Labels, default against default before: "
        + agreement(runs["now"][1] / "faces.parquet", runs["was"][1] / "faces.parquet")
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--only-1080p", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the headline rows")
    args = ap.parse_args()
    torch.manual_seed(0)
    CACHE.mkdir(exist_ok=True)
    sizes = [(1920, 1080)] if args.only_1080p else [(1920, 1080), (1280, 720)]
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = checkpoint_for(None, "compact", work)
        for w, h in sizes:
            video = CACHE / f"levers-{int(args.seconds)}s-{h}p.mp4"
            if not video.exists():
                write_scene_video(video, seconds=args.seconds, size=(w, h), sway_px=w / 10, gop=60)
            print(f"\n{args.seconds:.0f} s {w}x{h} 30 fps H.264 (GOP 60), six people:\n")
            print("| mode | wall s | / decode-only | CPU s | faces | visitors | notes |")
            print("|---|---:|---:|---:|---:|---:|---|")
            for line in bench_video(video, args.seconds, ckpt, work, args.repeat):
                print(line)


if __name__ == "__main__":
    main()
