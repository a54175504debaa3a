import json
import tempfile
import unittest
from pathlib import Path

import numpy as np

from distill import sequences


def verdict(decision: str, frames: int = 3, first: int = 0, last: int = 4, source: str = "a.y4m") -> dict:
    return {"type": "verdict", "source": source, "decision": decision, "fake_probability": 0.5, "frames": frames,
            "frames_seen": last - first + 1, "first_frame": first, "last_frame": last, "reason": "test"}


def photo(seed: int = 0, height: int = 300, width: int = 400) -> np.ndarray:
    """A smooth test picture (gradients and a bright disc where the "face" is)."""
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([columns * 255 / width, rows * 255 / height, np.full((height, width), 90.0)], -1)
    disc = (rows - height / 2) ** 2 + (columns - width / 2) ** 2 < (height / 5) ** 2
    image[disc] = [220, 180, 150]
    return np.clip(image + np.random.default_rng(seed).normal(0, 3, image.shape), 0, 255).astype(np.uint8)


class Y4mWriter(unittest.TestCase):
    def test_header_and_size_arithmetic(self):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "clip.y4m"
            frames = [np.full((6, 10, 3), value, np.uint8) for value in (0, 128, 255)]
            self.assertEqual(sequences.write_y4m(path, frames, 10, 6, 30), 3)
            data = path.read_bytes()
            header = b"YUV4MPEG2 W10 H6 F30:1 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED\n"
            self.assertTrue(data.startswith(header))
            # 10x6 luma + two 5x3 chroma planes = 90 bytes a frame, each after a 6-byte FRAME line.
            self.assertEqual(sequences.y4m_frame_bytes(10, 6), 90)
            self.assertEqual(len(data), len(header) + 3 * (6 + 90))
            second = data[len(header) + 96:len(header) + 192]
            self.assertEqual(second[:6], b"FRAME\n")

    def test_odd_sizes_round_chroma_up(self):
        self.assertEqual(sequences.y4m_frame_bytes(5, 3), 15 + 2 * 3 * 2)
        luma, blue, red = sequences.rgb_to_yuv420(np.zeros((3, 5, 3), np.uint8))
        self.assertEqual((luma.shape, blue.shape, red.shape), ((3, 5), (2, 3), (2, 3)))

    def test_limited_range_bt601(self):
        # Black and white are 16 and 235, grey chroma 128; pure red has Cr 240 (the runtime's inverse).
        for value, expected in ((0, 16), (255, 235)):
            luma, blue, red = sequences.rgb_to_yuv420(np.full((2, 2, 3), value, np.uint8))
            self.assertTrue((luma == expected).all() and (blue == 128).all() and (red == 128).all())
        luma, blue, red = sequences.rgb_to_yuv420(np.tile(np.array([255, 0, 0], np.uint8), (2, 2, 1)))
        self.assertEqual((int(luma[0, 0]), int(blue[0, 0]), int(red[0, 0])), (81, 90, 240))
        # Chroma is the mean over its 2x2 block: two red and two black pixels give Cr 128 + 112/2 = 184, while
        # each luma sample keeps its own pixel.
        mixed = np.zeros((2, 2, 3), np.uint8)
        mixed[0, :, 0] = 255
        luma, blue, red = sequences.rgb_to_yuv420(mixed)
        self.assertEqual((int(red[0, 0]), int(blue[0, 0])), (184, 109))
        self.assertEqual(luma.tolist(), [[81, 81], [16, 16]])

    def test_wrong_frame_size_is_refused(self):
        with tempfile.TemporaryDirectory() as directory:
            with self.assertRaises(ValueError):
                sequences.write_y4m(Path(directory) / "x.y4m", [np.zeros((4, 4, 3), np.uint8)], 6, 4, 30)


class Clips(unittest.TestCase):
    def clip_bytes(self, seed: int, directory: str, name: str) -> bytes:
        path = Path(directory) / name
        frames = sequences.camera_frames(photo(), (150, 90, 100, 120), 5, np.random.default_rng(seed), 160, 120)
        sequences.write_y4m(path, frames, 160, 120, 30)
        return path.read_bytes()

    def test_same_seed_same_bytes_other_seed_other_bytes(self):
        with tempfile.TemporaryDirectory() as directory:
            first = self.clip_bytes(3, directory, "a.y4m")
            self.assertEqual(first, self.clip_bytes(3, directory, "b.y4m"))
            self.assertNotEqual(first, self.clip_bytes(4, directory, "c.y4m"))
            self.assertEqual(len(first), len(sequences.y4m_header(160, 120, 30)) + 5 * (6 + 160 * 120 * 3 // 2))

    def test_frames_move_and_differ(self):
        frames = list(sequences.camera_frames(photo(), (150, 90, 100, 120), 4, np.random.default_rng(1), 160, 120))
        self.assertEqual(len(frames), 4)
        self.assertTrue(all(frame.shape == (120, 160, 3) and frame.dtype == np.uint8 for frame in frames))
        self.assertGreater(np.abs(frames[0].astype(int) - frames[3].astype(int)).mean(), 1.0)

    def test_clip_seed_depends_on_the_name_only(self):
        first = sequences.clip_seed(7, "000_sbi0.png").integers(1 << 30, size=4)
        self.assertTrue((first == sequences.clip_seed(7, "000_sbi0.png").integers(1 << 30, size=4)).all())
        self.assertFalse((first == sequences.clip_seed(7, "000_sbi1.png").integers(1 << 30, size=4)).all())

    def test_layout_never_enlarges_and_fits_the_photo(self):
        # A 2000x1500 photo with a 400 px face: shrunk to a 160 px face, full 640x480 window around it.
        layout = sequences.plan_layout((2000, 1500), (800, 500, 400, 400), 160, 640, 480)
        self.assertAlmostEqual(layout.scale, 0.4)
        self.assertEqual((layout.width, layout.height), (640, 480))
        self.assertAlmostEqual(layout.centre[0], 1000 * 0.4)
        # A narrow photo (910 wide) with a 300 px face: shrunk only as far as 640x480 plus margin still fits,
        # so the face is closer (about 236 px) rather than the window smaller.
        layout = sequences.plan_layout((910, 1137), (300, 150, 300, 300), 160, 640, 480)
        self.assertAlmostEqual(layout.scale, 640 * 1.12 / 910)
        self.assertEqual((layout.width, layout.height), (640, 480))
        # A small photo with a small face: no enlargement, and the window shrinks (4:3 kept) to fit.
        layout = sequences.plan_layout((400, 300), (150, 100, 100, 100), 160, 640, 480)
        self.assertEqual(layout.scale, 1.0)
        self.assertLessEqual(layout.width * 1.12, 400)
        self.assertEqual(layout.width * 3, layout.height * 4)
        # A face near the corner: the window is moved inside the photo rather than centred on the face.
        layout = sequences.plan_layout((2000, 1500), (0, 0, 160, 160), 160, 640, 480)
        self.assertGreaterEqual(layout.centre[0] - layout.width * 1.12 / 2, -1e-6)
        self.assertGreaterEqual(layout.centre[1] - layout.height * 1.12 / 2, -1e-6)


class Outcomes(unittest.TestCase):
    def test_decisive(self):
        result = sequences.outcome([verdict("fake", frames=2, last=3)])
        self.assertEqual((result["decision"], result["frames"], result["elapsed_frames"]), ("fake", 2, 4))
        self.assertFalse(result["conflicting"])

    def test_uncertain_and_no_face(self):
        self.assertEqual(sequences.outcome([verdict("uncertain", frames=30, last=35)])["decision"], "uncertain")
        self.assertEqual(sequences.outcome([verdict("no_face", frames=0, last=35)])["decision"], "no_face")
        self.assertEqual(sequences.outcome([])["decision"], "none")
        self.assertEqual(sequences.outcome([], [{"type": "error", "error": "bad"}])["decision"], "error")

    def test_first_decisive_verdict_wins_over_earlier_uncertain_and_later_ones(self):
        verdicts = [verdict("uncertain", frames=0, last=6), verdict("genuine", frames=4, first=12, last=17),
                    verdict("fake", frames=2, first=25, last=28)]
        result = sequences.outcome(verdicts)
        self.assertEqual((result["decision"], result["frames"], result["elapsed_frames"]), ("genuine", 4, 18))
        self.assertEqual(result["verdicts"], 3)
        self.assertTrue(result["conflicting"])

    def test_parse_replay_groups_by_source(self):
        frame = {"type": "frame", "source": "a.y4m", "frame": 0, "width": 8, "height": 8,
                 "faces": [{"main": True, "quality_issue": None, "fake_probability": 0.25},
                           {"main": False, "quality_issue": None, "fake_probability": 0.9}]}
        gated = {**frame, "faces": [{"main": True, "quality_issue": "blurred", "fake_probability": None}]}
        empty = {**frame, "faces": []}
        lines = [json.dumps(line) for line in
                 (frame, gated, empty, verdict("genuine"), verdict("no_face", source="b.y4m"),
                  {"type": "error", "source": "c.y4m", "error": "truncated"})]
        parsed = sequences.parse_replay("\n".join(["log noise", *lines]))
        self.assertEqual(set(parsed), {"a.y4m", "b.y4m", "c.y4m"})
        self.assertEqual((parsed["a.y4m"]["frames"], parsed["a.y4m"]["frames_with_face"]), (3, 2))
        self.assertEqual(parsed["a.y4m"]["usable_probabilities"], [0.25])
        self.assertEqual([v["decision"] for v in parsed["a.y4m"]["verdicts"]], ["genuine"])
        self.assertEqual(len(parsed["c.y4m"]["errors"]), 1)


class Metrics(unittest.TestCase):
    def clip(self, family: str, decision: str, frames: int | None = None) -> dict:
        return {"family": family, "label": 0 if family == "genuine" else 1, "decision": decision, "frames": frames,
                "elapsed_frames": None if frames is None else frames + 1, "conflicting": False}

    def test_toy_report(self):
        clips = ([self.clip("genuine", "genuine", 2)] * 3 + [self.clip("genuine", "fake", 4)]
                 + [self.clip("sbi", "fake", 3)] * 3 + [self.clip("sbi", "uncertain")]
                 + [self.clip("faceswap", "genuine", 5), self.clip("faceswap", "no_face")])
        results = sequences.report(clips)
        families = results["families"]
        self.assertEqual(list(families), ["genuine", "faceswap", "sbi"])
        self.assertEqual(families["genuine"]["bpcer"], 0.25)
        self.assertIsNone(families["genuine"]["apcer"])
        self.assertEqual(families["sbi"]["apcer"], 0.0)
        self.assertEqual(families["sbi"]["share_uncertain"], 0.25)
        self.assertEqual(families["faceswap"]["apcer"], 0.5)
        self.assertEqual(families["faceswap"]["share_no_face"], 0.5)
        overall = results["overall"]
        self.assertEqual(overall["sequences"], 10)
        self.assertAlmostEqual(overall["apcer"], 1 / 6)  # one of six forged clips decided genuine
        self.assertEqual(overall["bpcer"], 0.25)
        self.assertEqual((overall["worst_family"], overall["worst_family_apcer"]), ("faceswap", 0.5))
        self.assertEqual(overall["share_decided"], 0.8)
        # Decided clips took 2, 2, 2, 4, 3, 3, 3, 5 usable frames: median 3.
        self.assertEqual(overall["median_frames_to_decision"], 3.0)
        self.assertEqual(overall["median_elapsed_frames_to_decision"], 4.0)
        self.assertFalse(overall["meets_targets"])

    def test_targets(self):
        clips = [self.clip("genuine", "genuine", 2)] * 20 + [self.clip("sbi", "fake", 2)] * 20
        self.assertTrue(sequences.report(clips)["overall"]["meets_targets"])
        clips[0] = self.clip("genuine", "fake", 2)  # BPCER 5 % is still within the target
        self.assertTrue(sequences.report(clips)["overall"]["meets_targets"])
        clips[-1] = self.clip("sbi", "genuine", 2)  # APCER 5 % is not
        self.assertFalse(sequences.report(clips)["overall"]["meets_targets"])


class Settings(unittest.TestCase):
    def test_defaults_and_overrides(self):
        class Config:
            sequences = {"frames": 12, "keep_videos": True}

        self.assertEqual(sequences.settings_of(object()).frames, 0)  # 0: from the board
        settings = sequences.settings_of(Config())
        self.assertEqual((settings.frames, settings.keep_videos, settings.fps), (12, True, 30))

    def test_default_frames_follow_the_board(self):
        with tempfile.TemporaryDirectory() as directory:
            board = Path(directory) / "board.toml"
            board.write_text("[decision]\nmax_frames = 12\n")
            self.assertEqual(sequences.default_frames(board), 12 + sequences.EXTRA_FRAMES)
        self.assertEqual(sequences.default_frames(sequences.runtime.HOST_BOARD), 32)


if __name__ == "__main__":
    unittest.main()
