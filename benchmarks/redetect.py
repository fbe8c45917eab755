"""Whole-frame searches every ``--redetect-every`` seconds: what they save, and what they miss.

Between whole-frame searches the detector looks only around the tracked faces, so a face
that appears is found at the next whole-frame search. Two kinds of video, all in one run:

* the 60 s scene videos of ``cpu_levers.py`` (1080p and 720p, six people always in view):
  wall time, CPU time, faces and visitors for each setting;
* a 60 s 720p video of *visits*: the six people come into view for 0.8, 1.5, 3 and 6 s at a
  time (9 visits, 54 visitor arrivals) with 4 s of empty frames between, so the cost of
  finding new faces late shows: faces and visitors against searching every frame whole.

    .venv/bin/python benchmarks/redetect.py [--settings 0,0.5,1,2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agr_batch.commands.bench import checkpoint_for
from agr_batch.config import DetectorConfig
from agr_batch.samples import write_scene_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_levers import CACHE, one_run

DWELLS = (0.8, 1.5, 3.0, 6.0)
EMPTY_S = 4.0  # longer than the tracker's 3 s gap: each visit is new visitors


def visits(seconds: float) -> list[tuple[float, float]]:
    """(start, end) of each visit, dwell times cycling through :data:`DWELLS`."""
    out, t = [], 0.37  # off the 0.5 s sampling grid: visits start between samples
    for dwell in itertools.cycle(DWELLS):
        if t + dwell > seconds:
            return out
        out.append((t, t + dwell))
        t += dwell + EMPTY_S


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--settings", default="0,0.5,1,2", help="--redetect-every values, s")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each (medians)")
    args = ap.parse_args()
    settings = [float(s) for s in args.settings.split(",")]
    torch.manual_seed(0)
    CACHE.mkdir(exist_ok=True)
    videos = []
    for w, h in ((1920, 1080), (1280, 720)):
        path = CACHE / f"levers-60s-{h}p.mp4"
        if not path.exists():
            write_scene_video(path, seconds=60, size=(w, h), sway_px=w / 10, gop=60)
        videos.append((f"scene {h}p", path))
    arrivals = CACHE / "visits-60s-720p.mp4"
    if not arrivals.exists():
        write_scene_video(arrivals, seconds=60, size=(1280, 720), sway_px=128, visits=visits(60))
    videos.append((f"visits 720p ({len(visits(60))} visits)", arrivals))
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")  # fmt: skip
    print("\n| video | --redetect-every s | wall s | CPU s | faces | visitors | detect s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = checkpoint_for(None, "compact", work)
        for name, video in videos:
            warm = work / f"warm-{video.stem}"
            warm.mkdir()
            one_run(video, ckpt, warm, cache_dir=work / "cache")
            results: dict[float, list[tuple[float, float, object]]] = {s: [] for s in settings}
            for _ in range(args.repeat):  # interleaved: this VM drifts between runs
                for s in settings:
                    out = work / f"{video.stem}-{s}-{time.monotonic_ns()}"
                    out.mkdir()
                    det = DetectorConfig(redetect_s=s)
                    results[s].append(
                        one_run(video, ckpt, out, cache_dir=work / "cache", detector=det)
                    )
            for s in settings:
                walls, cpus, summaries = zip(*results[s], strict=True)
                last = summaries[-1]
                print(
                    f"| {name} | {s:g} | {np.median(walls):.2f} | {np.median(cpus):.1f} "
                    f"| {last.faces} | {last.visitors} | {last.stage_s.get('detect', 0):.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
