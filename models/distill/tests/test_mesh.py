import csv
import tempfile
import tomllib
import unittest
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from distill import blend, mesh, sources
from distill.faces import read_rgb

OBAMA = mesh.FIXTURES / "obama.jpg"
# What `deepgate crops --size 128` recorded for tests/fixtures/faces/obama.jpg (index.csv: x, y, width, height and
# map_a..map_ty), kept here so that these tests need the pinned model but not the runtime binary.
OBAMA_BOX = (349.38, 142.26, 275.14, 275.14)
OBAMA_MAP = (3.507081, 0.183616, -0.183616, 3.507081, 261.2468, 12.6635)
SIZE = 128


def fetched_model() -> Path:
    """The pinned model through the pipeline's own fetch (network to PyPI the first time)."""
    try:
        return mesh.fetch_model()
    except sources.SourceError as error:
        raise unittest.SkipTest(f"the pinned face-mesh model could not be fetched from PyPI: {error}")


class Geometry(unittest.TestCase):
    def test_the_pins_are_complete_and_name_the_outputs(self):
        table = mesh.pins()
        self.assertEqual(table["licence"], "Apache-2.0")
        self.assertTrue(table["archive"].startswith(f"{table['package']}-{table['version']}-"))
        self.assertEqual(tomllib.loads(mesh.PINS.read_text())["model"]["input"]["shape"], [1, 192, 192, 3])

    def test_the_index_lists_are_distinct_mesh_points(self):
        self.assertEqual(len(mesh.FACE_OVAL), 36)
        for name, region in mesh.REGIONS.items():
            self.assertTrue(all(0 <= i < 468 for i in region.indices), name)
            if name != "inner_face":
                self.assertEqual(len(set(region.indices)), len(region.indices), f"{name} repeats a point")
        for right, left in ((mesh.RIGHT_EYE, mesh.LEFT_EYE), (mesh.RIGHT_BROW, mesh.LEFT_BROW)):
            self.assertFalse(set(right) & set(left))
            self.assertEqual(len(right), len(left))

    def test_the_window_is_the_box_squared_and_scaled_about_its_centre(self):
        # The crop is the photo at half scale, shifted: photo = 2 · crop + (10, 20).
        box = (50.0, 60.0, 40.0, 30.0)
        window = mesh.mesh_window(box, (2, 0, 0, 2, 10, 20), input_size=192, box_scale=1.5)
        corners = mesh.apply_affine(window, np.array([[0.0, 0.0], [192.0, 192.0]]))
        photo_corners = corners * 2 + [10, 20]
        np.testing.assert_allclose(photo_corners.mean(0), [70, 75])  # the box's centre
        np.testing.assert_allclose(photo_corners[1] - photo_corners[0], [60, 60])  # 1.5 × the longer side

    def test_warp_samples_pixel_centres_and_averages_large_faces(self):
        photo = np.zeros((8, 8, 3), np.uint8)
        photo[..., 0] = np.arange(8)[None, :] * 30
        identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        np.testing.assert_allclose(mesh.warp(photo, identity, 8)[..., 0] * 255, photo[..., 0], atol=1e-3)
        halved = mesh.warp(photo, identity * 2, 4)[..., 0] * 255  # each window pixel covers 2×2 photo pixels
        np.testing.assert_allclose(halved[0], [15, 75, 135, 195], atol=1e-3)
        outside = mesh.warp(photo, identity + [[0, 0, 100], [0, 0, 0]], 4)
        self.assertEqual(outside.max(), 0.0, "outside the photo is black")

    def test_a_hull_is_convex_and_keeps_the_extremes(self):
        points = np.array([[0, 0], [4, 0], [4, 4], [0, 4], [2, 2], [1, 3]], float)
        hull = mesh.convex_hull(points)
        self.assertEqual(sorted(map(tuple, hull)), [(0, 0), (0, 4), (4, 0), (4, 4)])

    def test_a_polygon_mask_holds_area_coverage_and_grows_by_its_margin(self):
        square = np.array([[8, 8], [24, 8], [24, 24], [8, 24]], float)
        mask = mesh.polygon_mask(square, 32)
        self.assertAlmostEqual(float(mask.sum()), 16 * 16, delta=16)
        self.assertEqual(mask[16, 16], 1.0)
        self.assertEqual(mask[2, 2], 0.0)
        grown = mesh.polygon_mask(square, 32, margin=3)
        self.assertEqual(grown[16, 5], 1.0)
        self.assertEqual(mask[16, 5], 0.0)
        self.assertLess(grown[4, 4], 0.5, "a disc swept along the outline rounds the corners")


class OnAFace(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = mesh.FaceMesh(fetched_model())
        cls.result = cls.model.on_crop(read_rgb(OBAMA), OBAMA_BOX, OBAMA_MAP)
        cls.masks = mesh.region_masks(cls.result.points, SIZE)

    def centroid(self, name):
        mask = self.masks[name]
        ys, xs = np.mgrid[: mask.shape[0], : mask.shape[1]]
        return np.array([(xs * mask).sum(), (ys * mask).sum()]) / mask.sum()

    def inside(self, part, whole):
        return float((self.masks[part] * self.masks[whole]).sum() / self.masks[part].sum())

    def test_the_mesh_finds_the_face_where_the_runtime_aligned_it(self):
        self.assertGreater(self.result.presence, 0.9)
        self.assertLess(mesh.keypoint_error(self.result.points, SIZE), 0.2)
        self.assertEqual(mesh.problem(self.result, SIZE), "")
        again = self.model.on_crop(read_rgb(OBAMA), OBAMA_BOX, OBAMA_MAP)
        np.testing.assert_array_equal(again.points, self.result.points, "the same face gives the same mesh")
        template = blend.Template.load(SIZE)
        self.assertLess(self.result.points[1][1], template.mouth[1], "the nose tip (1) is above the mouth")
        self.assertGreater(self.result.points[152][1], template.mouth[1], "the chin (152) is below the mouth")

    def test_masks_have_the_crop_shape_and_range_and_are_reproducible(self):
        self.assertEqual(set(self.masks), {"face", "left_eye", "right_eye", "left_brow", "right_brow", "mouth",
                                           "nose", "inner_face"})
        again = mesh.region_masks(self.result.points, SIZE)
        for name, mask in self.masks.items():
            self.assertEqual(mask.shape, (SIZE, SIZE), name)
            self.assertEqual(mask.dtype, np.float32, name)
            self.assertTrue(0 <= mask.min() and mask.max() == 1, name)
            self.assertGreater(mask.sum(), 20, f"{name} is not empty")
            np.testing.assert_array_equal(mask, again[name])

    def test_every_part_lies_in_the_face_and_in_the_inner_face(self):
        for part in ("left_eye", "right_eye", "left_brow", "right_brow", "nose", "mouth"):
            self.assertGreater(self.inside(part, "face"), 0.97, part)
            self.assertGreater(self.inside(part, "inner_face"), 0.9, part)
        self.assertGreater(self.inside("inner_face", "face"), 0.95)
        self.assertLess(self.masks["inner_face"].sum(), 0.8 * self.masks["face"].sum())

    def test_regions_sit_where_a_face_has_them(self):
        # The subject's left eye is on the image's right, as in models/alignment.toml.
        left_eye, right_eye = self.centroid("left_eye"), self.centroid("right_eye")
        template = blend.Template.load(SIZE)
        self.assertLess(np.linalg.norm(right_eye - template.right_eye), 0.25 * template.eye_distance)
        self.assertLess(np.linalg.norm(left_eye - template.left_eye), 0.25 * template.eye_distance)
        self.assertGreater(self.centroid("left_brow")[0], self.centroid("right_brow")[0])
        for side in ("left", "right"):
            self.assertLess(self.centroid(f"{side}_brow")[1], self.centroid(f"{side}_eye")[1], side)
        self.assertLess(max(left_eye[1], right_eye[1]), self.centroid("nose")[1])
        self.assertLess(self.centroid("nose")[1], self.centroid("mouth")[1])
        self.assertLess(abs(self.centroid("mouth")[0] - (left_eye[0] + right_eye[0]) / 2), 0.2 * template.eye_distance)

    def test_parts_do_not_overlap_each_other(self):
        for a, b in (("left_eye", "right_eye"), ("left_eye", "mouth"), ("right_eye", "nose"), ("nose", "left_eye"),
                     ("left_brow", "right_brow"), ("nose", "mouth")):
            self.assertLess(self.inside(a, b), 0.1, f"{a} in {b}")
        # An eye's margin may take in the lower edge of its brow (the lid crease lies between), not the brow.
        for side in ("left", "right"):
            self.assertLess(self.inside(f"{side}_brow", f"{side}_eye"), 0.4, side)

    def test_points_scale_with_the_crop(self):
        small = mesh.region_masks(mesh.scale_points(self.result.points, SIZE, 64), 64)
        large = self.masks["face"].reshape(64, 2, 64, 2).mean((1, 3))
        overlap = (np.minimum(small["face"], large).sum() / np.maximum(small["face"], large).sum())
        self.assertGreater(overlap, 0.97)

    def test_no_face_means_no_mesh(self):
        result = self.model.on_crop(np.zeros((600, 900, 3), np.uint8), OBAMA_BOX, OBAMA_MAP)
        self.assertLess(result.presence, mesh.PRESENCE_THRESHOLD)
        self.assertIn("presence", mesh.problem(result, SIZE))

    def test_the_run_cache_keeps_meshed_faces_and_drops_refused_ones(self):
        with tempfile.TemporaryDirectory() as directory:
            run = Path(directory)
            crops = run / "crops"
            crops.mkdir()
            blank = run / "blank.png"
            Image.new("RGB", (900, 600)).save(blank)
            for name in ("a.png", "b.png"):  # the crops as `deepgate crops` made them (only their size is read)
                Image.new("RGB", (SIZE, SIZE)).save(crops / name)
            with open(crops / "index.csv", "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["crop", "x", "y", "width", "height", "map_a", "map_b", "map_c", "map_d", "map_tx",
                                 "map_ty"])
                writer.writerow(["a.png", *OBAMA_BOX, *OBAMA_MAP])
                writer.writerow(["b.png", *OBAMA_BOX, *OBAMA_MAP])
            with open(run / "faces.csv", "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["crop", "photo", "identity", "split", "face", "main", "quality_issue"])
                writer.writerow([crops / "a.png", OBAMA, "obama", "train", 0, "true", ""])
                writer.writerow([crops / "b.png", blank, "nobody", "train", 0, "true", ""])
                writer.writerow([crops / "c.png", OBAMA, "obama", "train", 1, "false", ""])
            config = SimpleNamespace(run_dir=run, data=SimpleNamespace(crop_size=SIZE))
            summary = mesh.mesh_for_faces(config, self.model)
            self.assertEqual((summary["faces"], summary["meshed"], summary["refused"]), (3, 1, 2))
            loaded = mesh.load_mesh(config)
            self.assertEqual(list(loaded), [str(crops / "a.png")])
            np.testing.assert_allclose(loaded[str(crops / "a.png")], self.result.points, atol=1e-3)
            np.testing.assert_allclose(mesh.load_mesh(config, size=256)[str(crops / "a.png")],
                                       self.result.points * 2, atol=2e-3)
            self.assertTrue((run / "mesh.json").exists())


if __name__ == "__main__":
    unittest.main()
