"""A small executor of converted inference graphs (TFLite, tfjs) in PyTorch, with the graph's constants as trainable
parameters: the common target of `tflite_torch` and `tfjs_torch`, which parse their formats into `Node`s.

Conventions. Every 4-D tensor is held NCHW, as PyTorch's convolutions want it (the source graphs are NHWC): the
front-ends convert convolution kernels to PyTorch's layout when they read them, and `GraphModule` maps NHWC axes
of reductions and reshapes. A 1-D constant combined with a 4-D tensor is a per-channel one and is broadcast over
NCHW's channel axis. Float constants with more than one value become `nn.Parameter`s (kernels, biases, folded batch
norms, PReLU slopes: everything a fine-tune may move); scalars (ReLU6's 6, a clip's 0) and integer constants stay
fixed buffers. Padding "same" is TensorFlow's: the total padding split with the odd pixel after (bottom/right),
computed for the actual input size, so the module also runs at sizes other than the source graph's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class GraphError(ValueError):
    """A graph that this executor does not run (an unknown op, a layout it does not handle)."""


@dataclass(frozen=True)
class Node:
    """One operation: `op` (one of `OPS`), named input tensors, one named output, and its attributes (conv: stride,
    dilation, padding "same"/"valid", depthwise, activation; mean: NHWC axes, keep_dims; reshape: shape)."""

    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict = field(default_factory=dict)


ACTIVATIONS = {None: lambda x: x, "relu": F.relu, "relu6": lambda x: F.hardtanh(x, 0.0, 6.0)}
OPS = ("conv2d", "linear", "add", "sub", "mul", "minimum", "maximum", "relu", "relu6", "abs", "mean", "reshape",
       "sigmoid", "softmax")
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding along one axis: (before, after), the odd pixel after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _parameter_key(name: str, taken: set[str]) -> str:
    key = re.sub(r"\W", "_", name).strip("_") or "constant"
    base, count = key, 1
    while key in taken:
        count += 1
        key = f"{base}_{count}"
    taken.add(key)
    return key


class GraphModule(nn.Module):
    """Runs `nodes` (in topological order) from the graph input `input_name` (NCHW) to any named tensors.

    `constants` maps a tensor name to its value, already in the layout the executor uses (see the module's
    docstring). `run(x, names)` returns those tensors, computing only the nodes they depend on."""

    def __init__(self, nodes: list[Node], constants: dict[str, np.ndarray], input_name: str):
        super().__init__()
        self.nodes = list(nodes)
        self.input_name = input_name
        produced = {input_name, *constants}
        for node in self.nodes:
            if node.op not in OPS:
                raise GraphError(f"op {node.op!r} (producing {node.output}) is not supported")
            missing = [name for name in node.inputs if name not in produced]
            if missing:
                raise GraphError(f"{node.op} {node.output}: inputs {missing} are not produced before it")
            produced.add(node.output)
        self.weights = nn.ParameterDict()
        self._keys: dict[str, str] = {}  # tensor name → key in `weights` or buffer name
        taken: set[str] = set()
        for name, value in constants.items():
            value = np.asarray(value)
            key = _parameter_key(name, taken)
            self._keys[name] = key
            tensor = torch.from_numpy(np.array(value, copy=True, order="C"))
            if value.dtype.kind == "f" and value.size > 1:
                self.weights[key] = nn.Parameter(tensor.float())
            else:
                self.register_buffer("fixed_" + key, tensor.float() if value.dtype.kind == "f" else tensor,
                                     persistent=True)
        self._plans: dict[tuple[str, ...], list[Node]] = {}

    def constant(self, name: str) -> torch.Tensor:
        """A constant by its tensor name in the source graph (a Parameter where it is trainable)."""
        key = self._keys[name]
        return self.weights[key] if key in self.weights else getattr(self, "fixed_" + key)

    def constant_names(self) -> list[str]:
        return list(self._keys)

    def _plan(self, wanted: tuple[str, ...]) -> list[Node]:
        if wanted not in self._plans:
            producers = {node.output: node for node in self.nodes}
            unknown = [name for name in wanted if name not in producers and name != self.input_name]
            if unknown:
                raise GraphError(f"no tensor named {unknown} in the graph")
            needed, stack = set(), list(wanted)
            while stack:
                name = stack.pop()
                node = producers.get(name)
                if node is not None and name not in needed:
                    needed.add(name)
                    stack += list(node.inputs)
            self._plans[wanted] = [node for node in self.nodes if node.output in needed]
        return self._plans[wanted]

    def run(self, x: torch.Tensor, wanted: list[str] | tuple[str, ...]) -> list[torch.Tensor]:
        """The tensors `wanted` for the NCHW input `x`."""
        values: dict[str, torch.Tensor] = {self.input_name: x}
        for node in self._plan(tuple(wanted)):
            inputs = [values[name] if name in values else self.constant(name) for name in node.inputs]
            values[node.output] = self._execute(node, inputs)
        return [values[name] for name in wanted]

    @staticmethod
    def _per_channel(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A 1-D operand next to a 4-D NCHW one runs along the channels (NHWC's last axis in the source)."""
        if a.dim() == 4 and b.dim() == 1 and b.numel() > 1:
            b = b.view(-1, 1, 1)
        elif b.dim() == 4 and a.dim() == 1 and a.numel() > 1:
            a = a.view(-1, 1, 1)
        return a, b

    def _execute(self, node: Node, inputs: list[torch.Tensor]) -> torch.Tensor:
        op, attrs = node.op, node.attrs
        if op == "conv2d":
            x, weight = inputs[0], inputs[1]
            bias = inputs[2] if len(inputs) > 2 else None
            stride, dilation = attrs.get("stride", (1, 1)), attrs.get("dilation", (1, 1))
            if attrs.get("padding", "valid") == "same":
                top, bottom = _same_padding(x.shape[2], weight.shape[2], stride[0], dilation[0])
                left, right = _same_padding(x.shape[3], weight.shape[3], stride[1], dilation[1])
                if top or bottom or left or right:
                    x = F.pad(x, (left, right, top, bottom))
            groups = x.shape[1] if attrs.get("depthwise") else 1
            y = F.conv2d(x, weight, bias, stride, 0, dilation, groups)
            return ACTIVATIONS[attrs.get("activation")](y)
        if op == "linear":
            y = F.linear(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None)
            return ACTIVATIONS[attrs.get("activation")](y)
        if op in ("add", "sub", "mul", "minimum", "maximum"):
            a, b = self._per_channel(inputs[0], inputs[1])
            y = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "minimum": torch.minimum,
                 "maximum": torch.maximum}[op](a, b)
            return ACTIVATIONS[attrs.get("activation")](y)
        if op in ("relu", "relu6"):
            return ACTIVATIONS[op](inputs[0])
        if op == "abs":
            return inputs[0].abs()
        if op == "sigmoid":
            return torch.sigmoid(inputs[0])
        if op == "softmax":
            return torch.softmax(inputs[0] * attrs.get("beta", 1.0), dim=-1)
        if op == "mean":
            x = inputs[0]
            axes = tuple(_NHWC_TO_NCHW_AXIS[a % 4] for a in attrs["axes"]) if x.dim() == 4 else tuple(attrs["axes"])
            return x.mean(axes, keepdim=attrs.get("keep_dims", False))
        if op == "reshape":
            x = inputs[0]
            if x.dim() == 4:
                x = x.permute(0, 2, 3, 1)
            shape = [x.shape[0], *attrs["shape"][1:]]  # the batch stays the caller's
            y = x.reshape(shape)
            return y.permute(0, 3, 1, 2) if y.dim() == 4 else y
        raise GraphError(f"op {op!r} is not supported")
