"""A TFLite flatbuffer read into a trainable PyTorch module (`graph_torch.GraphModule`), without TensorFlow.

The flatbuffer is parsed with the schema module that `ai-edge-litert` (already a requirement, for the face mesh)
ships, `ai_edge_litert.schema_py_generated`; nothing else is needed. The first subgraph is read; constant tensors
become the module's parameters, dequantised to float32 where the file stores them quantised (int8/uint8 with a
scale and zero point, per tensor or per axis) or as float16 (also behind a DEQUANTIZE op). The ops read are those
of convolutional classifiers and embedders (`_Reader.read`); any other op is refused by name.

Reference: `ai_edge_litert.interpreter.Interpreter` on the same file (tests/test_face_teachers.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .graph_torch import GraphError, GraphModule, Node

_ACTIVATION = {0: None, 1: "relu", 3: "relu6"}  # ActivationFunctionType: NONE, RELU, RELU6
_PADDING = {0: "same", 1: "valid"}
_NUMPY_TYPE = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 7: np.int16}


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _activation(options) -> str | None:
    code = getattr(options, "fusedActivationFunction", 0) if options is not None else 0
    if code not in _ACTIVATION:
        raise GraphError(f"fused activation {code} is not supported")
    return _ACTIVATION[code]


def _conv_attrs(options, depthwise: bool) -> dict:
    return {"stride": (options.strideH, options.strideW),
            "dilation": (options.dilationHFactor or 1, options.dilationWFactor or 1),
            "padding": _PADDING[options.padding], "depthwise": depthwise, "activation": _activation(options)}


class _Reader:
    """The first subgraph of a parsed model, turned into `Node`s and float32 constants in executor layout."""

    def __init__(self, data: bytes):
        schema = _schema()
        self.model = schema.ModelT.InitFromPackedBuf(data, 0)
        self.data = data
        if not self.model.subgraphs:
            raise GraphError("the model has no subgraph")
        self.graph = self.model.subgraphs[0]
        names = [tensor.name.decode() for tensor in self.graph.tensors]
        self.names = [name if names.count(name) == 1 else f"{name}#{index}" for index, name in enumerate(names)]
        operator_names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
        self.op_names = [operator_names.get(max(code.builtinCode, code.deprecatedBuiltinCode),
                                            f"code {code.builtinCode}") for code in self.model.operatorCodes]
        self.constants: dict[str, np.ndarray] = {}
        self.roles: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.aliases: dict[int, int] = {}  # a DEQUANTIZE output → its stored input

    def _raw(self, index: int) -> np.ndarray | None:
        """The stored value of tensor `index` (dequantised float32 for quantised floats), or None if computed."""
        tensor = self.graph.tensors[self.aliases.get(index, index)]
        buffer = self.model.buffers[tensor.buffer]
        if buffer.data is not None and len(buffer.data):
            raw = np.asarray(buffer.data, dtype=np.uint8).tobytes()
        elif getattr(buffer, "offset", 0) > 1:  # large models keep buffers after the flatbuffer
            raw = self.data[buffer.offset:buffer.offset + buffer.size]
        else:
            return None
        if tensor.type not in _NUMPY_TYPE:
            raise GraphError(f"tensor {self.names[index]}: type {tensor.type} is not supported")
        shape = [int(d) for d in tensor.shape] if tensor.shape is not None else []
        value = np.frombuffer(raw, dtype=np.dtype(_NUMPY_TYPE[tensor.type]).newbyteorder("<")).reshape(shape)
        quantization = tensor.quantization
        if quantization is not None and quantization.scale is not None and len(quantization.scale) and \
                value.dtype.kind in "iu" and tensor.type != 2:
            scale = np.asarray(quantization.scale, dtype=np.float32)
            zero = np.asarray(quantization.zeroPoint if quantization.zeroPoint is not None else [0], dtype=np.float32)
            if scale.size > 1:  # per-axis: along quantizedDimension
                view = [1] * value.ndim
                view[quantization.quantizedDimension] = -1
                scale, zero = scale.reshape(view), zero.reshape(view) if zero.size > 1 else zero
            value = (value.astype(np.float32) - zero) * scale
        return value.astype(np.float32) if value.dtype == np.float16 else value

    def _constant(self, index: int, role: str) -> str:
        """Registers tensor `index` as a constant in the layout `role` needs ("conv", "depthwise", "linear",
        "shape" or "value"); returns its name."""
        name = self.names[index]
        if name in self.constants:
            if self.roles[name] != role:
                raise GraphError(f"constant {name} is used both as {self.roles[name]} and as {role}")
            return name
        value = self._raw(index)
        if value is None:
            raise GraphError(f"{name} should be a constant ({role})")
        if role == "conv":  # TFLite OHWI → PyTorch OIHW
            value = value.transpose(0, 3, 1, 2)
        elif role == "depthwise":  # TFLite [1, H, W, C·multiplier] → PyTorch [C·multiplier, 1, H, W]
            value = value.transpose(3, 0, 1, 2)
        elif role == "value" and value.ndim == 4:  # an NHWC constant operand → NCHW
            value = value.transpose(0, 3, 1, 2)
        self.constants[name] = np.ascontiguousarray(value)
        self.roles[name] = role
        return name

    def _operand(self, index: int) -> str:
        """An op input: a constant when the tensor has stored data, else the tensor computed before."""
        name = self.names[index]
        if name in self.constants or self._raw(index) is not None:
            return self._constant(index, "value")
        return name

    def read(self) -> None:
        for operator in self.graph.operators:
            op = self.op_names[operator.opcodeIndex]
            inputs = [i for i in operator.inputs if i >= 0]
            output = self.names[operator.outputs[0]]
            options = operator.builtinOptions
            if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                depthwise = op == "DEPTHWISE_CONV_2D"
                weight = self._constant(inputs[1], "depthwise" if depthwise else "conv")
                bias = [self._constant(inputs[2], "value")] if len(inputs) > 2 else []
                self.nodes.append(Node("conv2d", (self._operand(inputs[0]), weight, *bias), output,
                                       _conv_attrs(options, depthwise)))
            elif op == "FULLY_CONNECTED":
                if getattr(options, "keepNumDims", False):
                    raise GraphError("FULLY_CONNECTED with keep_num_dims is not supported")
                weight = self._constant(inputs[1], "linear")  # [outputs, inputs]: PyTorch's layout already
                bias = [self._constant(inputs[2], "value")] if len(inputs) > 2 else []
                self.nodes.append(Node("linear", (self._operand(inputs[0]), weight, *bias), output,
                                       {"activation": _activation(options)}))
            elif op in ("ADD", "SUB", "MUL", "MINIMUM", "MAXIMUM"):
                self.nodes.append(Node(op.lower(), tuple(self._operand(i) for i in inputs), output,
                                       {"activation": _activation(options)}))
            elif op in ("RELU", "RELU6", "ABS", "LOGISTIC"):
                self.nodes.append(Node({"LOGISTIC": "sigmoid"}.get(op, op.lower()), (self._operand(inputs[0]),),
                                       output))
            elif op == "SOFTMAX":
                self.nodes.append(Node("softmax", (self._operand(inputs[0]),), output, {"beta": options.beta}))
            elif op == "MEAN":
                axes = [int(a) for a in np.atleast_1d(self._raw(inputs[1]))]
                self.nodes.append(Node("mean", (self._operand(inputs[0]),), output,
                                       {"axes": axes, "keep_dims": bool(options.keepDims)}))
            elif op == "RESHAPE":
                shape = [int(d) for d in self.graph.tensors[operator.outputs[0]].shape]
                self.nodes.append(Node("reshape", (self._operand(inputs[0]),), output, {"shape": shape}))
            elif op == "DEQUANTIZE" and self._raw(inputs[0]) is not None:
                # float16 (or int8) weights dequantised at run time: dequantised here once instead, and stored
                # under the output's name in the layout its consumer asks for (`_raw` reads the input's data).
                self.aliases[operator.outputs[0]] = inputs[0]
            else:
                raise GraphError(f"TFLite op {op} is not supported (output {output})")


def load_tflite(path: Path) -> tuple[GraphModule, str, list[str]]:
    """The module for the .tflite at `path`, the name of its input and the names of its outputs."""
    reader = _Reader(Path(path).read_bytes())
    reader.read()
    graph = reader.graph
    if len(graph.inputs) != 1:
        raise GraphError(f"{path}: {len(graph.inputs)} inputs; one image input is expected")
    input_name = reader.names[graph.inputs[0]]
    module = GraphModule(reader.nodes, reader.constants, input_name)
    return module, input_name, [reader.names[i] for i in graph.outputs]
