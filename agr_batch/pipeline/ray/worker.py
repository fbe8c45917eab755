"""The Ray actor: one :class:`~agr_batch.pipeline.local.LocalPipeline` that runs tasks.

Models load once per actor, not once per task, and every task goes through the local
pipeline's own ``process``: a Ray worker does exactly what the local executor does. Frames
never leave the worker that decodes them; a task returns its finished tracks (face boxes,
scores and probabilities: a few kilobytes per person).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import PipelineInfo, ProcessStats, SourceResult
from agr_batch.pipeline.local import LocalPipeline
from agr_batch.pipeline.ray.plan import Task

__all__ = ["TaskResult", "Worker", "WorkerReady"]


@dataclass(frozen=True)
class WorkerReady:
    """A worker's answer once its pipeline is loaded.

    Attributes:
        info: What the pipeline resolved (labels, backend, device, metadata values).
        where: Host and process id (for logs).
    """

    info: PipelineInfo
    where: str


@dataclass(frozen=True)
class TaskResult:
    """What a task produced: one result per item, and the time spent."""

    results: tuple[SourceResult, ...]
    stats: ProcessStats


class Worker:
    """One pipeline on a Ray worker; wrapped with ``ray.remote`` at run time.

    The pipeline loads on the first call (not in ``__init__``), so that a load error reaches
    the driver as the call's exception, and a restarted actor reloads it by itself.

    Args:
        config: Processing options, with absolute paths.
        threads: Detector and torch threads (None: their defaults).
    """

    def __init__(self, config: ProcessingConfig, threads: int | None) -> None:
        if threads:
            import torch

            from agr_batch.stages.detect.base import default_threads

            threads = min(threads, default_threads())
            torch.set_num_threads(threads)
        self._pipeline = LocalPipeline(config, threads=threads)

    def ready(self) -> WorkerReady:
        """Load the pipeline and describe it."""
        return WorkerReady(self._pipeline.info(), f"{socket.gethostname()} pid {os.getpid()}")

    def process(self, task: Task) -> TaskResult:
        """Run one task through the local pipeline."""
        results: list[SourceResult] = []
        stats = self._pipeline.process(task.items, results.append)
        return TaskResult(tuple(results), stats)
