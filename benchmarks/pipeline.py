"""End-to-end benchmark of ``agr-batch run`` on a 60 s 1080p30 H.264 video of real faces.

Prints a Markdown table: decode-only ceilings, the pipeline in its modes (per-track voting,
per-face, keyframes only; ``compact`` and ``paper``), and a naive loop at the same sampling
(OpenCV reads every frame, detects, classifies one face at a time, as FairFace's predict.py
does). Everything is measured in one run, side by side.

    .venv/bin/python benchmarks/pipeline.py [--seconds 60] [--skip-paper]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import torch

from agr_batch.checkpoint import load_checkpoint
from agr_batch.commands.bench import checkpoint_for
from agr_batch.commands.run import run
from agr_batch.config import RunConfig
from agr_batch.samples import write_scene_video
from agr_batch.stages.align import align_faces
from agr_batch.stages.classify import Classifier
from agr_batch.stages.detect import create_detector
from agr_batch.stages.vote import VoteConfig

CACHE = Path(__file__).resolve().parent / ".cache"


def decode_only(path: Path, *, keyframes: bool) -> float:
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        if keyframes:
            s.codec_context.skip_frame = "NONKEY"
        for _ in c.decode(s):
            pass
    return time.perf_counter() - t0


def naive_loop(path: Path, ckpt_path: Path, sample_fps: float) -> tuple[float, int]:
    """OpenCV reads every frame; sampled ones are detected; faces classified one at a time."""
    ckpt = load_checkpoint(ckpt_path)
    clf = Classifier(ckpt, batch_size=1)
    det = create_detector("centerface", max_side=640, input_width=None)
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    step = fps / sample_fps
    faces, i, next_i = 0, 0, 0.0
    t0 = time.perf_counter()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i >= next_i - 1e-6:
            next_i += step
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            dets = det.detect([rgb])[0]
            for k in range(len(dets)):
                chip = align_faces(rgb, dets.landmarks[k : k + 1], ckpt.meta.preprocess)
                clf.predict(chip)
                faces += 1
        i += 1
    cap.release()
    return time.perf_counter() - t0, faces


def pipeline(video: Path, ckpt: Path, out: Path, **kw: object) -> dict[str, object]:
    t_cpu = os.times()
    summary = run(
        RunConfig(inputs=(str(video),), out=out / "stats.parquet", model=ckpt,
                  faces_out=out / "faces.parquet", **kw)  # type: ignore[arg-type]
    )  # fmt: skip
    t_end = os.times()
    cpu = (t_end.user - t_cpu.user) + (t_end.system - t_cpu.system)
    faces = pq.read_table(out / "faces.parquet").to_pandas()
    return {"summary": summary, "cpu_s": cpu, "faces": faces}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--skip-paper", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    CACHE.mkdir(exist_ok=True)
    video = CACHE / f"bench-{int(args.seconds)}s-1080p.mp4"
    if not video.exists():
        write_scene_video(video, seconds=args.seconds, size=(1920, 1080), sway_px=200, gop=60)
    cores = os.cpu_count() or 1
    rows: list[tuple[str, float, str]] = []

    def add(name: str, wall: float, note: str = "") -> None:
        rows.append((name, wall, note))
        print(f"{name}: {wall:.2f} s ({args.seconds / wall:.1f}× real time) {note}", flush=True)

    add("decode only, every frame (PyAV)", decode_only(video, keyframes=False))
    add("decode only, keyframes (PyAV)", decode_only(video, keyframes=True))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        compact = checkpoint_for(None, "compact", work)
        paper = checkpoint_for(None, "paper", work)
        runs = {}
        plan = [
            ("compact, per-track voting (default)", compact, {}),
            ("compact, per-face classification", compact, {"vote": VoteConfig(per_face=True)}),
            ("compact, --skip-nonref", compact, {"skip_nonref": True}),
            ("compact, keyframes only", compact, {"keyframes_only": True}),
        ]
        if not args.skip_paper:
            plan += [
                ("paper, per-track voting (default)", paper, {}),
                ("paper, per-face classification", paper, {"vote": VoteConfig(per_face=True)}),
            ]
        for name, ckpt, kw in plan:
            out = work / name.replace(" ", "_").replace(",", "")
            out.mkdir()
            r = pipeline(video, ckpt, out, **kw)
            runs[name] = r
            s = r["summary"]
            util = r["cpu_s"] / (s.wall_s * cores)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in s.stage_s.items())
            note = (
                f"{s.frames} frames, {s.faces} faces, {s.classified_faces} classified, "
                f"{s.visitors} tracks; backend {s.backend}; CPU use {util:.0%} of {cores} cores; "
                f"stage s: {stages}"
            )
            add(name, s.wall_s, note)
        t_naive, n_naive = naive_loop(video, compact, 2.0)
        add("naive loop, compact (OpenCV every frame, 1 face at a time, eager fp32)", t_naive,
            f"{n_naive} faces")  # fmt: skip
        if not args.skip_paper:
            t_naive_p, _ = naive_loop(video, paper, 2.0)
            add("naive loop, paper", t_naive_p)
        # Agreement of per-track voting with per-face classification (same faces).
        a = runs["compact, per-track voting (default)"]["faces"]
        b = runs["compact, per-face classification"]["faces"]
        key = ["frame_index", "x1", "y1"]
        joined = a.merge(b, on=key, suffixes=("_vote", "_face"))
        agree = {
            h: float(np.mean(joined[f"{h}_vote"] == joined[f"{h}_face"]))
            for h in ("age", "gender", "race")
        }

    print()
    machine = platform.processor() or platform.machine()
    print(f"Machine: {machine}, {cores} cores, torch {torch.__version__}")
    print(f"Video: {args.seconds:.0f} s 1920x1080 30 fps H.264 (GOP 60), 2 fps sampling\n")
    print("| mode | wall s | × real time | notes |")
    print("|---|---:|---:|---|")
    for name, wall, note in rows:
        print(f"| {name} | {wall:.2f} | {args.seconds / wall:.1f} | {note} |")
    d = {n: w for n, w, _ in rows}
    default = d["compact, per-track voting (default)"]
    naive = d["naive loop, compact (OpenCV every frame, 1 face at a time, eager fp32)"]
    print()
    print(f"- compact default vs naive loop: {naive / default:.1f}× faster")
    print(f"- compact default / decode-only: {default / d[rows[0][0]]:.2f}× the decode time")
    per_face = d["compact, per-face classification"]
    print(f"- per-track voting vs per-face: {per_face / default:.2f}× faster")
    print(f"- label agreement of voting with per-face labels: {agree}")
    nonref = d["compact, --skip-nonref"]
    print(f"- compact --skip-nonref: {args.seconds / nonref:.1f}× real time, {naive / nonref:.1f}× "
          f"the naive loop, {nonref / d[rows[0][0]]:.2f}× the decode-only time")  # fmt: skip


if __name__ == "__main__":
    main()
