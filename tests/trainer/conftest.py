"""Shared, expensive fixtures: one synthetic data set and one short ``tiny`` run per session."""

from __future__ import annotations

import pytest

from trainer.synth import SynthSummary, make_dataset

# ``synth_data`` and ``tiny_run`` live in tests/conftest.py: the engine tests use them too.


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """A few dozen faces for plumbing tests (corruption, CLI)."""
    return make_dataset(tmp_path_factory.mktemp("small") / "data", 60, seed=5, size=64)
