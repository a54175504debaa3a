import tempfile
import unittest
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from distill import quantise


def tiny_classifier(path: Path) -> None:
    """image [1, 3, 8, 8] → Conv 3→4 → ReLU → global average → Gemm 4→2 = logits: the student's interface."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
               numpy_helper.from_array(rng.normal(size=(2, 4)).astype(np.float32), "g"),
               numpy_helper.from_array(np.zeros(2, np.float32), "gb")]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "g", "gb"], ["logits"], transB=1)]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph(nodes, "tiny", [image], [logits], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


class Quantise(unittest.TestCase):
    def test_normalised_is_the_runtimes_formula(self):
        images = np.full((1, 3, 2, 2), 0.5, np.float32)
        out = quantise.normalised(images, [0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
        self.assertEqual(out.dtype, np.float32)
        np.testing.assert_allclose(out[0, :, 0, 0], [0.0, 1.0, 0.25])

    def test_reader_gives_every_image_once_then_none_and_rewinds(self):
        reader = quantise.Reader("image", np.arange(6, dtype=np.float32).reshape(3, 2))
        seen = []
        while (batch := reader.get_next()) is not None:
            seen.append(batch["image"].tolist())
        self.assertEqual(seen, [[[0.0, 1.0]], [[2.0, 3.0]], [[4.0, 5.0]]])
        reader.rewind()
        self.assertEqual(reader.get_next()["image"].tolist(), [[0.0, 1.0]])

    def test_every_format_runs_and_stays_near_the_float_model(self):
        rng = np.random.default_rng(1)
        calibration = rng.uniform(-2, 2, size=(32, 3, 8, 8)).astype(np.float32)
        test = rng.uniform(-2, 2, size=(16, 3, 8, 8)).astype(np.float32)
        with tempfile.TemporaryDirectory() as directory:
            f32 = Path(directory) / "tiny.onnx"
            tiny_classifier(f32)
            reference = quantise.fake_probabilities(f32, test)
            for fmt in quantise.FORMATS:
                out = Path(directory) / f"tiny_{fmt}.onnx"
                quantise.quantise(f32, out, calibration, fmt)
                types = {node.op_type for node in onnx.load(out).graph.node}
                self.assertIn("QuantizeLinear", types, fmt)
                self.assertFalse(out.with_suffix(".pre.onnx").exists())
                found = quantise.fake_probabilities(out, test)
                self.assertLess(np.abs(found - reference).max(), 0.1, fmt)


if __name__ == "__main__":
    unittest.main()
