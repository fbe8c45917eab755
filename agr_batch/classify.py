"""Classification stage: aligned chips in, softmax probabilities per head out."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from agr_batch.checkpoint import Checkpoint
from agr_batch.models import HeadLogits
from agr_batch.preprocess import PreprocessSpec, chips_to_tensor
from agr_batch.records import Predictions

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], HeadLogits]


def resolve_device(device: str) -> torch.device:
    """Map ``auto`` to CUDA when available, else CPU; validate explicit choices.

    Raises:
        ValueError: For ``cuda`` on a machine without CUDA, or an unknown device string.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; expected auto, cpu or cuda") from None


class Classifier:
    """Batched age / gender / race classification of aligned face chips.

    Args:
        checkpoint: A loaded checkpoint; its preprocessing and labels are used as stored.
        device: Torch device the model runs on.
        batch_size: Faces per model call.
        forward: The compiled or eager callable to run (from :mod:`agr_batch.engines`);
            defaults to the checkpoint's model in eval mode.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        forward: Forward | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = checkpoint.model.to(self.device).eval()
        self.forward: Forward = forward or self.model
        self.faces_seen = 0

    @property
    def spec(self) -> PreprocessSpec:
        """The checkpoint's preprocessing (chip size, normalisation, alignment)."""
        return self.checkpoint.meta.preprocess

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Class names per head, from the checkpoint."""
        return dict(self.checkpoint.meta.labels)

    @torch.inference_mode()
    def predict(self, chips: np.ndarray) -> Predictions:
        """Classify (N, H, W, 3) uint8 RGB chips in batches of ``batch_size``."""
        n = len(chips)
        out = {h: [] for h in ("age", "gender", "race")}
        for start in range(0, n, self.batch_size):
            x = chips_to_tensor(chips[start : start + self.batch_size], self.spec)
            if self.device.type == "cuda":
                # Page-locked memory lets the copy run asynchronously with the host.
                x = x.pin_memory().to(self.device, non_blocking=True)
            else:
                x = x.to(self.device)
            logits = self.forward(x)
            for head in out:
                probs = torch.softmax(getattr(logits, head).float(), dim=1)
                out[head].append(probs.cpu().numpy())
        self.faces_seen += n
        if n == 0:
            return Predictions(
                np.zeros((0, 9), np.float32),
                np.zeros((0, 2), np.float32),
                np.zeros((0, 7), np.float32),
            )
        return Predictions(
            *(
                np.concatenate(out[h]).astype(np.float32, copy=False)
                for h in ("age", "gender", "race")
            )
        )
