"""The Ray engine: ``run`` and ``scan`` on a Ray cluster (``--engine ray``).

Work is cut into tasks on the driver and executed by a pool of Ray actors, each holding one
loaded :class:`~agr_batch.runner.Pipeline` (detector + classifier), so models load once per
worker, not once per task. A task is a batch of whole files (images, and videos not split),
run through the same threaded ``Pipeline.process`` as the local engine, or one time segment
of a long video. Frames never leave the worker that decodes them: a task returns the finished
tracks of its files (face boxes, scores and probabilities, a few kilobytes per person), so
object-store traffic stays small whatever the video resolution.

Why plain actors and not Ray Data: the unit of work is coarse (a file or a segment, seconds
to minutes), it reads its own input, and its result must reach the driver as soon as it is
done so that ``scan`` can commit each file exactly once as it completes. A Ray Data pipeline
would add a read stage competing with the actors for CPUs (on small nodes it deadlocks, see
``FACTS.md``), convert nested face records to Arrow blocks for nothing, and hide which input
a failed block belonged to. The scheduler here is a few lines over ``ray.wait``: one task in
flight per actor (good load balancing, longest tasks first), per-task failure attribution,
actors restarted by Ray after a crash (their task is retried once), and actors that cannot be
placed are dropped instead of blocking the run.

Segments: a video longer than ``segment_s`` is split at multiples of the sampling period
(``1 / sample_fps``) so every segment samples the same instants as a whole-file pass. Each
segment has its own tracker, so a person in view at a boundary becomes two tracks (two
visitors, and two votes); face counts are unchanged, and with ``per_face`` voting so are the
per-face labels. Track ids are renumbered per source (segment by segment) so they stay unique.
:func:`agr_batch.sources.video_frames` does not seek: a segment starting at ``t`` decodes
(without converting) the ``t`` seconds before it, so splitting costs extra decoding that grows
with the square of the number of segments per video, which is why splitting is off by default;
see ``docs/distributed.md``.

Inputs, the checkpoint and compiled-engine caches must be readable at the same paths on every
node (a shared file system); paths are made absolute on the driver before they are sent.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from agr_batch.budget import ByteBudget
from agr_batch.config import ProcessingConfig, RunConfig
from agr_batch.engines import BackendUnavailableError
from agr_batch.limits import MAX_SEGMENT_S, check_number
from agr_batch.records import Frame, Predictions, TrackResult
from agr_batch.runner import (
    ImageSequence,
    RunSummary,
    SourceResult,
    StageTimes,
    detect_frame,
    detection_error,
)
from agr_batch.sources import MediaFile, SourceError, VideoInfo, probe, video_frames

if TYPE_CHECKING:
    from agr_batch.runner import Pipeline
    from agr_batch.scan import ScanConfig, ScanSummary

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SEGMENT_S",
    "INSTALL_HINT",
    "RayOptions",
    "RayPipeline",
    "RayUnavailableError",
    "Segment",
    "merge_segments",
    "plan_segments",
    "process_segment",
    "require_ray",
    "run_ray",
    "scan_ray",
]

INSTALL_HINT = "pip install 'agr-batch[ray]'"
DEFAULT_SEGMENT_S: float | None = None
"""No splitting by default: without seeking (see the module docstring) a video cut into ``n``
segments decodes about ``(n - 1) / 2`` times its length more; pass ``segment_s`` (60 s is a
good length) when there are fewer long videos than workers."""

ErrorCallback = Callable[[str], None]
Source = MediaFile | ImageSequence


class RayUnavailableError(BackendUnavailableError):
    """Ray is not installed; ``str()`` is one line saying how to install it."""


def require_ray() -> ModuleType:
    """Import Ray, or raise :class:`RayUnavailableError` with the one-line install hint.

    Returns:
        The ``ray`` module.
    """
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            f"the ray engine needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """How the Ray engine uses the cluster.

    Attributes:
        address: Cluster address; None uses ``$RAY_ADDRESS``, else starts a local cluster.
            When Ray is already initialised in this process, that session is used.
        workers: Actors (pipelines) to start; None: one per GPU on a GPU cluster, else one
            per two CPUs.
        segment_s: Split videos into segments of about this many seconds (0 or None: never,
            the default; see :data:`DEFAULT_SEGMENT_S`).
        cpus_per_worker: Logical CPUs each actor reserves; None: 1 per GPU actor, and on CPU
            half the cluster's CPUs per actor at most 1, so small nodes keep CPUs free.
        threads_per_worker: Detector and torch threads of each CPU actor; None: the cluster's
            CPUs divided among the actors.
        images_per_task: Images sent to an actor in one task.
        ready_timeout_s: Actors not started after this long are dropped once another works.
        max_restarts: Times Ray restarts a crashed actor (its task is retried on restart).
    """

    address: str | None = None
    workers: int | None = None
    segment_s: float | None = DEFAULT_SEGMENT_S
    cpus_per_worker: float | None = None
    threads_per_worker: int | None = None
    images_per_task: int = 16
    ready_timeout_s: float = 300.0
    max_restarts: int = 1

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.segment_s is not None:
            check_number(
                "--segment (0 = never split)", self.segment_s, low=0, high=MAX_SEGMENT_S,
                unit="seconds",
            )  # fmt: skip
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"CPUs per worker must be > 0, got {self.cpus_per_worker}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ValueError(f"threads per worker must be >= 1, got {self.threads_per_worker}")
        if self.images_per_task < 1:
            raise ValueError(f"images per task must be >= 1, got {self.images_per_task}")


# ---------------------------------------------------------------------------------------------
# Segments


@dataclass(frozen=True)
class Segment:
    """A time range of one video, processed as a task of its own.

    Attributes:
        media: The video.
        index: Position of the segment in the video (0-based).
        count: Segments the video was cut into.
        start: Seconds where it starts (None: the first frame).
        end: Seconds where it ends, exclusive (None: the end of the video).
    """

    media: MediaFile
    index: int
    count: int
    start: float | None
    end: float | None


def plan_segments(
    media: MediaFile, duration_s: float | None, *, segment_s: float | None, sample_fps: float
) -> tuple[Segment, ...]:
    """Cut a video into segments of about ``segment_s`` seconds on the sampling grid.

    Boundaries are whole multiples of the sampling period, so a segment's first sampled frame
    is one a whole-file pass samples too (exactly so when boundaries fall on frame times, as
    whole seconds do at integer frame rates). The last segment runs to the end of the video
    and absorbs a remainder shorter than half a segment.

    Args:
        media: The video.
        duration_s: Its duration from :func:`~agr_batch.sources.probe` (None: unknown).
        segment_s: Target segment length; None or 0 never splits.
        sample_fps: The sampling rate (0: every frame, boundaries anywhere).

    Returns:
        One segment covering everything when the video is not split, else the segments in
        time order.
    """
    whole = (Segment(media, 0, 1, None, None),)
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
        Segment(
            media,
            k,
            count,
            None if k == 0 else at(k),
            None if k == count - 1 else at(k + 1),
        )
        for k in range(count)
    )


_STOP = object()


@dataclass(frozen=True)
class _Raised:
    exc: BaseException


def _prefetch(
    frames: Iterator[Frame], size: int, times: StageTimes, *, max_bytes: int
) -> Iterator[Frame]:
    """Run ``frames`` on a thread, ``size`` frames and ``max_bytes`` ahead.

    Decoding overlaps detection; a frame larger than ``max_bytes`` passes alone.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=size)
    stop = threading.Event()
    budget = ByteBudget(max_bytes)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(frames)
                except StopIteration:
                    times.decode += time.perf_counter() - t0
                    put(_STOP)
                    return
                times.decode += time.perf_counter() - t0
                if not budget.acquire(item.image.nbytes, stop) or not put(item):
                    return
        except BaseException as e:
            put(_Raised(e))
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="agr-ray-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _STOP:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
            budget.release(item.image.nbytes)  # the consumer is done with it
    finally:
        stop.set()
        thread.join(timeout=10)


def process_segment(pipeline: Pipeline, segment: Segment) -> tuple[SourceResult, StageTimes]:
    """Decode, detect, align, track and vote over one segment with a loaded pipeline.

    The stages and their order are those of ``Pipeline.process`` for one video (decoding runs
    up to ``queue_size`` frames ahead on a thread); the tracker and the voter are the
    segment's own, so track ids start at 0 in every segment.

    Args:
        pipeline: A loaded pipeline (its detector, classifier and configuration are used).
        segment: The time range to process.

    Returns:
        The segment's result (``duration_s`` left None, tracks sorted by id) and stage times.
    """
    from agr_batch.track import Tracker
    from agr_batch.vote import TrackVoter

    config = pipeline.config
    media = segment.media
    source = str(media.path)
    times = StageTimes()
    spec = pipeline.checkpoint.meta.preprocess
    classifier = pipeline.classifier

    def classify(chips: Any) -> Predictions:
        t0 = time.perf_counter()
        preds = classifier.predict(chips)
        times.classify += time.perf_counter() - t0
        return preds

    tracker = Tracker(config.tracker)
    voter = TrackVoter(
        classify,
        batch_size=config.batch_size,
        config=config.vote,
        chip_side=min(classifier.spec.input_size),
    )
    finished: list[TrackResult] = []
    count = 0
    start_time = None
    error: str | None = None
    decoded = video_frames(
        media.path,
        sample_fps=config.sample_fps,
        start=segment.start,
        end=segment.end,
        keyframes_only=config.keyframes_only,
        skip_nonref=config.skip_nonref,
    )
    try:
        for frame in _prefetch(
            decoded, config.queue_size, times, max_bytes=config.max_inflight_bytes
        ):
            try:
                dets, chips, track_ids, ended = detect_frame(
                    pipeline.detector, spec, tracker, frame, times
                )
            except Exception as e:
                if error is None:
                    error = detection_error(frame, e)
                continue
            count += 1
            if start_time is None:
                start_time = frame.start_time
            for i in range(len(dets)):
                voter.add_face(
                    source=source,
                    kind=media.kind,
                    start_time=frame.start_time,
                    track_id=int(track_ids[i]),
                    frame_index=frame.frame_index,
                    time_s=frame.time_s,
                    box=dets.boxes[i],
                    score=float(dets.scores[i]),
                    chip=chips[i],
                )
            for tid in ended:
                voter.end_track(source, tid)
            finished += voter.pop_finished()
    except SourceError as e:
        error = error or str(e)
    except Exception as e:  # a decoder bug must not stop the batch
        error = error or f"{media.path}: cannot decode ({type(e).__name__}: {e})".splitlines()[0]
    for tid in tracker.close_all():
        voter.end_track(source, tid)
    finished += voter.finish_all()
    finished.sort(key=lambda t: t.track_id)
    return SourceResult(media, count, None, start_time, tuple(finished), error), times


def merge_segments(parts: Sequence[SourceResult], *, duration_s: float | None) -> SourceResult:
    """Join the results of a video's segments (in time order) into the video's result.

    Track ids are renumbered so they are unique within the source: segment ``k``'s ids are
    offset past every id of the segments before it. The first error (in time order) is kept,
    and the partial tracks of failed segments are kept, as for a whole file.
    """
    if not parts:
        raise ValueError("no segments to merge")
    tracks: list[TrackResult] = []
    offset = 0
    for part in parts:
        ids = [t.track_id for t in part.tracks]
        for t in sorted(part.tracks, key=lambda t: t.track_id):
            tracks.append(dataclasses.replace(t, track_id=t.track_id + offset))
        offset += max(ids) + 1 if ids else 0
    return SourceResult(
        parts[0].media,
        sum(p.frames for p in parts),
        duration_s,
        next((p.start_time for p in parts if p.start_time is not None), None),
        tuple(tracks),
        next((p.error for p in parts if p.error is not None), None),
    )


# ---------------------------------------------------------------------------------------------
# The actor


@dataclass(frozen=True)
class _Task:
    """Files ``positions`` of the input list: whole files, or one segment of one video."""

    positions: tuple[int, ...]
    media: tuple[Source, ...]  # absolute paths
    segment: Segment | None = None
    cost: float = 0.0
    duration_s: float | None = None  # of a split video, from probe


@dataclass(frozen=True)
class _TaskResult:
    sources: tuple[SourceResult, ...]
    times: StageTimes
    classified: int


@dataclass(frozen=True)
class _EngineInfo:
    """What ``run`` reads of ``Pipeline.engine``."""

    name: str
    precision: str


@dataclass
class _ClassifierStats:
    """What ``run`` reads of ``Pipeline.classifier``: faces classified, over every worker."""

    faces_seen: int = 0


@dataclass(frozen=True)
class _WorkerInfo:
    metadata: dict[str, Any]
    labels: dict[str, tuple[str, ...]]
    engine: _EngineInfo
    device: str
    where: str


def _absolute(config: ProcessingConfig) -> ProcessingConfig:
    """``config`` with its file paths absolute, for workers whose working folder differs."""
    detector = config.detector
    if detector.model_path:
        detector = dataclasses.replace(
            detector, model_path=str(Path(detector.model_path).absolute())
        )
    return dataclasses.replace(
        config,
        model=Path(config.model).absolute(),
        cache_dir=Path(config.cache_dir).absolute() if config.cache_dir else None,
        detector=detector,
    )


class _Worker:
    """One pipeline on a Ray worker; wrapped with ``ray.remote`` at run time.

    The pipeline loads on the first call (not in ``__init__``), so that a load error reaches
    the driver as the call's exception, and a restarted actor reloads it by itself.
    """

    def __init__(
        self, config: ProcessingConfig, metadata_config: ProcessingConfig, threads: int | None
    ) -> None:
        self._config = config
        self._metadata_config = metadata_config
        self._threads = threads
        self._pipeline: Pipeline | None = None

    def _load(self) -> Pipeline:
        if self._pipeline is None:
            import torch

            from agr_batch.detect import create_detector
            from agr_batch.detect.base import default_threads
            from agr_batch.runner import Pipeline

            threads = min(self._threads, default_threads()) if self._threads else None
            if threads:
                torch.set_num_threads(threads)
            pipeline = Pipeline(self._config)
            if threads and pipeline.device.type == "cpu":
                det = self._config.detector
                pipeline.detector = create_detector(det.name, **det.kwargs(), threads=threads)
            self._pipeline = pipeline
        return self._pipeline

    def info(self) -> _WorkerInfo:
        """Load the pipeline and describe it (metadata for the output files)."""
        import socket

        p = self._load()
        return _WorkerInfo(
            metadata=p.metadata(self._metadata_config),
            labels=dict(p.labels),
            engine=_EngineInfo(p.engine.name, p.engine.precision),
            device=str(p.device),
            where=f"{socket.gethostname()} pid {os.getpid()}",
        )

    def process(self, task: _Task) -> _TaskResult:
        """Run one task."""
        p = self._load()
        seen = p.classifier.faces_seen
        if task.segment is not None:
            result, times = process_segment(p, task.segment)
            sources: tuple[SourceResult, ...] = (result,)
        else:
            out: list[SourceResult] = []
            times = p.process(task.media, out.append)
            sources = tuple(out)
        return _TaskResult(sources, times, p.classifier.faces_seen - seen)


# ---------------------------------------------------------------------------------------------
# Driver side


def _cause(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error (``exc`` itself when there is none)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _add_times(total: StageTimes, part: StageTimes) -> None:
    for name, value in part.__dict__.items():
        setattr(total, name, getattr(total, name) + value)


def _connect(ray: ModuleType, address: str | None) -> bool:
    """Connect to (or start) a cluster; True when this call started a local one."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False)
        return False
    from agr_batch.detect.base import default_threads

    log.info("starting a local Ray cluster (%d CPUs)", default_threads())
    ray.init(
        address="local",
        num_cpus=default_threads(),
        include_dashboard=False,
        log_to_driver=False,
    )
    return True


@dataclass
class _Plan:
    workers: int
    cpus: float
    gpus: float
    threads: int | None


def _resources(ray: ModuleType, config: ProcessingConfig, options: RayOptions) -> _Plan:
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    if config.device == "cuda" and gpus < 1:
        raise ValueError("--device cuda, but the Ray cluster has no GPU")
    if config.device != "cpu" and gpus >= 1:
        workers = options.workers or int(gpus)
        plan = _Plan(workers, options.cpus_per_worker or 1.0, 1.0, None)
    else:
        workers = options.workers or max(1, int(cpus // 2))
        per_cpu = options.cpus_per_worker or min(1.0, cpus / (2 * workers)) or 0.5
        threads = options.threads_per_worker or max(1, int(cpus // workers))
        plan = _Plan(workers, per_cpu, 0.0, threads)
    if workers * plan.cpus > cpus + 1e-9 or workers * plan.gpus > gpus + 1e-9:
        log.warning(
            "the cluster has %g CPU and %g GPU: not all %d workers (%g CPU + %g GPU each) fit; "
            "the ones that cannot start are dropped after %.0f s",
            cpus,
            gpus,
            workers,
            plan.cpus,
            plan.gpus,
            options.ready_timeout_s,
        )
    return plan


class RayPipeline:
    """A drop-in for :class:`~agr_batch.runner.Pipeline` that runs on a Ray actor pool.

    It offers what ``run`` and ``scan`` use of a pipeline: ``labels``, ``metadata()``,
    ``engine.name``/``engine.precision``, ``device``, ``classifier.faces_seen`` and
    ``process()``, which calls ``on_source`` on the calling thread once per input file. The
    actors start on first use (``metadata``, ``labels`` or ``process``) and stay up until
    :meth:`close` (or the end of the ``with`` block), so one instance serves several batches.

    Args:
        config: Processing options (as for ``Pipeline``).
        options: Cluster and splitting options.
        ordered: Deliver results in input order by default (``run``); ``scan`` wants them as
            they complete.
    """

    def __init__(
        self, config: ProcessingConfig, options: RayOptions | None = None, *, ordered: bool = True
    ) -> None:
        self.config = config
        self.options = options or RayOptions()
        self.ordered = ordered
        self.classifier = _ClassifierStats()
        self._ray: ModuleType | None = None
        self._owns_cluster = False
        self._actors: list[Any] = []
        self._starting: dict[Any, Any] = {}  # info() ref -> actor, until it answers
        self._idle: list[Any] = []
        self._started_at = 0.0
        self._info: _WorkerInfo | None = None
        self._plan: _Plan | None = None
        self._finalizer: weakref.finalize | None = None

    # -- lifecycle

    def __enter__(self) -> RayPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Connect to the cluster, start the actors and wait until one has loaded the model.

        Raises:
            RayUnavailableError: Ray is not installed.
            agr_batch.checkpoint.CheckpointError: The model cannot be loaded (and the other
                configuration errors ``Pipeline`` raises, unwrapped from the worker's).
            RuntimeError: No actor could start within ``ready_timeout_s``.
        """
        if self._info is not None:
            return
        ray = self._ray = require_ray()
        self._owns_cluster = _connect(ray, self.options.address)
        plan = self._plan = _resources(ray, self.config, self.options)
        log.info(
            "ray: %d worker(s), %.2g CPU + %.2g GPU and %s thread(s) each",
            plan.workers,
            plan.cpus,
            plan.gpus,
            plan.threads,
        )
        actor_cls = ray.remote(_Worker).options(
            num_cpus=plan.cpus,
            num_gpus=plan.gpus,
            max_restarts=self.options.max_restarts,
            max_task_retries=self.options.max_restarts,
        )
        worker_config = _absolute(self.config)
        self._actors = [
            actor_cls.remote(worker_config, self.config, plan.threads) for _ in range(plan.workers)
        ]
        self._finalizer = weakref.finalize(self, _kill, ray, list(self._actors))
        self._starting = {a.info.remote(): a for a in self._actors}
        self._idle = []
        self._started_at = time.monotonic()
        while self._info is None:
            ready, _ = ray.wait(
                list(self._starting), num_returns=1, timeout=self.options.ready_timeout_s
            )
            if not ready:
                self.close()
                raise RuntimeError(
                    f"no Ray worker started within {self.options.ready_timeout_s:.0f} s; the "
                    f"cluster may lack {plan.cpus:g} CPU + {plan.gpus:g} GPU per worker"
                )
            self._on_started(ready[0])

    def _on_started(self, ref: Any) -> None:
        """An actor's ``info()`` answered: it joins the pool, or is dropped on failure."""
        assert self._ray is not None
        actor = self._starting.pop(ref)
        try:
            info = self._ray.get(ref)
        except Exception as e:
            cause = _cause(e)
            if self._info is None and not self._idle:
                # The model or the configuration is unusable: every worker would fail alike.
                self.close()
                raise cause from None
            log.warning("a Ray worker failed to start and is dropped: %s", _one_line(cause))
            self._drop(actor)
            return
        if self._info is None:
            self._info = info
        log.debug("ray worker ready on %s (%s, %s)", info.where, info.device, info.engine.name)
        self._idle.append(actor)

    def _drop(self, actor: Any) -> None:
        assert self._ray is not None
        if actor in self._actors:
            self._actors.remove(actor)
        self._ray.kill(actor)

    def close(self) -> None:
        """Stop the actors, and the local cluster when this instance started it."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._actors, self._idle, self._starting = [], [], {}
        self._info = None
        if self._owns_cluster and self._ray is not None:
            self._ray.shutdown()
            self._owns_cluster = False

    # -- what run and scan use

    @property
    def info(self) -> _WorkerInfo:
        """The first worker's description (starts the actors if needed)."""
        self.start()
        assert self._info is not None
        return self._info

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Class names per head, from the checkpoint."""
        return self.info.labels

    @property
    def engine(self) -> _EngineInfo:
        """Classifier backend and precision on the workers."""
        return self.info.engine

    @property
    def device(self) -> str:
        """Torch device of the workers."""
        return self.info.device

    @property
    def workers(self) -> int:
        """Actors planned (some may have been dropped since)."""
        self.start()
        assert self._plan is not None
        return self._plan.workers

    def metadata(self, config: ProcessingConfig | None = None) -> dict[str, Any]:
        """The local engine's output metadata, plus ``engine: "ray"`` and the Ray options."""
        info = self.info
        if config is None or config is self.config:
            metadata = dict(info.metadata)
        else:  # this config's keys, and the values the worker resolved
            own = _config_keys(self.config)
            resolved = {k: v for k, v in info.metadata.items() if k not in own}
            metadata = {**config.to_metadata(), **resolved}
        assert self._plan is not None
        metadata["engine"] = "ray"
        metadata["ray"] = {
            "workers": self._plan.workers,
            "cpus_per_worker": self._plan.cpus,
            "gpus_per_worker": self._plan.gpus,
            "threads_per_worker": self._plan.threads,
            "segment_s": self.options.segment_s or None,
        }
        return metadata

    def process(
        self,
        media: Sequence[Source],
        on_source: Callable[[SourceResult], None],
        *,
        progress: bool = False,
        ordered: bool | None = None,
    ) -> StageTimes:
        """Process ``media`` on the cluster; call ``on_source`` once per file, on this thread.

        Args:
            media: Files to process.
            on_source: Called with each file's result as soon as all its tasks are done
                (``ordered``: in input order, holding back results that finish early).
            progress: Show a progress bar of tasks.
            ordered: Deliver results in input order (None: as set at construction).

        Returns:
            Stage times summed over every task (worker seconds, not wall-clock seconds).
        """
        self.start()
        media = list(media)
        tasks = self._tasks(media)
        times = StageTimes()
        ordered = self.ordered if ordered is None else ordered
        assembly = _Assembly(media, tasks, ordered, on_source)
        bar: Any = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(tasks), desc="ray tasks", unit="task", leave=False)
        try:
            for task, outcome in self._dispatch(tasks):
                if isinstance(outcome, BaseException):
                    assembly.failed(task, outcome)
                else:
                    _add_times(times, outcome.times)
                    self.classifier.faces_seen += outcome.classified
                    assembly.done(task, outcome.sources)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        assembly.check_complete()
        return times

    # -- planning and dispatch

    def _tasks(self, media: list[Source]) -> list[_Task]:
        options = self.options
        durations: dict[int, VideoInfo | None] = {}
        videos = [i for i, m in enumerate(media) if isinstance(m, MediaFile) and m.kind == "video"]
        if options.segment_s and videos:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(videos))) as pool:
                infos = pool.map(_probe_or_none, [media[i].path for i in videos])
                durations = dict(zip(videos, infos, strict=True))
        tasks: list[_Task] = []
        images: list[int] = []

        def flush_images() -> None:
            if images:
                absolute = tuple(MediaFile(media[i].path.absolute(), "image") for i in images)
                tasks.append(_Task(tuple(images), absolute, None, 0.5 * len(images)))
                images.clear()

        for i, m in enumerate(media):
            if isinstance(m, ImageSequence):
                seq = ImageSequence(m.path.absolute(), tuple(p.absolute() for p in m.images))
                tasks.append(_Task((i,), (seq,), None, 0.5 * len(m.images)))
                continue
            if m.kind == "image":
                images.append(i)
                if len(images) >= options.images_per_task:
                    flush_images()
                continue
            absolute = MediaFile(m.path.absolute(), m.kind)
            info = durations.get(i)
            duration = info.duration_s if info is not None else None
            segments = plan_segments(
                absolute,
                duration,
                segment_s=options.segment_s,
                sample_fps=self.config.sample_fps,
            )
            if len(segments) == 1:
                cost = duration if duration is not None else _size_cost(m.path)
                tasks.append(_Task((i,), (absolute,), None, cost))
                continue
            for s in segments:
                end = s.end if s.end is not None else duration or 0.0
                # Work is the segment's length plus the decoding it skips to reach its start.
                cost = (end - (s.start or 0.0)) + 0.27 * (s.start or 0.0)
                tasks.append(_Task((i,), (absolute,), s, cost, duration))
        flush_images()
        # Longest first: the pool ends together instead of waiting on one late long video.
        order = sorted(range(len(tasks)), key=lambda k: -tasks[k].cost)
        return [tasks[k] for k in order]

    def _dispatch(self, tasks: list[_Task]) -> Iterator[tuple[_Task, _TaskResult | BaseException]]:
        """Run ``tasks`` on the pool, one in flight per actor; yield each as it finishes."""
        ray = self._ray
        assert ray is not None
        pending = deque(tasks)
        inflight: dict[Any, tuple[Any, _Task]] = {}
        while pending or inflight:
            while self._idle and pending:
                actor = self._idle.pop()
                task = pending.popleft()
                inflight[actor.process.remote(task)] = (actor, task)
            waiting = list(inflight) + list(self._starting)
            if not waiting:
                raise RuntimeError(
                    f"no Ray worker left to run {len(pending)} remaining task(s); "
                    "see the workers' logs (ray logs) for why they died"
                )
            timeout = None
            if self._starting and (inflight or self._idle):
                timeout = max(
                    0.0, self._started_at + self.options.ready_timeout_s - time.monotonic()
                )
            ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            if not ready:  # stragglers that cannot be placed while others work
                log.warning(
                    "dropping %d Ray worker(s) not started after %.0f s",
                    len(self._starting),
                    self.options.ready_timeout_s,
                )
                for actor in list(self._starting.values()):
                    self._drop(actor)
                self._starting.clear()
                continue
            ref = ready[0]
            if ref in self._starting:
                self._on_started(ref)
                continue
            actor, task = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                # Dead after its restarts: the task fails, the actor leaves the pool.
                log.warning("a Ray worker died: %s", _one_line(e))
                self._drop(actor)
                yield task, e
                continue
            except Exception as e:
                self._idle.append(actor)
                yield task, _cause(e)
                continue
            self._idle.append(actor)
            yield task, result


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
        return None  # processed whole; the worker reports the error as the local engine does
    except Exception as e:
        log.debug("%s: probe failed (%s); not split", path, e)
        return None


def _kill(ray: ModuleType, actors: list[Any]) -> None:
    if not ray.is_initialized():
        return
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception as e:  # already gone
            log.debug("ray.kill: %s", e)


def _config_keys(config: ProcessingConfig) -> frozenset[str]:
    """Metadata keys that come from the configuration itself (not resolved at run time)."""
    return frozenset(f.name for f in dataclasses.fields(config)) | {
        "tool",
        "tool_version",
        "python",
    }


@dataclass
class _Pending:
    parts: dict[int, SourceResult] = field(default_factory=dict)
    count: int = 1
    result: SourceResult | None = None


class _Assembly:
    """Collects task results into per-file results, and hands them on (optionally in order)."""

    def __init__(
        self,
        media: list[Source],
        tasks: list[_Task],
        ordered: bool,
        on_source: Callable[[SourceResult], None],
    ) -> None:
        self.media = media
        self.ordered = ordered
        self.on_source = on_source
        self.pending: dict[int, _Pending] = {i: _Pending() for i in range(len(media))}
        self.durations: dict[int, float | None] = {}
        for t in tasks:
            if t.segment is not None:
                self.pending[t.positions[0]].count = t.segment.count
                self.durations[t.positions[0]] = t.duration_s
        self.next = 0  # first position not yet delivered (ordered mode)

    def done(self, task: _Task, results: tuple[SourceResult, ...]) -> None:
        by_path = {str(r.media.path): r for r in results}
        for pos, sent in zip(task.positions, task.media, strict=True):
            result = by_path.get(str(sent.path))
            if result is None:  # cannot happen with Pipeline.process, but never lose a file
                result = SourceResult(sent, 0, None, None, (), f"{sent.path}: no result")
            self._part(pos, task, _relabel(result, sent, self.media[pos]))

    def failed(self, task: _Task, exc: BaseException) -> None:
        reason = _one_line(exc)
        for pos in task.positions:
            original = self.media[pos]
            where = "" if task.segment is None else f" (segment {task.segment.index + 1})"
            error = f"{original.path}: Ray worker failed{where} ({type(exc).__name__}: {reason})"
            self._part(pos, task, SourceResult(original, 0, None, None, (), error))

    def _part(self, pos: int, task: _Task, result: SourceResult) -> None:
        p = self.pending[pos]
        p.parts[task.segment.index if task.segment is not None else 0] = result
        if len(p.parts) < p.count:
            return
        if p.count == 1:
            p.result = p.parts[0]
        else:
            parts = [p.parts[k] for k in range(p.count)]
            p.result = merge_segments(parts, duration_s=self.durations.get(pos))
        p.parts = {}
        if not self.ordered:
            del self.pending[pos]
            self.on_source(p.result)
            return
        while self.next in self.pending and self.pending[self.next].result is not None:
            result = self.pending.pop(self.next).result
            self.next += 1
            assert result is not None
            self.on_source(result)

    def check_complete(self) -> None:
        if self.pending:
            missing = ", ".join(str(self.media[i].path) for i in list(self.pending)[:3])
            raise RuntimeError(
                f"ray engine lost the results of {len(self.pending)} file(s): {missing}"
            )


def _relabel(result: SourceResult, sent: Source, original: Source) -> SourceResult:
    """Put back the path as given (workers got absolute paths) in the result and its tracks."""
    if sent.path == original.path:
        return result
    before, after = str(sent.path), str(original.path)
    tracks = tuple(dataclasses.replace(t, source=after) for t in result.tracks)
    error = None if result.error is None else result.error.replace(before, after)
    return dataclasses.replace(result, media=original, tracks=tracks, error=error)


# ---------------------------------------------------------------------------------------------
# run and scan


def _log_error(message: str) -> None:
    log.error("%s", message)


class _Factory:
    """``pipeline_factory`` for ``run``/``scan``: makes :class:`RayPipeline` and closes them."""

    def __init__(self, options: RayOptions, *, ordered: bool) -> None:
        self.options = options
        self.ordered = ordered
        self.created: list[RayPipeline] = []

    def __call__(self, config: ProcessingConfig) -> RayPipeline:
        pipeline = RayPipeline(config, self.options, ordered=self.ordered)
        self.created.append(pipeline)
        return pipeline

    def __enter__(self) -> _Factory:
        return self

    def __exit__(self, *exc: object) -> None:
        for pipeline in self.created:
            pipeline.close()


def run_ray(
    config: RunConfig,
    *,
    address: str | None = None,
    workers: int | None = None,
    segment_s: float | None = DEFAULT_SEGMENT_S,
    cpus_per_worker: float | None = None,
    threads_per_worker: int | None = None,
    progress: bool = False,
    on_error: ErrorCallback = _log_error,
) -> RunSummary:
    """:func:`agr_batch.runner.run` on a Ray cluster: the same tables, schemas and metadata.

    Output metadata has the local engine's keys plus ``engine: "ray"`` and ``ray`` (the
    worker layout and ``segment_s``). ``stage_s`` sums worker time over all tasks. Results
    are delivered in input order, so the faces and tracks tables list files as ``run`` does.

    Args:
        config: What to process and where to write it.
        address: Ray cluster address (default ``$RAY_ADDRESS``, else a local cluster).
        workers: Pipelines (actors) to run; see :class:`RayOptions`.
        segment_s: Split videos into segments of about this many seconds (0/None: never).
        cpus_per_worker: Logical CPUs per actor; see :class:`RayOptions`.
        threads_per_worker: Threads per CPU actor; see :class:`RayOptions`.
        progress: Show a progress bar.
        on_error: Called with one line per failed input.

    Raises:
        RayUnavailableError: Ray is not installed (one line with the install command).
        agr_batch.checkpoint.CheckpointError: If the model cannot be loaded.
        ValueError: For an unusable device or detector configuration.
    """
    from agr_batch import runner

    options = RayOptions(
        address=address,
        workers=workers,
        segment_s=segment_s,
        cpus_per_worker=cpus_per_worker,
        threads_per_worker=threads_per_worker,
    )
    require_ray()
    with _Factory(options, ordered=True) as factory:
        return runner.run(config, progress=progress, on_error=on_error, pipeline_factory=factory)


def scan_ray(
    config: ScanConfig,
    *,
    address: str | None = None,
    workers: int | None = None,
    segment_s: float | None = DEFAULT_SEGMENT_S,
    cpus_per_worker: float | None = None,
    threads_per_worker: int | None = None,
    progress: bool = False,
    on_error: ErrorCallback = _log_error,
) -> ScanSummary:
    """:func:`agr_batch.scan.scan` with the work list processed on a Ray cluster.

    Planning, the lock and every commit stay on the driver, one file at a time as results
    arrive (in completion order), so the exactly-once protocol is unchanged: the actors only
    compute. A dry run, or a scan with nothing to do, starts no actor.

    Args:
        config: The scan.
        address: Ray cluster address (default ``$RAY_ADDRESS``, else a local cluster).
        workers: Pipelines (actors) to run; see :class:`RayOptions`.
        segment_s: Split videos into segments of about this many seconds (0/None: never).
        cpus_per_worker: Logical CPUs per actor; see :class:`RayOptions`.
        threads_per_worker: Threads per CPU actor; see :class:`RayOptions`.
        progress: Show a progress bar.
        on_error: Called with one line per failed input.

    Raises:
        RayUnavailableError: Ray is not installed.
        agr_batch.scan.LockedError: Another scan holds the dataset's lock.
    """
    from agr_batch.scan import scan

    options = RayOptions(
        address=address,
        workers=workers,
        segment_s=segment_s,
        cpus_per_worker=cpus_per_worker,
        threads_per_worker=threads_per_worker,
    )
    require_ray()
    with _Factory(options, ordered=False) as factory:
        return scan(config, progress=progress, on_error=on_error, pipeline_factory=factory)
