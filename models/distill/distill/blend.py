"""Synthetic forgeries made from real faces, and the camera augmentations applied to every training image.

Two families, kept apart on purpose:
- SBI (self-blended images, Shiohara & Yamasaki, CVPR 2022): a face blended with a subtly altered copy of itself
  through a randomly deformed face mask. The only family training ever sees.
- Face swap: another person's face, colour-transferred onto the target and blended through an inner-face mask of
  a different shape. Used ONLY to measure generalisation to a manipulation the model never saw.

Every function takes crops aligned by the runtime (`deepgate crops`), so the keypoints sit on the alignment
template of `models/alignment.toml` (the one definition shared with the runtime) and masks can be drawn from it.
All randomness comes from the numpy Generator passed in, so a seed reproduces a sample exactly.
"""

from __future__ import annotations

import io
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ALIGNMENT = Path(__file__).resolve().parents[2] / "alignment.toml"


@dataclass(frozen=True)
class Template:
    """Keypoints of an aligned crop in pixels: right eye, left eye, nose tip, mouth centre (subject's view)."""

    right_eye: np.ndarray
    left_eye: np.ndarray
    nose: np.ndarray
    mouth: np.ndarray

    @staticmethod
    def load(size: int, path: Path = ALIGNMENT) -> "Template":
        """The runtime's `Alignment::template_pixels`: template fractions shrunk by the margin about the centre."""
        table = tomllib.loads(path.read_text())
        margin = float(table["margin"])

        def place(name: str) -> np.ndarray:
            x, y = table[name]
            return np.array([(0.5 + (x - 0.5) / margin) * size, (0.5 + (y - 0.5) / margin) * size])

        return Template(place("right_eye"), place("left_eye"), place("nose_tip"), place("mouth_centre"))

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.left_eye - self.right_eye))


def _smooth_radii(rng: np.random.Generator, count: int, amount: float) -> np.ndarray:
    """Radius factors around 1 that vary smoothly with the angle (a few low Fourier terms): a deformed outline."""
    angles = np.linspace(0, 2 * math.pi, count, endpoint=False)
    radii = np.ones(count)
    for harmonic in (2, 3, 4):
        radii += rng.uniform(-amount, amount) / harmonic * np.cos(harmonic * angles + rng.uniform(0, 2 * math.pi))
    return radii


def _polygon_mask(size: int, points: np.ndarray, blur: float) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).polygon([tuple(p) for p in points], fill=255)
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(image, dtype=np.float32) / 255.0


def face_mask(size: int, rng: np.random.Generator, template: Template | None = None) -> np.ndarray:
    """SBI's mask: the whole face (brows to chin, cheek to cheek) as an ellipse through the keypoints, deformed
    by smooth random radii, scaled, and feathered with a random blur. Values in [0, 1], shape (size, size)."""
    t = template or Template.load(size)
    d = t.eye_distance
    eyes = (t.right_eye + t.left_eye) / 2
    # Brows about 0.6 eye distances above the eyes, chin about 0.8 below the mouth, cheeks ±1.05 from centre.
    top, bottom = eyes[1] - 0.6 * d, t.mouth[1] + 0.8 * d
    centre = np.array([eyes[0], (top + bottom) / 2])
    axes = np.array([1.05 * d, (bottom - top) / 2]) * rng.uniform(0.85, 1.1)
    angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    radii = _smooth_radii(rng, 32, 0.25)
    points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * axes * radii[:, None]
    return _polygon_mask(size, points, rng.uniform(0.02, 0.08) * size)


def inner_face_mask(size: int, rng: np.random.Generator, template: Template | None = None) -> np.ndarray:
    """The face-swap family's mask: a hexagon over brows, eyes, nose and mouth only (the region face-swap
    tools replace), softly feathered. Deliberately another shape than SBI's."""
    t = template or Template.load(size)
    d = t.eye_distance
    up = 0.35 * d * rng.uniform(0.9, 1.1)
    points = np.array(
        [
            t.right_eye + [-0.35 * d, -up],
            t.left_eye + [0.35 * d, -up],
            t.left_eye + [0.4 * d, 0.45 * d],
            t.mouth + [0.5 * d, 0.15 * d],
            t.mouth + [-0.5 * d, 0.15 * d],
            t.right_eye + [-0.4 * d, 0.45 * d],
        ]
    )
    return _polygon_mask(size, points, rng.uniform(0.03, 0.05) * size)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    blurred = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(blurred, dtype=np.float32)


def _affine_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small scale and shift, as the misregistration between a face and its blended replacement."""
    size = image.shape[0]
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.02, 0.02, 2) * size
    centre = size / 2
    # PIL's AFFINE maps output to input: input = (1/scale)(output - centre - shift) + centre.
    inverse = 1 / scale
    coefficients = (inverse, 0, centre - inverse * (centre + shift[0]), 0, inverse, centre - inverse * (centre + shift[1]))
    warped = Image.fromarray(image.astype(np.uint8)).transform(
        (size, size), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.float32)


def compose(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """source · mask + target · (1 − mask), rounded to 8 bits."""
    blended = source.astype(np.float32) * mask[..., None] + target.astype(np.float32) * (1 - mask[..., None])
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def self_blend(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An SBI forgery of `crop` (H×W×3 uint8, aligned): the face blended with an altered copy of itself."""
    return compose(crop, *self_blend_parts(crop, rng))


def self_blend_parts(crop: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SBI's altered copy of `crop` and the mask to blend it through (compose them, or paste them back)."""
    target = crop.astype(np.float32)
    source = target.copy()
    # Colour: per-channel gain, brightness and contrast, as a different camera or a generator's colour drift.
    source = source * rng.uniform(0.92, 1.08, 3) + rng.uniform(-12, 12)
    mean = source.mean()
    source = (source - mean) * rng.uniform(0.9, 1.1) + mean
    # Frequency: the blended face is either softer (a generator's upsampling) or sharper than its frame.
    if rng.random() < 0.5:
        source = _gaussian_blur(source, rng.uniform(0.5, 1.3))
    else:
        soft = _gaussian_blur(source, 1.0)
        source = source + rng.uniform(0.3, 1.0) * (source - soft)
    source = _affine_jitter(np.clip(source, 0, 255), rng)
    mask = face_mask(crop.shape[0], rng) * rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    return source, mask


def _colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer inside the mask: the source's per-channel mean and spread made the target's
    (in RGB; enough for a test family)."""
    weights = mask[..., None] > 0.5
    out = source.astype(np.float32).copy()
    for channel in range(3):
        s = source[..., channel][weights[..., 0]].astype(np.float32)
        t = target[..., channel][weights[..., 0]].astype(np.float32)
        if len(s) < 2:
            continue
        out[..., channel] = (out[..., channel] - s.mean()) * (t.std() / max(s.std(), 1e-3)) + t.mean()
    return out


def face_swap_parts(
    target: np.ndarray, donor: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A cross-identity face swap of two aligned crops of the same size: the donor's face colour-matched to the
    target, and the inner-face mask to blend it through."""
    mask = inner_face_mask(target.shape[0], rng)
    return np.clip(_colour_transfer(donor, target, mask), 0, 255), mask


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def camera_augment(image: np.ndarray, rng: np.random.Generator, mirror: bool = True) -> np.ndarray:
    """What a kiosk camera and its compression do, applied alike to genuine and forged training images so that
    none of it can tell them apart: exposure, colour, blur, sensor noise, JPEG re-compression, mirror (left to
    the caller with `mirror=False`, when a mask must be mirrored with the image: `forge.augment`)."""
    out = image.astype(np.float32)
    if mirror and rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.8:
        out = 255 * (out / 255) ** rng.uniform(0.7, 1.4)  # exposure / gamma
        out = out * rng.uniform(0.85, 1.15, 3) + rng.uniform(-15, 15)  # white balance and brightness
        grey = out.mean(axis=2, keepdims=True)
        out = grey + (out - grey) * rng.uniform(0.7, 1.3)  # saturation
    if rng.random() < 0.3:
        out = _gaussian_blur(out, rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(1, 6), out.shape)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        out = jpeg(out, rng.integers(35, 96))
    return np.ascontiguousarray(out)


def paste_back(photo: np.ndarray, crop: np.ndarray, mask: np.ndarray, crop_to_photo: np.ndarray) -> np.ndarray:
    """Blends `crop` (a forgery's source in aligned-crop space) into its photo through `mask`, as a forgery tool
    does, through the runtime's crop
    map (`deepgate crops` index columns map_a..map_ty: photo = [a b; c d] · crop + [tx ty], continuous pixel
    coordinates). Only pixels under the mask change; sampling is bilinear."""
    a, b, c, d, tx, ty = crop_to_photo
    inverse = np.linalg.inv(np.array([[a, b], [c, d]]))
    size = crop.shape[0]
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    footprint = corners @ np.array([[a, c], [b, d]]) + [tx, ty]
    height, width = photo.shape[:2]
    x0, y0 = np.clip(np.floor(footprint.min(0)).astype(int), 0, [width, height])
    x1, y1 = np.clip(np.ceil(footprint.max(0)).astype(int) + 1, 0, [width, height])
    if x1 <= x0 or y1 <= y0:
        return photo.copy()
    ys, xs = np.mgrid[y0:y1, x0:x1]
    points = np.stack([xs + 0.5 - tx, ys + 0.5 - ty], -1) @ inverse.T - 0.5  # crop pixel-centre coordinates
    u, v = points[..., 0], points[..., 1]
    inside = (u >= 0) & (v >= 0) & (u <= size - 1) & (v <= size - 1)
    u0 = np.clip(np.floor(u).astype(int), 0, size - 2)
    v0 = np.clip(np.floor(v).astype(int), 0, size - 2)
    fu, fv = np.clip(u - u0, 0, 1)[..., None], np.clip(v - v0, 0, 1)[..., None]

    def sample(image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float32)
        if image.ndim == 2:
            image = image[..., None]
        top = image[v0, u0] * (1 - fu) + image[v0, u0 + 1] * fu
        bottom = image[v0 + 1, u0] * (1 - fu) + image[v0 + 1, u0 + 1] * fu
        return top * (1 - fv) + bottom * fv

    alpha = sample(mask) * inside[..., None]
    region = photo[y0:y1, x0:x1].astype(np.float32)
    out = photo.copy()
    out[y0:y1, x0:x1] = np.clip(np.rint(sample(crop) * alpha + region * (1 - alpha)), 0, 255).astype(np.uint8)
    return out
