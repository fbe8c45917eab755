"""The three-branch classifier heads shared by every architecture."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from agr_batch.labels import VOCABULARIES


class HeadLogits(NamedTuple):
    """Unnormalised scores per head: age (B, 9), gender (B, 2), race (B, 7)."""

    age: torch.Tensor
    gender: torch.Tensor
    race: torch.Tensor


def branch(
    in_features: int, hidden: int, num_classes: int, *, dropout: float, alpha: bool
) -> nn.Sequential:
    """One FC branch of the paper: Linear → ReLU → (Alpha)Dropout → Linear."""
    drop: nn.Module = nn.AlphaDropout(dropout) if alpha else nn.Dropout(dropout)
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        drop,
        nn.Linear(hidden, num_classes),
    )


class MultiHead(nn.Module):
    """Age, gender and race branches over one flat feature vector.

    The race branch uses AlphaDropout, as in the paper.
    """

    def __init__(self, in_features: int, *, hidden: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.age = branch(
            in_features, hidden, len(VOCABULARIES["age"]), dropout=dropout, alpha=False
        )
        self.gender = branch(
            in_features, hidden, len(VOCABULARIES["gender"]), dropout=dropout, alpha=False
        )
        self.race = branch(
            in_features, hidden, len(VOCABULARIES["race"]), dropout=dropout, alpha=True
        )

    def forward(self, features: torch.Tensor) -> HeadLogits:
        """Map (B, F) features to :class:`HeadLogits`."""
        return HeadLogits(self.age(features), self.gender(features), self.race(features))


class MultiHeadModel(nn.Module):
    """The fixed model contract: ``forward_features`` → ``forward_heads`` → :class:`HeadLogits`.

    Subclasses set ``self.heads`` and implement :meth:`forward_features` returning (B, F).

    Attributes:
        input_size: (H, W) the model was built for; preprocessing reads it.
    """

    input_size: tuple[int, int]
    heads: MultiHead

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalised (B, 3, H, W) batch to flat (B, F) features."""
        raise NotImplementedError

    def forward_heads(self, features: torch.Tensor) -> HeadLogits:
        """Map (B, F) features to named logits per head."""
        return self.heads(features)

    def forward(self, x: torch.Tensor) -> HeadLogits:
        """Classify a normalised (B, 3, H, W) batch."""
        return self.forward_heads(self.forward_features(x))
