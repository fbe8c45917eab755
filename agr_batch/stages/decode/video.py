"""Video decoding with PyAV: sampled frames by presentation time, probing, stream facts.

Only sampled frames are converted to RGB; the display rotation is applied. The sampling rule
(:class:`Sampler`) and the stream facts (:func:`stream_facts`) are shared with the GPU
decoders, so every decoder takes the same frames with the same times.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from agr_batch.records import Frame
from agr_batch.stages.decode.lookahead import SKIPPABLE_CODECS, ExactSkip
from agr_batch.stages.decode.media import (
    DEFAULT_MAX_PIXELS,
    SourceError,
    check_file,
    mtime,
)

logger = logging.getLogger(__name__)

# Tolerance when comparing frame times with sampling instants: container time bases round
# PTS (Matroska to 1 ms), so 0.5 s may be stored as 0.4995 s. It is capped at half the frame
# interval (see _time_eps): at 1000 fps a 1 ms tolerance would take frames 499 and 500.
_TIME_EPS = 1e-3


@dataclass(frozen=True)
class VideoInfo:
    """Stream properties of a video, from :func:`probe`.

    Attributes:
        duration_s: Duration in seconds, when the container states it.
        fps: Average frame rate, when known.
        width: Displayed width (after rotation).
        height: Displayed height (after rotation).
        rotation: Counter-clockwise display rotation in degrees (0, 90, 180, -90).
        frames: Frame count stated by the container (0 when unknown).
        codec: Decoder name.
    """

    duration_s: float | None
    fps: float | None
    width: int
    height: int
    rotation: int
    frames: int
    codec: str


STOP = object()
"""Returned by :meth:`Sampler.take` for a frame at or after the end of the time window."""


class Sampler:
    """Which decoded frames to take: every frame, or one per instant of a fixed rate.

    Sampling follows presentation time, so variable-frame-rate video is sampled evenly:
    with ``t0`` the time of the first eligible frame, a frame is taken when its time
    reaches the next instant ``t0 + k / sample_fps``; after a gap, sampling resumes at the
    next instant after the frame taken (no burst of catch-up frames). Every decoder uses
    this one rule, so they take the same frames.

    Args:
        sample_fps: Frames per second to take; ``None`` or ``<= 0`` takes every frame.
        rate: The stream's frame rate (bounds the time tolerance to half a frame interval).
        start: Skip frames before this many seconds.
        end: Stop before the first frame at or after this many seconds.
    """

    def __init__(
        self,
        sample_fps: float | None,
        *,
        rate: float,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        self.sample_fps = sample_fps if sample_fps and sample_fps > 0 else None
        self.eps = _time_eps(rate)
        self.start = start
        self.end = end
        self._t0 = 0.0
        self._next: float | None = None

    def take(self, t: float) -> bool | object:
        """True to take the frame at ``t`` seconds, False to skip it, :data:`STOP` to end."""
        eps = self.eps
        if self.start is not None and t < self.start - eps:
            return False
        if self.end is not None and t >= self.end - eps:
            return STOP
        if self.sample_fps is None:
            return True
        if self._next is None:
            self._t0 = self._next = t
        if t < self._next - eps:
            return False
        # The tolerance is in seconds on both sides: a frame taken eps early must not leave
        # the instant it stood for as the next one.
        k = math.floor((t - self._t0 + eps) * self.sample_fps) + 1
        self._next = self._t0 + k / self.sample_fps
        return True


def video_frames(
    path: str | os.PathLike[str],
    *,
    sample_fps: float | None = 2.0,
    start: float | None = None,
    end: float | None = None,
    keyframes_only: bool = False,
    skip_nonref: bool = False,
    threads: int | None = None,
) -> Iterator[Frame]:
    """Decode a video with PyAV and yield sampled frames as RGB.

    Sampling follows presentation timestamps, so variable-frame-rate video is sampled evenly
    in time: with ``t0`` the time of the first eligible frame, a frame is taken when its time
    reaches the next instant ``t0 + k / sample_fps``; after a gap, sampling resumes at the
    next instant after the frame taken (no burst of catch-up frames). Only taken frames are
    converted to RGB, at full size. The stream's display rotation is applied, so portrait
    phone videos come out upright. For H.264 in MP4/MOV/Matroska the decoder also skips the
    frames that are neither taken nor referred to by others (:mod:`.lookahead`): the same
    frames come out as from a full decode, for about 30 % less decoding at 2 fps.

    Args:
        path: The video file.
        sample_fps: Frames per second to take; ``None`` or ``<= 0`` takes every frame.
        start: Skip frames before this many seconds (frames are still decoded: no seeking, so
            that ``frame_index`` stays exact).
        end: Stop before the first frame at or after this many seconds.
        keyframes_only: Ask the decoder to skip every non-key frame
            (``skip_frame="NONKEY"``, several times faster) and sample among keyframes.
        skip_nonref: Ask the decoder to skip every frame no other frame refers to
            (``skip_frame="NONREF"``: in x264 output about half the frames, the B-frames),
            sampled ones included, and sample among the rest; a sampled frame may then lie a
            frame or two after its instant, and ``frame_index`` is derived from the timestamp
            (exact for constant frame rate). The default already skips the unsampled ones
            exactly, so this saves little more.
        threads: Decoder threads (None: FFmpeg's choice, about one per core). Fewer leave
            cores to a face detector running beside the decoder.

    Yields:
        Frames with ``time_s`` in seconds from the stream's start, ``frame_index`` the index
        of the frame in the stream (in keyframes-only mode, the index of the keyframe's packet,
        which equals its frame index in closed-GOP streams such as x264's default), and
        ``start_time`` from the container's ``creation_time`` (else the file's mtime less
        the duration: the mtime is when the recording ended).

    Raises:
        SourceError: If the file cannot be opened or has no video stream (on the first
            ``next()``), or decoding fails part way or the file holds fewer frames than its
            index lists (after the good frames were yielded).
    """
    path = Path(path)
    with _video(path) as (container, stream):
        _check_frame_size(path, stream)
        stream.thread_type = "AUTO"
        if threads is not None:
            stream.codec_context.thread_count = max(1, int(threads))
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        elif skip_nonref:
            stream.codec_context.skip_frame = "NONREF"
        start_time = _video_start_time(path, container)
        time_base = stream.time_base or Fraction(1, 1_000_000)
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        origin = stream.start_time  # PTS of the stream's start, in time_base units

        sampler = Sampler(sample_fps, rate=rate, start=start, end=end)
        skip = None
        # Taking every frame leaves nothing to skip; the other modes skip frames themselves.
        some_untaken = bool(sample_fps and sample_fps > 0) or start is not None
        if (
            some_untaken
            and not keyframes_only
            and not skip_nonref
            and _exact_skip_applies(container, stream)
        ):
            skip = ExactSkip(
                Sampler(sample_fps, rate=rate, start=start, end=end).take,
                lambda pts: float((pts - origin) * time_base),  # type: ignore[operator]
                name=str(path),
            )
        last_t = -math.inf
        stopped = False
        rotation_warned = False
        state = _DecodeState()
        for index, frame in _decode(container, stream, keyframes_only, state, skip):
            if frame.pts is None:
                t = last_t + 1.0 / rate if last_t > -math.inf else 0.0
            else:
                if origin is None:
                    origin = frame.pts
                t = float((frame.pts - origin) * time_base)
            last_t = t
            verdict = sampler.take(t)
            if verdict is STOP:
                stopped = True
                break
            if not verdict:
                continue
            image = frame.to_ndarray(format="rgb24")
            rotation = frame.rotation
            if rotation:
                quarter = round(rotation / 90)
                if rotation != quarter * 90 and not rotation_warned:
                    logger.warning("%s: rotation %d° rounded to %d°", path, rotation, quarter * 90)
                    rotation_warned = True
                # Display matrix angles are counter-clockwise, as is np.rot90.
                image = np.ascontiguousarray(np.rot90(image, quarter % 4))
            if skip_nonref and not keyframes_only:
                index = round(t * rate)  # decoded frames are no longer consecutive
            yield Frame(str(path), index, t, image, start_time)
        if state.error is not None:
            raise SourceError(
                path,
                f"decoding failed ({state.error}; {state.failed} error(s), "
                f"{state.decoded} frames decoded)",
            )
        if stopped:
            return
        stated = int(stream.frames or 0)
        # MP4/MOV indexes list every sample, so missing packets prove truncation.
        if stated and state.packets < stated - max(1, stated // 100):
            raise SourceError(
                path,
                f"truncated: {state.packets} of {stated} frames present "
                f"(decoded to {max(last_t, 0.0):.2f} s)",
            )
        if not stated and not keyframes_only:
            _warn_if_short(path, container, stream, last_t, rate)


@dataclass
class _DecodeState:
    """Counters of one decode, and the first error met (decoding goes on past errors)."""

    packets: int = 0  # non-empty packets read
    decoded: int = 0  # frames out of the decoder
    failed: int = 0  # packets the demuxer or decoder refused
    error: str | None = None

    def note(self, e: av.FFmpegError) -> None:
        self.failed += 1
        if self.error is None:
            self.error = ffmpeg_reason(e)


def _exact_skip_applies(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> bool:
    """Whether :class:`ExactSkip` is safe here: H.264 with one frame per packet and times.

    MP4/MOV and Matroska store a frame (both fields of an interlaced one) per packet; MPEG-TS
    may split the fields, and a half-skipped frame would be damaged.
    """
    fmt = container.format.name
    return (
        stream.codec_context.name in SKIPPABLE_CODECS
        and stream.start_time is not None
        and ("mp4" in fmt or "matroska" in fmt)
    )


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    keyframes_only: bool,
    state: _DecodeState,
    skip: ExactSkip | None = None,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(frame index, frame) in presentation order, surviving bad packets.

    A packet the decoder refuses is counted and skipped (as the ffmpeg tool does); a read
    error ends the demuxing. Either way the decoder is drained, so the frames it still holds
    (frame threading keeps several in flight) are not lost. In keyframes-only mode the index
    is that of the keyframe's packet. With ``skip``, packets pass through its look-ahead and
    the decoder drops the frames it marks that nothing refers to (see :mod:`.lookahead`).
    """
    key_packets: dict[int, int] = {}  # PTS of a key packet -> its index
    last_index = -1
    demux = container.demux(stream)
    while True:
        try:
            packet = next(demux, None)
        except av.FFmpegError as e:
            state.note(e)
            packet = None
        ready: list[tuple[av.Packet, bool]] = []
        if packet is not None and packet.size:
            if keyframes_only and packet.is_keyframe and packet.pts is not None:
                key_packets[packet.pts] = state.packets
            state.packets += 1
            ready = skip.push(packet) if skip is not None else [(packet, False)]
        elif packet is None and skip is not None:
            ready = skip.flush()
        for out in _decoded(stream, packet, ready, skip, state):
            # Frame by frame as each packet is decoded: the look-ahead releases up to 48
            # packets at the end, and their frames are not all held at once.
            for frame in out:
                found = skip.index(frame.pts) if skip is not None else None
                if found is not None:
                    index = found
                else:
                    index = state.decoded if skip is None else last_index + 1
                state.decoded += 1
                if keyframes_only and frame.pts is not None:
                    index = key_packets.pop(frame.pts, index)
                last_index = index
                yield index, frame
        if packet is None:
            return


def _decoded(
    stream: av.video.stream.VideoStream,
    packet: av.Packet | None,
    ready: list[tuple[av.Packet, bool]],
    skip: ExactSkip | None,
    state: _DecodeState,
) -> Iterator[list[av.VideoFrame]]:
    """The decoder's output for each packet in ``ready``, then, at the end, its drain."""
    codec = stream.codec_context
    for held, skippable in ready:
        if skip is not None:
            codec.skip_frame = "NONREF" if skippable else "DEFAULT"
        try:
            out = held.decode()
        except av.FFmpegError as e:
            state.note(e)
            continue
        yield out
    if packet is None and (skip is not None or state.error is not None):
        # Drain what the decoder still holds: demux's own flush packet did it unless
        # demuxing failed, or the look-ahead held that flush packet back.
        codec.skip_frame = "DEFAULT"
        with contextlib.suppress(av.FFmpegError):
            yield stream.decode(None)
    elif packet is not None and not packet.size and skip is None:
        # PyAV's own flush packet at the end of demuxing: as before, through the decoder.
        try:
            yield packet.decode()
        except av.FFmpegError as e:
            state.note(e)


@dataclass(frozen=True)
class StreamFacts:
    """What another decoder needs to time and orient a video stream as PyAV does.

    Attributes:
        time_base: Seconds per PTS unit.
        origin: PTS of the stream's start (None: the first frame's PTS).
        rate: Average frame rate (30 when the container does not say).
        rotation: Counter-clockwise display rotation in degrees.
        start_time: Recording start (``creation_time``, else the mtime less the duration).
    """

    time_base: Fraction
    origin: int | None
    rate: float
    rotation: int
    start_time: dt.datetime


def stream_facts(path: Path, container: av.container.InputContainer) -> StreamFacts:
    """Timing and orientation of the first video stream of an opened ``container``.

    Decodes at most the first frame (for the display rotation).
    """
    stream = container.streams.video[0]
    rotation = 0
    try:
        for frame in container.decode(stream):
            rotation = int(frame.rotation) % 360
            break
    except av.FFmpegError as e:
        raise SourceError(path, f"decoding failed ({ffmpeg_reason(e)})") from None
    return StreamFacts(
        time_base=stream.time_base or Fraction(1, 1_000_000),
        origin=stream.start_time,
        rate=float(stream.average_rate or stream.guessed_rate or 0) or 30.0,
        rotation=rotation,
        start_time=_video_start_time(path, container),
    )


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Stream properties of a video; decodes only its first frame (for the rotation).

    Raises:
        SourceError: If the file cannot be opened or has no video stream.
    """
    path = Path(path)
    with _video(path) as (container, stream):
        rotation = 0
        try:
            for frame in container.decode(stream):
                rotation = int(frame.rotation) % 360
                rotation -= 360 if rotation > 180 else 0  # one name per angle: 180, never -180
                break
        except av.FFmpegError as e:
            raise SourceError(path, f"decoding failed ({ffmpeg_reason(e)})") from None
        width, height = stream.codec_context.width, stream.codec_context.height
        if round(rotation / 90) % 2:
            width, height = height, width
        duration = _duration(container)
        fps = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            duration_s=duration,
            fps=float(fps) if fps else None,
            width=int(width),
            height=int(height),
            rotation=rotation,
            frames=int(stream.frames or 0),
            codec=stream.codec_context.name,
        )


def _time_eps(rate: float) -> float:
    """Tolerance of a sampling instant: 1 ms, at most half a frame interval."""
    return min(_TIME_EPS, 0.5 / rate) if rate > 0 else _TIME_EPS


def _check_frame_size(path: Path, stream: av.video.stream.VideoStream) -> None:
    """Refuse videos whose frames exceed the image pixel limit (memory per frame)."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > DEFAULT_MAX_PIXELS:
        raise SourceError(
            path, f"frames too large: {width}x{height} pixels > limit {DEFAULT_MAX_PIXELS}"
        )


# PyAV 12-18 decode metadata strictly unless told ``metadata_errors="replace"`` (a camera's
# invalid UTF-8 title would otherwise fail the whole file); PyAV 19 removed the keyword and
# always decodes with ``surrogateescape``. Whether this PyAV takes it is learnt on first use.
_OPEN_KWARGS: dict[str, str] = {"metadata_errors": "replace"}


def open_container(path: Path) -> av.container.InputContainer:
    """Open ``path`` for reading with whatever options this PyAV version accepts.

    Raises:
        SourceError: If FFmpeg cannot open the file.
    """
    global _OPEN_KWARGS
    try:
        try:
            return av.open(str(path), **_OPEN_KWARGS)
        except TypeError as e:
            if not _OPEN_KWARGS or "metadata_errors" not in str(e):
                raise
            _OPEN_KWARGS = {}
            return av.open(str(path))
    except av.FFmpegError as e:
        raise SourceError(path, f"not a media file PyAV can open ({ffmpeg_reason(e)})") from None


def ffmpeg_reason(e: av.FFmpegError) -> str:
    """FFmpeg's error text without PyAV's errno and file-name decoration."""
    return str(getattr(e, "strerror", None) or e)


@contextlib.contextmanager
def _video(
    path: Path,
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """An opened video file and its first video stream, closed on exit.

    Raises:
        SourceError: The file is missing, not regular, empty, not media or has no video.
    """
    check_file(path)
    with open_container(path) as container:
        if not container.streams.video:
            raise SourceError(path, "no video stream")
        yield container, container.streams.video[0]


def _duration(container: av.container.InputContainer) -> float | None:
    """The first video stream's duration (else the container's), seconds; None if unknown."""
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _video_start_time(path: Path, container: av.container.InputContainer) -> dt.datetime:
    """When a recording started: ``creation_time``, else the file's mtime less the duration.

    A recorder's mtime is its last write, the END of the recording: taken as the start, it
    would shift every window late by the clip's length.
    """
    found = _container_start_time(container)
    if found is not None:
        return found
    duration = _duration(container)
    finished = mtime(path)
    if duration is None or not math.isfinite(duration) or duration <= 0:
        return finished
    return finished - dt.timedelta(seconds=duration)


def _container_start_time(container: av.container.InputContainer) -> dt.datetime | None:
    """Recording start from container metadata (``creation_time``, Apple's creationdate)."""
    sources = [container.metadata, *(s.metadata for s in container.streams.video)]
    for key in ("creation_time", "com.apple.quicktime.creationdate"):
        for metadata in sources:
            value = metadata.get(key)
            if value:
                parsed = _parse_iso(value)
                if parsed is not None:
                    return parsed
    return None


def _parse_iso(value: str) -> dt.datetime | None:
    """Parse an ISO-8601 time; naive means UTC (MP4/QuickTime store UTC). Epoch values → None."""
    text = value.strip().replace(" ", "T", 1)
    # Python 3.11 accepts most ISO forms but not more than 6 fractional digits.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        logger.debug("unparseable creation_time %r", value)
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    # Cameras without a clock write 0, which muxers store as 1904 or 1970.
    if parsed.year < 1980:
        return None
    return parsed.astimezone(dt.UTC)


def _warn_if_short(
    path: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    last_t: float,
    rate: float,
) -> None:
    """Log when decoding ended well before the duration the container states."""
    if stream.duration is not None and stream.time_base is not None:
        stated = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        stated = container.duration / 1_000_000
    else:
        return
    covered = last_t + 1.0 / rate if last_t > -math.inf else 0.0
    if stated - covered > max(1.0, 0.05 * stated):
        logger.warning(
            "%s: decoding ended at %.2f s of %.2f s stated; the file may be truncated",
            path,
            covered,
            stated,
        )
