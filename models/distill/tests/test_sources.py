import tempfile
import unittest
from pathlib import Path

from distill import sources


class Sources(unittest.TestCase):
    def test_the_shipped_manifest_pins_every_archive(self):
        loaded = sources.load_manifest()
        self.assertGreaterEqual(len(loaded), 10)
        for source in loaded:
            if source.registry != "repo":
                self.assertEqual(len(source.sha256), 64, source.name)
                self.assertTrue(source.version and source.archive, source.name)
            self.assertTrue(source.photos, f"{source.name} lists no photo")

    def test_smoke_photos_are_the_fixtures_and_one_person_shares_one_group(self):
        photos = sources.sources_for_smoke()
        self.assertTrue(all(photo.path.exists() for photo in photos))
        groups = {photo.split_group for photo in photos if photo.identity == "barack_obama"}
        self.assertEqual(len(groups), 1, "every photo of one person lands in one split group")
        self.assertGreater(len({photo.split_group for photo in photos}), 1)

    def test_people_named_in_group_photos_join_their_groups(self):
        photos = [
            sources.Photo(Path("a.jpg"), "s", "per_face", "real", "genuine", "x", people=("ann", "bob")),
            sources.Photo(Path("b.jpg"), "s", "bob", "real", "genuine", "x"),
            sources.Photo(Path("c.jpg"), "s", "carl", "real", "genuine", "x"),
        ]
        grouped = sources._with_split_groups(photos, {})
        self.assertEqual(grouped[0].split_group, grouped[1].split_group)
        self.assertNotEqual(grouped[0].split_group, grouped[2].split_group)

    def test_a_changed_download_is_refused_with_both_checksums(self):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "archive.tar.gz"
            path.write_bytes(b"not what was pinned")
            with self.assertRaises(sources.SourceError) as caught:
                sources.check_sha256(path, "0" * 64)
            self.assertIn("0" * 64, str(caught.exception))
            self.assertIn(sources.sha256_of(path), str(caught.exception))

    def test_a_manifest_with_an_unpinned_source_is_refused(self):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "sources.toml"
            path.write_text('[[source]]\nname = "x"\nregistry = "pypi"\npackage = "x"\nversion = "1"\nlicence = "MIT"\n')
            with self.assertRaisesRegex(sources.SourceError, "sha256"):
                sources.load_manifest(path)


if __name__ == "__main__":
    unittest.main()
