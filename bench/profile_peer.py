"""onnxruntime's per-node profile of a model, the peer's side of `infer_variants --profile` (issue 15 point 3).

    bench/.venv/bin/python bench/profile_peer.py MODEL.onnx INPUT_NAME SHAPE [--runs N] [--threads T] [--json]

SHAPE is comma-separated (1,128,128,3). The session is set up as bench/infer_peer.py sets it up (onnxruntime's
default graph optimisation ORT_ENABLE_ALL, CPU provider, sequential, inter-op threads 1, T intra-op threads,
default 1), with onnxruntime's profiler on (`SessionOptions.enable_profiling`). One untimed run, then N runs
(default 60) on deepgate's test pattern. The profiler's JSON has one "Node" event per executed kernel per run;
the i-th event of a node belongs to the i-th run.

Per node: the median of its kernel time over the runs. Per operator kind (`kind` below, the same names as
infer_variants' tract side): the median over the runs of the kind's summed kernel time. Before the profiled
session, a session without the profiler times the same N runs (`plain_ms`): the profiler slows every kernel, so
the kinds' shares are what compares, not their profiled milliseconds. Without --json it prints both tables; with
--json one JSON object: {"onnxruntime", "runs", "plain_ms", "wall_ms" (median run time with the profiler on),
"kernel_ms" (median of the per-run sums), "kinds": {kind: ms}, "nodes": [{name, op, kind, input, output, ms}]}
for the example to print beside tract's.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime


def test_pattern(shape):
    index = np.arange(int(np.prod(shape)), dtype=np.float32)
    return (np.sin(index * np.float32(0.618034)) * np.float32(0.9)).astype(np.float32).reshape(shape)


def shapes(entries):
    """The profiler's `input_type_shape` list ([{"float": [1, 3, 112, 112]}, ...]) as plain lists."""
    return [next(iter(entry.values())) for entry in entries or []]


def kind(op, inputs):
    """The operator kind of one executed kernel, from its op type and its input shapes.

    Convolutions (Conv, FusedConv with its fused activation, the NCHWc forms) by weight shape
    [C_out, C_in / group, kh, kw]: depthwise when each group sees one input channel of several, 1x1, or full KxK.
    The NCHWc layout changes onnxruntime inserts (ReorderInput/ReorderOutput) are "layout"."""
    if op in ("Conv", "FusedConv", "NchwcConv") and len(inputs) >= 2 and len(inputs[1]) == 4:
        out_channels, per_group, kh, kw = inputs[1]
        channels = inputs[0][1] if len(inputs[0]) > 1 else per_group
        if op == "NchwcConv" and len(inputs[0]) == 4 and per_group == 1 and out_channels > 1:
            return f"depthwise {kh}x{kw}"
        if per_group == 1 and channels > 1:
            return f"depthwise {kh}x{kw}"
        return "conv 1x1" if (kh, kw) == (1, 1) else f"conv {kh}x{kw}"
    if op in ("ReorderInput", "ReorderOutput", "Transpose"):
        return "layout"
    if op in ("Add", "Sum"):
        return "add"
    if op in ("Relu", "Clip", "Max", "Min", "PRelu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish"):
        return "activation"
    if op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
        return "pool"
    if op in ("Reshape", "Concat", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "Shape", "Identity",
              "Split", "Expand"):
        return "shape/copy"
    if op in ("Resize", "Upsample"):
        return "resize"
    if op.startswith("Reduce"):
        return "reduce"
    if op in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm"):
        return "matmul"
    if op in ("Mul", "Div", "Sub", "Sqrt", "Reciprocal", "Pow"):
        return "elementwise"
    return op.lower()


def session_options(threads):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return options


def timed_runs(session, feed, runs):
    session.run(None, feed)
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        walls.append((time.perf_counter() - start) * 1e3)
    return walls


def profile(model, input_name, shape, runs, threads):
    feed = {input_name: test_pattern(shape)}
    plain = onnxruntime.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
    plain_ms = statistics.median(timed_runs(plain, feed, runs))
    options = session_options(threads)
    options.enable_profiling = True
    directory = tempfile.mkdtemp(prefix="profile_peer_")
    options.profile_file_prefix = os.path.join(directory, "ort")
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    walls = timed_runs(session, feed, runs)
    path = session.end_profiling()
    with open(path) as file:
        events = json.load(file)
    os.remove(path)
    os.rmdir(directory)
    nodes = {}
    order = []
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        if name not in nodes:
            args = event.get("args", {})
            inputs = shapes(args.get("input_type_shape"))
            nodes[name] = {"name": name, "op": args.get("op_name", "?"), "input": inputs[0] if inputs else [],
                           "output": (shapes(args.get("output_type_shape")) or [[]])[0],
                           "kind": kind(args.get("op_name", "?"), inputs), "times": []}
            order.append(name)
        nodes[name]["times"].append(event["dur"] / 1e3)
    # The first event of every node is the untimed run's.
    counts = {len(nodes[name]["times"]) for name in order}
    if counts != {runs + 1}:
        raise SystemExit(f"expected {runs + 1} events per node, found counts {sorted(counts)}")
    per_run = [sum(nodes[name]["times"][run] for name in order) for run in range(1, runs + 1)]
    kinds = {}
    for name in order:
        kinds.setdefault(nodes[name]["kind"], []).append(nodes[name]["times"][1:])
    kind_ms = {k: statistics.median(sum(t[run] for t in lists) for run in range(runs)) for k, lists in kinds.items()}
    for name in order:
        node = nodes[name]
        node["ms"] = statistics.median(node.pop("times")[1:])
    return {"onnxruntime": onnxruntime.__version__, "runs": runs, "plain_ms": plain_ms,
            "wall_ms": statistics.median(walls),
            "kernel_ms": statistics.median(per_run), "kinds": kind_ms, "nodes": [nodes[name] for name in order]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("input")
    parser.add_argument("shape", type=lambda s: [int(d) for d in s.split(",")])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    if arguments.runs < 1 or arguments.threads < 1:
        parser.error("--runs and --threads must be at least 1")
    result = profile(arguments.model, arguments.input, arguments.shape, arguments.runs, arguments.threads)
    if arguments.json:
        print(json.dumps(result))
        return
    total = result["kernel_ms"]
    print(f"onnxruntime {result['onnxruntime']}, {result['runs']} runs: run {result['plain_ms']:.3f} ms "
          f"(profiler off), {result['wall_ms']:.3f} ms (profiler on), kernels {total:.3f} ms (medians)")
    print("| kind | ms | share |\n|---|---|---|")
    for name, ms in sorted(result["kinds"].items(), key=lambda item: -item[1]):
        print(f"| {name} | {ms:.3f} | {100 * ms / total:.1f}% |")
    print("\n| node | op | kind | input -> output | ms |\n|---|---|---|---|---|")
    for node in sorted(result["nodes"], key=lambda n: -n["ms"])[:15]:
        print(f"| {node['name']} | {node['op']} | {node['kind']} | {node['input']} -> {node['output']} "
              f"| {node['ms']:.3f} |")


if __name__ == "__main__":
    main()
