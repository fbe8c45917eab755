"""GPU video decoding through TorchCodec (NVDEC), used by ``--decoder torchcodec``.

Only sampled frames are decoded (``get_frames_at``), on the GPU, then copied to host memory
for the detector. Which frames are sampled, their ``time_s``, ``frame_index`` and the
source's ``start_time`` come from PyAV's header parse and the shared
:class:`~agr_batch.stages.decode.video.Sampler`, exactly as for the PyAV decoder: the
packets' timestamps are read without decoding, so both decoders take the same frames and
give them the same times. Videos with a display rotation are decoded by PyAV (TorchCodec
versions differ in whether they apply it), so they come out upright either way.

TorchCodec is optional and not a dependency: install ``torchcodec`` matching your torch on a
CUDA machine.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agr_batch.records import Frame
from agr_batch.stages.decode.media import SourceError, check_file
from agr_batch.stages.decode.video import (
    STOP,
    Sampler,
    StreamFacts,
    ffmpeg_reason,
    open_container,
    stream_facts,
    video_frames,
)

__all__ = [
    "TORCHCODEC_MISSING",
    "resolve_decoder",
    "torchcodec_available",
    "torchcodec_frames",
]

TORCHCODEC_MISSING = (
    "--decoder torchcodec needs the torchcodec package and CUDA; install torchcodec for your "
    "torch version, or use --decoder pyav"
)

DecoderFactory = Callable[[Path, str], Any]
"""Opens a video for decoding on a device; the object answers ``get_frames_at(indices=[...])``
with a batch whose ``data`` is an (N, H, W, 3) uint8 tensor (TorchCodec's ``VideoDecoder``)."""


def torchcodec_available() -> bool:
    """True when the ``torchcodec`` package is importable."""
    return importlib.util.find_spec("torchcodec") is not None


DECODERS = ("auto", "pyav", "nvdec", "torchcodec")
"""The ``--decoder`` choices."""


def resolve_decoder(decoder: str, device_type: str) -> str:
    """Map ``auto`` to a video decoder for ``device_type``; check an explicit choice.

    ``auto`` is PyAV everywhere: on an H200 with 16 cores PyAV decoded 1080p30 H.264 at 939
    frames/s (RGB conversion included), one NVDEC session at 476 (BENCHMARKS.md). ``nvdec``
    (PyNvVideoCodec) and ``torchcodec`` decode on the GPU when asked for.

    Raises:
        ValueError: For an unknown name or a GPU decoder that cannot run here.
    """
    from agr_batch.stages.decode.nvdec import NVDEC_MISSING, nvdec_available

    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected {', '.join(DECODERS)}")
    if decoder == "auto":
        return "pyav"
    if decoder == "torchcodec" and (device_type != "cuda" or not torchcodec_available()):
        raise ValueError(TORCHCODEC_MISSING)
    if decoder == "nvdec" and (device_type != "cuda" or not nvdec_available()):
        raise ValueError(NVDEC_MISSING)
    return decoder


def _default_factory(path: Path, device: str) -> Any:
    from torchcodec.decoders import VideoDecoder  # type: ignore[import-not-found]

    # Exact mode scans the file: frame indices are presentation order, as PyAV's.
    return VideoDecoder(str(path), device=device, dimension_order="NHWC", seek_mode="exact")


def _frame_times(path: Path) -> tuple[StreamFacts, list[float]]:
    """The stream's facts and every frame's time in presentation order, without decoding."""
    check_file(path)
    with open_container(path) as container:
        if not container.streams.video:
            raise SourceError(path, "no video stream")
        facts = stream_facts(path, container)  # decodes the first frame: read packets anew
    with open_container(path) as container:
        stream = container.streams.video[0]
        pts: list[int | None] = []
        try:
            for packet in container.demux(stream):
                if packet.size:
                    pts.append(packet.pts)
        except Exception as e:  # a read error ends the index, as it ends PyAV's decoding
            raise SourceError(path, f"cannot read packets ({ffmpeg_reason(e)})") from None
    known = sorted(p for p in pts if p is not None)
    origin = facts.origin if facts.origin is not None else (known[0] if known else 0)
    times = [float((p - origin) * facts.time_base) for p in known]
    # Packets without a timestamp follow the last known frame at the stream's rate.
    last = times[-1] if times else -1.0 / facts.rate
    times += [last + (k + 1) / facts.rate for k in range(len(pts) - len(known))]
    return facts, times


def torchcodec_frames(
    path: str | os.PathLike[str],
    *,
    sample_fps: float | None,
    start: float | None = None,
    end: float | None = None,
    device: str = "cuda",
    chunk: int = 16,
    factory: DecoderFactory | None = None,
) -> Iterator[Frame]:
    """Sampled frames of a video decoded by TorchCodec, as host RGB :class:`Frame` records.

    Sampling, ``time_s``, ``frame_index`` and ``start_time`` follow
    :func:`agr_batch.stages.decode.video.video_frames`.

    Args:
        path: The video file.
        sample_fps: Frames per second to take; ``None`` or ``<= 0`` takes every frame.
        start: Skip frames before this many seconds.
        end: Stop before the first frame at or after this many seconds.
        device: Where TorchCodec decodes.
        chunk: Frames asked of the decoder at once.
        factory: Opens the decoder (tests pass a stand-in for TorchCodec).

    Raises:
        SourceError: If the file cannot be opened or decoded.
    """
    path = Path(path)
    facts, times = _frame_times(path)
    if facts.rotation:
        yield from video_frames(path, sample_fps=sample_fps, start=start, end=end)
        return
    sampler = Sampler(sample_fps, rate=facts.rate, start=start, end=end)
    taken: list[int] = []
    for index, t in enumerate(times):
        verdict = sampler.take(t)
        if verdict is STOP:
            break
        if verdict:
            taken.append(index)
    if not taken:
        return
    try:
        dec = (factory or _default_factory)(path, device)
    except Exception as e:  # torchcodec raises RuntimeError/ValueError for bad files
        raise SourceError(path, f"TorchCodec cannot open it ({_reason(e)})") from None
    for i in range(0, len(taken), chunk):
        indices = taken[i : i + chunk]
        try:
            batch = dec.get_frames_at(indices=indices)
            images = batch.data.cpu().numpy()
        except Exception as e:
            at = times[indices[0]]
            raise SourceError(path, f"TorchCodec failed at {at:.2f} s ({_reason(e)})") from None
        for index, image in zip(indices, images, strict=True):
            yield Frame(
                str(path), index, times[index], np.ascontiguousarray(image), facts.start_time
            )


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())[:300]
    return text or type(e).__name__
