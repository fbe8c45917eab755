"""Progress reporting of a pipeline: an overall files bar and a frames bar per video.

Pipelines call a :class:`Progress`; :class:`BarProgress` draws tqdm bars with totals,
percentages and ETAs on stderr. The command line only passes one when stderr is a terminal
and neither ``--quiet`` nor ``--json`` is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agr_batch.pipeline.work import WorkItem

__all__ = ["BarProgress", "Progress"]


class Progress(Protocol):
    """What a pipeline reports while it works (all calls come from the caller's thread)."""

    def begin(self, total: int) -> None:
        """``total`` results (files, or windows) are about to be processed."""
        ...

    def source_started(self, item: WorkItem, expected_frames: int | None) -> None:
        """Decoding of ``item`` started; it should give about ``expected_frames`` frames."""
        ...

    def frame(self, item: WorkItem) -> None:
        """One sampled frame of ``item`` went through the face step."""
        ...

    def source_done(self, item: WorkItem) -> None:
        """``item``'s result was handed on."""
        ...

    def close(self) -> None:
        """Remove the bars."""
        ...


class BarProgress:
    """tqdm bars on stderr: files of the batch, and the sampled frames of the current video.

    The frames bar's total comes from the video's duration and the sampling rate (no total,
    so no ETA, when the duration is unknown or only keyframes are decoded); single images
    only advance the files bar.
    """

    def __init__(self) -> None:
        self._files: Any = None
        self._frames: Any = None

    def begin(self, total: int) -> None:
        """Open the files bar."""
        from tqdm import tqdm

        self.close()
        self._files = tqdm(total=total, desc="files", unit="file", leave=False, position=0)

    def source_started(self, item: WorkItem, expected_frames: int | None) -> None:
        """Open a frames bar for a video or an image sequence."""
        if item.kind != "video":
            return
        from tqdm import tqdm

        if self._frames is not None:
            self._frames.close()
        name = item.media.path.name[-40:]
        if item.count > 1:
            name += f" [{item.index + 1}/{item.count}]"
        self._frames = tqdm(total=expected_frames, desc=name, unit="frame", leave=False, position=1)

    def frame(self, item: WorkItem) -> None:
        """Advance the frames bar."""
        if self._frames is not None and item.kind == "video":
            self._frames.update(1)

    def source_done(self, item: WorkItem) -> None:
        """Advance the files bar."""
        if self._files is not None:
            self._files.update(1)

    def close(self) -> None:
        """Remove both bars."""
        for bar in (self._frames, self._files):
            if bar is not None:
                bar.close()
        self._frames = self._files = None
