"""The driver side of the Ray executor: :class:`RayPipeline`, a pipeline over an actor pool.

It plans the tasks (:mod:`~agr_batch.pipeline.ray.plan`), runs them on the pool
(:mod:`~agr_batch.pipeline.ray.pool`), stitches the segments of each video back together
(:mod:`~agr_batch.pipeline.stitch`) and hands each file's result on as soon as all its tasks
are done, on the calling thread: ``scan`` commits each file exactly once as it completes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from types import ModuleType

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import (
    OnSource,
    Pipeline,
    PipelineInfo,
    ProcessStats,
    SourceResult,
    StageTimes,
)
from agr_batch.pipeline.progress import Progress
from agr_batch.pipeline.ray.plan import Task, plan_tasks
from agr_batch.pipeline.ray.pool import (
    ActorPool,
    PoolPlan,
    RayOptions,
    connect,
    one_line,
    plan_pool,
    require_ray,
)
from agr_batch.pipeline.ray.worker import TaskResult, Worker, WorkerReady
from agr_batch.pipeline.stitch import stitch_segments
from agr_batch.pipeline.work import WorkItem

log = logging.getLogger(__name__)

__all__ = ["RayPipeline"]


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


class RayPipeline(Pipeline):
    """A :class:`~agr_batch.pipeline.Pipeline` that runs on a pool of Ray actors.

    Each actor holds a :class:`~agr_batch.pipeline.local.LocalPipeline`. The actors start on
    first use (:meth:`info` or :meth:`process`) and stay up until :meth:`close` (or the end
    of the ``with`` block), so one instance serves several batches.

    Inputs, the checkpoint and compiled-engine caches must be readable at the same paths on
    every node (a shared file system); paths are made absolute before they are sent.

    Args:
        config: Processing options.
        options: Cluster and splitting options.
    """

    def __init__(self, config: ProcessingConfig, options: RayOptions | None = None) -> None:
        self.config = config
        self.options = options or RayOptions()
        self._ray: ModuleType | None = None
        self._owns_cluster = False
        self._pool: ActorPool | None = None
        self._ready: WorkerReady | None = None
        self._plan: PoolPlan | None = None

    def start(self) -> None:
        """Connect to the cluster, start the actors and wait until one has loaded the model.

        Raises:
            RayUnavailableError: Ray is not installed.
            agr_batch.checkpoint.CheckpointError: The model cannot be loaded (and the other
                configuration errors a local pipeline raises, unwrapped from the worker's).
            RuntimeError: No actor could start within ``ready_timeout_s``.
        """
        if self._ready is not None:
            return
        ray = self._ray = require_ray()
        self._owns_cluster = connect(ray, self.options.address)
        plan = self._plan = plan_pool(ray, self.config, self.options)
        log.info(
            "ray: %d worker(s), %.2g CPU + %.2g GPU and %s thread(s) each",
            plan.workers,
            plan.cpus,
            plan.gpus,
            plan.threads,
        )
        actor_cls = ray.remote(Worker).options(
            num_cpus=plan.cpus,
            num_gpus=plan.gpus,
            max_restarts=self.options.max_restarts,
            max_task_retries=self.options.max_restarts,
        )
        worker_config = _absolute(self.config)
        actors = [actor_cls.remote(worker_config, plan.threads) for _ in range(plan.workers)]

        def on_ready(ready: WorkerReady) -> None:
            self._ready = ready
            log.debug("ray worker ready on %s (%s, %s)", ready.where, ready.info.device,
                      ready.info.backend)  # fmt: skip

        self._pool = ActorPool(
            ray, actors, ready_timeout_s=self.options.ready_timeout_s, on_ready=on_ready
        )
        try:
            self._pool.wait_ready()
        except BaseException:
            self.close()
            raise

    def info(self) -> PipelineInfo:
        """The first worker's description, plus the pool's layout (starts the actors)."""
        self.start()
        assert self._ready is not None and self._plan is not None
        plan = self._plan
        extra = {
            "executor": "ray",
            "ray": {
                "workers": plan.workers,
                "cpus_per_worker": plan.cpus,
                "gpus_per_worker": plan.gpus,
                "threads_per_worker": plan.threads,
                "segment_s": self.options.segment_s or None,
            },
        }
        return dataclasses.replace(self._ready.info, extra=extra)

    def process(
        self, items: Sequence[WorkItem], on_source: OnSource, progress: Progress | None = None
    ) -> ProcessStats:
        """Process ``items`` on the pool; call ``on_source`` once per item, on this thread.

        Results are handed on as soon as all of an item's tasks are done (completion order);
        a long video cut into segments is stitched back into one result first.

        Returns:
            Stage times summed over every task (worker seconds, not wall-clock seconds) and
            the faces classified.
        """
        self.start()
        assert self._pool is not None
        items = list(items)
        tasks = plan_tasks(items, self.config, self.options)
        join = _Join(items, tasks, self.config.vote.per_face, on_source)
        times = StageTimes()
        classified = 0
        if progress is not None:
            progress.begin(len(items))
            join.on_done = progress.source_done
        for task, outcome in self._pool.run(tasks):
            if isinstance(outcome, BaseException):
                join.failed(task, outcome)
                continue
            assert isinstance(outcome, TaskResult)
            times.add(outcome.stats.times)
            classified += outcome.stats.classified_faces
            join.done(task, outcome.results)
        join.check_complete()
        return ProcessStats(times, classified)

    def close(self) -> None:
        """Stop the actors, and the local cluster when this instance started it."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._ready = None
        if self._owns_cluster and self._ray is not None:
            self._ray.shutdown()
            self._owns_cluster = False


@dataclass
class _Pending:
    parts: dict[int, SourceResult] = field(default_factory=dict)
    count: int = 1
    duration_s: float | None = None


@dataclass
class _Join:
    """Collects task results into per-item results (stitching segments) and hands them on.

    Attributes:
        items: The items as the caller gave them.
        tasks: Their tasks (which items were cut into how many segments).
        per_face: Faces keep their own predictions (``--per-face``).
        deliver: Called with each item's complete result.
        on_done: Called with each item once delivered (progress).
    """

    items: list[WorkItem]
    tasks: InitVar[list[Task]]
    per_face: bool
    deliver: OnSource
    on_done: Callable[[WorkItem], None] | None = None
    pending: dict[int, _Pending] = field(init=False)

    def __post_init__(self, tasks: list[Task]) -> None:
        self.pending = {i: _Pending() for i in range(len(self.items))}
        for t in tasks:
            if t.segment is not None:
                self.pending[t.positions[0]].count = t.segment.count
                self.pending[t.positions[0]].duration_s = t.duration_s

    def done(self, task: Task, results: tuple[SourceResult, ...]) -> None:
        """A task's results: one per item, matched by position."""
        found = _by_item(task, results)
        for pos, sent, result in zip(task.positions, task.items, found, strict=True):
            if result is None:  # cannot happen with LocalPipeline.process, but never lose a file
                result = SourceResult(sent, 0, None, None, (), f"{sent.source}: no result")
            self._part(pos, sent, _relabel(result, self.items[pos]))

    def failed(self, task: Task, exc: BaseException) -> None:
        """A task failed: each of its items fails with the reason."""
        reason = one_line(exc)
        for pos, sent in zip(task.positions, task.items, strict=True):
            original = self.items[pos]
            where = "" if sent.count == 1 else f" (segment {sent.index + 1})"
            error = f"{original.source}: Ray worker failed{where} ({type(exc).__name__}: {reason})"
            self._part(pos, sent, SourceResult(sent, 0, None, None, (), error))

    def _part(self, pos: int, sent: WorkItem, result: SourceResult) -> None:
        p = self.pending[pos]
        p.parts[sent.index] = result
        if len(p.parts) < p.count:
            return
        del self.pending[pos]
        if p.count == 1:
            whole = dataclasses.replace(p.parts[0], item=self.items[pos])
        else:
            parts = [p.parts[k] for k in range(p.count)]
            whole = dataclasses.replace(
                stitch_segments(parts, per_face=self.per_face, duration_s=p.duration_s),
                item=self.items[pos],
            )
        self.deliver(whole)
        if self.on_done is not None:
            self.on_done(self.items[pos])

    def check_complete(self) -> None:
        """Raise if a result went missing (a bug: every task yields or fails)."""
        if self.pending:
            missing = ", ".join(self.items[i].source for i in list(self.pending)[:3])
            raise RuntimeError(
                f"ray executor lost the results of {len(self.pending)} file(s): {missing}"
            )


def _by_item(task: Task, results: tuple[SourceResult, ...]) -> list[SourceResult | None]:
    """The result of each of the task's items (None: missing)."""
    by_source = {r.item.source: r for r in results}
    return [by_source.get(item.source) for item in task.items]


def _relabel(result: SourceResult, original: WorkItem) -> SourceResult:
    """Put back the path as given (workers got absolute paths) in the result and its tracks.

    The result keeps its own window (a segment's), with the original path.
    """
    item = dataclasses.replace(result.item, media=original.media)
    before, after = result.item.source, original.source
    if before == after:
        return dataclasses.replace(result, item=item)
    tracks = tuple(dataclasses.replace(t, source=after) for t in result.tracks)
    error = None if result.error is None else result.error.replace(before, after)
    return dataclasses.replace(result, item=item, tracks=tracks, error=error)
