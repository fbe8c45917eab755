"""Cutting a batch of work items into Ray tasks, longest first.

A task is a batch of images (``images_per_task`` of them), one image sequence, one whole
video, or one segment of a long video (``segment_s``; segments overlap, see
:func:`~agr_batch.pipeline.work.segment_overlap_s`). Paths are made absolute for the workers,
whose working folder may differ; the position of each item in the caller's list travels with
it, so results are attributed to the items as given.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline.ray.pool import RayOptions
from agr_batch.pipeline.work import (
    ImageSequence,
    WorkItem,
    plan_segments,
    segment_overlap_s,
)
from agr_batch.stages.decode.media import MediaFile, SourceError
from agr_batch.stages.decode.video import VideoInfo, probe

log = logging.getLogger(__name__)

__all__ = ["Task", "plan_tasks"]

DECODE_SKIP_COST = 0.27
"""Cost of decoding (without converting) one second of video a segment skips to reach its
start, relative to processing one second (videos are not seeked, see docs/distributed.md)."""


@dataclass(frozen=True)
class Task:
    """Work items sent to one actor in one call.

    Attributes:
        positions: Position of each item in the caller's list.
        items: The items, with absolute paths.
        cost: Estimated work (about seconds of video); tasks run longest first.
        duration_s: The video's duration, for a segment (from probing it).
    """

    positions: tuple[int, ...]
    items: tuple[WorkItem, ...]
    cost: float = 0.0
    duration_s: float | None = None

    @property
    def segment(self) -> WorkItem | None:
        """The segment this task processes, if it is one."""
        item = self.items[0]
        return item if item.count > 1 else None


def _absolute(item: WorkItem) -> WorkItem:
    media = item.media
    if isinstance(media, ImageSequence):
        moved: MediaFile | ImageSequence = ImageSequence(
            media.path.absolute(), tuple(p.absolute() for p in media.images)
        )
    else:
        moved = MediaFile(media.path.absolute(), media.kind)
    return WorkItem(moved, item.start, item.end, item.overlap_s, item.index, item.count)


def _size_cost(path: Path) -> float:
    """A video's cost (about its seconds) from its size, when it was not probed (~2 Mbit/s)."""
    try:
        return max(1.0, path.stat().st_size / 250_000)
    except OSError:
        return 1.0


def _probe_or_none(path: Path) -> VideoInfo | None:
    try:
        return probe(path)
    except SourceError:
        return None  # processed whole; the worker reports the error as the local pipeline does
    except Exception as e:
        log.debug("%s: probe failed (%s); not split", path, e)
        return None


def plan_tasks(
    items: Sequence[WorkItem], config: ProcessingConfig, options: RayOptions
) -> list[Task]:
    """The tasks for ``items``, longest first.

    Whole videos longer than ``options.segment_s`` are cut into overlapping segments; other
    items (images, sequences, windows already cut) are sent as they are.
    """
    durations: dict[int, VideoInfo | None] = {}
    videos = [i for i, it in enumerate(items) if it.kind == "video" and _splittable(it)]
    if options.segment_s and videos:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(videos))) as pool:
            infos = pool.map(_probe_or_none, [items[i].media.path for i in videos])
            durations = dict(zip(videos, infos, strict=True))
    overlap = segment_overlap_s(
        max_gap_s=config.tracker.max_gap_s,
        gap_samples=config.tracker.gap_samples,
        sample_fps=config.sample_fps,
        keyframes_only=config.keyframes_only,
    )
    tasks: list[Task] = []
    images: list[int] = []

    def flush_images() -> None:
        if images:
            batch = tuple(_absolute(items[i]) for i in images)
            tasks.append(Task(tuple(images), batch, 0.5 * len(images)))
            images.clear()

    for i, item in enumerate(items):
        media = item.media
        if isinstance(media, ImageSequence):
            tasks.append(Task((i,), (_absolute(item),), 0.5 * len(media.images)))
            continue
        if media.kind == "image":
            images.append(i)
            if len(images) >= options.images_per_task:
                flush_images()
            continue
        info = durations.get(i)
        duration = info.duration_s if info is not None else None
        segments = (
            plan_segments(
                _absolute(item).media,  # type: ignore[arg-type]
                duration,
                segment_s=options.segment_s,
                sample_fps=config.sample_fps,
                overlap_s=overlap,
            )
            if i in durations
            else (_absolute(item),)
        )
        if len(segments) == 1:
            cost = duration if duration is not None else _size_cost(media.path)
            tasks.append(Task((i,), (_absolute(item),), cost))
            continue
        for s in segments:
            start, end = s.decode_start or 0.0, s.decode_end or duration or 0.0
            # Work is the decoded span plus the decoding it skips to reach its start.
            cost = max(0.0, min(end, duration or end) - start) + DECODE_SKIP_COST * start
            tasks.append(Task((i,), (s,), cost, duration))
    flush_images()
    # Longest first: the pool ends together instead of waiting on one late long video.
    return sorted(tasks, key=lambda t: -t.cost)


def _splittable(item: WorkItem) -> bool:
    """A whole video file (not a sequence, nor a window already cut)."""
    return isinstance(item.media, MediaFile) and item.count == 1 and item.start is None
