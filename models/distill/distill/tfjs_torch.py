"""A TensorFlow.js graph model (model.json + its .bin weight shards) read into a trainable PyTorch module
(`graph_torch.GraphModule`), without TensorFlow or node.

The JSON's `modelTopology.node` is a TensorFlow GraphDef in JSON form (attributes as in tensorflow/core/framework's
attr_value.proto: strings base64-encoded, integer lists as decimal strings); `weightsManifest` lists each weight's
name, shape and dtype, in the order their bytes follow one another across the shard files. Quantised weights (the
manifest's `quantization`: uint8/uint16 with `scale` and `min`, or float16) are dequantised to float32. The ops read
are those of convolutional classifiers (`_read_node`); any other op is refused by name. Only NHWC graphs are read.

Reference: `@tensorflow/tfjs` itself, run by node on the same files (tests/test_face_teachers.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from .graph_torch import GraphError, GraphModule, Node

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANTISED = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


def read_weights(model_json: dict, directory: Path) -> dict[str, np.ndarray]:
    """Every weight of the manifest, float32 (dequantised where stored quantised) or int32."""
    weights: dict[str, np.ndarray] = {}
    for group in model_json["weightsManifest"]:
        data = b"".join((directory / path).read_bytes() for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"], dtype=np.int64))
            quantization = spec.get("quantization")
            stored = np.dtype(_QUANTISED[quantization["dtype"]] if quantization else _DTYPES[spec["dtype"]])
            size = count * stored.itemsize
            if offset + size > len(data):
                raise GraphError(f"{spec['name']}: the weight files end early (byte {offset} of {len(data)})")
            value = np.frombuffer(data, dtype=stored.newbyteorder("<"), count=count, offset=offset)
            offset += size
            if quantization and quantization["dtype"] != "float16":
                value = value.astype(np.float32) * np.float32(quantization["scale"]) + np.float32(quantization["min"])
            weights[spec["name"]] = value.astype(_DTYPES[spec["dtype"]]).reshape(spec["shape"])
        if offset != len(data):
            raise GraphError(f"{group['paths']}: {len(data) - offset} bytes left after the manifest's weights")
    return weights


def _string(attr: dict) -> str:
    return base64.b64decode(attr["s"]).decode()


def _ints(attr: dict) -> list[int]:
    return [int(i) for i in attr["list"].get("i", [])]


def _source(name: str) -> str:
    """A GraphDef input reference → the producing tensor ("name:0" and "name" are the same tensor)."""
    node, _, output = name.partition(":")
    if output not in ("", "0"):
        raise GraphError(f"input {name}: only a node's first output is supported")
    return node


def _conv_attrs(attrs: dict, depthwise: bool, activation: str | None = None) -> dict:
    if "data_format" in attrs and _string(attrs["data_format"]) != "NHWC":
        raise GraphError("only NHWC graphs are supported")
    strides = _ints(attrs["strides"])
    dilations = _ints(attrs["dilations"]) if "dilations" in attrs else [1, 1, 1, 1]
    padding = _string(attrs["padding"])
    if padding not in ("SAME", "VALID"):
        raise GraphError(f"padding {padding} is not supported")
    return {"stride": (strides[1], strides[2]), "dilation": (dilations[1], dilations[2]),
            "padding": padding.lower(), "depthwise": depthwise, "activation": activation}


def _fused_activation(attrs: dict, expected_first: str) -> str | None:
    fused = [base64.b64decode(s).decode() for s in attrs.get("fused_ops", {}).get("list", {}).get("s", [])]
    if not fused or fused[0] != expected_first or len(fused) > 2 or (len(fused) == 2 and fused[1] not in ("Relu",
                                                                                                       "Relu6")):
        raise GraphError(f"fused ops {fused} are not supported")
    return fused[1].lower() if len(fused) == 2 else None


class _Reader:
    def __init__(self, model_json: dict, weights: dict[str, np.ndarray]):
        self.graph = model_json["modelTopology"]["node"]
        self.weights = weights
        self.constants: dict[str, np.ndarray] = {}
        self.roles: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.aliases: dict[str, str] = {}
        self.input_name = ""

    def _constant(self, name: str, role: str) -> str:
        if name in self.constants:
            if self.roles[name] != role:
                raise GraphError(f"constant {name} is used both as {self.roles[name]} and as {role}")
            return name
        value = self.weights[name]
        if role == "conv":  # HWIO → OIHW
            value = value.transpose(3, 2, 0, 1)
        elif role == "depthwise":  # [H, W, C, multiplier] → [C·multiplier, 1, H, W]
            height, width, channels, multiplier = value.shape
            value = value.reshape(height, width, channels * multiplier).transpose(2, 0, 1)[:, None]
        elif role == "linear_transposed":  # MatMul's [inputs, outputs] → Linear's [outputs, inputs]
            value = value.T
        elif role == "value" and value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)
        self.constants[name] = np.ascontiguousarray(value)
        self.roles[name] = role
        return name

    def _operand(self, name: str) -> str:
        name = self.aliases.get(name, name)
        return self._constant(name, "value") if name in self.weights else name

    def _ordered(self) -> list[dict]:
        """The nodes in an order where each comes after its inputs (GraphDef does not promise one)."""
        by_name = {node["name"]: node for node in self.graph}
        order, state = [], {}

        def visit(name: str) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise GraphError(f"the graph has a cycle through {name}")
            state[name] = 1
            for source in by_name[name].get("input", []):
                if not source.startswith("^"):
                    visit(_source(source))
            state[name] = 2
            order.append(by_name[name])

        for node in self.graph:
            visit(node["name"])
        return order

    def read(self) -> None:
        for node in self._ordered():
            self._read_node(node)

    def _read_node(self, node: dict) -> None:
        op, name, attrs = node["op"], node["name"], node.get("attr", {})
        inputs = [_source(i) for i in node.get("input", []) if not i.startswith("^")]
        if op == "Const":
            if name not in self.weights:
                raise GraphError(f"constant {name} is not in the weights manifest")
        elif op == "Placeholder":
            if self.input_name:
                raise GraphError(f"a second input {name}; one image input is expected")
            self.input_name = name
        elif op == "Identity":
            self.aliases[name] = self.aliases.get(inputs[0], inputs[0])
        elif op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"):
            depthwise = "Depthwise" in op
            activation = _fused_activation(attrs, "BiasAdd") if op.startswith(("_Fused", "Fused")) else None
            weight = self._constant(inputs[1], "depthwise" if depthwise else "conv")
            bias = [self._constant(inputs[2], "value")] if len(inputs) > 2 else []
            self.nodes.append(Node("conv2d", (self._operand(inputs[0]), weight, *bias), name,
                                   _conv_attrs(attrs, depthwise, activation)))
        elif op in ("MatMul", "_FusedMatMul"):
            if attrs.get("transpose_a", {}).get("b"):
                raise GraphError(f"{name}: MatMul with transpose_a is not supported")
            transposed = attrs.get("transpose_b", {}).get("b", False)
            weight = self._constant(inputs[1], "linear" if transposed else "linear_transposed")
            activation = _fused_activation(attrs, "BiasAdd") if op == "_FusedMatMul" else None
            bias = [self._constant(inputs[2], "value")] if len(inputs) > 2 else []
            self.nodes.append(Node("linear", (self._operand(inputs[0]), weight, *bias), name,
                                   {"activation": activation}))
        elif op in ("Add", "AddV2", "BiasAdd", "Sub", "Mul", "Minimum", "Maximum"):
            kind = {"AddV2": "add", "BiasAdd": "add"}.get(op, op.lower())
            self.nodes.append(Node(kind, tuple(self._operand(i) for i in inputs), name))
        elif op in ("Relu", "Relu6", "Abs", "Sigmoid", "Softmax"):
            self.nodes.append(Node(op.lower(), (self._operand(inputs[0]),), name))
        elif op == "Mean":
            axes = [int(a) for a in np.atleast_1d(self.weights[inputs[1]])]
            self.nodes.append(Node("mean", (self._operand(inputs[0]),), name,
                                   {"axes": axes, "keep_dims": attrs.get("keep_dims", {}).get("b", False)}))
        else:
            raise GraphError(f"tfjs op {op} is not supported (node {name})")


def load_tfjs(model_path: Path) -> tuple[GraphModule, str, dict]:
    """The module for the tfjs graph model at `model_path` (its weight shards beside it), the name of its input,
    and the parsed JSON (for its signature)."""
    model_path = Path(model_path)
    model_json = json.loads(model_path.read_text())
    if model_json.get("format") != "graph-model":
        raise GraphError(f"{model_path}: format {model_json.get('format')!r}, a graph-model is expected")
    reader = _Reader(model_json, read_weights(model_json, model_path.parent))
    reader.read()
    if not reader.input_name:
        raise GraphError(f"{model_path}: no Placeholder input")
    return GraphModule(reader.nodes, reader.constants, reader.input_name), reader.input_name, model_json
