import dataclasses
import tempfile
import unittest
from pathlib import Path

import torch

from distill import config as configuration
from distill import losses, train
from distill.backbones import Classifier, EfficientNetLite0
from distill.config import Model
from distill.levers import lever_spec

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.toml"


def config_with(text: str) -> configuration.Config:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "run.toml"
        path.write_text(SMOKE.read_text() + "\n" + text)
        return configuration.load(path)


class Levers(unittest.TestCase):
    def test_a_lever_changes_only_its_keys_and_the_learning_rate(self):
        config = config_with('[[levers]]\nname = "deep"\nblocks = 14\nreconstruction = 1\nlearning_rate = 3e-3\n')
        spec, schedule = lever_spec(config, config.levers[-1])
        self.assertEqual((spec.blocks, spec.reconstruction), (14, 1.0))
        self.assertIsInstance(spec.reconstruction, float)
        self.assertEqual(dataclasses.replace(spec, blocks=config.student.blocks, reconstruction=config.student.reconstruction),
                         config.student)
        self.assertEqual(schedule.learning_rate, 3e-3)
        self.assertEqual(schedule.epochs, config.levers_train.epochs)

    def test_levers_with_unknown_keys_bad_names_or_wrong_types_are_refused(self):
        for text in ('[[levers]]\nname = "x"\nbolcks = 3\n', '[[levers]]\nblocks = 3\n',
                     '[[levers]]\nname = "two words"\n', '[[levers]]\nname = "x"\npretrain = "mae"\n',
                     '[[levers]]\nname = "ssl"\n'):  # the smoke config already has a lever named ssl
            with self.assertRaises(ValueError, msg=text):
                config_with(text)
        config = config_with('[[levers]]\nname = "typo"\nblocks = "14"\n')
        with self.assertRaisesRegex(ValueError, "blocks must be int"):
            lever_spec(config, config.levers[-1])
        config = config_with('[[levers]]\nname = "rate"\nlearning_rate = -1\n')
        with self.assertRaisesRegex(ValueError, "learning_rate"):
            lever_spec(config, config.levers[-1])

    def test_a_fused_lever_builds_fused_blocks_and_bad_block_lists_are_refused(self):
        config = config_with('[[levers]]\nname = "fused"\nfused = [2]\n')
        spec, _ = lever_spec(config, config.levers[-1])
        self.assertEqual(spec.fused, [2])
        model = train.build(dataclasses.replace(spec, pretrained=False), config)
        self.assertEqual([type(block).__name__ for block in model.backbone.features[1:3]],
                         ["_MobileBlock", "_FusedBlock"])
        for text in ('[[levers]]\nname = "x"\nfused = [0]\n', '[[levers]]\nname = "x"\nfused = [2, 2]\n',
                     '[[levers]]\nname = "x"\nfused = ["2"]\n', '[[levers]]\nname = "x"\nfused = 2\n',
                     '[[levers]]\nname = "x"\nfused = [true]\n'):
            with self.assertRaisesRegex(ValueError, "fused", msg=text):
                config_with(text)


class Student(unittest.TestCase):
    def test_truncated_efficientnet_lite0_feeds_the_manipulation_map(self):
        torch.manual_seed(0)
        for blocks, channels in [(11, 112), (6, 80), (17, 1280)]:
            net = EfficientNetLite0(blocks)
            self.assertEqual(net.channels, channels)
            fine, coarse = net.feature_maps(torch.rand(2, 3, 112, 112))
            self.assertEqual(tuple(fine.shape), (2, 40, 14, 14))  # the stride-8 tap
            self.assertEqual(coarse.shape[1], channels)
            model = Classifier(net, embedding=8, manipulation_map=True)
            logits, _, _, manipulation_map = model.forward_outputs(torch.rand(2, 3, 112, 112))
            self.assertEqual(tuple(logits.shape), (2, 2))
            self.assertEqual(tuple(manipulation_map.shape), (2, 2, 14, 14))
        with self.assertRaises(ValueError):
            EfficientNetLite0(18)
        self.assertTrue(set(EfficientNetLite0(11).state_dict()) < set(EfficientNetLite0(17).state_dict()))

    def test_a_stride_4_map_is_twice_as_fine(self):
        config = config_with("")
        for backbone, blocks in [("mobilenet_v2", 10), ("efficientnet_lite0", 11)]:
            spec = dataclasses.replace(config.student, backbone=backbone, blocks=blocks, map=1.0, map_stride=4)
            model = train.build(spec, config)
            manipulation_map = model.forward_outputs(torch.rand(1, 3, 112, 112))[3]
            self.assertEqual(tuple(manipulation_map.shape), (1, 2, 28, 28), backbone)
        with self.assertRaises(ValueError):
            config_with('[[levers]]\nname = "x"\nmap_stride = 2\n')

    def test_reconstruction_is_learned_on_genuine_faces_only(self):
        config = config_with("")
        spec = dataclasses.replace(config.student, reconstruction=1.0, map=0.0, metric=0.0)
        torch.manual_seed(0)
        model = train.build(spec, config)
        self.assertIsNotNone(model.decoder)
        images = torch.rand(4, 3, 64, 64)
        empty = torch.zeros(4, 1, 64, 64)
        forged = losses.losses(config, spec, model, images, torch.ones(4, dtype=torch.long), empty, empty, None)
        self.assertNotIn("reconstruction", forged)
        mixed = losses.losses(config, spec, model, images, torch.tensor([0, 1, 1, 1]), empty, empty, None)
        normalised = model.prepare(images[:1])
        expected = (model.forward_outputs(normalised)[2] - normalised).abs().mean()
        torch.testing.assert_close(mixed["reconstruction"], expected)

    def test_contrastive_loss_rewards_matching_views(self):
        torch.manual_seed(0)
        a = torch.randn(8, 16)
        matched = losses.contrastive_loss(a, a + 0.01 * torch.randn(8, 16), 0.2)
        shuffled = losses.contrastive_loss(a, a[torch.randperm(8)], 0.2)
        self.assertLess(matched.item(), 0.5)
        self.assertGreater(shuffled.item(), 1.0)

    def test_ssl_pretraining_trains_the_backbone(self):
        config = config_with("")
        config.ssl = dataclasses.replace(config.ssl, steps=3, batch=4, learning_rate=3e-3)
        spec = dataclasses.replace(config.student, pretrained=False, pretrain="ssl")
        torch.manual_seed(0)
        model = train.build(spec, config)
        before = [p.detach().clone() for p in model.backbone.parameters()]
        crops = [(torch.rand(64, 64, 3) * 255).to(torch.uint8).numpy() for _ in range(6)]
        summary = train.pretrain_ssl(config, model, crops)
        self.assertEqual(summary["steps"], 3)
        self.assertTrue(any(not torch.equal(b, p) for b, p in zip(before, model.backbone.parameters())))
        self.assertGreater(summary["first_loss"], 0)
        with self.assertRaises(RuntimeError):
            train.pretrain_ssl(config, model, [])


if __name__ == "__main__":
    unittest.main()
