"""Dense landmarks for per-face masks: MediaPipe's 468-point face mesh, run on the runtime's own detections, and
the region masks (face oval, eyes, brows, nose, mouth, inner face) drawn from its points.

- The model is pinned in `models/distill/mesh.toml` (wheel and member sha256, licence) and fetched from PyPI into
  the pipeline's cache, like the photos of sources.toml.
- It runs where MediaPipe runs it: on the detector's box made square, scaled by 1.5 and turned upright. The
  runtime's aligned crop is already upright, so the mesh window is that box expressed in aligned-crop pixels; the
  ORIGINAL photo is sampled into the 192-px input through the crop map of `deepgate crops` (no second resampling
  of the small crop), and the points come back in aligned-crop pixels (continuous coordinates: 0 is the crop's
  edge), at any crop size by scaling.
- A face is refused (no entry in the cache; callers fall back to the template masks, forge.template_regions)
  when the mesh says no face is there (presence < 0.5) or when its eyes and mouth do not land near the runtime's
  own keypoints.
- Masks are polygons filled at 4× and box-reduced: each pixel holds the polygon's area coverage, deterministic,
  with no feathering (the forgery code decides that).

    python -m distill.mesh fetch                              # the pinned model into .cache/mesh/
    python -m distill.mesh cache --config configs/smoke.toml  # runs/<name>/mesh.npz for the run's faces
    python -m distill.mesh figure                             # models/mesh_masks.png (the card's picture)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import blend, logs, sources

PINS = sources.PACKAGE_ROOT / "mesh.toml"
PRESENCE_THRESHOLD = 0.5  # MediaPipe keeps tracking a face while its presence score is at least this
# A mesh whose eye centres or mouth centre lie further than this (in template eye distances) from where the
# runtime's alignment put the detector's keypoints has found something other than the detected face. Good meshes
# measured 0.05-0.3 (an open mouth moves the lips' centre below the detector's mouth point; tilted heads more).
KEYPOINT_TOLERANCE = 0.5

# ---------------------------------------------------------------------------------------------------------------
# Topology of the 468-point mesh (MediaPipe's canonical face model), checked by drawing the indices over faces.
# "right"/"left" are the subject's, as in models/alignment.toml: the subject's right eye is on the image's left in
# an unmirrored photo. Contours are listed in order around their region; a hull's order does not matter.
#
# | region     | how its list runs                                                 | anchors                       |
# |------------|-------------------------------------------------------------------|-------------------------------|
# | face oval  | 36 points: forehead, down the subject's left side to the chin, up | 10 forehead, 454 left cheek,  |
# |            | the right side back to the forehead (the jaw line, not the hair)  | 152 chin, 234 right cheek     |
# | right eye  | lower lid from the outer corner to the inner one, upper lid back  | 33/133 corners, 145/159 lids  |
# | left eye   | the mirror image of the right eye                                 | 263/362 corners, 374/386 lids |
# | right brow | upper edge outer to inner end, lower edge inner to outer end      | 70/46 outer, 107/55 inner     |
# | left brow  | the mirror image of the right brow                                | 300/276 outer, 336/285 inner  |
# | lips       | outer contour: lower lip corner to corner, upper lip back         | 61/291 corners, 17/0 centres  |
# | nose       | a hull: ridge 168 6 197 195 5, tip 4 1, under the tip 19 94 2,    | 168 between the eyes, 1 tip,  |
# |            | pairs (right/left) 196/419 beside the bridge, then the wings of   | 98/327 nostril wings          |
# |            | the nostrils 49/279 48/278 129/358 64/294 98/327                  |                               |

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 196, 419, 49, 279, 48, 278, 129, 358, 64, 294, 98, 327)


@dataclass(frozen=True)
class Region:
    indices: tuple[int, ...]
    shape: str  # "contour": the points in order; "hull": their convex hull
    margin: float  # grown outwards by this many eye distances


REGIONS: dict[str, Region] = {
    "face": Region(FACE_OVAL, "contour", 0.0),
    "right_eye": Region(RIGHT_EYE, "hull", 0.12),
    "left_eye": Region(LEFT_EYE, "hull", 0.12),
    "right_brow": Region(RIGHT_BROW, "contour", 0.07),
    "left_brow": Region(LEFT_BROW, "contour", 0.07),
    "mouth": Region(LIPS, "hull", 0.12),
    "nose": Region(NOSE, "hull", 0.15),
    "inner_face": Region(RIGHT_BROW + LEFT_BROW + RIGHT_EYE + LEFT_EYE + NOSE + LIPS, "hull", 0.15),
}


class MeshError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# The pinned model


def pins(path: Path = PINS) -> dict:
    """The [model] table of mesh.toml, checked for the keys the code relies on."""
    table = tomllib.loads(path.read_text())["model"]
    for key in ("package", "version", "archive", "sha256", "member", "member_sha256", "licence"):
        if not table.get(key):
            raise MeshError(f"{path}: [model] lacks {key}")
    for key in ("sha256", "member_sha256"):
        if len(table[key]) != 64:
            raise MeshError(f"{path}: [model] {key} is not a sha256")
    if table["input"].get("colour") != "RGB" or table["input"].get("range") != [0.0, 1.0]:
        raise MeshError(f"{path}: warp() feeds RGB in [0, 1]; [model.input] says otherwise")
    return table


def fetch_model(cache: Path = sources.CACHE, pinned: Path = PINS) -> Path:
    """The face-mesh model in cache/mesh/ (with the package's licence beside it), downloaded from PyPI and
    extracted unless already there; both the wheel and the model are checked against their pinned sha256."""
    table = pins(pinned)
    source = sources.Source(name="mesh", registry=table.get("registry", "pypi"), package=table["package"],
                            version=table["version"], licence=table["licence"], archive=table["archive"],
                            sha256=table["sha256"], pip_args=tuple(table.get("pip_args", ())))
    target = Path(cache) / "mesh" / Path(table["member"]).name
    licence = ((table["licence_member"], target.parent / f"LICENSE.{table['package']}"),) \
        if table.get("licence_member") else ()
    return sources.fetch_member(source, table["member"], table["member_sha256"], target, Path(cache) / "downloads",
                                pinned.name, also=licence)


class FaceMesh:
    """The TFLite face-mesh model in ai-edge-litert's interpreter, single-threaded (deterministic)."""

    def __init__(self, model: Path | None = None, pinned: Path = PINS):
        from ai_edge_litert.interpreter import Interpreter

        table = pins(pinned)
        self.input_size = int(table["input"]["shape"][1])
        self.box_scale = float(table["input"]["box_scale"])
        self.model = model or fetch_model(pinned=pinned)
        self.interpreter = Interpreter(model_path=str(self.model), num_threads=1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        try:
            self.landmark_output = outputs[table["outputs"]["landmarks"]]
            self.presence_output = outputs[table["outputs"]["presence"]]
        except KeyError as missing:
            raise MeshError(f"{self.model}: no output {missing}; it has {sorted(outputs)}") from None

    def run(self, window: np.ndarray) -> tuple[np.ndarray, float]:
        """(468×3 points in input pixels, face presence in [0, 1]) for a size×size×3 RGB float window in [0, 1]."""
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(window[None], dtype=np.float32))
        self.interpreter.invoke()
        points = self.interpreter.get_tensor(self.landmark_output).reshape(468, 3).copy()
        logit = float(self.interpreter.get_tensor(self.presence_output).ravel()[0])
        return points, 0.5 * (1.0 + math.tanh(logit / 2))  # the logistic function, without overflow

    def on_crop(self, photo: np.ndarray, box: tuple[float, float, float, float],
                crop_to_photo: tuple[float, ...]) -> "MeshResult":
        """The mesh of the face that `deepgate crops` aligned: `photo` is the image the runtime read (H×W×3
        uint8), `box` its detector box (x, y, width, height in photo pixels), `crop_to_photo` the crop map
        (a, b, c, d, tx, ty). Points come back in pixels of the crop that map belongs to (its size is the one
        `deepgate crops` was given; `scale_points` moves them to another size)."""
        window_to_crop = mesh_window(box, crop_to_photo, self.input_size, self.box_scale)
        window = warp(photo, compose_affine(crop_map_matrix(crop_to_photo), window_to_crop), self.input_size)
        points, presence = self.run(window)
        return MeshResult(apply_affine(window_to_crop, points[:, :2]), presence)


@dataclass
class MeshResult:
    points: np.ndarray  # 468×2, aligned-crop pixels
    presence: float


# ---------------------------------------------------------------------------------------------------------------
# Geometry: 2×3 affine maps on continuous pixel coordinates (0 is an image's edge, pixel i spans [i, i+1)).


def crop_map_matrix(crop_to_photo: tuple[float, ...]) -> np.ndarray:
    a, b, c, d, tx, ty = crop_to_photo
    return np.array([[a, b, tx], [c, d, ty]], dtype=np.float64)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer ∘ inner."""
    return np.concatenate([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], 1)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def mesh_window(box: tuple[float, float, float, float], crop_to_photo: tuple[float, ...],
                input_size: int = 192, box_scale: float = 1.5) -> np.ndarray:
    """The map from the mesh input's pixels to the aligned crop's: MediaPipe's window (the box made square on
    its longer side, scaled by `box_scale` about its centre), expressed in the upright crop."""
    matrix = crop_map_matrix(crop_to_photo)
    linear = matrix[:, :2]
    x, y, width, height = box
    centre = np.linalg.solve(linear, np.array([x + width / 2, y + height / 2]) - matrix[:, 2])
    photo_pixels_per_crop_pixel = math.sqrt(abs(np.linalg.det(linear)))
    side = box_scale * max(width, height) / photo_pixels_per_crop_pixel
    step = side / input_size
    return np.array([[step, 0, centre[0] - step * input_size / 2], [0, step, centre[1] - step * input_size / 2]])


def warp(photo: np.ndarray, window_to_photo: np.ndarray, size: int) -> np.ndarray:
    """The size×size window, sampled bilinearly from `photo` (zero outside it), as RGB float in [0, 1]. When a
    window pixel covers two or more photo pixels, the photo is first box-reduced by that integer factor, so that
    a large face is averaged rather than aliased."""
    image = photo
    factor = int(math.sqrt(abs(np.linalg.det(window_to_photo[:, :2]))))
    if factor >= 2:
        image = np.asarray(Image.fromarray(photo).reduce(factor))
        window_to_photo = window_to_photo / factor  # continuous coordinates scale exactly with the reduction
    height, width = image.shape[:2]
    padded = np.pad(image.astype(np.float32) / 255.0, ((1, 1), (1, 1), (0, 0)))
    centres = np.arange(size) + 0.5
    grid = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)
    # Continuous photo coordinates → indices into the padded image (pixel centres at i + 0.5, one pixel of pad).
    u, v = (apply_affine(window_to_photo, grid) + 0.5).T
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    u0 = np.clip(u0.astype(np.int64), 0, width + 1)
    v0 = np.clip(v0.astype(np.int64), 0, height + 1)
    u1, v1 = np.clip(u0 + 1, 0, width + 1), np.clip(v0 + 1, 0, height + 1)
    top = padded[v0, u0] * (1 - fu) + padded[v0, u1] * fu
    bottom = padded[v1, u0] * (1 - fu) + padded[v1, u1] * fu
    return (top * (1 - fv) + bottom * fv).reshape(size, size, 3).astype(np.float32)


def scale_points(points: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """Points of an aligned crop at `from_size` in the same crop made at `to_size` (same region, other size)."""
    return points * (to_size / from_size)


def keypoint_error(points: np.ndarray, crop_size: int) -> float:
    """How far the mesh's eye centres and mouth centre lie from the alignment template (where the runtime put the
    detector's keypoints), in template eye distances: the largest of the three."""
    template = blend.Template.load(crop_size)
    found = [points[list(RIGHT_EYE)].mean(0), points[list(LEFT_EYE)].mean(0), points[list(LIPS)].mean(0)]
    expected = [template.right_eye, template.left_eye, template.mouth]
    return max(float(np.linalg.norm(f - e)) for f, e in zip(found, expected)) / template.eye_distance


def problem(result: MeshResult, crop_size: int) -> str:
    """Why a mesh should not be used ("" when it is fine)."""
    if not np.all(np.isfinite(result.points)):
        return "non-finite points"
    if result.presence < PRESENCE_THRESHOLD:
        return f"face presence {result.presence:.2f} < {PRESENCE_THRESHOLD}"
    error = keypoint_error(result.points, crop_size)
    if error > KEYPOINT_TOLERANCE:
        return f"eyes/mouth {error:.2f} eye distances from the runtime's keypoints"
    return ""


# ---------------------------------------------------------------------------------------------------------------
# Region masks


def convex_hull(points: np.ndarray) -> np.ndarray:
    """The convex hull in order (Andrew's monotone chain), without repeated points."""
    ordered = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def half(sequence):
        chain: list[tuple[float, float]] = []
        for p in sequence:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(ordered) + half(ordered[::-1]))


def eye_distance(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[list(LEFT_EYE)].mean(0) - points[list(RIGHT_EYE)].mean(0)))


def region_outline(points: np.ndarray, name: str) -> np.ndarray:
    """The polygon of a region (before its margin), in the points' pixels."""
    region = REGIONS[name]
    selected = points[list(region.indices)]
    return convex_hull(selected) if region.shape == "hull" else selected


def polygon_mask(polygon: np.ndarray, size: int, margin: float = 0.0, supersample: int = 4) -> np.ndarray:
    """size×size float32 coverage of `polygon` (continuous pixel coordinates) grown by `margin` pixels (a disc
    swept along the outline), drawn at `supersample`× and box-reduced."""
    scale = supersample
    image = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(image)
    vertices = [(float(x) * scale - 0.5, float(y) * scale - 0.5) for x, y in polygon]
    draw.polygon(vertices, fill=255)
    radius = margin * scale
    if radius >= 0.5:
        draw.line(vertices + vertices[:1], fill=255, width=max(1, round(2 * radius)), joint="curve")
        for x, y in vertices:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.asarray(image.reduce(scale), dtype=np.float32) / 255.0


def region_masks(points: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Masks of every region in REGIONS for one face: `points` are its 468 mesh points (x, y; extra columns are
    ignored) in pixels of a size×size aligned crop. Each mask is size×size float32 in [0, 1] (area coverage)."""
    points = np.asarray(points, dtype=np.float64)[:, :2]
    if points.shape != (468, 2):
        raise ValueError(f"expected 468 mesh points, got {points.shape}")
    distance = eye_distance(points)
    return {name: polygon_mask(region_outline(points, name), size, region.margin * distance)
            for name, region in REGIONS.items()}


# ---------------------------------------------------------------------------------------------------------------
# The run's cache: runs/<name>/mesh.npz


def crop_index(directory: Path) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """crop path (as faces.csv writes it) → (box, crop map) from the index.csv `deepgate crops` wrote there."""
    entries = {}
    with open(directory / "index.csv", newline="") as file:
        for row in csv.DictReader(file):
            entries[str(directory / row["crop"])] = (
                tuple(float(row[k]) for k in ("x", "y", "width", "height")),
                tuple(float(row[f"map_{k}"]) for k in ("a", "b", "c", "d", "tx", "ty")))
    return entries


def mesh_for_faces(config, mesh: FaceMesh | None = None) -> dict:
    """Runs the mesh on every face of runs/<name>/faces.csv (the photo or tile the runtime read, through its crop
    map) and writes runs/<name>/mesh.npz: `crops` (crop paths as in faces.csv), `points` (N×468×2 float32, crop
    pixels at config.data.crop_size), `presence` (N) and `crop_size`. Refused faces get no entry; they are listed
    with the reason in runs/<name>/mesh.json, which also holds the summary this returns."""
    from .faces import load_faces, read_rgb

    started = time.monotonic()
    mesh = mesh or FaceMesh()
    size = config.data.crop_size
    records = load_faces(config)
    index: dict = {}
    for directory in sorted({face.crop.parent for face in records}):
        index.update(crop_index(directory))
    names, points, presences, refused = [], [], [], []
    photo_path, photo = None, None
    for face in records:
        entry = index.get(str(face.crop))
        if entry is None:
            refused.append({"crop": str(face.crop), "reason": "not in its directory's index.csv"})
            continue
        if face.photo != photo_path:
            photo_path, photo = face.photo, read_rgb(face.photo)
        result = mesh.on_crop(photo, entry[0], entry[1])
        with Image.open(face.crop) as crop:  # the crop map belongs to the crop as made; the cache is at `size`
            made = crop.width
        result.points = scale_points(result.points, made, size)
        reason = problem(result, size)
        if reason:
            refused.append({"crop": str(face.crop), "reason": reason, "presence": round(result.presence, 4)})
            continue
        names.append(str(face.crop))
        points.append(result.points.astype(np.float32))
        presences.append(result.presence)
    np.savez_compressed(config.run_dir / "mesh.npz", crops=np.array(names, dtype=str),
                        points=np.stack(points) if points else np.zeros((0, 468, 2), np.float32),
                        presence=np.array(presences, np.float32), crop_size=np.int64(size))
    summary = {
        "faces": len(records),
        "meshed": len(names),
        "refused": len(refused),
        "refused_faces": refused,
        "presence_min": round(float(min(presences)), 4) if presences else None,
        # Kept, but worth a look: MediaPipe is unsure a face is there (every face checked so far scored > 0.99).
        "low_presence": [name for name, score in zip(names, presences) if score < 0.9],
        "model": str(mesh.model),
        "seconds": round(time.monotonic() - started, 1),
    }
    (config.run_dir / "mesh.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_mesh(config, size: int | None = None) -> dict[str, np.ndarray]:
    """crop path (as in faces.csv) → 468×2 mesh points in pixels of that crop at `size` (default: the run's
    crop_size), from runs/<name>/mesh.npz. Faces the mesh refused are absent."""
    with np.load(config.run_dir / "mesh.npz") as data:
        crop_size = int(data["crop_size"])
        scale = (size or crop_size) / crop_size
        return {str(name): points * scale for name, points in zip(data["crops"], data["points"])}


# ---------------------------------------------------------------------------------------------------------------
# The card's picture

FIXTURES = sources.REPO_ROOT / "tests" / "fixtures" / "faces"
FIGURE = sources.REPO_ROOT / "models" / "mesh_masks.png"
FIGURE_PHOTOS = ("obama.jpg", "biden.jpg", "astronaut.png")  # public-domain fixtures (White House, NASA)
COLOURS = {"face": (255, 255, 255), "right_brow": (255, 170, 0), "left_brow": (255, 170, 0),
           "right_eye": (0, 200, 255), "left_eye": (40, 110, 255), "nose": (80, 230, 80), "mouth": (255, 60, 90),
           "inner_face": (255, 255, 0)}


def _edge(mask: np.ndarray) -> np.ndarray:
    inside = mask >= 0.5
    interior = inside.copy()
    interior[1:-1, 1:-1] = (inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2]
                            & inside[1:-1, 2:])
    return inside & ~interior


def draw_points(crop: np.ndarray, points: np.ndarray) -> np.ndarray:
    image = Image.fromarray(crop)
    draw = ImageDraw.Draw(image)
    for x, y in points:
        draw.point((float(x) - 0.5, float(y) - 0.5), fill=(0, 255, 0))
    return np.asarray(image)


def draw_masks(crop: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """The crop with each region tinted in its colour and outlined; the inner face is an outline only."""
    out = crop.astype(np.float32) * 0.75
    for name, mask in masks.items():
        colour = np.array(COLOURS[name], np.float32)
        if name not in ("inner_face",):
            alpha = mask[..., None] * (0.15 if name == "face" else 0.45)
            out = out * (1 - alpha) + colour * alpha
    for name, mask in masks.items():
        out[_edge(mask)] = COLOURS[name]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def figure(out: Path = FIGURE, size: int = 192, mesh: FaceMesh | None = None) -> dict:
    """models/mesh_masks.png: for each fixture photo, the runtime's aligned crop with the mesh points, and with the
    region masks. Returns each face's presence and keypoint error."""
    from . import runtime
    from .faces import read_rgb

    mesh = mesh or FaceMesh()
    panels, report = [], {}
    with tempfile.TemporaryDirectory() as directory:
        crops = runtime.crops([FIXTURES / name for name in FIGURE_PHOTOS], Path(directory), size=size)
        for name in FIGURE_PHOTOS:
            crop = next(c for c in crops if Path(c.source).name == name and c.main)
            result = mesh.on_crop(read_rgb(Path(crop.source)), crop.box, crop.crop_to_photo)
            report[name] = {"presence": round(result.presence, 4),
                            "keypoint_error": round(keypoint_error(result.points, size), 3)}
            image = read_rgb(crop.file)
            panels.append(np.concatenate([draw_points(image, result.points),
                                          draw_masks(image, region_masks(result.points, size))], 0))
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    grid = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], 1)
    legend = Image.new("RGB", (grid.shape[1], 18), (40, 40, 40))
    draw = ImageDraw.Draw(legend)
    x = 4
    for name, label in (("face", "face (oval)"), ("inner_face", "inner face (outline)"), ("left_brow", "brows"),
                        ("right_eye", "right eye"), ("left_eye", "left eye"), ("nose", "nose"), ("mouth", "mouth")):
        draw.rectangle((x, 5, x + 8, 13), fill=COLOURS[name])
        draw.text((x + 11, 3), label, fill=(255, 255, 255))
        x += 11 + int(draw.textlength(label)) + 10
    picture = Image.fromarray(np.concatenate([grid, np.asarray(legend)], 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    report["file"], report["bytes"] = str(out), out.stat().st_size
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.mesh", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "cache", "figure"])
    parser.add_argument("--config", type=Path, help="the run's config (cache)")
    parser.add_argument("--out", type=Path, default=FIGURE, help=f"figure file (default {FIGURE})")
    args = parser.parse_args(argv)
    logs.configure()
    if args.command == "fetch":
        path = fetch_model()
        print(f"{path} sha256 {sources.sha256_of(path)}")
        return 0
    if args.command == "cache":
        if args.config is None:
            parser.error("cache needs --config")
        from . import config as configuration

        print(json.dumps(mesh_for_faces(configuration.load(args.config)), indent=1))
        return 0
    print(json.dumps(figure(args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
