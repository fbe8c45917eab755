"""Opening the frames of a work item: the one place that picks a decoder and a time window.

Whole files and time windows of a video are decoded alike, with the configured decoder
(PyAV, or TorchCodec on the GPU), so a segment of a video gives exactly the frames a
whole-file pass gives in that window. Image sequences yield one frame per readable image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline.work import ImageSequence, WorkItem
from agr_batch.records import Frame
from agr_batch.stages.decode.image import capture_time, image_frame
from agr_batch.stages.decode.media import SourceError, frames
from agr_batch.stages.decode.torchcodec import torchcodec_frames
from agr_batch.stages.decode.video import VideoInfo, probe, video_frames

__all__ = ["OpenedFrames", "expected_frames", "open_frames"]


@dataclass(frozen=True, eq=False)
class OpenedFrames:
    """The frames of a work item, ready to be iterated.

    Attributes:
        frames: Frames in time order (lazy: nothing is decoded before the first ``next``).
        duration_s: The video's duration when known.
        expected_frames: About how many frames ``frames`` yields (None: unknown).
        problems: One line per image of a sequence that could not be read (it is skipped;
            filled while ``frames`` is iterated).
    """

    frames: Iterator[Frame]
    duration_s: float | None = None
    expected_frames: int | None = None
    problems: list[str] = field(default_factory=list)


def expected_frames(
    info: VideoInfo, item: WorkItem, *, sample_fps: float, keyframes_only: bool
) -> int | None:
    """Frames a video window should yield at ``sample_fps`` (None: unknown, e.g. keyframes)."""
    if info.duration_s is None or keyframes_only:
        return None
    rate = sample_fps if sample_fps > 0 else info.fps
    if not rate:
        return None
    start = item.decode_start or 0.0
    end = min(item.decode_end, info.duration_s) if item.decode_end is not None else info.duration_s
    return max(0, math.ceil((end - start) * rate - 1e-6))


def open_frames(item: WorkItem, config: ProcessingConfig, decoder: str) -> OpenedFrames:
    """The frames of ``item`` with the decoder ``decoder`` (``pyav`` or ``torchcodec``).

    A window of a video decodes from ``item.decode_start`` to ``item.decode_end`` (the
    window and its overlap). Keyframes-only decoding always uses PyAV (TorchCodec decodes
    exact frames only).

    Raises:
        SourceError: The file cannot be opened (a video is probed here; other failures are
            raised while iterating).
    """
    media = item.media
    if isinstance(media, ImageSequence):
        problems: list[str] = []
        return OpenedFrames(_sequence_frames(media, problems), None, len(media.images), problems)
    if media.kind == "image":
        return OpenedFrames(frames(media), None, 1)
    info = probe(media.path)
    expected = expected_frames(
        info, item, sample_fps=config.sample_fps, keyframes_only=config.keyframes_only
    )
    if decoder == "torchcodec" and not config.keyframes_only:
        it = torchcodec_frames(
            media.path, sample_fps=config.sample_fps, start=item.decode_start, end=item.decode_end
        )
    else:
        it = video_frames(
            media.path,
            sample_fps=config.sample_fps,
            start=item.decode_start,
            end=item.decode_end,
            keyframes_only=config.keyframes_only,
            skip_nonref=config.skip_nonref,
        )
    return OpenedFrames(it, info.duration_s, expected)


def _sequence_frames(seq: ImageSequence, problems: list[str]) -> Iterator[Frame]:
    """Frames of a sequence; unreadable images are reported in ``problems`` and skipped."""
    t0 = capture_time(seq.images[0])
    for i, path in enumerate(seq.images):
        try:
            frame = image_frame(path)
        except SourceError as e:
            problems.append(str(e))
            continue
        when = capture_time(path)
        yield Frame(
            source=str(seq.path),
            frame_index=i,
            time_s=max(0.0, (when - t0).total_seconds()),
            image=frame.image,
            start_time=t0,
        )
