"""Executors of the chain: what turns work items into finished, classified tracks.

A :class:`Pipeline` takes :class:`~agr_batch.pipeline.work.WorkItem` records (whole files, or
time windows of a video) and calls ``on_source`` with one :class:`SourceResult` per item as
soon as it is complete. Two executors implement it:

* :class:`~agr_batch.pipeline.local.LocalPipeline` — threads and bounded queues in this
  process: decode (:mod:`~agr_batch.pipeline.frames`) → face step (detect, align, track:
  :mod:`~agr_batch.pipeline.faces`) → voting and classification
  (:mod:`~agr_batch.pipeline.assemble`);
* :class:`~agr_batch.pipeline.ray.RayPipeline` — a pool of Ray actors, each holding a
  ``LocalPipeline``; long videos can be cut into overlapping segments whose tracks are
  stitched back together (:mod:`~agr_batch.pipeline.stitch`).

``run`` and ``scan`` take either through :func:`create_pipeline` and read what they need from
:meth:`Pipeline.info`; :class:`~agr_batch.pipeline.sink.ResultSink` turns results into tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

from agr_batch.pipeline.progress import Progress
from agr_batch.pipeline.work import ImageSequence, Media, WorkItem

if TYPE_CHECKING:
    import datetime as dt

    from agr_batch.config import ProcessingConfig
    from agr_batch.records import TrackResult

__all__ = [
    "Executor",
    "ImageSequence",
    "Media",
    "OnSource",
    "Pipeline",
    "PipelineInfo",
    "ProcessStats",
    "Progress",
    "SourceResult",
    "StageTimes",
    "WorkItem",
    "create_pipeline",
]

Executor = Literal["local", "ray"]
OnSource = Callable[["SourceResult"], None]
"""Called with each work item's result, on the thread that called ``process``."""


@dataclass
class StageTimes:
    """Seconds spent inside each stage (summed over calls; each field has one writer)."""

    decode: float = 0.0
    detect: float = 0.0
    align: float = 0.0
    track: float = 0.0
    classify: float = 0.0
    write: float = 0.0

    def add(self, other: StageTimes) -> None:
        """Add ``other``'s seconds to these (a pool's workers, summed)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, float]:
        """Rounded values by stage name."""
        return {f.name: round(getattr(self, f.name), 3) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ProcessStats:
    """What one :meth:`Pipeline.process` call did, besides its results.

    Attributes:
        times: Seconds per stage (for a pool: worker seconds summed over its workers).
        classified_faces: Faces that went through the classifier.
    """

    times: StageTimes = field(default_factory=StageTimes)
    classified_faces: int = 0


@dataclass(frozen=True, eq=False)
class SourceResult:
    """Everything one work item produced, handed on when all its tracks are classified.

    Attributes:
        item: The work item (a file, or a window of a video).
        frames: Sampled frames of the item's own window processed (overlap not counted).
        duration_s: Video duration when known.
        start_time: Absolute start of the source when known.
        tracks: Its finished, classified tracks (people). A window's tracks keep the faces
            of its overlap, which stitching needs.
        error: One-line reason when the item failed (its partial tracks are kept).
        processed_s: End of the span decoded, seconds from the start (None: not known).
    """

    item: WorkItem
    frames: int
    duration_s: float | None
    start_time: dt.datetime | None
    tracks: tuple[TrackResult, ...]
    error: str | None
    processed_s: float | None = None

    @property
    def media(self) -> Media:
        """The file or image sequence."""
        return self.item.media

    @property
    def faces(self) -> int:
        """Faces over all tracks."""
        return sum(len(t) for t in self.tracks)

    @property
    def covered_s(self) -> float | None:
        """End of the span processed, for the coverage rows; None when nothing was."""
        if self.processed_s is not None:
            return self.processed_s
        if self.frames == 0:
            return None
        if self.error is None and self.duration_s is not None:
            return self.duration_s
        return max((t.last_time for t in self.tracks), default=0.0)


@dataclass(frozen=True)
class PipelineInfo:
    """What a loaded pipeline resolved: recorded in outputs and shown in summaries.

    Attributes:
        labels: Class names per head, from the checkpoint.
        device: Torch device the classifier runs on.
        backend: Classifier backend that runs (e.g. ``eager``).
        precision: Its precision (e.g. ``fp32``).
        decoder: Video decoder (``pyav`` or ``torchcodec``).
        build_s: Seconds spent building the classifier engine and the detector (0 when cached).
        resolved: Values resolved at load time, recorded in every output's metadata beside
            the configuration (checkpoint hash, arch, preprocessing, detector, ...).
        extra: Executor-specific metadata (the Ray pool's layout).
    """

    labels: Mapping[str, tuple[str, ...]]
    device: str
    backend: str
    precision: str
    decoder: str
    build_s: float = 0.0
    resolved: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def metadata(self, config: ProcessingConfig) -> dict[str, Any]:
        """The resolved configuration recorded in every output file of ``config``'s run."""
        return {**config.to_metadata(**self.resolved), **self.extra}


class Pipeline(Protocol):
    """An executor of the chain: local threads, or a Ray actor pool.

    Executors subclass it for its context manager: leaving a ``with`` block closes them.
    """

    def info(self) -> PipelineInfo:
        """Load the models if needed, and describe what was resolved."""
        ...

    def process(
        self, items: Sequence[WorkItem], on_source: OnSource, progress: Progress | None = None
    ) -> ProcessStats:
        """Process ``items``; call ``on_source`` on this thread once per item, when done."""
        ...

    def close(self) -> None:
        """Release the models, threads or workers."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_pipeline(
    config: ProcessingConfig, *, executor: Executor = "local", **options: Any
) -> Pipeline:
    """A pipeline for ``config`` on the chosen executor; models load on first use.

    Args:
        config: Processing options.
        executor: ``local`` (threads in this process) or ``ray`` (a Ray actor pool).
        **options: For ``ray``, :class:`~agr_batch.pipeline.ray.RayOptions` fields
            (``address``, ``workers``, ``segment_s``, ...); for ``local``, ``threads``.

    Raises:
        ValueError: For an unknown executor or option.
        agr_batch.pipeline.ray.RayUnavailableError: ``ray`` without Ray installed.
    """
    if executor == "local":
        from agr_batch.pipeline.local import LocalPipeline

        return LocalPipeline(config, **options)
    if executor == "ray":
        from agr_batch.pipeline.ray import RayOptions, RayPipeline, require_ray

        require_ray()
        return RayPipeline(config, RayOptions(**options))
    raise ValueError(f"unknown executor {executor!r}; expected local or ray")
