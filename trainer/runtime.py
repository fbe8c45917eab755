"""Mixed precision, seeds and random-generator states (for exact resumption).

Generator states are stored as tensors and plain Python values so that checkpoints stay
loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """Autocast settings for a device.

    Attributes:
        dtype: Autocast dtype, or ``None`` for full float32.
        use_scaler: Whether a gradient scaler is needed (float16).
    """

    dtype: torch.dtype | None
    use_scaler: bool

    @property
    def name(self) -> str:
        """``float32``, ``bfloat16`` or ``float16``."""
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


FULL_PRECISION = Precision(None, False)
"""float32 everywhere, no scaler."""


def precision_for(device: torch.device, *, amp: bool = True) -> Precision:
    """Mixed precision on CUDA only: bfloat16 where supported, else float16 with a scaler."""
    if not amp or device.type != "cuda":
        return FULL_PRECISION
    if torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states, in a ``weights_only``-loadable form."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(mt, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning(
                "checkpoint holds RNG states of %d GPUs, this machine has %d; not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )
