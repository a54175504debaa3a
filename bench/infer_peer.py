"""onnxruntime's side of `cargo run --release --example infer_variants`: model inference alone, timed.

A co-process: it reads one JSON request per line on stdin and answers one JSON line on stdout, so that the
example can alternate its tract variants with onnxruntime in one run without paying Python's start each time.

Request:  {"model": PATH, "input": NAME, "shape": [..], "outputs": [NAMES], "runs": N, "threads": T}
Answer:   {"ms": [N per-run wall-clock times], "outputs": [the named outputs, flattened, on the test pattern],
           "onnxruntime": VERSION}

The input is deepgate's test pattern (src/infer.rs `fill_test_pattern`: sin(0.618034 i) * 0.9 in float32), so
that the example compares the outputs with tract's. Sessions are kept per (model, threads); graph optimisation
is onnxruntime's default (ORT_ENABLE_ALL), inter-op threads 1, sequential execution.
"""
import json
import sys
import time

import numpy as np
import onnxruntime


def test_pattern(shape):
    index = np.arange(int(np.prod(shape)), dtype=np.float32)
    return (np.sin(index * np.float32(0.618034)) * np.float32(0.9)).astype(np.float32).reshape(shape)


def main():
    sessions = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        key = (request["model"], request["threads"])
        if key not in sessions:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = request["threads"]
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            sessions[key] = onnxruntime.InferenceSession(request["model"], options,
                                                         providers=["CPUExecutionProvider"])
        session = sessions[key]
        feed = {request["input"]: test_pattern(request["shape"])}
        names = request["outputs"]
        outputs = session.run(names, feed)
        times = []
        for _ in range(request["runs"]):
            start = time.perf_counter()
            session.run(names, feed)
            times.append((time.perf_counter() - start) * 1e3)
        answer = {"ms": times, "outputs": [float(v) for output in outputs for v in np.ravel(output)],
                  "onnxruntime": onnxruntime.__version__}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
