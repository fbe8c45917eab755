"""Fit and evaluate agr-batch's multi-head classifiers on FairFace.

Command line: ``agr-train synth | fit | eval | table1`` (:mod:`trainer.cli`).

Modules, one concern each:

* :mod:`trainer.synth` — synthetic FairFace-layout data of drawn faces (TEST DATA ONLY);
* :mod:`trainer.data` — CSV parsing and validation, image loading, Dataset, sampler, loader;
* :mod:`trainer.augment` — augmentation of aligned uint8 chips;
* :mod:`trainer.engine` — ``train_one_epoch`` and ``evaluate``, the multi-head loss;
* :mod:`trainer.evaluators` — accuracy, confusion, per-group accuracy, calibration (ECE);
* :mod:`trainer.hooks` — the epoch loop and its hooks (progress, metrics, early stopping,
  checkpoints);
* :mod:`trainer.runtime` — mixed precision, seeds and generator states (devices:
  :mod:`agr_batch.device`);
* :mod:`trainer.fit` — one training run (``agr-train fit``);
* :mod:`trainer.evaluation` — scoring a checkpoint (``agr-train eval``);
* :mod:`trainer.table1` — the paper's architecture comparison (``agr-train table1``).

Training feeds the model through :func:`agr_batch.stages.preprocess.chips_to_tensor` with the
preprocessing stored in every checkpoint, exactly as the processor does at inference.
"""

from __future__ import annotations
