import unittest

import numpy as np

from distill import blend


def face_like(size=64, seed=0):
    rng = np.random.default_rng(seed)
    base = np.full((size, size, 3), 120, np.uint8)
    return np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)


class Blend(unittest.TestCase):
    def test_template_matches_the_runtime_alignment(self):
        # The ArcFace eyes at 0.3419 and 0.6565 of 112, shrunk by the 1.3 margin about the centre, at 224 px.
        t = blend.Template.load(224)
        self.assertAlmostEqual(t.right_eye[0], (0.5 + (0.341916 - 0.5) / 1.3) * 224, places=4)
        self.assertLess(t.right_eye[0], t.left_eye[0])
        self.assertLess(t.left_eye[1], t.mouth[1])

    def test_sbi_changes_the_face_not_the_corners_and_is_reproducible(self):
        crop = face_like()
        a = blend.self_blend(crop, np.random.default_rng(3))
        b = blend.self_blend(crop, np.random.default_rng(3))
        np.testing.assert_array_equal(a, b)
        difference = np.abs(a.astype(int) - crop.astype(int)).sum(2)
        self.assertGreater(difference[24:44, 20:44].mean(), 1.0, "the face region is blended")
        self.assertEqual(difference[:3, :3].max(), 0, "the corners are outside the face mask")

    def test_masks_differ_between_families(self):
        rng = np.random.default_rng(0)
        face, inner = blend.face_mask(128, rng), blend.inner_face_mask(128, rng)
        self.assertGreater(face.sum(), inner.sum() * 1.3, "SBI blends the whole face, the swap the inner face")
        self.assertTrue(0 <= face.min() and face.max() <= 1)

    def test_face_swap_takes_the_donors_face(self):
        target, donor = face_like(seed=1), np.zeros((64, 64, 3), np.uint8) + 200
        source, mask = blend.face_swap_parts(target, donor, np.random.default_rng(0))
        swapped = blend.compose(target, source, mask)
        centre = tuple(np.round(blend.Template.load(64).nose).astype(int))
        # Colour transfer makes the flat donor take the target's mean inside the mask.
        self.assertLess(abs(float(swapped[centre[1], centre[0]].mean()) - float(target.mean())), 25)
        self.assertEqual(swapped.shape, target.shape)

    def test_paste_back_puts_the_crop_where_the_map_says(self):
        photo = np.zeros((100, 120, 3), np.uint8)
        crop = np.full((20, 20, 3), 255, np.uint8)
        mask = np.ones((20, 20), np.float32)
        # Crop pixel (u, v) -> photo (2u + 30, 2v + 10): a 40 x 40 square at (30, 10).
        out = blend.paste_back(photo, crop, mask, (2, 0, 0, 2, 30, 10))
        self.assertEqual(out[30, 50].tolist(), [255, 255, 255])
        self.assertEqual(out[5, 50].tolist(), [0, 0, 0])
        self.assertEqual(out[30, 80].tolist(), [0, 0, 0])
        self.assertEqual(out.shape, photo.shape)

    def test_camera_augment_keeps_shape_and_type(self):
        rng = np.random.default_rng(5)
        for _ in range(10):
            out = blend.camera_augment(face_like(), rng)
            self.assertEqual((out.shape, out.dtype), ((64, 64, 3), np.uint8))


if __name__ == "__main__":
    unittest.main()
