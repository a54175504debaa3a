"""Forgery families, each made together with the mask it was blended through (pixel-level supervision).

Every forgery here is `target · (1 − mask) + source · mask` for some altered `source`, and returns that mask, so
that the networks can learn to predict WHERE a face was manipulated (the manipulated region) and the seam of the
blend (the Face X-ray boundary, Li et al. CVPR 2020), beside the genuine-vs-forged decision. Three families:

- `sbi`: self-blended images (Shiohara & Yamasaki 2022): the face blended with a colour-, frequency- and
  geometry-altered copy of itself through a deformed whole-face mask.
- `faceswap`: cross-identity swaps: another person's aligned face, misaligned a little, colour-transferred in one
  of several ways, blended through one of several mask shapes by feathered alpha or Poisson (gradient-domain)
  blending.
- `region`: region-level manipulations of the eyes, mouth, nose or brows: swapped from another person, warped in
  place (enlarged, shrunk, shifted), or retouched (re-rendered softer or sharper, colour-shifted), blended back.

Masks come from the face's own 468-point mesh (`mesh.py`) when the caller has it, else from the alignment template
(`blend.Template`). Every function takes crops aligned by the runtime, at any size, and a numpy Generator, so a
seed reproduces a sample exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import blend

FAMILIES = ("sbi", "faceswap", "region")
REGION_SETS = (("right_eye", "left_eye"), ("right_eye",), ("left_eye",), ("mouth",), ("nose",),
               ("right_brow", "left_brow"), ("right_eye", "left_eye", "right_brow", "left_brow"), ("mouth", "nose"))


@dataclass
class Forgery:
    image: np.ndarray  # the forged crop, uint8 H×W×3
    source: np.ndarray  # what was blended in (float H×W×3), for pasting back into a photo
    mask: np.ndarray  # the blend's alpha, float32 H×W in [0, 1]: 0 untouched, 1 replaced
    family: str
    detail: str  # how it was made, e.g. "faceswap/hexagon/lab/poisson"


# ---------------------------------------------------------------------------------------------- masks and regions


def _ellipse(centre, axes, angle: float = 0.0, count: int = 40) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, count, endpoint=False)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return list(zip(centre[0] + c * x - s * y, centre[1] + s * x + c * y))


@functools.cache
def template_regions(size: int) -> dict[str, np.ndarray]:
    """The face's parts drawn from the alignment template alone (no landmarks): the fallback where a face has no
    mesh. Same keys as `mesh.region_masks`. Cached per size, so the arrays are read-only."""
    t = blend.Template.load(size)
    d = t.eye_distance
    eyes = (t.right_eye + t.left_eye) / 2
    up = np.array([0, 1.0])
    regions = {
        "right_eye": _ellipse(t.right_eye, (0.34 * d, 0.2 * d)),
        "left_eye": _ellipse(t.left_eye, (0.34 * d, 0.2 * d)),
        "right_brow": _ellipse(t.right_eye - 0.36 * d * up, (0.42 * d, 0.13 * d)),
        "left_brow": _ellipse(t.left_eye - 0.36 * d * up, (0.42 * d, 0.13 * d)),
        "nose": _ellipse((eyes + 2 * t.nose) / 3 + 0.05 * d * up, (0.27 * d, 0.5 * d)),
        "mouth": _ellipse(t.mouth, (0.5 * d, 0.24 * d)),
        "face": _ellipse((eyes[0], (eyes[1] - 0.6 * d + t.mouth[1] + 0.8 * d) / 2),
                         (1.02 * d, (t.mouth[1] + 0.8 * d - eyes[1] + 0.6 * d) / 2)),
    }
    masks = {name: blend._polygon_mask(size, outline, blur=0) for name, outline in regions.items()}
    masks["inner_face"] = (blend.inner_face_mask(size, np.random.default_rng(0), t) > 0.5).astype(np.float32)
    for mask in masks.values():
        mask.setflags(write=False)
    return masks


def regions_for(size: int, points: np.ndarray | None) -> dict[str, np.ndarray]:
    """Region masks of one face at `size`: from its mesh points (468×2, crop pixels at `size`) or the template."""
    if points is not None:
        from . import mesh

        return mesh.region_masks(points, size)
    return template_regions(size)


def _blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A [0, 1] mask feathered by a Gaussian of `sigma` pixels, in 8 bits as `blend._gaussian_blur` blurs."""
    return mask.astype(np.float32) if sigma <= 0 else blend._gaussian_blur(mask * 255, sigma) / 255


def deform(mask: np.ndarray, rng: np.random.Generator, amount: float = 0.08) -> np.ndarray:
    """A binary region made a little larger or smaller and wobbled (blur, then a random threshold, over a smooth
    random displacement): the same part never has the same outline twice."""
    size = mask.shape[0]
    grow = _blur(mask, rng.uniform(0.5, 2.5) * size / 112)
    threshold = rng.uniform(0.25, 0.7)
    shift = rng.uniform(-amount, amount, 2) * size * 0.2
    shifted = _remap(grow[..., None], *_grid_offset(size, shift, rng, amount * size * 0.15))[..., 0]
    return (shifted > threshold).astype(np.float32)


def _grid_offset(size: int, shift, rng, wobble: float):
    """Sampling coordinates for a smooth random displacement (a global shift plus two low-frequency waves)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi, 4)
    dx = shift[0] + wobble * np.sin(2 * math.pi * ys / size * rng.uniform(0.5, 1.5) + phase[0])
    dy = shift[1] + wobble * np.sin(2 * math.pi * xs / size * rng.uniform(0.5, 1.5) + phase[1])
    return xs - dx, ys - dy


def _remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear sampling of `image` (H×W×C float) at (map_x, map_y) pixel-centre coordinates, edges clamped."""
    height, width = image.shape[:2]
    x = np.clip(map_x, 0, width - 1)
    y = np.clip(map_y, 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(int), width - 2)
    y0 = np.minimum(np.floor(y).astype(int), height - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    image = image.astype(np.float32)
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def boundary(mask: np.ndarray) -> np.ndarray:
    """Face X-ray's target: 4·m·(1 − m) of the (softened) blend mask, largest where the two images meet. A hard
    mask is softened first so that a Poisson or hard-edged blend still has a seam to find."""
    size = mask.shape[0]
    peak = mask.max()
    if peak <= 0:
        return np.zeros_like(mask, dtype=np.float32)
    soft = _blur(mask / peak, 1.5 * size / 112)  # a half-opaque blend still has its seam at its outline
    seam = 4 * soft * (1 - soft)
    peak = seam.max()
    return (seam / peak).astype(np.float32) if peak > 0.05 else seam.astype(np.float32)


# ---------------------------------------------------------------------------------------------- colour and blending


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0–255) → CIE L*a*b* (D65), for colour transfer in a perceptual space."""
    c = np.clip(rgb, 0, 255) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _from_lab(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f > 0.206893, f**3, (f - 16 / 116) / 7.787) * np.array([0.95047, 1.0, 1.08883])
    c = xyz @ np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]).T
    c = np.where(c > 0.0031308, 1.055 * np.clip(c, 0, None) ** (1 / 2.4) - 0.055, 12.92 * c)
    return np.clip(c * 255, 0, 255)


def colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """The source's colours inside `mask` made like the target's there: Reinhard in RGB or L*a*b* (mean and
    spread per channel), per-channel histogram matching, or "none" (raw colours: a careless swap)."""
    source = source.astype(np.float32)
    inside = mask > 0.5
    if method == "none" or inside.sum() < 16:
        return source
    if method == "histogram":
        out = source.copy()
        for channel in range(3):
            s = np.sort(source[..., channel][inside])
            t = np.sort(target[..., channel][inside].astype(np.float32))
            ranks = np.searchsorted(s, source[..., channel], side="left") / max(len(s) - 1, 1)
            out[..., channel] = np.interp(np.clip(ranks, 0, 1), np.linspace(0, 1, len(t)), t)
        return out
    lab = method == "lab"
    s_space = _to_lab(source) if lab else source
    t_space = _to_lab(target.astype(np.float32)) if lab else target.astype(np.float32)
    out = s_space.copy()
    for channel in range(3):
        s, t = s_space[..., channel][inside], t_space[..., channel][inside]
        out[..., channel] = (out[..., channel] - s.mean()) * (t.std() / max(s.std(), 1e-3)) + t.mean()
    return _from_lab(out) if lab else out


def poisson_blend(target: np.ndarray, source: np.ndarray, region: np.ndarray, iterations: int = 80) -> np.ndarray:
    """Gradient-domain (Poisson) blending, Pérez et al. 2003: inside `region` the result keeps the source's
    gradients and meets the target at the region's edge; solved by conjugate gradients on the 4-neighbour
    Laplacian over the region's bounding box (at most `iterations` steps; the remaining error is far below one
    8-bit step on natural images). Returns float H×W×3 equal to the target outside the region."""
    inside = region > 0.5
    inside[0, :] = inside[-1, :] = inside[:, 0] = inside[:, -1] = False
    out = target.astype(np.float32).copy()
    if inside.sum() < 4:
        return out
    ys, xs = np.nonzero(inside)
    y0, y1, x0, x1 = ys.min() - 1, ys.max() + 2, xs.min() - 1, xs.max() + 2
    known = out[y0:y1, x0:x1]
    guide = source[y0:y1, x0:x1].astype(np.float32)
    weight = inside[y0:y1, x0:x1, None].astype(np.float32)

    def neighbours(v):
        total = np.zeros_like(v)
        total[1:] += v[:-1]
        total[:-1] += v[1:]
        total[:, 1:] += v[:, :-1]
        total[:, :-1] += v[:, 1:]
        return total

    def apply(v):  # the Laplacian restricted to the unknowns (v is zero outside)
        return (4 * v - neighbours(v)) * weight

    # Right-hand side: the source's Laplacian, plus the known target values next to the region's edge.
    b = (4 * guide - neighbours(guide) + neighbours(known * (1 - weight))) * weight
    x = guide * weight
    r = b - apply(x)
    p = r.copy()
    rs = np.einsum("ijc,ijc->c", r, r)
    for _ in range(iterations):
        ap = apply(p)
        alpha = rs / np.maximum(np.einsum("ijc,ijc->c", p, ap), 1e-12)
        x += alpha * p
        r -= alpha * ap
        new = np.einsum("ijc,ijc->c", r, r)
        if new.max() < 1e-3:
            break
        p = r + (new / np.maximum(rs, 1e-12)) * p
        rs = new
    out[y0:y1, x0:x1] = known * (1 - weight) + x * weight
    return out


def _finish(target: np.ndarray, source: np.ndarray, region: np.ndarray, rng: np.random.Generator,
            poisson_share: float, family: str, detail: str) -> Forgery:
    """Blends `source` into `target` through `region` by feathered alpha (random feather and opacity) or Poisson."""
    size = target.shape[0]
    if rng.random() < poisson_share:
        source = np.clip(poisson_blend(target, source, region), 0, 255)
        mask = (region > 0.5).astype(np.float32)
        detail += "/poisson"
    else:
        # Mostly opaque: a half-transparent swap shows both faces at once, which no forgery tool ships.
        mask = _blur(region, rng.uniform(0.01, 0.06) * size) * rng.choice([0.85, 1.0, 1.0])
        detail += "/alpha"
    return Forgery(blend.compose(target, source, mask), np.asarray(source, np.float32), mask.astype(np.float32),
                   family, detail)


# ---------------------------------------------------------------------------------------------- the families


def sbi(crop: np.ndarray, rng: np.random.Generator, regions: dict[str, np.ndarray] | None = None) -> Forgery:
    """A self-blend: the face (its mesh's face oval, deformed; the template's ellipse without a mesh) replaced by
    a colour-, frequency- and geometry-altered copy of itself."""
    source, template_mask = blend.self_blend_parts(crop, rng)
    if regions is None:
        return Forgery(blend.compose(crop, source, template_mask), source, template_mask.astype(np.float32), "sbi",
                       "sbi/template")
    base = regions["face"] if rng.random() < 0.7 else regions["inner_face"]
    mask = _blur(deform(base, rng), rng.uniform(0.02, 0.08) * crop.shape[0])
    mask = mask * rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    return Forgery(blend.compose(crop, source, mask), source, mask.astype(np.float32), "sbi", "sbi/mesh")


def faceswap(target: np.ndarray, donor: np.ndarray, rng: np.random.Generator,
             regions: dict[str, np.ndarray] | None = None) -> Forgery:
    """Another person's face (`donor`, aligned like `target`) swapped in: slightly misregistered, colour-matched
    in one of four ways, through one of three mask shapes, by feathered alpha or Poisson blending."""
    regions = regions if regions is not None else template_regions(target.shape[0])
    shape = rng.choice(["hexagon", "inner_face", "face"])
    if shape == "hexagon":
        region = (blend.inner_face_mask(target.shape[0], rng) > 0.5).astype(np.float32)
    else:
        region = deform(regions[shape], rng)
    colour = rng.choice(["rgb", "lab", "histogram", "none"], p=[0.3, 0.35, 0.25, 0.1])
    source = blend._affine_jitter(donor.astype(np.float32), rng)
    if rng.random() < 0.4:  # a generator's softer rendering of the swapped face
        source = blend._gaussian_blur(source, rng.uniform(0.4, 1.0))
    source = colour_transfer(source, target, region, colour)
    return _finish(target, np.clip(source, 0, 255), region, rng, 0.35, "faceswap", f"faceswap/{shape}/{colour}")


def _local_warp(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The region's content enlarged, shrunk or shifted in place (a smooth radial displacement about its
    centre, fading out beyond it): the eyes made bigger, the mouth moved, as expression editors do."""
    size = image.shape[0]
    ys, xs = np.nonzero(region > 0.5)
    centre = np.array([xs.mean(), ys.mean()])
    radius = max(xs.max() - xs.min(), ys.max() - ys.min()) * 0.75 + 2
    scale = rng.choice([rng.uniform(0.75, 0.92), rng.uniform(1.1, 1.3)])
    shift = rng.uniform(-0.12, 0.12, 2) * radius
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = gx - centre[0], gy - centre[1]
    falloff = np.clip(1 - np.sqrt(dx**2 + dy**2) / radius, 0, 1) ** 2
    map_x = centre[0] + dx * (1 + (1 / scale - 1) * falloff) - shift[0] * falloff
    map_y = centre[1] + dy * (1 + (1 / scale - 1) * falloff) - shift[1] * falloff
    return _remap(image.astype(np.float32), map_x, map_y), f"warp{scale:.2f}"


def region(target: np.ndarray, donor: np.ndarray | None, rng: np.random.Generator,
           regions: dict[str, np.ndarray] | None = None) -> Forgery:
    """One or a few parts of the face (eyes, mouth, nose, brows) manipulated and blended back: swapped from
    another person, warped in place, or retouched."""
    regions = regions if regions is not None else template_regions(target.shape[0])
    names = REGION_SETS[rng.integers(len(REGION_SETS))]
    area = np.zeros(target.shape[:2], np.float32)
    for name in names:
        area = np.maximum(area, deform(regions[name], rng, 0.05))
    if area.sum() < 9:  # a part too small to hold anything: fall back to both eyes of the template
        area = np.maximum(template_regions(target.shape[0])["right_eye"], template_regions(target.shape[0])["left_eye"])
    operations = ["swap", "warp", "retouch"] if donor is not None else ["warp", "retouch"]
    operation = operations[rng.integers(len(operations))]
    if operation == "swap":
        source = blend._affine_jitter(donor.astype(np.float32), rng)
        source = colour_transfer(source, target, np.maximum(area, _blur(area, 3)), rng.choice(["rgb", "lab"]))
        detail = "swap"
    elif operation == "warp":
        source, detail = _local_warp(target, area, rng)
        # What the warp moved reaches a little beyond the part itself: blend over that whole footprint.
        area = np.clip(_blur(area, 0.04 * target.shape[0]) * 3, 0, 1)
        area = (area > 0.5).astype(np.float32)
    else:
        source = target.astype(np.float32) * rng.uniform(0.9, 1.1, 3) + rng.uniform(-10, 10)
        if rng.random() < 0.5:
            source = blend._gaussian_blur(np.clip(source, 0, 255), rng.uniform(0.6, 1.5))
        else:
            soft = blend._gaussian_blur(np.clip(source, 0, 255), 1.0)
            source = source + rng.uniform(0.4, 1.2) * (source - soft)
        detail = "retouch"
    return _finish(target, np.clip(source, 0, 255), area, rng, 0.3, "region", f"region/{'+'.join(names)}/{detail}")


def forge(family: str, target: np.ndarray, donor: np.ndarray | None, rng: np.random.Generator,
          regions: dict[str, np.ndarray] | None = None) -> Forgery:
    """A forgery of `family` made from `target` (and `donor`, another person's aligned crop of the same size,
    for the families that need one)."""
    if family == "sbi":
        return sbi(target, rng, regions)
    if family == "faceswap":
        if donor is None:
            raise ValueError("a face swap needs a donor face")
        return faceswap(target, donor, rng, regions)
    if family == "region":
        return region(target, donor, rng, regions)
    raise ValueError(f"unknown forgery family `{family}` (known: {', '.join(FAMILIES)})")


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The camera augmentations of `blend.camera_augment`, keeping the mask registered with the image (a mirrored
    image gets a mirrored mask; the photometric ones leave it alone)."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return blend.camera_augment(np.ascontiguousarray(image), rng, mirror=False), np.ascontiguousarray(mask)
