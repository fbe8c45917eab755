"""agr-batch: demographic statistics (FairFace age, gender, race) from videos and image folders.

Command line: ``agr-batch run | scan | report | status | info | compile | bench``
(:mod:`agr_batch.cli`). The packages follow the data, from the commands down:

* :mod:`agr_batch.cli` — click only: parses options, calls the typed function behind each
  command, prints the summary; imports no heavy stack until a command needs it;
* :mod:`agr_batch.commands` — what the commands do: :mod:`~agr_batch.commands.run` (one
  output set), :mod:`~agr_batch.commands.scan` (an incremental, exactly-once dataset),
  :mod:`~agr_batch.commands.report`, :mod:`~agr_batch.commands.bench`,
  :mod:`~agr_batch.commands.info`, :mod:`~agr_batch.commands.compile`;
* :mod:`agr_batch.pipeline` — the executors that run the chain on work items (files, or
  overlapping segments of a video): :mod:`~agr_batch.pipeline.local` (threads and bounded
  queues) and :mod:`~agr_batch.pipeline.ray` (an actor pool, each actor holding a local
  pipeline); the face step, voting and completion, stitching, and
  :mod:`~agr_batch.pipeline.sink` (results → tables);
* :mod:`agr_batch.stages` — the chain itself, in order: :mod:`~agr_batch.stages.decode`
  (find inputs, decode frames) → :mod:`~agr_batch.stages.detect` (whole frames, or tiles
  around tracked faces: :mod:`~agr_batch.stages.detect.regions`) →
  :mod:`~agr_batch.stages.align` → :mod:`~agr_batch.stages.track` →
  :mod:`~agr_batch.stages.vote` → :mod:`~agr_batch.stages.classify` →
  :mod:`~agr_batch.stages.aggregate`;
* :mod:`agr_batch.engines` and :mod:`agr_batch.models` — the classifier: compiled backends,
  and the architectures;
* :mod:`agr_batch.storage` — writing outputs safely (:mod:`~agr_batch.storage.sinks`,
  :mod:`~agr_batch.storage.safety`) and file hashes (:mod:`~agr_batch.storage.hashing`).

Shared contracts at the top level: :mod:`~agr_batch.records` (the frozen records passed
between stages), :mod:`~agr_batch.config` (every option, checked on construction),
:mod:`~agr_batch.checkpoint` (the model file), :mod:`~agr_batch.labels`,
:mod:`~agr_batch.limits`, :mod:`~agr_batch.device`, :mod:`~agr_batch.exitcodes`,
:mod:`~agr_batch.signals`, :mod:`~agr_batch.registry`, and :mod:`~agr_batch.samples` (the
demo's and tests' generated media). Training lives beside it, in :mod:`trainer`.
"""

from __future__ import annotations

__version__ = "0.1.0"
