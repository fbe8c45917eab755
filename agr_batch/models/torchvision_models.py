"""torchvision backbones with the three FairFace heads, for the paper's Table 1.

Each backbone keeps its trunk (and, for AlexNet, its 4096-wide hidden layers) and loses only
its 1000-class output layer, so the parameter counts stay close to the paper's table.
Weights start random (``weights=None``): nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.models as tvm
from torch import nn

from agr_batch.models.heads import MultiHead, MultiHeadModel
from agr_batch.models.registry import register_model


class TorchvisionMultiHead(MultiHeadModel):
    """A torchvision trunk whose penultimate features feed the three branches."""

    def __init__(
        self,
        trunk: nn.Module,
        num_features: int,
        *,
        hidden: int = 256,
        dropout: float = 0.5,
        input_size: tuple[int, int] = (128, 128),
    ) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.trunk = trunk
        self.num_features = num_features
        self.heads = MultiHead(num_features, hidden=hidden, dropout=dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalised (B, 3, H, W) batch to flat (B, F) features."""
        return torch.flatten(self.trunk(x), 1)


def _strip(
    builder: Callable[..., nn.Module], attr: str, index: int | None
) -> tuple[nn.Module, int]:
    """Build a torchvision model and replace its last classifier layer with identity."""
    net = builder(weights=None)
    layer = getattr(net, attr)
    if index is None:
        num_features = layer.in_features
        setattr(net, attr, nn.Identity())
    else:
        num_features = layer[index].in_features
        layer[index] = nn.Identity()
    return net, num_features


def _make(
    builder: Callable[..., nn.Module], attr: str, index: int | None, **overrides: object
) -> TorchvisionMultiHead:
    trunk, num_features = _strip(builder, attr, index)
    return TorchvisionMultiHead(trunk, num_features, **overrides)  # type: ignore[arg-type]


@register_model("resnet34", description="torchvision ResNet-34 trunk with the three heads")
def resnet34(**overrides: object) -> TorchvisionMultiHead:
    """ResNet-34 (Table 1)."""
    return _make(tvm.resnet34, "fc", None, **overrides)


@register_model(
    "densenet161", description="torchvision DenseNet-161 trunk (the paper's 'Densenet61')"
)
def densenet161(**overrides: object) -> TorchvisionMultiHead:
    """DenseNet-161, the paper's "Densenet61" by its parameter count (Table 1)."""
    return _make(tvm.densenet161, "classifier", None, **overrides)


@register_model(
    "alexnet", description="torchvision AlexNet with its 4096-wide layers and the three heads"
)
def alexnet(**overrides: object) -> TorchvisionMultiHead:
    """AlexNet (Table 1)."""
    return _make(tvm.alexnet, "classifier", 6, **overrides)


@register_model("mobilenet_v2", description="torchvision MobileNetV2 trunk with the three heads")
def mobilenet_v2(**overrides: object) -> TorchvisionMultiHead:
    """MobileNetV2 (Table 1)."""
    return _make(tvm.mobilenet_v2, "classifier", 1, **overrides)
