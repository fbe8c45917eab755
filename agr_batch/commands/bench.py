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
from agr_batch.commands.run import RunSummary, run
from agr_batch.config import RunConfig
from agr_batch.device import resolve_device
from agr_batch.engines import BackendUnavailableError, engine_for_checkpoint
from agr_batch.models import create_model
from agr_batch.samples import write_scene_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineResult:
    """Throughput of one backend at one batch size (its build time excluded)."""

    backend: str
    precision: str
    batch_size: int
    faces_per_s: float
    build_s: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class PipelineResult:
    """End-to-end speed of ``run`` (or of decoding alone) on one video.

    Attributes:
        mode: ``decode-only`` or the run's options (``2 fps``, ``all frames per-face``).
        backend: Classifier backend and precision (``-`` for decode-only).
        video_s: Video duration, seconds.
        frames: Sampled frames.
        faces: Faces found.
        wall_s: Wall time, engine build included.
        build_s: Engine build time (excluded from the rates).
        stage_s: Seconds inside each stage.
    """

    mode: str
    backend: str
    video_s: float
    frames: int
    faces: int
    wall_s: float
    build_s: float
    stage_s: dict[str, float]

    @property
    def process_s(self) -> float:
        """Wall time without the engine build."""
        return max(self.wall_s - self.build_s, 1e-9)

    @property
    def frames_per_s(self) -> float:
        """Sampled frames per second of processing."""
        return self.frames / self.process_s

    @property
    def realtime_factor(self) -> float:
        """Seconds of video processed per second of processing."""
        return self.video_s / self.process_s


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
                backend,
                ckpt,
                device=dev,
                cache_dir=cache_dir,
                opt_batch=max(batch_sizes),
                batch_sizes=tuple(batch_sizes),
            )
        except BackendUnavailableError as e:
            results.append(EngineResult(backend, "-", 0, 0.0, note=_one_line(e)))
            continue
        build_s = float(engine.details.get("build_s", 0.0))
        h, w = ckpt.meta.preprocess.input_size
        for bs in batch_sizes:
            with torch.inference_mode():
                # Made in inference mode, as the classifier's own batches are.
                x = torch.randn(bs, 3, h, w, device=dev)
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
                EngineResult(
                    engine.name, engine.precision, bs, n / (time.perf_counter() - t0), build_s
                )
            )
    return results


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def decode_only(
    video: Path,
    *,
    video_s: float,
    sample_fps: float,
    decoder: str = "pyav",
    device: str = "cuda",
    **options: bool,
) -> PipelineResult:
    """Decode ``video`` with the run's sampling and decoder and nothing else.

    The ceiling of any run (``nvdec`` frames stay on the GPU, as they do in a run).
    """
    from agr_batch.stages.decode.media import frames

    t0 = time.perf_counter()
    if decoder == "nvdec":
        import torch

        from agr_batch.stages.decode.nvdec import nvdec_frames

        n = sum(1 for _ in nvdec_frames(video, sample_fps=sample_fps, device=device))
        torch.cuda.synchronize()
    else:
        n = sum(1 for _ in frames(video, sample_fps=sample_fps, **options))
    wall = time.perf_counter() - t0
    return PipelineResult(
        f"decode-only ({decoder})", "-", video_s, n, 0, wall, 0.0, {"decode": wall}
    )


def bench_pipeline(
    checkpoint: Path,
    video: Path,
    *,
    video_s: float,
    mode: str = "",
    backend: str = "auto",
    device: str = "auto",
    cache_dir: str | Path | None = None,
    **config: object,
) -> PipelineResult:
    """Run the full pipeline on ``video`` and time it (``config``: more RunConfig options)."""
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
        mode,
        summary.backend,
        video_s,
        summary.frames,
        summary.faces,
        summary.wall_s,
        summary.build_s,
        summary.stage_s,
    )


def engines_markdown(results: Sequence[EngineResult]) -> str:
    """Markdown table of :func:`bench_engines` results."""
    lines = [
        "| backend | precision | batch | faces/s | build s | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.backend} | {r.precision} | {r.batch_size} | {r.faces_per_s:,.0f} "
            f"| {r.build_s:.1f} | {r.note} |"
        )
    return "\n".join(lines)


def pipeline_markdown(results: Sequence[PipelineResult]) -> str:
    """Markdown table of :func:`bench_pipeline` results."""
    lines = [
        "| mode | backend | video s | frames | faces | wall s | build s | frames/s "
        "| × real time | stage s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stage_s.items() if v >= 0.05)
        lines.append(
            f"| {r.mode} | {r.backend} | {r.video_s:.0f} | {r.frames} | {r.faces} "
            f"| {r.wall_s:.1f} | {r.build_s:.1f} | {r.frames_per_s:,.1f} "
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
    video: str | None = None,
    sample_fps: float = 2.0,
    per_face: bool = False,
    classifier: bool = True,
    pipeline: bool = True,
    detector_backend: str = "auto",
    decoder: str = "auto",
) -> str:
    """Run the classifier and end-to-end benchmarks and return the report as Markdown.

    The end-to-end table starts with a ``decode-only`` row: the same file decoded with the
    same sampling and decoder and nothing else, the ceiling every other row is measured
    against.
    """
    from agr_batch.config import DetectorConfig
    from agr_batch.device import resolve_device
    from agr_batch.stages.decode.torchcodec import resolve_decoder
    from agr_batch.stages.decode.video import probe
    from agr_batch.stages.vote import VoteConfig

    parts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ckpt = checkpoint_for(model, arch, workdir)
        engines: list[EngineResult] = []
        if classifier:
            engines = bench_engines(
                ckpt, backends=backends, batch_sizes=batch_sizes, device=device, cache_dir=cache_dir
            )
            parts.append(f"Classifier ({model or arch}):\n\n{engines_markdown(engines)}\n")
        if pipeline:
            if video:
                path = Path(video)
                what = path.name
            else:
                path = write_scene_video(
                    workdir / "bench.mp4", seconds=video_seconds, size=(1280, 720)
                ).path
                what = f"{video_seconds:.0f} s 720p30 generated video"
            duration = probe(path).duration_s or video_seconds
            mode = ("all frames" if not sample_fps else f"{sample_fps:g} fps") + (
                " per-face" if per_face else ""
            )
            dev = resolve_device(device)
            used = resolve_decoder(decoder, dev.type)
            rows = [
                decode_only(
                    path, video_s=duration, sample_fps=sample_fps, decoder=used, device=str(dev)
                )
            ]
            mode += f", detector {detector_backend}, decoder {used}"
            usable = [
                b
                for b in backends
                if not classifier
                or b == "auto"
                or any(r.backend == b and r.faces_per_s > 0 for r in engines)
            ]
            vote = VoteConfig(per_face=per_face)
            for b in usable:
                rows.append(
                    bench_pipeline(
                        ckpt,
                        path,
                        video_s=duration,
                        mode=mode,
                        backend=b,
                        device=device,
                        cache_dir=cache_dir,
                        sample_fps=sample_fps,
                        vote=vote,
                        detector=DetectorConfig(backend=detector_backend),
                        decoder=decoder,
                    )
                )
            parts.append(f"End to end ({what}, {mode}):\n\n{pipeline_markdown(rows)}\n")
    return "\n".join(parts)
