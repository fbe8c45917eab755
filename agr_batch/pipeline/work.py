"""Units of work: whole files, image sequences, and overlapping time windows of one video.

A :class:`WorkItem` is what a pipeline processes: a file, a folder of snapshots processed as
one sequence, or a segment of a video. A segment owns the frames of its window
``[start, end)`` and also decodes ``overlap_s`` seconds on each side of it, so that its
tracker sees every person crossing a boundary on both sides of it; those context frames are
not counted, and :mod:`agr_batch.pipeline.stitch` uses the faces in them to join the tracks
of consecutive segments into the same people.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agr_batch.stages.decode.media import MediaFile, MediaKind

__all__ = [
    "TIME_EPS",
    "ImageSequence",
    "Media",
    "WorkItem",
    "group_sequences",
    "plan_segments",
    "segment_overlap_s",
]

TIME_EPS = 1e-3
"""Tolerance of a window boundary in seconds, as the decoders' sampling uses (container time
bases round timestamps, Matroska to 1 ms): a frame at ``end - TIME_EPS`` or later belongs to
the next window."""

MIN_OVERLAP_S = 2.0
"""The shortest overlap between segments, whatever the tracker's gap."""

KEYFRAME_INTERVAL_GUESS_S = 10.0
"""Keyframe spacing assumed when planning keyframes-only segments (x264's default of 250
frames is 8.3 s at 30 fps, 10 s at 25 fps); the tracker measures the real one."""


@dataclass(frozen=True)
class ImageSequence:
    """The images of one folder, processed as one timestamped sequence (``--sequence``).

    Attributes:
        path: The folder (the ``source`` of its rows).
        images: The images, ordered by capture time.
        kind: Sequences are windowed and tracked like videos.
    """

    path: Path
    images: tuple[Path, ...]
    kind: MediaKind = "video"


Media = MediaFile | ImageSequence


def group_sequences(media: Sequence[MediaFile]) -> list[Media]:
    """Videos as they are; images grouped by folder into sequences ordered by capture time."""
    from agr_batch.stages.decode.image import capture_time

    out: list[Media] = []
    folders: dict[Path, list[Path]] = {}
    for m in media:
        if m.kind == "image":
            folders.setdefault(m.path.parent, []).append(m.path)
        else:
            out.append(m)
    for folder, images in folders.items():
        ordered = sorted(images, key=lambda p: (capture_time(p), str(p)))
        out.append(ImageSequence(folder, tuple(ordered)))
    return out


@dataclass(frozen=True)
class WorkItem:
    """A file, or a time window of one video, to process.

    Attributes:
        media: The file or image sequence.
        start: Seconds where the window starts (None: the first frame).
        end: Seconds where it ends, exclusive (None: the end of the video).
        overlap_s: Seconds decoded on each side of the window as tracker context: their
            faces are kept in the tracks (for stitching) but their frames are not counted.
        index: Position of the window in its video (0-based).
        count: Windows the video was cut into (1: the whole file).
    """

    media: Media
    start: float | None = None
    end: float | None = None
    overlap_s: float = 0.0
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"WorkItem: index {self.index} outside 0..{self.count - 1}")
        if not (self.overlap_s >= 0 and math.isfinite(self.overlap_s)):
            raise ValueError(f"WorkItem: overlap must be >= 0 seconds, got {self.overlap_s}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"WorkItem: empty window [{self.start}, {self.end})")
        windowed = self.start is not None or self.end is not None or self.overlap_s
        if windowed and not (isinstance(self.media, MediaFile) and self.media.kind == "video"):
            raise ValueError(f"{self.media.path}: only a video can be cut into time windows")

    @property
    def source(self) -> str:
        """The ``source`` of the rows this item produces: its path as given."""
        return str(self.media.path)

    @property
    def kind(self) -> MediaKind:
        """``video`` (also for image sequences) or ``image``."""
        return self.media.kind

    @property
    def decode_start(self) -> float | None:
        """Where decoding starts: the window's start less the overlap (None: the start)."""
        return None if self.start is None else max(0.0, self.start - self.overlap_s)

    @property
    def decode_end(self) -> float | None:
        """Where decoding stops: the window's end plus the overlap (None: the end)."""
        return None if self.end is None else self.end + self.overlap_s

    def owns(self, time_s: float) -> bool:
        """Whether a frame at ``time_s`` belongs to the window (not to its overlap)."""
        if self.start is not None and time_s < self.start - TIME_EPS:
            return False
        return self.end is None or time_s < self.end - TIME_EPS


def segment_overlap_s(
    *, max_gap_s: float, gap_samples: float, sample_fps: float, keyframes_only: bool
) -> float:
    """Seconds two consecutive segments overlap on each side of their boundary.

    Twice the tracker's effective gap, at least :data:`MIN_OVERLAP_S`, rounded up to whole
    sampling periods. Any two observations of a person on either side of a boundary that the
    tracker would join (closer than the effective gap) both lie in the overlap, so both
    segments' trackers see them; twice the gap leaves the motion model time to settle.
    """
    if keyframes_only:
        interval = KEYFRAME_INTERVAL_GUESS_S
    else:
        interval = 1.0 / sample_fps if sample_fps > 0 else 0.0
    gap = max(max_gap_s, gap_samples * interval)
    overlap = max(2.0 * gap, MIN_OVERLAP_S)
    if sample_fps > 0 and not keyframes_only:
        # On the sampling grid, so both segments sample the same frames in the overlap.
        overlap = math.ceil(overlap * sample_fps - 1e-9) / sample_fps
    return overlap


def plan_segments(
    media: MediaFile,
    duration_s: float | None,
    *,
    segment_s: float | None,
    sample_fps: float,
    overlap_s: float = 0.0,
) -> tuple[WorkItem, ...]:
    """Cut a video into windows of about ``segment_s`` seconds on the sampling grid.

    Boundaries are whole multiples of the sampling period, so a window's first sampled frame
    is one a whole-file pass samples too (exactly so when boundaries fall on frame times, as
    whole seconds do at integer frame rates). The last window runs to the end of the video
    and absorbs a remainder shorter than half a window.

    Args:
        media: The video.
        duration_s: Its duration from :func:`~agr_batch.stages.decode.video.probe` (None:
            unknown).
        segment_s: Target window length; None or 0 never splits.
        sample_fps: The sampling rate (0: every frame, boundaries anywhere).
        overlap_s: Context decoded on each side of a window (see :func:`segment_overlap_s`).

    Returns:
        One item covering everything when the video is not split, else the windows in time
        order.
    """
    whole = (WorkItem(media),)
    if not segment_s or duration_s is None or duration_s <= segment_s:
        return whole
    # A whole number of sampling periods per segment (at least one).
    ticks = max(1, round(segment_s * sample_fps)) if sample_fps > 0 else 0
    step = ticks / sample_fps if ticks else float(segment_s)
    count = max(1, math.floor(duration_s / step + 0.5))
    if count == 1:
        return whole

    def at(k: int) -> float:
        return k * ticks / sample_fps if ticks else k * step

    return tuple(
        WorkItem(
            media,
            start=None if k == 0 else at(k),
            end=None if k == count - 1 else at(k + 1),
            overlap_s=overlap_s,
            index=k,
            count=count,
        )
        for k in range(count)
    )
