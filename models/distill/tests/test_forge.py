"""The forgery families: each forgery changes only what its mask says it changed, masks are registered with the
image through the augmentations, and a seed reproduces a forgery exactly."""

import unittest

import numpy as np

from distill import forge


def face(seed: int, size: int = 112) -> np.ndarray:
    """A smooth, face-like test image (gradients and blobs), different per seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    channels = [128 + 60 * np.sin(6 * xs * rng.uniform(0.5, 1.5) + c) * np.cos(5 * ys + c) for c in range(3)]
    return np.clip(np.stack(channels, -1) + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)


class FamiliesTest(unittest.TestCase):
    def test_every_family_changes_only_under_its_mask(self):
        target, donor = face(1), face(2)
        for family in forge.FAMILIES:
            for seed in range(6):
                made = forge.forge(family, target, donor, np.random.default_rng(seed))
                self.assertEqual(made.family, family)
                self.assertEqual(made.image.shape, target.shape)
                self.assertEqual(made.mask.shape, target.shape[:2])
                self.assertTrue(0 <= made.mask.min() and made.mask.max() <= 1, made.detail)
                self.assertGreater(made.mask.max(), 0.2, made.detail)  # SBI blends at opacity 0.25 at least
                outside = made.mask == 0
                difference = np.abs(made.image.astype(int) - target.astype(int)).max(-1)
                self.assertEqual(int(difference[outside].max(initial=0)), 0, f"{made.detail} changed unmasked pixels")
                self.assertGreater(difference[made.mask > 0.5 * made.mask.max()].mean(), 0.5, f"{made.detail} changed nothing")

    def test_a_seed_reproduces_a_forgery(self):
        target, donor = face(3), face(4)
        for family in forge.FAMILIES:
            a = forge.forge(family, target, donor, np.random.default_rng(11))
            b = forge.forge(family, target, donor, np.random.default_rng(11))
            np.testing.assert_array_equal(a.image, b.image)
            np.testing.assert_array_equal(a.mask, b.mask)

    def test_region_forgeries_stay_small_and_face_swaps_cover_the_face(self):
        target, donor = face(5), face(6)
        region_areas = [forge.region(target, donor, np.random.default_rng(s)).mask.mean() for s in range(12)]
        swap_areas = [forge.faceswap(target, donor, np.random.default_rng(s)).mask.mean() for s in range(12)]
        self.assertLess(np.median(region_areas), 0.12)
        self.assertGreater(np.median(swap_areas), np.median(region_areas) * 2)

    def test_face_swap_needs_a_donor_and_unknown_families_are_refused(self):
        with self.assertRaises(ValueError):
            forge.forge("faceswap", face(1), None, np.random.default_rng(0))
        with self.assertRaises(ValueError):
            forge.forge("deepfake", face(1), face(2), np.random.default_rng(0))
        made = forge.forge("region", face(1), None, np.random.default_rng(0))  # warp/retouch need no donor
        self.assertNotIn("swap", made.detail)


class BlendingTest(unittest.TestCase):
    def test_poisson_keeps_the_outside_and_the_source_gradients(self):
        target = np.full((64, 64, 3), 100, np.uint8)
        source = np.full((64, 64, 3), 200, np.float32)
        source[:, 32:] += 20  # a step inside the region: its gradient must survive, its level must not
        region = np.zeros((64, 64), np.float32)
        region[16:48, 16:48] = 1
        out = forge.poisson_blend(target, source, region, iterations=400)
        np.testing.assert_array_equal(out[region == 0], 100)
        inside = out[20:44, 20:44, 0]
        self.assertLess(abs(inside[:, :10].mean() - 100), 15, "the level must follow the target's edge")
        self.assertGreater(inside[:, 14:].mean() - inside[:, :10].mean(), 8, "the source's step must survive")

    def test_colour_transfer_moves_statistics_towards_the_target(self):
        source, target = face(7).astype(np.float32) * 0.5, face(8)
        mask = np.ones(target.shape[:2], np.float32)
        for method in ("rgb", "lab", "histogram"):
            out = forge.colour_transfer(source, target, mask, method)
            before = np.abs(source.mean((0, 1)) - target.mean((0, 1))).max()
            after = np.abs(out.mean((0, 1)) - target.mean((0, 1))).max()
            self.assertLess(after, before / 3, method)

    def test_lab_round_trip(self):
        image = face(9).astype(np.float64)
        np.testing.assert_allclose(forge._from_lab(forge._to_lab(image)), image, atol=0.5)


class MaskTest(unittest.TestCase):
    def test_augment_mirrors_the_mask_with_the_image(self):
        image = np.zeros((32, 32, 3), np.uint8)
        image[:, :8] = 255  # bright left edge
        mask = np.zeros((32, 32), np.float32)
        mask[:, :8] = 1  # marks the same pixels
        for seed in range(20):
            out, moved = forge.augment(image, mask, np.random.default_rng(seed))
            bright_left = out[:, :8].mean() > out[:, -8:].mean()
            self.assertEqual(bright_left, moved[:, :8].mean() > 0.5, f"seed {seed}")

    def test_boundary_is_a_ring_at_the_blend_seam(self):
        mask = np.zeros((112, 112), np.float32)
        mask[30:80, 30:80] = 0.5  # half-opaque: the seam is still at its outline
        seam = forge.boundary(mask)
        self.assertAlmostEqual(float(seam.max()), 1.0, places=3)
        self.assertLess(seam[55, 55], 0.05)
        self.assertGreater(seam[30, 55], 0.8)
        self.assertEqual(float(forge.boundary(np.zeros((16, 16), np.float32)).max()), 0.0)

    def test_template_regions_sit_where_the_template_puts_the_parts(self):
        regions = forge.template_regions(112)
        for name in ("right_eye", "left_eye", "right_brow", "left_brow", "nose", "mouth", "face", "inner_face"):
            self.assertGreater(regions[name].sum(), 20, name)
        centre_x = lambda m: (np.nonzero(m)[1]).mean()  # noqa: E731
        centre_y = lambda m: (np.nonzero(m)[0]).mean()  # noqa: E731
        self.assertLess(centre_x(regions["right_eye"]), centre_x(regions["left_eye"]))  # subject's right on the left
        self.assertLess(centre_y(regions["right_brow"]), centre_y(regions["right_eye"]))
        self.assertLess(centre_y(regions["nose"]), centre_y(regions["mouth"]))
        for name in ("right_eye", "left_eye", "nose", "mouth"):
            self.assertEqual(float((regions[name] * (1 - regions["face"])).max()), 0.0, f"{name} outside the face")


if __name__ == "__main__":
    unittest.main()
