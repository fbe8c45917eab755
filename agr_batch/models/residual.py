"""The seed paper's residual multi-head CNN and its smaller variants.

Design (Kizi & Sin, "Residual Blocks-Based CNN for Age, Gender, and Race Classification"):
three convolutional stages (conv + BN + ReLU, pooling), residual blocks with BN and identity
skips, flatten, and three FC branches Linear → ReLU → Dropout → Linear (AlphaDropout for race).

The paper gives neither the input size nor the layer widths, only the total of 35.3 M
parameters. ``paper`` reaches it with widths 64/128/256, three residual blocks at 256
channels, an 8×8 pooled grid flattened to 16,384 features and 640-wide branches. The input is
128×128 px: FairFace's chips are 224 px, but 128 px costs a third of the FLOPs and keeps the
parameter count unchanged (the adaptive pool fixes the flattened grid).
"""

from __future__ import annotations

import torch
from torch import nn

from agr_batch.models.heads import MultiHead, MultiHeadModel
from agr_batch.models.registry import register_model


class ConvStage(nn.Sequential):
    """3×3 conv → BN → ReLU → 2×2 max-pool: halves the resolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )


class ResidualBlock(nn.Module):
    """Two 3×3 conv + BN layers with an identity skip (He et al.'s basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(x + F(x))."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResidualMultiHeadNet(MultiHeadModel):
    """Conv stages, residual blocks, pooled flatten and three FC branches.

    Args:
        widths: Output channels of the three conv stages.
        num_blocks: Residual blocks after the last stage.
        pool_grid: Side of the adaptive average-pool grid flattened into the branches;
            ``1`` is global average pooling.
        hidden: Width of each branch's hidden layer.
        dropout: Dropout (AlphaDropout for race) probability in the branches.
        input_size: (H, W) of the face chips.
    """

    def __init__(
        self,
        *,
        widths: tuple[int, int, int] = (64, 128, 256),
        num_blocks: int = 3,
        pool_grid: int = 8,
        hidden: int = 640,
        dropout: float = 0.5,
        input_size: tuple[int, int] = (128, 128),
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must name 3 stages, got {len(widths)}: {widths}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        stages = []
        in_ch = 3
        for w in widths:
            stages.append(ConvStage(in_ch, w))
            in_ch = w
        self.stages = nn.Sequential(*stages)
        self.blocks = nn.Sequential(*[ResidualBlock(in_ch) for _ in range(num_blocks)])
        self.pool = nn.AdaptiveAvgPool2d(pool_grid)
        self.num_features = in_ch * pool_grid * pool_grid
        self.heads = MultiHead(self.num_features, hidden=hidden, dropout=dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalised (B, 3, H, W) batch to flat (B, F) features."""
        x = self.blocks(self.stages(x))
        return torch.flatten(self.pool(x), 1)


@register_model("paper", description="seed paper's residual multi-head CNN, 35.3 M params, 128 px")
def paper(**overrides: object) -> ResidualMultiHeadNet:
    """The seed paper's design at 35.3 M parameters and 128×128 input."""
    return ResidualMultiHeadNet(**overrides)  # type: ignore[arg-type]


@register_model(
    "compact", description="paper design, narrower, global average pooling; ~1 M params"
)
def compact(**overrides: object) -> ResidualMultiHeadNet:
    """The paper's design with global average pooling before the branches.

    Widths 32/64/128 with two residual blocks cost about a fifth of ``paper``'s FLOPs.
    """
    cfg: dict[str, object] = {
        "widths": (32, 64, 128),
        "num_blocks": 2,
        "pool_grid": 1,
        "hidden": 256,
        "dropout": 0.3,
    }
    cfg.update(overrides)
    return ResidualMultiHeadNet(**cfg)  # type: ignore[arg-type]


@register_model("tiny", description="under 0.5 M params at 64 px, for CPU tests and demos")
def tiny(**overrides: object) -> ResidualMultiHeadNet:
    """A small variant for tests and the demo."""
    cfg: dict[str, object] = {
        "widths": (16, 32, 64),
        "num_blocks": 1,
        "pool_grid": 1,
        "hidden": 64,
        "dropout": 0.1,
        "input_size": (64, 64),
    }
    cfg.update(overrides)
    return ResidualMultiHeadNet(**cfg)  # type: ignore[arg-type]
