"""Sequences: decisions per person, measured the way a kiosk makes them — on a camera's stream, not a photo.

Each held-out test photo (the PNG rows of `runs/<name>/test/labels.csv`: genuine photos and every forged photo,
whose forgery is already pasted in, so one forged photo behind every frame is one forgery applied consistently)
becomes a short kiosk-camera clip: a 640x480 window (smaller when the photo is) around the face, scaled so the
face is kiosk-sized, with smooth hand-held drift of position, scale and rotation plus jitter, slow exposure and
white-balance drift, per-frame sensor noise and per-frame JPEG compression at varying quality, written as
YUV4MPEG2 (C420jpeg, BT.601 limited range: what `src/capture/y4m.rs` reads) from a seeded generator. The shipped
runtime (`deepgate replay --board board/host.toml`, unchanged) then decides on each clip with its sequential
test, and the verdicts are reported per family: APCER, BPCER, share uncertain / no_face, frames to a decision.

Outcome of a clip (`outcome`): `replay` may give several verdicts per file (a session ends when the face is lost
for `lost_frames` and a new one starts). The clip's outcome is its FIRST decisive verdict (genuine or fake), as
the door would act on it; without one, `uncertain` if any session ended undecided, else `no_face`; `error` when
the runtime failed on the file before any verdict. Later verdicts are counted, and a clip whose sessions decided
both ways is flagged `conflicting`.

Frames per clip: by default the board's `max_frames` + 2 (32 on board/host.toml: 30 usable frames, after which
the test gives up as uncertain). A clip decides or exhausts the runtime's own budget within them unless the
quality gates reject frames; longer clips would only add frames after the verdict, which replay still
processes. Measured (2 cores, shared): ~45 ms of CPU a frame in the runtime, ~35 ms to render one, so ~2 s of
CPU a clip; rendering the next batch overlaps the replay of the last. 100 clips took 331 s (3.3 s a clip) with
the machine's load at 10 (another build and a training run); from the CPU time, an estimated 2 minutes on 2
free cores. Fewer frames (`frames`) is the knob if that is too slow.

Knobs (optional `[sequences]` section, read with defaults): frames, fps, width, height, batch, keep_videos, board.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import logs, runtime
from .faces import load_faces, read_rgb

logger = logging.getLogger(__name__)

FORGED_TARGET_APCER = 0.01  # issue 14's targets on sequences
GENUINE_TARGET_BPCER = 0.05
DECISIVE = ("genuine", "fake")
EXTRA_FRAMES = 2  # frames beyond the board's usable-frame budget, for frames the quality gates reject


@dataclass
class Settings:
    frames: int = 0  # 0: the board's `[decision] max_frames` + EXTRA_FRAMES
    fps: int = 30
    width: int = 640
    height: int = 480
    batch: int = 8  # clips per `deepgate replay` call; the next batch is rendered while one is replayed
    keep_videos: bool = False  # keep the .y4m files (about 16 MB each at 640x480x36) after replay
    board: str = ""  # empty: `kiosk_board` (the run's classifier, a camera board's decision settings)


def settings_of(config) -> Settings:
    """The `[sequences]` section when the config has one (an object or a dict), else the defaults."""
    section = getattr(config, "sequences", None)
    settings = Settings()
    if section is None:
        return settings
    for name in Settings.__dataclass_fields__:
        value = section.get(name) if isinstance(section, dict) else getattr(section, name, None)
        if value is not None:
            setattr(settings, name, type(getattr(settings, name))(value))
    return settings


CAMERA_BOARD = runtime.ROOT / "board" / "jetson-orin-nano.toml"
DECISION_KEYS = ("frame_threshold", "evidence_weight", "min_frames", "max_frames", "max_session_frames", "lost_frames")


def kiosk_board(config) -> Path:
    """The board the clips are judged with: the host board (replay source, CPU) running THIS run's exported
    classifier (export.json's manifest), with the `[decision]` settings a camera board ships
    (board/jetson-orin-nano.toml: evidence per frame weighted for correlated camera frames, a minimum of
    frames) — a kiosk's decision, not a still photo's."""
    exported = json.loads((config.run_dir / "export.json").read_text())
    board = runtime.board_for(config.run_dir / "sequences_board", config.model_id, Path(exported["manifest"]))
    camera = tomllib.loads(CAMERA_BOARD.read_text()).get("decision", {})
    text = board.read_text()
    section = text.index("[decision]")
    end = text.find("\n[", section + 1)
    end = len(text) if end < 0 else end
    body = text[section:end]
    for key in DECISION_KEYS:
        if key in camera:
            body = re.sub(rf"^{key} = [^#\n]*", f"{key} = {camera[key]} ", body, flags=re.M)
    board.write_text(text[:section] + body + text[end:])
    return board


def calibrate_on_validation(config, board: Path, target_bpcer: float = 0.10) -> dict:
    """`deepgate calibrate` on the validation people's genuine photos (never the test people): the frame
    threshold at which at most `target_bpcer` of their usable faces score at or above it, written into a copy of
    `board`. Returns the threshold, the calibrate command's summary and the board, or why there is none (too few
    faces: the command refuses), which the report then says."""
    photos = sorted({str(face.photo) for face in load_faces(config) if face.split == "validation"})
    calibrated = board.parent / "calibrated.toml"
    command = [str(runtime.binary()), "calibrate", "--board", str(board), "--target-bpcer", str(target_bpcer),
               "--json", "--write", str(calibrated), *photos]
    result = subprocess.run(command, cwd=runtime.ROOT, capture_output=True, text=True,
                            env={**os.environ, "RUST_LOG": "warn"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    summary = json.loads(lines[-1]) if lines else {}
    if result.returncode != 0 or not calibrated.exists():
        logger.warning("sequences: no calibrated threshold (%d): %s", result.returncode, result.stderr.strip()[-500:])
        return {"photos": len(photos), "target_bpcer": target_bpcer, "board": None,
                "refused": (result.stderr.strip() or result.stdout.strip())[-500:], "summary": summary}
    return {"photos": len(photos), "target_bpcer": target_bpcer, "board": str(calibrated),
            "frame_threshold": summary.get("frame_threshold"), "summary": summary}


def default_frames(board: Path) -> int:
    """The board's `[decision] max_frames` (usable frames before the test gives up) + EXTRA_FRAMES: an undecided
    clip then ends by the runtime's own budget (or its quality gates), not by being cut short, while frames no
    verdict could use are not rendered and replayed. A board that inherits its decision section gives 32."""
    decision = tomllib.loads(board.read_text()).get("decision", {})
    return int(decision.get("max_frames", 30)) + EXTRA_FRAMES


# ---------------------------------------------------------------------------------------------------------------
# YUV4MPEG2 writing


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (H, W, 3) uint8 → BT.601 limited-range Y (H, W), and Cb, Cr averaged over 2x2 blocks (centred siting,
    C420jpeg), each ceil(H/2) x ceil(W/2); an odd last row or column is repeated. The inverse of the runtime's
    `yuv_to_rgb` (src/preprocess/cpu.rs)."""
    image = rgb.astype(np.float32)
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    luma = 16.0 + (65.481 * red + 128.553 * green + 24.966 * blue) / 255.0
    height, width = luma.shape
    # The chroma formulas are linear, so averaging RGB over each 2x2 block first gives the same means of Cb
    # and Cr for a quarter of the work.
    padded = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    block = (padded[0::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 0::2] + padded[1::2, 1::2]) * 0.25
    red, green, blue = block[..., 0], block[..., 1], block[..., 2]
    blue_difference = 128.0 + (-37.797 * red - 74.203 * green + 112.0 * blue) / 255.0
    red_difference = 128.0 + (112.0 * red - 93.786 * green - 18.214 * blue) / 255.0

    def to_bytes(plane: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(plane), 0, 255).astype(np.uint8)

    return to_bytes(luma), to_bytes(blue_difference), to_bytes(red_difference)


def y4m_header(width: int, height: int, fps: int) -> bytes:
    return f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED\n".encode()


def y4m_frame_bytes(width: int, height: int) -> int:
    """Bytes of one 4:2:0 frame's planes, without its `FRAME` line."""
    return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)


def write_y4m(path: Path, frames, width: int, height: int, fps: int) -> int:
    """Writes RGB frames (an iterable of (height, width, 3) uint8) as a C420jpeg YUV4MPEG2 file; returns the
    number of frames written."""
    count = 0
    with open(path, "wb") as file:
        file.write(y4m_header(width, height, fps))
        for rgb in frames:
            if rgb.shape != (height, width, 3):
                raise ValueError(f"{path}: frame {count} is {rgb.shape}, the header says {height}x{width}x3")
            file.write(b"FRAME\n")
            for plane in rgb_to_yuv420(rgb):
                file.write(plane.tobytes())
            count += 1
    return count


# ---------------------------------------------------------------------------------------------------------------
# Kiosk-camera clips


def smooth_walk(rng: np.random.Generator, count: int, std: float, correlation: float) -> np.ndarray:
    """A stationary smooth random signal of `count` samples: white noise low-passed by a Gaussian of
    `correlation` samples, scaled to standard deviation `std`."""
    radius = int(3 * correlation) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / correlation) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))  # unit-variance output for unit-variance noise
    noise = rng.standard_normal(count + 2 * radius)
    return std * np.convolve(noise, kernel, mode="valid")[:count]


@dataclass
class Layout:
    """Where a clip's window sits: the photo pre-scaled by `scale` (so the face is kiosk-sized), the output size,
    and the window centre in the scaled photo."""
    scale: float
    width: int
    height: int
    centre: tuple[float, float]


def plan_layout(photo_size: tuple[int, int], face_box: tuple[float, float, float, float] | None, face_width: float,
                width: int, height: int, margin: float = 0.12) -> Layout:
    """The photo is shrunk (never enlarged) so the face box is `face_width` pixels wide, but no further than
    the `width` x `height` window plus `margin` (room for the camera motion) still fits in it: a photo too small
    for that framing gives a closer face rather than a window of background. Only a photo smaller than the
    window at full scale makes the window smaller (its aspect kept). The window is centred on the face, moved as
    little as needed to stay inside the photo. Without a face box the window is centred on the photo with a face
    assumed a third of its shorter side wide."""
    photo_width, photo_height = photo_size
    if face_box is None:
        side = min(photo_width, photo_height) / 3
        face_box = ((photo_width - side) / 2, (photo_height - side) / 2, side, side)
    x, y, box_width, box_height = face_box
    # The smallest scale at which the scaled photo still holds the window and its margin.
    needed = max(width * (1 + margin) / photo_width, height * (1 + margin) / photo_height)
    scale = min(1.0, max(face_width / max(box_width, 1.0), needed))
    scaled_width, scaled_height = photo_width * scale, photo_height * scale
    out_width = min(float(width), scaled_width / (1 + margin), scaled_height / (1 + margin) * width / height)
    # A multiple of twice the aspect's width term keeps the aspect exact and both sides even (4:2:0).
    step = 2 * (width // math.gcd(width, height))
    out_width = max(step, int(out_width) // step * step)
    out_height = out_width * height // width
    centre = []
    for middle, extent, limit in ((x + box_width / 2, out_width, scaled_width),
                                  (y + box_height / 2, out_height, scaled_height)):
        half = extent * (1 + margin) / 2
        middle *= scale
        centre.append(float(np.clip(middle, half, limit - half)) if limit > 2 * half else limit / 2)
    return Layout(scale, out_width, out_height, (centre[0], centre[1]))


def camera_frames(photo: np.ndarray, face_box, frames: int, rng: np.random.Generator, width: int = 640,
                  height: int = 480):
    """Yields `frames` RGB frames of a hand-held kiosk camera looking at `photo` (see the module docstring);
    every random choice comes from `rng`, so a seed reproduces the clip byte for byte."""
    face_width = rng.uniform(130, 190)  # a face at arm's length in a 640x480 kiosk camera
    layout = plan_layout((photo.shape[1], photo.shape[0]), face_box, face_width, width, height)
    image = Image.fromarray(photo)
    if layout.scale < 1.0:
        # Pre-scale once with a proper filter; the per-frame warp then only moves by a few percent.
        size = (max(1, round(photo.shape[1] * layout.scale)), max(1, round(photo.shape[0] * layout.scale)))
        image = image.resize(size, Image.LANCZOS)
    fill = tuple(int(v) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))
    out_width, out_height = layout.width, layout.height
    # Where the face sits (up to 4 % off centre), hand-held drift (correlated over ~1/3 s at 30 frames a
    # second) and frame-to-frame jitter.
    shift_x, shift_y = (rng.uniform(-0.04, 0.04) * extent + smooth_walk(rng, frames, 0.025 * extent, 10)
                        + rng.normal(0, 0.6, frames) for extent in (out_width, out_height))
    zoom = np.exp(smooth_walk(rng, frames, 0.03, 12) + rng.normal(0, 0.003, frames))
    angle = np.radians(rng.normal(0, 1.5) + smooth_walk(rng, frames, 1.5, 12) + rng.normal(0, 0.15, frames))
    # Auto-exposure and white balance wander slowly.
    gain = np.exp(rng.normal(0, 0.08) + smooth_walk(rng, frames, 0.06, 15))
    balance = np.exp(rng.normal(0, 0.03, 3)[None, :]
                     + np.stack([smooth_walk(rng, frames, 0.02, 15) for _ in range(3)], axis=1))
    # Sensor noise: read noise plus shot noise growing with the signal.
    read_noise, shot_noise = rng.uniform(1.0, 3.0), rng.uniform(0.02, 0.08)
    base_quality = rng.uniform(60, 92)
    qualities = np.clip(np.rint(base_quality + rng.normal(0, 5, frames)), 35, 95).astype(int)
    half_width, half_height = out_width / 2, out_height / 2
    for index in range(frames):
        cosine, sine = np.cos(angle[index]) / zoom[index], np.sin(angle[index]) / zoom[index]
        centre_x, centre_y = layout.centre[0] + shift_x[index], layout.centre[1] + shift_y[index]
        # PIL maps each output pixel (u, v) to the input (a u + b v + c, d u + e v + f).
        coefficients = (cosine, -sine, centre_x - cosine * half_width + sine * half_height,
                        sine, cosine, centre_y - sine * half_width - cosine * half_height)
        warped = image.transform((out_width, out_height), Image.AFFINE, coefficients, resample=Image.BILINEAR,
                                 fillcolor=fill)
        pixels = np.asarray(warped, dtype=np.float32) * (gain[index] * balance[index]).astype(np.float32)
        sigma = np.sqrt(read_noise**2 + shot_noise * np.clip(pixels, 0, 255))
        pixels += sigma * rng.standard_normal(pixels.shape, dtype=np.float32)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(buffer, format="JPEG",
                                                                                 quality=int(qualities[index]))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            yield np.asarray(decoded.convert("RGB"))


def clip_seed(seed: int, name: str) -> np.random.Generator:
    """The generator of one clip: from the run's seed and the photo's name, so adding photos changes no other."""
    return np.random.default_rng([seed, 0x5E9, zlib.crc32(name.encode())])


def make_clip(photo_path: Path, face_box, out: Path, seed: int, settings: Settings) -> tuple[int, int, int]:
    """Writes the clip of one photo; returns (width, height, frames)."""
    photo = read_rgb(photo_path)
    rng = clip_seed(seed, photo_path.name)
    generator = camera_frames(photo, face_box, settings.frames, rng, settings.width, settings.height)
    first = next(generator)
    height, width = first.shape[:2]

    def all_frames():
        yield first
        yield from generator

    return width, height, write_y4m(out, all_frames(), width, height, settings.fps)


# ---------------------------------------------------------------------------------------------------------------
# Verdicts → outcomes → metrics


def parse_replay(stdout: str) -> dict[str, dict]:
    """`deepgate replay` output → per source: its verdict lines, error lines, and frame statistics of the main
    face (frames, frames with a face, usable frames, their fake probabilities)."""
    sources: dict[str, dict] = {}

    def entry(source: str) -> dict:
        return sources.setdefault(source, {"verdicts": [], "errors": [], "frames": 0, "frames_with_face": 0,
                                           "usable_probabilities": []})

    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        kind, source = message.get("type"), message.get("source", "")
        if kind == "verdict":
            entry(source)["verdicts"].append(message)
        elif kind == "error":
            entry(source)["errors"].append(message)
        elif kind == "frame":
            record = entry(source)
            record["frames"] += 1
            main = [face for face in message.get("faces", []) if face.get("main")]
            if main:
                record["frames_with_face"] += 1
                if main[0].get("quality_issue") is None and main[0].get("fake_probability") is not None:
                    record["usable_probabilities"].append(main[0]["fake_probability"])
    return sources


def outcome(verdicts: list[dict], errors: list[dict] = ()) -> dict:
    """One clip's outcome from its verdicts in order (see the module docstring): the first decisive verdict,
    else uncertain, else no_face, else error (or none: no verdict and no error)."""
    decisive = [verdict for verdict in verdicts if verdict["decision"] in DECISIVE]
    result = {"verdicts": len(verdicts), "errors": len(errors),
              "conflicting": len({verdict["decision"] for verdict in decisive}) > 1}
    if decisive:
        chosen = decisive[0]
    else:
        undecided = [verdict for verdict in verdicts if verdict["decision"] == "uncertain"]
        chosen = undecided[0] if undecided else (verdicts[0] if verdicts else None)
    if chosen is None:
        return {**result, "decision": "error" if errors else "none", "frames": None, "elapsed_frames": None,
                "reason": errors[0].get("error", errors[0].get("message", "")) if errors else ""}
    return {**result, "decision": chosen["decision"], "frames": chosen.get("frames"),
            "elapsed_frames": chosen["last_frame"] + 1 if "last_frame" in chosen else None,
            "fake_probability": chosen.get("fake_probability"), "reason": chosen.get("reason", "")}


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(clips: list[dict]) -> dict:
    """Counts and rates of a group of clips (each a dict with `family`, `label` 0/1 and `decision`, `frames`,
    `elapsed_frames` from `outcome`). APCER: forged clips decided genuine / forged clips; BPCER: genuine clips
    decided fake / genuine clips; undecided clips count in the denominators, not as errors."""
    count = len(clips)
    decisions = {name: sum(clip["decision"] == name for clip in clips)
                 for name in ("genuine", "fake", "uncertain", "no_face", "error", "none")}
    forged = [clip for clip in clips if int(clip["label"]) == 1]
    genuine = [clip for clip in clips if int(clip["label"]) == 0]
    decided = [clip for clip in clips if clip["decision"] in DECISIVE]
    frames = [clip["frames"] for clip in decided]
    elapsed = [clip["elapsed_frames"] for clip in decided]
    return {
        "sequences": count,
        "forged": len(forged),
        "genuine": len(genuine),
        "decisions": decisions,
        "apcer": sum(clip["decision"] == "genuine" for clip in forged) / len(forged) if forged else None,
        "bpcer": sum(clip["decision"] == "fake" for clip in genuine) / len(genuine) if genuine else None,
        "share_uncertain": decisions["uncertain"] / count if count else None,
        "share_no_face": decisions["no_face"] / count if count else None,
        "share_decided": len(decided) / count if count else None,
        "conflicting": sum(bool(clip.get("conflicting")) for clip in clips),
        # Clips made from a photo whose main face already fails a quality gate (e.g. cut by the photo's edge).
        "from_gated_photos": sum(bool(clip.get("photo_quality_issue")) for clip in clips),
        "median_frames_to_decision": _quantile(frames, 50),
        "p90_frames_to_decision": _quantile(frames, 90),
        "median_elapsed_frames_to_decision": _quantile(elapsed, 50),
        "p90_elapsed_frames_to_decision": _quantile(elapsed, 90),
    }


def report(clips: list[dict]) -> dict:
    """Per family (genuine first) and overall, the worst forged family's APCER, and issue 14's targets."""
    families = sorted({clip["family"] for clip in clips}, key=lambda family: (family != "genuine", family))
    per_family = {family: summarise([clip for clip in clips if clip["family"] == family]) for family in families}
    overall = summarise(clips)
    forged_families = {family: summary["apcer"] for family, summary in per_family.items()
                       if summary["forged"] and summary["apcer"] is not None}
    worst = max(forged_families, key=forged_families.get) if forged_families else None
    overall["worst_family"] = worst
    overall["worst_family_apcer"] = forged_families[worst] if worst else None
    overall["meets_targets"] = (
        overall["apcer"] is not None and overall["bpcer"] is not None
        and overall["worst_family_apcer"] <= FORGED_TARGET_APCER and overall["bpcer"] <= GENUINE_TARGET_BPCER)
    return {"families": per_family, "overall": overall,
            "targets": {"apcer": FORGED_TARGET_APCER, "bpcer": GENUINE_TARGET_BPCER}}


# ---------------------------------------------------------------------------------------------------------------
# The step


def face_boxes(photos: list[Path], out: Path) -> dict[str, tuple[tuple[float, float, float, float], str]]:
    """The runtime's main face box of each photo (detector only) and the quality gate it fails there (empty:
    none), by file name; forged photos the detector misses take their genuine photo's (same number prefix:
    faces.py pastes forgeries in place)."""
    boxes = {Path(crop.source).name: (crop.box, crop.quality_issue) for crop in runtime.crops(photos, out)
             if crop.main}
    for photo in photos:
        if photo.name not in boxes:
            twin = f"{photo.name.split('_')[0]}_genuine.png"
            if twin in boxes:
                boxes[photo.name] = boxes[twin]
    return boxes


def _replay(board: Path, files: list[Path]) -> subprocess.Popen:
    command = ["nice", "-n", "10", str(runtime.binary()), "replay", "--board", str(board), *map(str, files)]
    return subprocess.Popen(command, cwd=runtime.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def evaluate_sequences(config) -> dict:
    """Builds the clips of every PNG test photo, replays them through the shipped runtime and writes
    `runs/<name>/sequences.json`: the report (per family and overall), the settings, timings and every clip's
    outcome."""
    settings = settings_of(config)
    board = Path(settings.board) if settings.board else kiosk_board(config)
    if settings.frames <= 0:
        settings.frames = default_frames(board)
    run = config.run_dir
    test_dir = run / "test"
    out = run / "sequences"
    shutil.rmtree(out, ignore_errors=True)
    (out / "videos").mkdir(parents=True)
    with open(test_dir / "labels.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["compression"] == "png"]
    started = time.monotonic()
    boxes = face_boxes([test_dir / row["file"] for row in rows], out / "detect")
    detect_seconds = time.monotonic() - started
    # The same clips judged twice: at the board's frame threshold as shipped, and at the threshold
    # `deepgate calibrate` derives from the VALIDATION people's genuine photos (a site's calibration, done
    # with people the test never sees).
    calibration = calibrate_on_validation(config, board)
    boards = {"shipped": board}
    if calibration.get("board"):
        boards["calibrated"] = Path(calibration["board"])
    clips: list[dict] = []
    render_seconds = 0.0
    replay_wait_seconds = 0.0
    pending: tuple[dict[str, subprocess.Popen], list[dict]] | None = None

    def collect(processes: dict[str, subprocess.Popen], batch: list[dict]) -> None:
        nonlocal replay_wait_seconds
        for name, process in processes.items():
            waited = time.monotonic()
            stdout, stderr = process.communicate()
            replay_wait_seconds += time.monotonic() - waited
            parsed = parse_replay(stdout)
            if process.returncode not in (0, 1) or not parsed:
                raise RuntimeError(f"deepgate replay failed ({process.returncode}):\n{stderr[-3000:]}")
            for clip in batch:
                seen = parsed.get(clip["video"], {"verdicts": [], "errors": [], "frames": 0, "frames_with_face": 0,
                                                  "usable_probabilities": []})
                probabilities = seen["usable_probabilities"]
                fields = outcome(seen["verdicts"], seen["errors"])
                fields.update({"frames_replayed": seen["frames"], "frames_with_face": seen["frames_with_face"],
                               "frames_usable": len(probabilities),
                               "mean_frame_fake_probability": float(np.mean(probabilities)) if probabilities else None,
                               "all_verdicts": [v["decision"] for v in seen["verdicts"]]})
                if name == "shipped":
                    clip.update(fields)
                else:
                    clip[name] = fields
        for clip in batch:
            if not settings.keep_videos:
                Path(clip["video"]).unlink(missing_ok=True)
        clips.extend(batch)

    step = max(1, settings.batch)
    for start in range(0, len(rows), step):
        batch = []
        rendered = time.monotonic()
        for number, row in enumerate(rows[start:start + step], start):
            # Numbered, so that every clip has its own file and its own verdicts even if two rows shared a name.
            video = out / "videos" / f"{number:04d}_{Path(row['file']).stem}.y4m"
            box, issue = boxes.get(row["file"], (None, ""))
            width, height, frames = make_clip(test_dir / row["file"], box, video, config.seed, settings)
            batch.append({"file": row["file"], "family": row["family"], "label": int(row["label"]),
                          "identity": row["identity"], "detail": row.get("detail", ""), "video": str(video),
                          "width": width, "height": height, "frames_written": frames,
                          "face_box": "detected" if box is not None else "centre", "photo_quality_issue": issue})
        render_seconds += time.monotonic() - rendered
        if pending is not None:
            collect(*pending)
        videos = [Path(clip["video"]) for clip in batch]
        pending = ({name: _replay(judge, videos) for name, judge in boards.items()}, batch)
    if pending is not None:
        collect(*pending)
    total = time.monotonic() - started
    results = report(clips)
    calibration["report"] = report([{**clip, **clip["calibrated"]} for clip in clips]) if "calibrated" in boards else None
    results.update({
        "board": str(board),
        "calibrated": calibration,
        "settings": {**settings.__dict__, "colour": "C420jpeg BT.601 limited range"},
        "outcome_rule": "first decisive verdict (genuine/fake) per clip; else uncertain; else no_face; else error",
        "timings": {"seconds_total": round(total, 1), "seconds_detect": round(detect_seconds, 1),
                    "seconds_render": round(render_seconds, 1),
                    "seconds_waiting_for_replay": round(replay_wait_seconds, 1),
                    "seconds_per_sequence": round(total / len(clips), 2) if clips else None,
                    "render_seconds_per_sequence": round(render_seconds / len(clips), 2) if clips else None},
        "clips": clips,
    })
    (run / "sequences.json").write_text(json.dumps(results, indent=2))
    if not settings.keep_videos:
        shutil.rmtree(out / "videos", ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    from . import config as configuration

    parser = argparse.ArgumentParser(prog="python -m distill.sequences", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    arguments = parser.parse_args(argv)
    logs.configure()
    config = configuration.load(arguments.config)
    results = evaluate_sequences(config)
    summary = {key: value for key, value in results.items() if key != "clips"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
