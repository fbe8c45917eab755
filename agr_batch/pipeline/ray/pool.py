"""The Ray actor pool: connecting, sizing the pool, and running tasks one per actor.

The scheduler is a few lines over ``ray.wait``: one task in flight per actor (good load
balancing when tasks come longest first), per-task failure attribution, actors restarted by
Ray after a crash (their task is retried once), and actors that cannot be placed dropped
instead of blocking the run.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from agr_batch.config import ProcessingConfig
from agr_batch.engines import BackendUnavailableError
from agr_batch.limits import MAX_SEGMENT_S, check_number

log = logging.getLogger(__name__)

__all__ = [
    "INSTALL_HINT",
    "ActorPool",
    "PoolPlan",
    "RayOptions",
    "RayUnavailableError",
    "connect",
    "plan_pool",
    "require_ray",
]

INSTALL_HINT = "pip install 'agr-batch[ray]'"


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
            f"the ray executor needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """How the Ray executor uses the cluster.

    Attributes:
        address: Cluster address; None uses ``$RAY_ADDRESS``, else starts a local cluster.
            When Ray is already initialised in this process, that session is used.
        workers: Actors (pipelines) to start; None: one per GPU on a GPU cluster, else one
            per two CPUs.
        segment_s: Split videos into segments of about this many seconds (0 or None: never,
            the default: without seeking, a video cut into ``n`` segments decodes about
            ``(n - 1) / 2`` times its length more; 60 s is a good length when there are
            fewer long videos than workers). Segments overlap, and their tracks are stitched.
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
    segment_s: float | None = None
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


def connect(ray: ModuleType, address: str | None) -> bool:
    """Connect to (or start) a cluster; True when this call started a local one."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False)
        return False
    from agr_batch.stages.detect.base import default_threads

    log.info("starting a local Ray cluster (%d CPUs)", default_threads())
    ray.init(
        address="local",
        num_cpus=default_threads(),
        include_dashboard=False,
        log_to_driver=False,
    )
    return True


@dataclass(frozen=True)
class PoolPlan:
    """How many actors, and what each reserves.

    Attributes:
        workers: Actors to start.
        cpus: Logical CPUs per actor.
        gpus: GPUs per actor.
        threads: Detector and torch threads per CPU actor (None: their defaults).
    """

    workers: int
    cpus: float
    gpus: float
    threads: int | None


def plan_pool(ray: ModuleType, config: ProcessingConfig, options: RayOptions) -> PoolPlan:
    """Size the pool from the cluster's resources and the options."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    if config.device == "cuda" and gpus < 1:
        raise ValueError("--device cuda, but the Ray cluster has no GPU")
    if config.device != "cpu" and gpus >= 1:
        workers = options.workers or int(gpus)
        plan = PoolPlan(workers, options.cpus_per_worker or 1.0, 1.0, None)
    else:
        workers = options.workers or max(1, int(cpus // 2))
        per_cpu = options.cpus_per_worker or min(1.0, cpus / (2 * workers)) or 0.5
        threads = options.threads_per_worker or max(1, int(cpus // workers))
        plan = PoolPlan(workers, per_cpu, 0.0, threads)
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


def cause(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error (``exc`` itself when there is none)."""
    inner = getattr(exc, "cause", None)
    return inner if isinstance(inner, BaseException) else exc


def one_line(exc: BaseException) -> str:
    """An exception's message on one line of at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _kill(ray: ModuleType, actors: list[Any]) -> None:
    if not ray.is_initialized():
        return
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception as e:  # already gone
            log.debug("ray.kill: %s", e)


class ActorPool:
    """Actors that answer ``ready()`` (with a description) and ``process(task)``.

    Args:
        ray: The ``ray`` module (connected).
        actors: The actor handles, just created.
        ready_timeout_s: Actors not ready after this long are dropped once another works.
        on_ready: Called with the first actor's ``ready()`` answer.
    """

    def __init__(
        self,
        ray: ModuleType,
        actors: list[Any],
        *,
        ready_timeout_s: float,
        on_ready: Callable[[Any], None],
    ) -> None:
        self._ray = ray
        self._actors = list(actors)
        self._ready_timeout_s = ready_timeout_s
        self._on_ready = on_ready
        self._ready = False
        self._finalizer = weakref.finalize(self, _kill, ray, list(actors))
        self._starting: dict[Any, Any] = {a.ready.remote(): a for a in actors}
        self._idle: list[Any] = []
        self._started_at = time.monotonic()

    def wait_ready(self) -> None:
        """Wait until one actor is ready.

        Raises:
            Exception: The first actor's load error, when no actor could load (the model or
                configuration is unusable: every worker would fail alike).
            RuntimeError: No actor started within the timeout.
        """
        while not self._ready:
            ready, _ = self._ray.wait(
                list(self._starting), num_returns=1, timeout=self._ready_timeout_s
            )
            if not ready:
                raise RuntimeError(
                    f"no Ray worker started within {self._ready_timeout_s:.0f} s; the cluster "
                    "may lack the resources of a worker"
                )
            self._started(ready[0])

    def _started(self, ref: Any) -> None:
        """An actor's ``ready()`` answered: it joins the pool, or is dropped on failure."""
        actor = self._starting.pop(ref)
        try:
            answer = self._ray.get(ref)
        except Exception as e:
            if not self._ready:
                raise cause(e) from None
            log.warning("a Ray worker failed to start and is dropped: %s", one_line(cause(e)))
            self._drop(actor)
            return
        if not self._ready:
            self._ready = True
            self._on_ready(answer)
        self._idle.append(actor)

    def _drop(self, actor: Any) -> None:
        if actor in self._actors:
            self._actors.remove(actor)
        self._ray.kill(actor)

    def run(self, tasks: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        """Run ``tasks`` in order, one in flight per actor; yield ``(task, result)`` as each ends.

        ``result`` is the exception when the task failed.
        """
        ray = self._ray
        pending = deque(tasks)
        inflight: dict[Any, tuple[Any, Any]] = {}
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
                timeout = max(0.0, self._started_at + self._ready_timeout_s - time.monotonic())
            ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            if not ready:  # stragglers that cannot be placed while others work
                log.warning(
                    "dropping %d Ray worker(s) not started after %.0f s",
                    len(self._starting),
                    self._ready_timeout_s,
                )
                for actor in list(self._starting.values()):
                    self._drop(actor)
                self._starting.clear()
                continue
            ref = ready[0]
            if ref in self._starting:
                self._started(ref)
                continue
            actor, task = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                # Dead after its restarts: the task fails, the actor leaves the pool.
                log.warning("a Ray worker died: %s", one_line(e))
                self._drop(actor)
                yield task, e
                continue
            except Exception as e:
                self._idle.append(actor)
                yield task, cause(e)
                continue
            self._idle.append(actor)
            yield task, result

    def close(self) -> None:
        """Kill the actors."""
        self._finalizer()
        self._actors, self._idle, self._starting = [], [], {}
