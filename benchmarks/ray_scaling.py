"""Scaling of the Ray executor: the local executor, then Ray with 1 and 2 workers, same input.

Prints a Markdown table. The input is generated: ``--videos`` H.264 videos of ``--seconds``
each at 1280x720 30 fps (insightface's six-person photo swaying; GOP 60), sampled at 2 fps,
classified by an untrained ``--arch`` model (speed needs no weights). Each row splits
its time into ``start`` (loading the model; for Ray, starting the actors, which load it in
parallel) and ``process`` (the files, in the same ``process()`` call ``run`` makes); the
speed-up compares ``process``. The Ray cluster itself is started once, before the rows, and
its start-up time is printed apart. Each row keeps the best of ``--repeat`` passes (the first
pass also warms up each worker). An extra row splits each video into ``--segment``-second
segments (0 skips it), which shows what splitting costs when workers are already busy.

    .venv/bin/python benchmarks/ray_scaling.py [--videos 4] [--seconds 15] [--workers 1 2]

On a machine with as many cores as the pipeline already uses (the local executor overlaps
decoding, detection and classification on threads), extra workers compete for the same cores:
read the speed-up with the core count printed above the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from agr_batch.commands.bench import checkpoint_for
from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import SourceResult, WorkItem
from agr_batch.pipeline.local import LocalPipeline
from agr_batch.pipeline.ray import RayOptions, RayPipeline
from agr_batch.samples import write_scene_video
from agr_batch.stages.decode.media import MediaFile
from agr_batch.stages.detect.base import default_threads

CACHE = Path(__file__).resolve().parent / ".cache" / "ray_scaling"


def make_videos(n: int, seconds: float) -> list[WorkItem]:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = CACHE / f"scene_{i}_{seconds:g}s_720p.mp4"
        if not path.exists():
            # Different sway per video, so the files are not byte-identical.
            write_scene_video(path, seconds=seconds, size=(1280, 720), sway_px=80 + 10 * i)
        out.append(WorkItem(MediaFile(path, "video")))
    return out


class Count:
    def __init__(self) -> None:
        self.files = 0
        self.faces = 0
        self.visitors = 0

    def __call__(self, result: SourceResult) -> None:
        if result.error is not None:
            raise RuntimeError(result.error)
        self.files += 1
        self.faces += result.faces
        self.visitors += len(result.tracks)


def timed(
    start: Callable[[], object], process: Callable[[Count], object], repeat: int
) -> tuple[float, float, Count]:
    """Seconds to start, best seconds of ``repeat`` passes over the files, and the counts."""
    t0 = time.perf_counter()
    start()
    start_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):
        count = Count()
        t0 = time.perf_counter()
        process(count)
        best = min(best, time.perf_counter() - t0)
    return start_s, best, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--segment", type=float, default=5.0, help="Extra row's segment length, s.")
    ap.add_argument("--arch", default="compact")
    ap.add_argument("--backend", default="channels_last")
    ap.add_argument("--sample-fps", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=2, help="Passes per row; the best is kept.")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]

    import ray

    media = make_videos(args.videos, args.seconds)
    video_s = args.videos * args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        config = ProcessingConfig(
            model=checkpoint_for(None, args.arch, Path(tmp)),
            sample_fps=args.sample_fps,
            backend=args.backend,
            device="cpu",
        )
        rows: list[tuple[str, int, float, float, Count]] = []

        local = LocalPipeline(config)
        start, proc, count = timed(local.info, lambda c: local.process(media, c), args.repeat)
        rows.append(("local", 1, start, proc, count))
        local.close()

        cores = default_threads()
        t0 = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        ray_init = time.perf_counter() - t0
        runs = [(w, 0.0) for w in args.workers]
        if args.segment > 0:
            runs.append((max(args.workers), args.segment))
        for workers, segment in runs:
            rp = RayPipeline(config, RayOptions(workers=workers, segment_s=segment))
            with rp:
                start, proc, count = timed(
                    rp.info, lambda c, rp=rp: rp.process(media, c), args.repeat
                )
            name = "ray" if not segment else f"ray, {segment:g} s segments"
            rows.append((name, workers, start, proc, count))
        ray.shutdown()

    base = rows[0][3]
    machine = platform.processor() or platform.machine()
    print(
        f"Machine: {machine}, {cores} cores, torch {torch.__version__}; load average "
        f"{load_before:.1f} before the benchmark (other processes share the cores)"
    )
    print(
        f"Input: {args.videos} × {args.seconds:g} s 1280x720 30 fps H.264, "
        f"{args.sample_fps:g} fps sampling, {args.arch} ({args.backend}) on CPU; best of "
        f"{args.repeat} passes; ray.init {ray_init:.1f} s (not in the table)\n"
    )
    print(
        "| executor | workers | start s | process s | video-s per s | speed-up | faces | people |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, workers, start, proc, count in rows:
        print(
            f"| {name} | {workers} | {start:.1f} | {proc:.1f} | {video_s / proc:.1f} | "
            f"{base / proc:.2f}× | {count.faces} | {count.visitors} |"
        )


if __name__ == "__main__":
    main()
