"""The Ray executor: ``run`` and ``scan`` on a pool of Ray actors (``--executor ray``).

* :mod:`~agr_batch.pipeline.ray.driver` — :class:`RayPipeline`, the pipeline ``run`` and
  ``scan`` use, exactly as they use a local one;
* :mod:`~agr_batch.pipeline.ray.plan` — tasks: batches of images, whole videos, or
  overlapping segments of long videos, longest first;
* :mod:`~agr_batch.pipeline.ray.pool` — connecting, sizing the pool, one task per actor;
* :mod:`~agr_batch.pipeline.ray.worker` — the actor, which holds a
  :class:`~agr_batch.pipeline.local.LocalPipeline` and calls its ``process``.

Why plain actors and not Ray Data, and what segments cost: see ``docs/distributed.md``.
"""

from __future__ import annotations

from agr_batch.pipeline.ray.driver import RayPipeline
from agr_batch.pipeline.ray.pool import INSTALL_HINT, RayOptions, RayUnavailableError, require_ray

__all__ = ["INSTALL_HINT", "RayOptions", "RayPipeline", "RayUnavailableError", "require_ray"]
