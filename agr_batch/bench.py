"""``agr-batch bench``: classifier throughput per backend and batch size, and end to end."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from agr_batch.checkpoint import load_checkpoint, save_checkpoint
from agr_batch.classify import resolve_device
from agr_batch.config import RunConfig
from agr_batch.engines import BackendUnavailableError, engine_for_checkpoint
from agr_batch.models import create_model
from agr_batch.runner import RunSummary, run
from agr_batch.samples import write_scene_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineResult:
    """Throughput of one backend at one batch size."""

    backend: str
    precision: str
    batch_size: int
    faces_per_s: float
    note: str = ""


@dataclass(frozen=True)
class PipelineResult:
    """End-to-end speed of ``run`` on a generated video."""

    backend: str
    video_s: float
    frames: int
    faces: int
    wall_s: float
    stage_s: dict[str, float]

    @property
    def realtime_factor(self) -> float:
        """Seconds of video processed per second of wall time."""
        return self.video_s / self.wall_s if self.wall_s else 0.0


def checkpoint_for(model: str | None, arch: str, workdir: Path) -> Path:
    """``model`` if given, else an untrained ``arch`` checkpoint (speed needs no weights)."""
    if model:
        return Path(model)
    path = workdir / f"{arch}-untrained.pt"
    torch.manual_seed(0)
    save_checkpoint(path, create_model(arch), training={"note": "untrained, for benchmarks"})
    return path


def bench_engines(
    checkpoint: Path,
    *,
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    device: str = "auto",
    cache_dir: str | Path | None = None,
    min_seconds: float = 2.0,
) -> list[EngineResult]:
    """Faces per second of each backend at each batch size (after a warm-up call)."""
    dev = resolve_device(device)
    results = []
    for backend in backends:
        ckpt = load_checkpoint(checkpoint, device=dev)
        try:
            engine = engine_for_checkpoint(
                backend, ckpt, device=dev, cache_dir=cache_dir, opt_batch=max(batch_sizes)
            )
        except BackendUnavailableError as e:
            results.append(EngineResult(backend, "-", 0, 0.0, note=str(e).split(";")[0]))
            continue
        h, w = ckpt.meta.preprocess.input_size
        for bs in batch_sizes:
            x = torch.randn(bs, 3, h, w, device=dev)
            with torch.inference_mode():
                engine(x)  # warm-up (and lazy initialisation)
                n, t0 = 0, time.perf_counter()
                while True:
                    engine(x)
                    n += bs
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    if time.perf_counter() - t0 >= min_seconds:
                        break
            results.append(
                EngineResult(engine.name, engine.precision, bs, n / (time.perf_counter() - t0))
            )
    return results


def bench_pipeline(
    checkpoint: Path,
    video: Path,
    *,
    video_s: float,
    backend: str = "auto",
    device: str = "auto",
    cache_dir: str | Path | None = None,
    **config: object,
) -> PipelineResult:
    """Run the full pipeline on ``video`` and time it."""
    with tempfile.TemporaryDirectory() as tmp:
        summary: RunSummary = run(
            RunConfig(
                inputs=(str(video),),
                out=Path(tmp) / "stats.parquet",
                model=checkpoint,
                backend=backend,
                device=device,
                cache_dir=Path(cache_dir) if cache_dir else None,
                **config,  # type: ignore[arg-type]
            )
        )
    return PipelineResult(
        summary.backend, video_s, summary.frames, summary.faces, summary.wall_s, summary.stage_s
    )


def engines_markdown(results: Sequence[EngineResult]) -> str:
    """Markdown table of :func:`bench_engines` results."""
    lines = ["| backend | precision | batch | faces/s | note |", "|---|---|---:|---:|---|"]
    for r in results:
        lines.append(
            f"| {r.backend} | {r.precision} | {r.batch_size} | {r.faces_per_s:,.0f} | {r.note} |"
        )
    return "\n".join(lines)


def pipeline_markdown(results: Sequence[PipelineResult]) -> str:
    """Markdown table of :func:`bench_pipeline` results."""
    lines = [
        "| backend | video s | frames | faces | wall s | × real time | stage s |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stage_s.items())
        lines.append(
            f"| {r.backend} | {r.video_s:.0f} | {r.frames} | {r.faces} | {r.wall_s:.1f} "
            f"| {r.realtime_factor:.1f} | {stages} |"
        )
    return "\n".join(lines)


def bench(
    *,
    model: str | None,
    arch: str,
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    device: str,
    video_seconds: float,
    cache_dir: str | None,
) -> str:
    """Run both benchmarks and return the report as Markdown."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ckpt = checkpoint_for(model, arch, workdir)
        engines = bench_engines(
            ckpt, backends=backends, batch_sizes=batch_sizes, device=device, cache_dir=cache_dir
        )
        video = write_scene_video(workdir / "bench.mp4", seconds=video_seconds, size=(1280, 720))
        pipeline = [
            bench_pipeline(
                ckpt,
                video.path,
                video_s=video_seconds,
                backend=b,
                device=device,
                cache_dir=cache_dir,
            )
            for b in backends
            if any(r.backend == b and r.faces_per_s > 0 for r in engines)
        ]
    return (
        f"Classifier ({model or arch}):\n\n{engines_markdown(engines)}\n\n"
        f"End to end ({video_seconds:.0f} s 720p30 generated video, 2 fps sampling):\n\n"
        f"{pipeline_markdown(pipeline)}\n"
    )
