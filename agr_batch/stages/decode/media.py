"""Finding the inputs: media files among files and folders, by extension.

Also the error every decoder raises (:class:`SourceError`, one line naming the file) and the
safe open of a regular file that all readers share.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

if TYPE_CHECKING:
    from agr_batch.records import Frame

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
        # The summaries of run and scan count them; the paths are in Discovery.skipped.
        logger.debug("skipped %d file(s) that are not images or videos", len(skipped))
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


def frames(
    source: str | os.PathLike[str] | MediaFile,
    *,
    sample_fps: float | None = 2.0,
    start: float | None = None,
    end: float | None = None,
    keyframes_only: bool = False,
    skip_nonref: bool = False,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_tz: dt.tzinfo | None = None,
) -> Iterator[Frame]:
    """Frames of a video or the single frame of an image, dispatched on the file's kind.

    Args:
        source: A path or a :class:`MediaFile` (whose kind is then trusted).
        sample_fps: Video only; see :func:`~agr_batch.stages.decode.video.video_frames`.
        start: Video only; see :func:`~agr_batch.stages.decode.video.video_frames`.
        end: Video only; see :func:`~agr_batch.stages.decode.video.video_frames`.
        keyframes_only: Video only; see :func:`~agr_batch.stages.decode.video.video_frames`.
        skip_nonref: Video only; see :func:`~agr_batch.stages.decode.video.video_frames`.
        threads: Video only; see :func:`~agr_batch.stages.decode.video.video_frames`.
        max_pixels: Image only; see :func:`~agr_batch.stages.decode.image.image_frame`.
        exif_tz: Image only; see :func:`~agr_batch.stages.decode.image.image_frame`.

    Yields:
        Frames in time order.

    Raises:
        SourceError: If the file is neither a known image nor video type, or cannot be read.
    """
    # Imported here: finding inputs needs neither PyAV nor Pillow (a fast command line).
    from agr_batch.stages.decode.image import image_frame
    from agr_batch.stages.decode.video import video_frames

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
            threads=threads,
        )
    elif kind == "image":
        yield image_frame(path, max_pixels=max_pixels, exif_tz=exif_tz)
    else:
        raise SourceError(path, f"unknown media extension {path.suffix!r}")


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


def why_missing(path: Path) -> str:
    """Why a path listed as missing cannot be opened, in a few words, for error lines."""
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if e.errno == errno.ENOENT and path.is_symlink():
            return f"dangling symbolic link (to {os.readlink(path)})"
        if e.errno == errno.ENOENT:
            return "no such file or directory"
        return e.strerror or str(e)
    return "vanished while being listed"  # it exists again: a file replaced mid-listing


def check_file(path: Path) -> None:
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


def mtime(path: Path) -> dt.datetime:
    """The file's modification time as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC)
