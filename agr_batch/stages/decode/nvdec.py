"""Video decoding on NVIDIA GPUs (NVDEC) with PyNvVideoCodec: frames are born on the GPU.

``pip install pynvvideocodec`` (about 27 MB; it bundles its own demuxer and needs only the
driver's NVDEC library). Each sampled frame is an (H, W, 3) uint8 RGB ``torch.Tensor`` on
the GPU (NVDEC's own colour conversion), so the detector, the alignment and the classifier
read it where it is; pixels never come back to the host.

Stream facts that PyNvVideoCodec does not give (time base, start PTS, rotation, creation
time) come from PyAV's header parse, so sampling instants, ``time_s`` and ``start_time``
equal the PyAV decoder's. Decoding goes on past a packet NVDEC refuses only as far as the
library allows; a failure is one :class:`~agr_batch.stages.decode.media.SourceError` line.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agr_batch.records import Frame
from agr_batch.stages.decode.media import SourceError
from agr_batch.stages.decode.video import STOP, Sampler, StreamFacts, open_container, stream_facts

log = logging.getLogger(__name__)

NVDEC_MISSING = (
    "--decoder nvdec needs the pynvvideocodec package and an NVIDIA GPU; "
    "`pip install pynvvideocodec`, or use --decoder pyav"
)


def nvdec_available() -> bool:
    """True when PyNvVideoCodec is importable (the GPU itself is checked on first use)."""
    return importlib.util.find_spec("PyNvVideoCodec") is not None


def _facts(path: Path) -> StreamFacts:
    with open_container(path) as container:
        if not container.streams.video:
            raise SourceError(path, "no video stream")
        return stream_facts(path, container)


def _default_factory(path: Path, gpu_id: int) -> Iterator[Any]:
    """Decoded frames of ``path`` from PyNvVideoCodec (each has ``getPTS()`` and DLPack)."""
    import PyNvVideoCodec as nvc  # type: ignore[import-not-found]  # noqa: N813

    demuxer = nvc.CreateDemuxer(filename=str(path))
    decoder = nvc.CreateDecoder(
        gpuid=gpu_id,
        codec=demuxer.GetNvCodecId(),
        usedevicememory=True,
        outputColorType=nvc.OutputColorType.RGB,
    )
    for packet in demuxer:
        yield from decoder.Decode(packet)


DecoderFactory = Callable[[Path, int], Iterator[Any]]


def nvdec_frames(
    path: str | os.PathLike[str],
    *,
    sample_fps: float | None = 2.0,
    start: float | None = None,
    end: float | None = None,
    device: Any = "cuda",
    factory: DecoderFactory | None = None,
) -> Iterator[Frame]:
    """Sampled frames of a video decoded by NVDEC, as GPU tensors in :class:`Frame` records.

    Sampling, ``time_s``, ``frame_index`` (decode order) and ``start_time`` follow
    :func:`agr_batch.stages.decode.video.video_frames`.

    Args:
        path: The video file.
        sample_fps: Frames per second to take; ``None`` or ``<= 0`` takes every frame.
        start: Skip frames before this many seconds.
        end: Stop before the first frame at or after this many seconds.
        device: The CUDA device the frames are decoded on.
        factory: Yields decoded frames for a path and GPU index (tests pass a fake).

    Raises:
        SourceError: If the file cannot be opened or decoding fails.
    """
    import torch

    path = Path(path)
    facts = _facts(path)
    dev = torch.device(device)
    gpu_id = dev.index or 0
    make = factory or _default_factory
    sampler = Sampler(sample_fps, rate=facts.rate, start=start, end=end)
    last_t = -math.inf
    origin = facts.origin
    quarter = round(facts.rotation / 90) % 4
    try:
        decoded = make(path, gpu_id)
        for index, raw in enumerate(decoded):
            pts = raw.getPTS()
            if pts is None or pts < 0:
                t = last_t + 1.0 / facts.rate if last_t > -math.inf else 0.0
            else:
                if origin is None:
                    origin = pts
                t = float((pts - origin) * facts.time_base)
            last_t = t
            verdict = sampler.take(t)
            if verdict is STOP:
                return
            if not verdict:
                continue
            # The decoder reuses its surfaces: keep a copy of each frame that is taken.
            image = torch.from_dlpack(raw).to(dev).clone()
            if quarter:
                # Display rotation is counter-clockwise, as is torch.rot90 on (H, W).
                image = torch.rot90(image, quarter, dims=(0, 1)).contiguous()
            yield Frame(str(path), index, t, image, facts.start_time)
    except SourceError:
        raise
    except Exception as e:  # the library raises its own exception types
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise SourceError(path, f"NVDEC decoding failed ({reason})") from None
