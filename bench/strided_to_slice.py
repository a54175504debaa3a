"""Rewrites an ONNX model's stride-2 depthwise convolutions and max-pools as stride 1 plus a strided Slice.

    models/distill/.venv/bin/python bench/strided_to_slice.py IN.onnx OUT.onnx [--ops depthwise,maxpool]

An experiment for issue 15 point 3 (BENCHMARKS.md "Where tract's time goes"): tract 0.23 runs its stride-2
depthwise convolution and max-pool at about ten times the per-output cost of stride 1. A stride-s window op equals
the same op at stride 1 (same kernel, same pads) with every s-th output kept: out_s[i] = out_1[s * i], because
output i of either reads the input from s * i - pad_begin on. So the rewrite changes no value beyond the
kernels' own summation order; it trades s² times the outputs for the fast path. The stride-1 output is never
shorter than s * (n - 1) + 1, so the Slice (start 0, step s) gives exactly the original n outputs. Needs the `onnx` package (models/distill/.venv has it; bench/.venv does not).
"""
import argparse

import onnx
from onnx import helper, numpy_helper
import numpy as np


def attribute(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def is_depthwise(node, initialisers):
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initialisers:
        return False
    weight = initialisers[node.input[1]]
    group = attribute(node, "group", 1)
    return weight.dims[1] == 1 and group == weight.dims[0] and group > 1


def rewrite(model, kinds):
    graph = model.graph
    initialisers = {t.name: t for t in graph.initializer}
    nodes = []
    rewritten = 0
    for node in graph.node:
        strides = list(attribute(node, "strides", []))
        wanted = ("depthwise" in kinds and is_depthwise(node, initialisers)) or (
            "maxpool" in kinds and node.op_type == "MaxPool")
        if not wanted or len(strides) != 2 or strides == [1, 1] or attribute(node, "auto_pad", b"NOTSET") not in (
                b"NOTSET", "NOTSET"):
            nodes.append(node)
            continue
        if list(attribute(node, "dilations", [1, 1])) != [1, 1]:
            raise SystemExit(f"{node.name}: dilated window ops are not rewritten")
        output = node.output[0]
        dense = f"{output}__stride1"
        for a in node.attribute:
            if a.name == "strides":
                a.CopyFrom(helper.make_attribute("strides", [1, 1]))
        node.output[0] = dense
        nodes.append(node)
        prefix = f"{node.name or output}__keep"
        constants = {
            "starts": [0, 0], "ends": [np.iinfo(np.int64).max] * 2, "axes": [2, 3], "steps": strides,
        }
        names = []
        for key, values in constants.items():
            name = f"{prefix}_{key}"
            graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
            names.append(name)
        nodes.append(helper.make_node("Slice", [dense, *names], [output], name=prefix))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--ops", default="depthwise,maxpool", help="comma-separated: depthwise, maxpool")
    arguments = parser.parse_args()
    kinds = set(arguments.ops.split(","))
    if not kinds <= {"depthwise", "maxpool"}:
        parser.error(f"unknown --ops {sorted(kinds - {'depthwise', 'maxpool'})}")
    model = onnx.load(arguments.input)
    count = rewrite(model, kinds)
    onnx.checker.check_model(model)
    onnx.save(model, arguments.output)
    print(f"{arguments.output}: {count} window ops rewritten as stride 1 + Slice")


if __name__ == "__main__":
    main()
