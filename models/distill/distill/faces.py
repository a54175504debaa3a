"""Step 1, faces: real photos → the runtime's aligned crops → identity split → held-out test images.

- Every crop comes from `deepgate crops` at the student's input size: training sees what deployment sees.
- The split is by IDENTITY (train / validation / test), never by photo: one person never crosses it.
- The test set is made of whole photos, as a camera would see them: genuine photos, and forgeries pasted back
  into their photo (SBI, and the held-out face-swap family) — as PNG and as JPEG. `deepgate eval` reads them
  through the whole runtime; the Python evaluation reads the runtime's crops of the same photos.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import blend, runtime, sources
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


def _identity(photo: sources.Photo, face: int) -> str:
    if photo.identity == "per_face":
        return f"{photo.source}/{photo.path.name}#{face}"
    return photo.identity


def split_identities(identities: list[str], validation: float, test: float, seed: int) -> dict[str, str]:
    """Assigns each identity to train, validation or test: a seeded shuffle cut by the fractions, with at least
    one identity in each part when there are three or more."""
    ordered = sorted(set(identities))
    np.random.default_rng(seed).shuffle(ordered)
    count = len(ordered)
    n_test = max(1, round(count * test)) if count >= 3 else 0
    n_val = max(1, round(count * validation)) if count >= 3 else 0
    split = {}
    for index, identity in enumerate(ordered):
        split[identity] = "test" if index < n_test else "validation" if index < n_test + n_val else "train"
    return split


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
    crops = runtime.crops([photo.path for photo in genuine], run / "crops", size=config.data.crop_size)
    faces = []
    for crop in crops:
        photo = by_path[crop.source]
        faces.append((crop, photo, _identity(photo, crop.face)))
    split = split_identities([identity for _, _, identity in faces], config.data.validation, config.data.test, config.seed)
    records = [Face(crop.file, photo.path, identity, split[identity], crop.face, crop.main, crop.quality_issue)
               for crop, photo, identity in faces]
    with open(run / "faces.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["crop", "photo", "identity", "split", "face", "main", "quality_issue"])
        for face in records:
            writer.writerow([face.crop, face.photo, face.identity, face.split, face.face, str(face.main).lower(),
                             face.quality_issue])
    test = make_test_set(config, records, [p for p in photos if p.label == "fake"])
    summary = {
        "photos": len(genuine),
        "faces": len(records),
        "identities": {part: len({f.identity for f in records if f.split == part}) for part in ("train", "validation", "test")},
        "faces_per_split": {part: sum(f.split == part for f in records) for part in ("train", "validation", "test")},
        "sources": sorted({p.source for p in genuine}),
        "test": test,
    }
    (run / "faces.json").write_text(json.dumps(summary, indent=2))
    return summary


def make_test_set(config: Config, records: list[Face], real_fakes: list[sources.Photo]) -> dict:
    """Whole test photos: the genuine ones and, for each, an SBI forgery and a face swap with another test
    identity pasted back into it; each as PNG and JPEG. Writes test/labels.csv and returns counts."""
    out = config.run_dir / "test"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed + 1)
    mains = [face for face in records if face.split == "test" and face.main]
    size = config.data.synthesis_size
    big = {crop.source: crop for crop in runtime.crops(sorted({f.photo for f in mains}), out / "synthesis", size=size)
           if crop.main}
    rows = []

    def save(image: np.ndarray, stem: str, label: int, family: str, identity: str) -> None:
        for compressed in (False, True):
            name = f"{stem}.{'jpg' if compressed else 'png'}"
            if compressed:
                Image.fromarray(image).save(out / name, quality=config.data.jpeg_quality)
            else:
                Image.fromarray(image).save(out / name)
            rows.append((name, label, family, "jpeg" if compressed else "png", identity))

    usable = [face for face in mains if str(face.photo) in big]
    for number, face in enumerate(usable):
        photo = read_rgb(face.photo)
        target = big[str(face.photo)]
        target_crop = read_rgb(target.file)
        save(photo, f"{number:03d}_genuine", 0, "genuine", face.identity)
        source, mask = blend.self_blend_parts(target_crop, rng)
        save(blend.paste_back(photo, source, mask, target.crop_to_photo), f"{number:03d}_sbi", 1, "sbi", face.identity)
        donors = [other for other in usable if other.identity != face.identity]
        if donors:
            donor = donors[rng.integers(len(donors))]
            source, mask = blend.face_swap_parts(target_crop, read_rgb(big[str(donor.photo)].file), rng)
            save(blend.paste_back(photo, source, mask, target.crop_to_photo), f"{number:03d}_faceswap", 1, "faceswap",
                 face.identity)
    for number, photo in enumerate(real_fakes):
        save(read_rgb(photo.path), f"real_{number:03d}_{photo.family}", 1, photo.family, "unknown")
    with open(out / "labels.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label", "family", "compression", "identity"])
        writer.writerows(rows)
    return {"photos": len(usable), "images": len(rows)}


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
