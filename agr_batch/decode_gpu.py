"""GPU video decoding through TorchCodec (NVDEC), used by ``--decoder torchcodec``.

Only sampled frames are decoded to tensors (``get_frames_played_at``), on the GPU, then
copied to host memory for the detector. TorchCodec is optional and not a dependency: install
``torchcodec`` matching your torch on a CUDA machine. Videos with rotation metadata go through
PyAV, which applies the rotation. This path has not been exercised on the CPU-only machines
agr-batch is developed on.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agr_batch.records import Frame
from agr_batch.sources import SourceError, probe

TORCHCODEC_MISSING = (
    "--decoder torchcodec needs the torchcodec package and CUDA; install torchcodec for your "
    "torch version, or use --decoder pyav"
)


def torchcodec_available() -> bool:
    """True when the ``torchcodec`` package is importable."""
    return importlib.util.find_spec("torchcodec") is not None


def resolve_decoder(decoder: str, device_type: str) -> str:
    """Map ``auto`` to ``torchcodec`` on CUDA when installed, else ``pyav``.

    Raises:
        ValueError: For an unknown name or an explicit ``torchcodec`` that cannot run.
    """
    if decoder not in ("auto", "pyav", "torchcodec"):
        raise ValueError(f"unknown decoder {decoder!r}; expected auto, pyav or torchcodec")
    if decoder == "auto":
        return "torchcodec" if device_type == "cuda" and torchcodec_available() else "pyav"
    if decoder == "torchcodec" and (device_type != "cuda" or not torchcodec_available()):
        raise ValueError(TORCHCODEC_MISSING)
    return decoder


def torchcodec_frames(
    path: str | os.PathLike[str], *, sample_fps: float, device: str = "cuda", chunk: int = 16
) -> Iterator[Frame]:
    """Sampled frames of a video decoded on the GPU, as RGB :class:`Frame` records.

    Raises:
        SourceError: If TorchCodec cannot open or decode the file.
    """
    from torchcodec.decoders import VideoDecoder  # type: ignore[import-not-found]

    from agr_batch.sources import frames as pyav_frames

    path = Path(path)
    info = probe(path)
    if info.rotation:
        yield from pyav_frames(path, sample_fps=sample_fps)
        return
    try:
        dec = VideoDecoder(str(path), device=device, dimension_order="NHWC")
    except Exception as e:  # torchcodec raises RuntimeError/ValueError for bad files
        raise SourceError(path, f"TorchCodec cannot open it ({e})") from None
    md = dec.metadata
    begin = float(md.begin_stream_seconds or 0.0)
    end = float(md.end_stream_seconds or (begin + (md.duration_seconds or 0.0)))
    fps = float(md.average_fps or 30.0)
    step = 1.0 / sample_fps if sample_fps and sample_fps > 0 else 1.0 / fps
    times = np.arange(begin, end - 1e-6, step)
    start_time = None
    for i in range(0, len(times), chunk):
        try:
            batch = dec.get_frames_played_at(seconds=times[i : i + chunk].tolist())
        except Exception as e:
            raise SourceError(path, f"TorchCodec failed at {times[i]:.2f} s ({e})") from None
        images = batch.data.cpu().numpy()
        for image, pts in zip(images, batch.pts_seconds.tolist(), strict=True):
            yield Frame(
                source=str(path),
                frame_index=round((pts - begin) * fps),
                time_s=float(pts - begin),
                image=np.ascontiguousarray(image),
                start_time=start_time,
            )
