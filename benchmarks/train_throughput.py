"""Training throughput per architecture: images/s of forward + backward + Adam step.

Random inputs at each model's default input size (no data loading), the trainer's own loss
(:class:`trainer.engine.MultiHeadLoss`) and mixed precision where ``agr-train fit`` would use
it (CUDA only); the median step time of a few timed steps after warm-up. Prints a Markdown table.

    .venv/bin/python benchmarks/train_throughput.py [--device cpu] [--archs tiny,paper]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from agr_batch.device import resolve_device
from agr_batch.models import count_parameters, create_model, gflops_per_face
from trainer.engine import MultiHeadLoss
from trainer.runtime import precision_for

ARCHS = ("tiny", "compact", "paper", "resnet34", "mobilenet_v2", "alexnet", "densenet161")
# Batch 64 (the recipe's) where a CPU step stays short; smaller for the big models.
CPU_BATCH = {"paper": 32, "resnet34": 32, "mobilenet_v2": 32, "densenet161": 16}


def bench(arch: str, *, device: torch.device, batch: int, warmup: int, iters: int) -> dict:
    torch.manual_seed(0)
    model = create_model(arch).to(device).train()
    h, w = model.input_size
    x = torch.randn(batch, 3, h, w, device=device)
    y = torch.stack([torch.randint(0, k, (batch,), device=device) for k in (9, 2, 7)], dim=1)
    criterion = MultiHeadLoss().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    precision = precision_for(device)
    scaler = torch.amp.GradScaler("cuda") if precision.use_scaler else None

    def step() -> None:
        with torch.autocast(
            device.type, dtype=precision.dtype, enabled=precision.dtype is not None
        ):
            loss, _ = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)  # robust to other jobs sharing the CPU
    return {
        "arch": arch,
        "input": f"{h}x{w}",
        "batch": batch,
        "params_m": count_parameters(model) / 1e6,
        "gflops": gflops_per_face(create_model(arch)),
        "s_per_iter": seconds,
        "img_s": batch / seconds,
        "precision": precision.name,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated")
    parser.add_argument("--batch-size", type=int, default=None, help="override every batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    rows = []
    for arch in args.archs.split(","):
        batch = args.batch_size or (64 if device.type == "cuda" else CPU_BATCH.get(arch, 64))
        r = bench(arch, device=device, batch=batch, warmup=args.warmup, iters=args.iters)
        rows.append(r)
        print(f"{arch}: {r['img_s']:.1f} img/s", file=sys.stderr, flush=True)

    print(
        f"Training throughput on {device.type} ({where}), torch {torch.__version__}, "
        f"median of {args.iters} timed steps after {args.warmup} warm-up, random inputs:\n"
    )
    print("| Model | Input | Batch | Params M | GFLOPs/face | Precision | s/step | Train img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['input']} | {r['batch']} | {r['params_m']:.2f} | "
            f"{r['gflops']:.2f} | {r['precision']} | {r['s_per_iter']:.3f} | {r['img_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
