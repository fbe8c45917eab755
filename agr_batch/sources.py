"""Input discovery and decoding: video files with PyAV, images with Pillow.

Everything here is a plain generator of :class:`~agr_batch.records.Frame` records (in the
spirit of roboflow supervision's ``get_video_frames_generator``); nothing is buffered beyond
the frame being yielded.

Error policy: every failure to read a source is a :class:`SourceError` whose ``str()`` is one
line, ``"<path>: <reason>"``. Generators are lazy, so a file that cannot be opened raises on
the first ``next()``. A video that breaks mid-stream (a truncated file, corrupt packets the
decoder refuses, fewer packets than the container's index lists) first yields every frame
it could decode and then raises :class:`SourceError`; the caller keeps those frames but counts
the file as failed. (With frame threading, the few frames still inside the decoder when it
reports an error can be lost; in keyframes-only mode that may be the last keyframe.)
A video without a frame index that merely ends before its stated duration (a truncated
Matroska or MPEG-TS file) cannot be told apart with certainty from one whose audio outlasts
the video, so it only logs a warning.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import math
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agr_batch.records import Frame

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "STOP",
    "VIDEO_EXTENSIONS",
    "Discovery",
    "MediaFile",
    "MediaKind",
    "Sampler",
    "SourceError",
    "StreamFacts",
    "VideoInfo",
    "discover",
    "frames",
    "image_frame",
    "media_kind",
    "open_container",
    "open_regular",
    "probe",
    "stream_facts",
    "video_frames",
]

logger = logging.getLogger(__name__)

MediaKind = Literal["video", "image"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
)
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv",
        ".flv", ".3gp",
    }
)  # fmt: skip

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused (decompression-bomb guard)."""

# Tolerance when comparing frame times with sampling instants: container time bases round
# PTS (Matroska to 1 ms), so 0.5 s may be stored as 0.4995 s. It is capped at half the frame
# interval (see _time_eps): at 1000 fps a 1 ms tolerance would take frames 499 and 500.
_TIME_EPS = 1e-3

# Images are converted to RGB in strips of about this many bytes of working memory, so an
# 88-megapixel 16-bit picture needs its RGB result and one strip, not five float64 copies.
_STRIP_BYTES = 32 << 20

# EXIF tags (Exif IFD) for the capture time.
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011
_SUBSEC_TIME_ORIGINAL = 0x9291


class SourceError(Exception):
    """A media file that cannot be read; ``str()`` is one line naming the file and the reason.

    Attributes:
        path: The file.
        reason: Why it failed (one line, without the path).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        # Library messages sometimes carry newlines; the contract is one line.
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class MediaFile:
    """A file to process.

    Attributes:
        path: The file's path (as found, not resolved).
        kind: ``"video"`` or ``"image"``, from the extension.
    """

    path: Path
    kind: MediaKind


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover` found.

    Attributes:
        media: Media files, in input order; each directory's files sorted by path.
        skipped: Files whose extension is not a known image or video extension.
        missing: Inputs (or entries under them, such as dangling symlinks) that do not exist.
        errors: ``(path, reason)`` for directories that could not be listed.
    """

    media: tuple[MediaFile, ...]
    skipped: tuple[Path, ...] = ()
    missing: tuple[Path, ...] = ()
    errors: tuple[tuple[Path, str], ...] = ()

    @property
    def videos(self) -> tuple[MediaFile, ...]:
        """The video files."""
        return tuple(m for m in self.media if m.kind == "video")

    @property
    def images(self) -> tuple[MediaFile, ...]:
        """The image files."""
        return tuple(m for m in self.media if m.kind == "image")


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


# ---------------------------------------------------------------------------------------------
# Discovery


def media_kind(path: str | os.PathLike[str]) -> MediaKind | None:
    """``"image"`` or ``"video"`` by the file's extension (case-insensitive), else None."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def discover(inputs: Sequence[str | os.PathLike[str]]) -> Discovery:
    """Find the media files among files and directories.

    Directories are walked recursively, following symlinks but never entering a directory
    twice (so symlink loops end). Inside directories, hidden entries (names starting with
    ``.``, such as ``.git`` or macOS ``._IMG_0001.jpg`` resource forks) are ignored silently;
    a hidden file named explicitly is classified like any other. Files are classified by
    extension only. A file reached twice (listed twice, or through a directory and by name)
    is reported once.

    Args:
        inputs: Files and directories, in the order they should be processed.

    Returns:
        The media files, skipped files, missing paths and listing errors.
    """
    media: list[MediaFile] = []
    skipped: list[Path] = []
    missing: list[Path] = []
    errors: list[tuple[Path, str]] = []
    seen_files: set[tuple[int, int]] = set()
    seen_dirs: set[tuple[int, int]] = set()

    def add_file(path: Path) -> None:
        try:
            st = path.stat()
        except OSError:  # dangling symlink, symlink loop, vanished file
            missing.append(path)
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_files:
            return
        seen_files.add(key)
        kind = media_kind(path)
        if kind is None:
            skipped.append(path)
        else:
            media.append(MediaFile(path, kind))

    for item in inputs:
        root = Path(item)
        if root.is_dir():
            _walk(root, add_file, seen_dirs, errors)
        elif root.exists():
            add_file(root)
        else:
            missing.append(root)
    if skipped:
        logger.info("skipped %d file(s) that are not images or videos", len(skipped))
    return Discovery(tuple(media), tuple(skipped), tuple(missing), tuple(errors))


def _walk(
    root: Path,
    add_file: Callable[[Path], None],
    seen_dirs: set[tuple[int, int]],
    errors: list[tuple[Path, str]],
) -> None:
    """Depth-first sorted walk of ``root`` calling ``add_file`` on every non-hidden file."""
    try:
        st = root.stat()
    except OSError as e:
        errors.append((root, e.strerror or str(e)))
        return
    key = (st.st_dev, st.st_ino)
    if key in seen_dirs:  # symlink loop or the same directory given twice
        return
    seen_dirs.add(key)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        errors.append((root, e.strerror or str(e)))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            _walk(path, add_file, seen_dirs, errors)
        else:
            add_file(path)


# ---------------------------------------------------------------------------------------------
# Decoding


def frames(
    source: str | os.PathLike[str] | MediaFile,
    *,
    sample_fps: float | None = 2.0,
    start: float | None = None,
    end: float | None = None,
    keyframes_only: bool = False,
    skip_nonref: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_tz: dt.tzinfo | None = None,
) -> Iterator[Frame]:
    """Frames of a video or the single frame of an image, dispatched on the file's kind.

    Args:
        source: A path or a :class:`MediaFile` (whose kind is then trusted).
        sample_fps: Video only; see :func:`video_frames`.
        start: Video only; see :func:`video_frames`.
        end: Video only; see :func:`video_frames`.
        keyframes_only: Video only; see :func:`video_frames`.
        skip_nonref: Video only; see :func:`video_frames`.
        max_pixels: Image only; see :func:`image_frame`.
        exif_tz: Image only; see :func:`image_frame`.

    Yields:
        Frames in time order.

    Raises:
        SourceError: If the file is neither a known image nor video type, or cannot be read.
    """
    if isinstance(source, MediaFile):
        path, kind = source.path, source.kind
    else:
        path = Path(source)
        kind = media_kind(path)
    if kind == "video":
        yield from video_frames(
            path,
            sample_fps=sample_fps,
            start=start,
            end=end,
            keyframes_only=keyframes_only,
            skip_nonref=skip_nonref,
        )
    elif kind == "image":
        yield image_frame(path, max_pixels=max_pixels, exif_tz=exif_tz)
    else:
        raise SourceError(path, f"unknown media extension {path.suffix!r}")


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
) -> Iterator[Frame]:
    """Decode a video with PyAV and yield sampled frames as RGB.

    Sampling follows presentation timestamps, so variable-frame-rate video is sampled evenly
    in time: with ``t0`` the time of the first eligible frame, a frame is taken when its time
    reaches the next instant ``t0 + k / sample_fps``; after a gap, sampling resumes at the
    next instant after the frame taken (no burst of catch-up frames). Only taken frames are
    converted to RGB, at full size. The stream's display rotation is applied, so portrait
    phone videos come out upright.

    Args:
        path: The video file.
        sample_fps: Frames per second to take; ``None`` or ``<= 0`` takes every frame.
        start: Skip frames before this many seconds (frames are still decoded: no seeking, so
            that ``frame_index`` stays exact).
        end: Stop before the first frame at or after this many seconds.
        keyframes_only: Ask the decoder to skip every non-key frame
            (``skip_frame="NONKEY"``, several times faster) and sample among keyframes.
        skip_nonref: Ask the decoder to skip frames no other frame refers to
            (``skip_frame="NONREF"``: in x264 output about half the frames, the B-frames) and
            sample among the rest; a sampled frame may then lie a frame or two after its
            instant, and ``frame_index`` is derived from the timestamp (exact for constant
            frame rate).

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
    _check_file(path)
    container = open_container(path)
    with container:
        if not container.streams.video:
            raise SourceError(path, "no video stream")
        stream = container.streams.video[0]
        _check_frame_size(path, stream)
        stream.thread_type = "AUTO"
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        elif skip_nonref:
            stream.codec_context.skip_frame = "NONREF"
        start_time = _video_start_time(path, container)
        time_base = stream.time_base or Fraction(1, 1_000_000)
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        origin = stream.start_time  # PTS of the stream's start, in time_base units

        sampler = Sampler(sample_fps, rate=rate, start=start, end=end)
        last_t = -math.inf
        stopped = False
        rotation_warned = False
        state = _DecodeState()
        for index, frame in _decode(container, stream, keyframes_only, state):
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
            self.error = _ffmpeg_reason(e)


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    keyframes_only: bool,
    state: _DecodeState,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(frame index, frame) in presentation order, surviving bad packets.

    A packet the decoder refuses is counted and skipped (as the ffmpeg tool does); a read
    error ends the demuxing. Either way the decoder is drained, so the frames it still holds
    (frame threading keeps several in flight) are not lost. In keyframes-only mode the index
    is that of the keyframe's packet.
    """
    key_packets: dict[int, int] = {}  # PTS of a key packet -> its index
    demux = container.demux(stream)
    while True:
        try:
            packet = next(demux, None)
        except av.FFmpegError as e:
            state.note(e)
            packet = None
        if packet is None:  # end of input (demux's own flush packet already drained)
            if state.error is None:
                return
            try:
                out = stream.decode(None)
            except av.FFmpegError:
                return
        else:
            if packet.size:
                if keyframes_only and packet.is_keyframe and packet.pts is not None:
                    key_packets[packet.pts] = state.packets
                state.packets += 1
            try:
                out = packet.decode()
            except av.FFmpegError as e:
                state.note(e)
                continue
        for frame in out:
            index = state.decoded
            state.decoded += 1
            if keyframes_only and frame.pts is not None:
                index = key_packets.pop(frame.pts, index)
            yield index, frame
        if packet is None:
            return


def image_frame(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_tz: dt.tzinfo | None = None,
) -> Frame:
    """Read an image with Pillow as an upright RGB uint8 frame.

    EXIF orientation is applied. Grayscale, bilevel and palette images become RGB;
    transparency is composited on white; 16- and 32-bit integer and float images are scaled
    to 8 bits; CMYK and other colour spaces are converted by Pillow (ICC profiles are not
    applied). Multi-page files give their first page.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (decompression bombs). Pillow's
            own guard, ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 MP unless changed), is also
            enforced: its warning is treated as an error, so raise both to go beyond it.
        exif_tz: Timezone assumed for an EXIF ``DateTimeOriginal`` that has no
            ``OffsetTimeOriginal`` (cameras store wall-clock time). None assumes the local
            timezone of this machine, the usual case when photos are processed where they
            were taken; pass ``datetime.UTC`` for machine-independent results.

    Returns:
        The frame (``frame_index`` 0, ``time_s`` 0), with ``start_time`` the EXIF capture time
        when present, else the file's mtime.

    Raises:
        SourceError: If the file is empty, not an image, truncated, too large or undecodable.
    """
    path = Path(path)
    _check_file(path)
    try:
        fp = open_regular(path)
    except OSError as e:
        raise SourceError(path, e.strerror or str(e)) from None
    with fp:
        return _image_frame(path, fp, max_pixels=max_pixels, exif_tz=exif_tz)


def _image_frame(path: Path, fp: BinaryIO, *, max_pixels: int, exif_tz: dt.tzinfo | None) -> Frame:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it a refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise SourceError(path, f"image too large ({e})") from None
    except UnidentifiedImageError:
        raise SourceError(path, "not an image Pillow can open") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SourceError(path, f"cannot open image ({e})") from None
    with im:
        pixels = im.width * im.height
        if pixels > max_pixels:
            raise SourceError(path, f"image too large: {pixels} pixels > limit {max_pixels}")
        try:
            exif = im.getexif()
        except Exception as e:  # a corrupt EXIF block should not lose the picture
            logger.warning("%s: unreadable EXIF ignored (%s)", path, e)
            exif = None
        try:
            im.load()
        except OSError as e:
            if "truncated" in str(e):
                raise SourceError(path, "truncated image") from None
            raise SourceError(path, f"cannot decode image ({e})") from None
        except (SyntaxError, ValueError) as e:
            raise SourceError(path, f"cannot decode image ({e})") from None
        try:
            # In place: without an orientation tag a copy (the whole picture again) is made.
            upright = ImageOps.exif_transpose(im, in_place=True) or im
        except Exception as e:
            logger.warning("%s: EXIF orientation ignored (%s)", path, e)
            upright = im
        rgb = _to_rgb(upright)
    start_time = (_exif_time(exif, exif_tz) if exif is not None else None) or _mtime(path)
    return Frame(str(path), 0, 0.0, rgb, start_time)


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
        raise SourceError(path, f"decoding failed ({_ffmpeg_reason(e)})") from None
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
    _check_file(path)
    container = open_container(path)
    with container:
        if not container.streams.video:
            raise SourceError(path, "no video stream")
        stream = container.streams.video[0]
        rotation = 0
        try:
            for frame in container.decode(stream):
                rotation = int(frame.rotation) % 360
                rotation -= 360 if rotation > 180 else 0  # one name per angle: 180, never -180
                break
        except av.FFmpegError as e:
            raise SourceError(path, f"decoding failed ({_ffmpeg_reason(e)})") from None
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


def capture_time(path: str | os.PathLike[str], *, exif_tz: dt.tzinfo | None = None) -> dt.datetime:
    """When an image was taken: EXIF ``DateTimeOriginal`` (pixels are not decoded), else mtime.

    Used to order a folder of snapshots as one timestamped sequence. Anything but a regular
    file (a FIFO would block the open forever) is ordered by its mtime, unopened.
    """
    path = Path(path)
    try:
        with open_regular(path) as fp, Image.open(fp) as im:
            when = _exif_time(im.getexif(), exif_tz)
    except Exception:  # unreadable, not an image or not a file: its mtime still orders it
        when = None
    if when is not None:
        return when
    try:
        return _mtime(path)
    except OSError:  # vanished or dangling: ordered first; reading it reports the error
        return dt.datetime.fromtimestamp(0, tz=dt.UTC)


# ---------------------------------------------------------------------------------------------
# Helpers


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file for reading only if it is a regular file.

    The open itself uses ``O_NONBLOCK``, so a FIFO (or a device) named like a picture
    returns at once instead of waiting forever for a writer; the opened descriptor is then
    checked, so a file swapped for something else after an earlier ``stat`` is caught too.

    Raises:
        OSError: If the file cannot be opened, or (errno
            ``EINVAL``, "not a regular file") when it is something else.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)  # ignored by regular files; reads behave as usual anyway
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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


def _check_file(path: Path) -> None:
    """Raise SourceError for a missing, non-regular or empty file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SourceError(path, "no such file") from None
    except OSError as e:
        raise SourceError(path, e.strerror or str(e)) from None
    if not path.is_file():
        raise SourceError(path, "not a regular file")
    if st.st_size == 0:
        raise SourceError(path, "empty file")


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
        raise SourceError(path, f"not a media file PyAV can open ({_ffmpeg_reason(e)})") from None


def _ffmpeg_reason(e: av.FFmpegError) -> str:
    """FFmpeg's error text without PyAV's errno and file-name decoration."""
    return str(getattr(e, "strerror", None) or e)


def _mtime(path: Path) -> dt.datetime:
    """The file's modification time as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC)


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
    finished = _mtime(path)
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


def _exif_time(exif: Image.Exif, tz: dt.tzinfo | None) -> dt.datetime | None:
    """EXIF DateTimeOriginal (+ sub-seconds, + OffsetTimeOriginal) as an aware datetime."""
    try:
        ifd = exif.get_ifd(_EXIF_IFD)
    except Exception:
        return None
    raw = ifd.get(_DATETIME_ORIGINAL)
    if not isinstance(raw, str):
        return None
    try:
        when = dt.datetime.strptime(raw.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    subsec = str(ifd.get(_SUBSEC_TIME_ORIGINAL) or "").strip("\x00 ")
    if subsec.isdigit():
        when = when.replace(microsecond=int((subsec + "000000")[:6]))
    offset = str(ifd.get(_OFFSET_TIME_ORIGINAL) or "").strip("\x00 ")
    match = re.fullmatch(r"([+-])(\d\d):?(\d\d)", offset)
    if match:
        sign = 1 if match[1] == "+" else -1
        delta = dt.timedelta(hours=int(match[2]), minutes=int(match[3]))
        return when.replace(tzinfo=dt.timezone(sign * delta))
    if tz is not None:
        return when.replace(tzinfo=tz)
    return when.astimezone()  # naive → this machine's local timezone


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode as a contiguous (H, W, 3) uint8 RGB array, converted in strips.

    Working memory beyond the picture and its result is one strip (``_STRIP_BYTES``).
    """
    width, height = im.size
    out = np.empty((height, width, 3), np.uint8)
    if im.mode.startswith("I") or im.mode == "F":
        samples = np.asarray(im)  # the raw samples, once; converted strip by strip
        scale = _high_depth_scale(samples)
        rows = max(1, _STRIP_BYTES // max(1, width * 3 * 8))
        for y in range(0, height, rows):
            out[y : y + rows] = _high_depth_strip(samples[y : y + rows], scale)
        return out
    rows = max(1, _STRIP_BYTES // max(1, width * 4 * 4))  # float32 RGBA while compositing
    for y in range(0, height, rows):
        strip = im if rows >= height else im.crop((0, y, width, min(height, y + rows)))
        out[y : y + rows] = _strip_to_rgb(strip)
    return out


def _strip_to_rgb(im: Image.Image) -> np.ndarray:
    """A low-depth picture (or strip of one) as (H, W, 3) uint8 RGB."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        # Composite on white: transparent areas look like paper, not like a black face.
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _high_depth_scale(a: np.ndarray) -> float:
    """Factor mapping 16/32-bit integer or float samples to 0..255, by type or data range."""
    if np.issubdtype(a.dtype, np.floating):
        peak = float(np.nanmax(a)) if a.size else 1.0
        return 255.0 if not peak > 1.0 else 255.0 / peak
    peak = int(a.max()) if a.size else 0
    if a.dtype.itemsize == 2 or 255 < peak <= 65535:
        return 1.0 / 257.0  # 0..65535 → 0..255
    if peak > 65535:
        return 255.0 / peak
    return 1.0  # mode "I" holding 8-bit values


def _high_depth_strip(a: np.ndarray, scale: float) -> np.ndarray:
    """Rows of high-depth grayscale (or multi-channel) samples as (h, W, 3) uint8."""
    if a.ndim == 3:  # some plugins give (H, W, C) for multi-channel high-depth data
        a = a[..., :3] if a.shape[2] >= 3 else a[..., 0]
    out = np.nan_to_num(a.astype(np.float64) * scale)
    out8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if out8.ndim == 2:
        out8 = np.repeat(out8[..., None], 3, axis=2)
    return out8


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
