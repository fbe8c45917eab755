"""Opening the frames of a work item: the one place that picks a decoder and a time window.

Whole files and time windows of a video are decoded alike, with the configured decoder
(PyAV, NVDEC through PyNvVideoCodec, or TorchCodec), so a segment of a video gives exactly the
frames a whole-file pass gives in that window. Image sequences yield one frame per readable
image. When the stages run on a GPU, JPEG images are decoded there by nvJPEG in batches that
run ahead over the coming image items (:class:`ImageBatcher`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline.work import ImageSequence, WorkItem
from agr_batch.records import Frame
from agr_batch.stages.decode.image import capture_time, image_frame
from agr_batch.stages.decode.media import SourceError, frames
from agr_batch.stages.decode.torchcodec import torchcodec_frames
from agr_batch.stages.decode.video import VideoInfo, probe, video_frames

__all__ = ["ImageBatcher", "OpenedFrames", "expected_frames", "open_frames"]


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


class ImageBatcher:
    """Decodes the single-image items of a batch on the GPU with nvJPEG, many at a time.

    Images are decoded in order, ``batch_size`` per call, as the items ask for them; a file
    nvJPEG cannot take (PNG, CMYK, a corrupt JPEG) goes through Pillow with Pillow's one-line
    error, as :func:`~agr_batch.stages.decode.image.image_frame` gives it.

    Args:
        items: The batch's work items (only single images are decoded here).
        device: The CUDA device.
        batch_size: Images per nvJPEG call.
    """

    def __init__(self, items: Sequence[WorkItem], device: str, *, batch_size: int = 64) -> None:
        from agr_batch.stages.decode.nvjpeg import iter_decoded_images

        paths = [
            i.media.path
            for i in items
            if not isinstance(i.media, ImageSequence) and i.media.kind == "image"
        ]
        self._results = iter_decoded_images(
            paths, batch_size=batch_size, device=device, layout="hwc"
        )

    def next_frame(self, path: Path) -> Frame:
        """The frame of the next image item (``path``), on the device.

        Raises:
            SourceError: The image cannot be read.
        """
        result = next(self._results)
        if isinstance(result, SourceError):
            raise result
        if Path(result.path) != Path(path):  # items are opened in order: a bug if not
            raise RuntimeError(f"image batcher out of step: {result.path} for {path}")
        image = result.image.contiguous()
        return Frame(str(path), 0, 0.0, image, result.start_time)


def open_frames(
    item: WorkItem,
    config: ProcessingConfig,
    decoder: str,
    *,
    device: str = "cpu",
    images: ImageBatcher | None = None,
    decode_threads: int | None = None,
) -> OpenedFrames:
    """The frames of ``item`` with the decoder ``decoder`` (``pyav``, ``nvdec``, ``torchcodec``).

    A window of a video decodes from ``item.decode_start`` to ``item.decode_end`` (the
    window and its overlap). Keyframes-only decoding always uses PyAV (the GPU decoders
    decode exact frames only).

    Args:
        item: A file, a window of a video, or an image sequence.
        config: Sampling options.
        decoder: The resolved video decoder.
        device: Where GPU decoders put their frames.
        images: Decodes single images in batches on the GPU (None: Pillow on the host).
        decode_threads: PyAV's decoder threads (None: FFmpeg's choice).

    Raises:
        SourceError: The file cannot be opened (a video is probed here; other failures are
            raised while iterating).
    """
    media = item.media
    if isinstance(media, ImageSequence):
        problems: list[str] = []
        return OpenedFrames(_sequence_frames(media, problems), None, len(media.images), problems)
    if media.kind == "image":
        if images is not None:
            return OpenedFrames(_one(images, media.path), None, 1)
        return OpenedFrames(frames(media), None, 1)
    info = probe(media.path)
    expected = expected_frames(
        info, item, sample_fps=config.sample_fps, keyframes_only=config.keyframes_only
    )
    if decoder == "nvdec" and not config.keyframes_only:
        from agr_batch.stages.decode.nvdec import nvdec_frames

        it = nvdec_frames(
            media.path,
            sample_fps=config.sample_fps,
            start=item.decode_start,
            end=item.decode_end,
            device=device,
        )
    elif decoder == "torchcodec" and not config.keyframes_only:
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
            threads=decode_threads,
        )
    return OpenedFrames(it, info.duration_s, expected)


def _one(images: ImageBatcher, path: Path) -> Iterator[Frame]:
    """The batcher's frame for ``path``, decoded when first asked for (and timed as decoding)."""
    yield images.next_frame(path)


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
