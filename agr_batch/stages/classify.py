"""Classification stage: aligned chips in, softmax probabilities per head out."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from agr_batch.checkpoint import Checkpoint
from agr_batch.models import HeadLogits
from agr_batch.records import Predictions
from agr_batch.stages.preprocess import PreprocessSpec, chips_to_tensor

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], HeadLogits]


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

    def _input(self, chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The model input of a batch of chips, on the model's device."""
        if isinstance(chips, torch.Tensor):
            if chips.ndim != 4 or chips.shape[1] != 3 or not chips.is_floating_point():
                raise ValueError(
                    "device chips: expected an (N, 3, H, W) normalised floating tensor, got "
                    f"{chips.dtype} {tuple(chips.shape)}"
                )
            return chips.to(self.device, torch.float32, non_blocking=True)
        x = chips_to_tensor(chips, self.spec)
        if self.device.type == "cuda":
            # Page-locked memory lets the copy run asynchronously with the host.
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    @property
    def spec(self) -> PreprocessSpec:
        """The checkpoint's preprocessing (chip size, normalisation, alignment)."""
        return self.checkpoint.meta.preprocess

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Class names per head, from the checkpoint."""
        return dict(self.checkpoint.meta.labels)

    @torch.inference_mode()
    def predict(self, chips: np.ndarray | torch.Tensor) -> Predictions:
        """Classify chips in batches of ``batch_size``.

        Args:
            chips: (N, H, W, 3) uint8 RGB chips on the host, or an (N, 3, H, W) floating
                tensor already normalised with the checkpoint's preprocessing (chips
                aligned on the device), which is used as it is.
        """
        n = len(chips)
        out = {h: [] for h in ("age", "gender", "race")}
        for start in range(0, n, self.batch_size):
            x = self._input(chips[start : start + self.batch_size])
            logits = self.forward(x)
            for head in out:
                probs = torch.softmax(getattr(logits, head).float(), dim=1)
                out[head].append(probs.cpu().numpy())
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
