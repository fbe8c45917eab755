"""Shared, expensive fixtures: one synthetic data set and one short ``tiny`` run per session."""

from __future__ import annotations

import pytest

from trainer.fit import FitConfig, FitResult, fit
from trainer.synth import SynthSummary, make_dataset

# About 1500 faces at 64 px (tiny's input size): 1200 train, 300 val.
SYNTH_N = 1500
SYNTH_SIZE = 64


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return make_dataset(tmp_path_factory.mktemp("synth") / "data", SYNTH_N, seed=0, size=SYNTH_SIZE)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """A few dozen faces for plumbing tests (corruption, CLI)."""
    return make_dataset(tmp_path_factory.mktemp("small") / "data", 60, seed=5, size=64)


@pytest.fixture(scope="session")
def tiny_run(synth_data: SynthSummary, tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    """``tiny`` trained for 5 epochs on the synthetic set (lr 1e-3: 5 epochs of 19 steps)."""
    config = FitConfig(
        data=synth_data.root,
        arch="tiny",
        out=tmp_path_factory.mktemp("runs") / "tiny",
        epochs=5,
        lr=1e-3,
        workers=0,
        progress=False,
    )
    return fit(config)
