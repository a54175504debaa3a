"""Steps 3–5: separability of frozen backbones, the teacher, and the student distilled from it.

Training images are made on the fly from the training identities' crops: each crop once as itself (genuine)
and once forged, by a family drawn from `data.families` (`forge.py`: SBI, cross-identity face swaps,
region-level manipulations), each with the mask it was blended through; all through the same camera
augmentations. The networks learn the genuine-vs-forged decision and, where the model has one, the manipulation
map (region and seam) from those masks. A family left out of `data.families` never appears in training or in
model selection (validation uses only the trained families), so the leave-one-family-out runs measure it unseen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import blend, forge, metrics
from .losses import contrastive_loss, losses
from .backbones import Classifier, build_backbone, freeze_batch_statistics, norm_tuning
from .config import Config, Model, Train
from .faces import load_faces, read_rgb
from .sources import CACHE


logger = logging.getLogger(__name__)

# Training runs on the GPU when torch sees one, else on the CPU; checkpoints are saved for the CPU either way.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tensor(images: list[np.ndarray]) -> torch.Tensor:
    """8-bit H×W×3 images → one float NCHW batch in [0, 1]."""
    return torch.from_numpy(np.stack(images).astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()


def masks_tensor(masks: list[np.ndarray]) -> torch.Tensor:
    """H×W float masks → [N, 1, H, W]."""
    return torch.from_numpy(np.stack(masks).astype(np.float32))[:, None].contiguous()


@dataclass
class Faces:
    """One split's faces: crops, who they are, and where their parts are (region masks at the crop size)."""

    crops: list[np.ndarray]
    identities: list[str]
    regions: list[dict[str, np.ndarray] | None]

    def families_for(self, index: int, families: list[str]) -> list[str]:
        """The families that can be made of face `index`: a face swap needs another person in the split."""
        alone = all(identity == self.identities[index] for identity in self.identities)
        usable = [family for family in families if not (alone and family == "faceswap")]
        return usable or ["sbi"]

    def donor(self, index: int, rng: np.random.Generator) -> np.ndarray | None:
        """Another person's crop, for the families that need one (None when the split holds one person)."""
        others = [i for i, identity in enumerate(self.identities) if identity != self.identities[index]]
        return self.crops[others[rng.integers(len(others))]] if others else None


def split_faces(config: Config, split: str) -> Faces:
    faces = [face for face in load_faces(config) if face.split == split]
    points = {}
    if config.data.mesh and (config.run_dir / "mesh.npz").exists():
        from . import mesh

        points = mesh.load_mesh(config)
    size = config.data.crop_size
    regions = [forge.regions_for(size, points[str(face.crop)]) if str(face.crop) in points else None for face in faces]
    return Faces([read_rgb(face.crop) for face in faces], [face.identity for face in faces], regions)


def split_crops(config: Config, split: str) -> list[np.ndarray]:
    return split_faces(config, split).crops


def forgery(faces: Faces, index: int, family: str, rng: np.random.Generator) -> forge.Forgery:
    return forge.forge(family, faces.crops[index], faces.donor(index, rng), rng, faces.regions[index])


def validation_set(config: Config, families: list[str] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Validation faces (genuine, other identities than training) and two fixed forgeries of each per trained
    family, with labels. Only trained families: a held-out family must not choose the checkpoint."""
    faces = split_faces(config, "validation")
    if not faces.crops:
        raise RuntimeError("no validation faces: the split needs at least three identities")
    rng = np.random.default_rng(config.seed + 2)
    fakes = [forgery(faces, index, family, rng).image for family in families or config.data.families
             for index in range(len(faces.crops)) if family in faces.families_for(index, [family])
             for _ in range(2)]
    return tensor(faces.crops + fakes), np.array([0] * len(faces.crops) + [1] * len(fakes))


def _crops_per_epoch(train: Train, crops: int) -> int:
    """How many crops an epoch draws (each once genuine, once forged): one pass over the training faces, or
    enough for `steps_per_epoch` batches."""
    return train.steps_per_epoch * train.batch // 2 if train.steps_per_epoch else crops


def training_batches(faces: Faces, train: Train, seed: int, epoch: int, families: list[str]):
    """One epoch: every drawn crop as genuine and as a forgery of a random trained family, shuffled, augmented
    alike, in batches of (images, labels, region masks, seam maps)."""
    rng = np.random.default_rng([seed, epoch])
    count = _crops_per_epoch(train, len(faces.crops))
    chosen = rng.permutation(np.resize(np.arange(len(faces.crops)), count))
    samples = [(index, label) for index in chosen for label in (0, 1)]
    order = rng.permutation(len(samples))
    empty = np.zeros(faces.crops[0].shape[:2], np.float32)
    for start in range(0, len(order), train.batch):
        images, labels, regions, seams = [], [], [], []
        for position in order[start : start + train.batch]:
            index, label = samples[position]
            if label:
                usable = faces.families_for(index, families)
                made = forgery(faces, index, usable[rng.integers(len(usable))], rng)
                image, mask = forge.augment(made.image, made.mask, rng)
            else:
                image, mask = forge.augment(faces.crops[index], empty, rng)
            images.append(image)
            labels.append(label)
            regions.append(mask)
            seams.append(forge.boundary(mask))
        yield tensor(images), torch.tensor(labels), masks_tensor(regions), masks_tensor(seams)


def build(model: Model, config: Config) -> Classifier:
    clip_weights = Path(model.clip_weights) if model.clip_weights else None
    backbone, native = build_backbone(model.backbone, CACHE, blocks=model.blocks, clip_weights=clip_weights,
                                      pretrained=model.pretrained,
                                      tiny_size=224 if model.native_size else config.data.crop_size,
                                      fused=tuple(model.fused))
    if model.map > 0 and model.map_stride != 8:
        if not hasattr(backbone, "set_map_stride"):
            raise ValueError(f"{model.backbone} has no stride-{model.map_stride} map tap (mobilenet_v2 and "
                             f"efficientnet_lite0 do)")
        backbone.set_map_stride(model.map_stride)
    resize_to = native if model.native_size else None
    return Classifier(backbone, model.embedding, resize_to, reconstruction=model.reconstruction > 0,
                      manipulation_map=model.map > 0)


@torch.no_grad()
def probabilities(model: Classifier, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i : i + batch].to(device))[0].softmax(1)[:, 1].cpu() for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def _parameters(model: Classifier, spec: Model) -> list:
    if spec.tune == "norm":
        return norm_tuning(model)
    return [p for p in model.parameters() if p.requires_grad]


def _random_view(crop: np.ndarray, rng: np.random.Generator, min_scale: float) -> np.ndarray:
    """A random square-ish crop of at least `min_scale` of each side, resized back, then the camera augmentations."""
    from PIL import Image

    size = crop.shape[0]
    side = int(round(size * rng.uniform(min_scale, 1.0)))
    top, left = rng.integers(0, size - side + 1, 2)
    patch = Image.fromarray(np.ascontiguousarray(crop[top : top + side, left : left + side]))
    view = np.asarray(patch.resize((size, size), Image.BILINEAR))
    return forge.augment(view, np.zeros(view.shape[:2], np.float32), rng)[0]


def pretrain_ssl(config: Config, model: Classifier, crops: list[np.ndarray]) -> dict:
    """Self-supervised pretraining of `model`'s backbone on unlabelled crops (the training people's only: the
    validation and test people stay unseen) with SimCLR's objective through a throw-away projection head. The
    supervised training then starts from these weights. Returns the loss at the start and at the end."""
    ssl = config.ssl
    if not crops or ssl.steps < 1 or ssl.batch < 2:
        raise RuntimeError(f"self-supervised pretraining needs training crops, a step and batches of 2 or more; "
                           f"got {len(crops)} crops, {ssl.steps} steps, batch {ssl.batch}")
    backbone = model.backbone
    projection = torch.nn.Sequential(torch.nn.Linear(backbone.channels, 128), torch.nn.ReLU(),
                                     torch.nn.Linear(128, 64)).to(DEVICE)
    optimiser = torch.optim.AdamW([*backbone.parameters(), *projection.parameters()], lr=ssl.learning_rate,
                                  weight_decay=1e-4)
    rng = np.random.default_rng([config.seed, 99])
    losses_seen, started = [], time.time()
    model.train()
    for step in range(ssl.steps):
        # Without replacement where there are enough crops (a repeated crop would be its own negative).
        chosen = rng.choice(len(crops), size=ssl.batch, replace=len(crops) < ssl.batch)
        views = [tensor([_random_view(crops[i], rng, ssl.min_scale) for i in chosen]) for _ in range(2)]
        pooled = [model.encode(model.prepare(view.to(DEVICE)))[0] for view in views]
        loss = contrastive_loss(projection(pooled[0]), projection(pooled[1]), ssl.temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses_seen.append(loss.item())
        if step % 25 == 0 or step == ssl.steps - 1:
            logger.info("ssl step %d: contrastive loss %.4f (%.0f s)", step, loss.item(), time.time() - started)
    window = max(1, min(10, len(losses_seen) // 4))
    return {"steps": ssl.steps, "batch": ssl.batch, "first_loss": round(float(np.mean(losses_seen[:window])), 4),
            "last_loss": round(float(np.mean(losses_seen[-window:])), 4), "seconds": round(time.time() - started, 1)}


def train_one_epoch(config: Config, spec: Model, model: Classifier, batches, optimiser: torch.optim.Optimizer,
                    schedule: torch.optim.lr_scheduler.LRScheduler, total_steps: int,
                    teacher: Classifier | None) -> dict[str, float]:
    """One pass over `batches` (images, labels, region masks, seam maps): each batch's loss (the sum of its
    terms, `losses.py`) back-propagated and stepped, the one-cycle schedule advanced until `total_steps`.
    Returns each term's mean over the epoch, rounded to 4 decimals."""
    model.train()
    if spec.tune == "norm":
        freeze_batch_statistics(model.backbone)
    totals: dict[str, list[float]] = {}
    for images, labels, region, seam in batches:
        terms = losses(config, spec, model, images.to(DEVICE), labels.to(DEVICE), region.to(DEVICE),
                       seam.to(DEVICE), teacher)
        loss = sum(terms.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if schedule.last_epoch + 1 < total_steps:
            schedule.step()
        for key, value in terms.items():
            totals.setdefault(key, []).append(value.item())
    return {key: round(float(np.mean(values)), 4) for key, values in totals.items()}


def validate(model: Classifier, validation: torch.Tensor, labels: np.ndarray) -> float:
    """The model's AUC on the validation faces (genuine vs forgeries of the trained families, unseen people)."""
    return metrics.auc(probabilities(model, validation), labels)


def save_checkpoint(model: Classifier, path: Path) -> None:
    """The model's weights, on the CPU whichever device trained them (`load` reads them back)."""
    torch.save({key: value.cpu() for key, value in model.state_dict().items()}, path)


def fit(config: Config, spec: Model, train: Train, name: str, teacher: Classifier | None = None,
        families: list[str] | None = None) -> dict:
    """Trains the teacher (teacher=None) or the student (distilled from `teacher`) on forgeries of `families`
    (default `data.families`); keeps the checkpoint with the best validation AUC (trained families, unseen
    identities). Writes <name>.pt and <name>.json into the run directory."""
    families = list(families or config.data.families)
    torch.manual_seed(config.seed)
    model = build(spec, config).to(DEVICE)
    faces = split_faces(config, "train")
    pretraining = pretrain_ssl(config, model, faces.crops) if spec.pretrain == "ssl" else None
    parameters = _parameters(model, spec)
    optimiser = torch.optim.AdamW(parameters, lr=train.learning_rate, weight_decay=train.weight_decay)
    validation, validation_labels = validation_set(config, families)
    steps = max(1, train.epochs * -(-2 * _crops_per_epoch(train, len(faces.crops)) // train.batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, train.learning_rate, total_steps=steps, pct_start=0.15)
    history, best, started = [], (-1.0, -1), time.time()
    if teacher is not None:
        teacher.to(DEVICE).eval()
    for epoch in range(train.epochs):
        batches = training_batches(faces, train, config.seed, epoch, families)
        mean_terms = train_one_epoch(config, spec, model, batches, optimiser, schedule, steps, teacher)
        auc = validate(model, validation, validation_labels)
        history.append({"epoch": epoch, "loss": round(sum(mean_terms.values()), 4), "terms": mean_terms,
                        "validation_auc": auc, "seconds": round(time.time() - started, 1)})
        logger.info("%s epoch %d: %s, validation AUC %.4f (%.0f s)", name, epoch, mean_terms, auc,
                    time.time() - started)
        if auc > best[0]:
            best = (auc, epoch)
            save_checkpoint(model, config.run_dir / f"{name}.pt")
    summary = {"name": name, "backbone": spec.backbone, "blocks": spec.blocks, "tune": spec.tune,
               "families": families, "manipulation_map": spec.map > 0,
               "trainable_parameters": sum(p.numel() for p in parameters),
               "parameters": sum(p.numel() for p in model.parameters()),
               "train_faces": len(faces.crops), "train_identities": len(set(faces.identities)),
               "best_validation_auc": best[0], "best_epoch": best[1],
               "seconds": round(time.time() - started, 1), "history": history}
    if pretraining is not None:
        summary["ssl"] = pretraining
    (config.run_dir / f"{name}.json").write_text(json.dumps(summary, indent=2))
    return summary


def load(config: Config, spec: Model, name: str) -> Classifier:
    model = build(spec, config)
    model.load_state_dict(torch.load(config.run_dir / f"{name}.pt", map_location="cpu", weights_only=True))
    return model.eval()


def _linear_probe_auc(train_x, train_y, test_x, test_y, seed: int) -> float:
    """Logistic regression on frozen, standardised features (L2-regularised, full-batch LBFGS)."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    weights = torch.zeros(a.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=200)
    y = torch.tensor(train_y, dtype=torch.float32)

    def closure():
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a @ weights + bias, y) + 1e-2 * weights.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return metrics.auc((b @ weights + bias).numpy(), test_y)


def _fisher_ratio(x: torch.Tensor, y: np.ndarray) -> float | None:
    """Between-class over within-class scatter along the line joining the class means (standardised features);
    None when a class has fewer than two samples."""
    if min((y == 0).sum(), (y == 1).sum()) < 2:
        return None
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    real, fake = x[torch.tensor(y == 0)], x[torch.tensor(y == 1)]
    direction = F.normalize(fake.mean(0) - real.mean(0), dim=0)
    p, q = real @ direction, fake @ direction
    return float((p.mean() - q.mean()) ** 2 / (p.var() + q.var() + 1e-12))


def _silhouette(x: torch.Tensor, y: np.ndarray) -> float:
    """Mean silhouette of the genuine/fake labelling under cosine distance on standardised features: +1 when
    each face is much nearer its own class than the other, 0 when the classes overlap."""
    x = F.normalize((x - x.mean(0)) / (x.std(0) + 1e-6), dim=1)
    distance = 1 - x @ x.T
    labels = torch.tensor(y)
    scores = []
    for index in range(len(x)):
        same = labels == labels[index]
        same[index] = False
        if not same.any() or same.all():
            continue
        a, b = distance[index][same].mean(), distance[index][labels != labels[index]].mean()
        scores.append(float((b - a) / max(a, b)))
    return float(np.mean(scores))


@torch.no_grad()
def _frozen_features(model: Classifier, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    chunks = [model.encode(model.prepare(images[i : i + 32].to(device)))[0].cpu() for i in range(0, len(images), 32)]
    return torch.cat(chunks)


def separability(config: Config) -> list[dict]:
    """How well each candidate backbone separates genuine faces from forgeries (the trained families) of unseen
    identities. FROZEN: a linear probe trained on the training identities (AUC on validation identities), and two
    clustering scores on validation (Fisher ratio, silhouette). FINE-TUNED (`finetune` candidates): the best
    validation AUC after a short training with the teacher's recipe. This table chooses the teacher."""
    rng = np.random.default_rng(config.seed + 3)
    faces = split_faces(config, "train")
    families = config.data.families
    fakes = [blend.camera_augment(forgery(faces, index, usable[index % len(usable)], rng).image, rng)
             for index in range(len(faces.crops)) for usable in [faces.families_for(index, families)]]
    train_images = tensor(faces.crops + fakes)
    train_labels = np.array([0] * len(faces.crops) + [1] * len(fakes))
    validation, validation_labels = validation_set(config)
    rows = []
    for name in config.separability:
        # "mobilenet_v2:14": the features after 14 blocks (mid-level features keep blending traces that the
        # last, most semantic layers pool away).
        backbone, _, blocks = name.partition(":")
        spec = Model(backbone=backbone, blocks=int(blocks or 17), pretrained=config.teacher.pretrained,
                     clip_weights=config.teacher.clip_weights if backbone == "clip" else "")
        if backbone == "clip" and not spec.clip_weights and config.teacher.pretrained:
            logger.warning("separability: clip skipped (no local weights given in teacher.clip_weights)")
            continue
        torch.manual_seed(config.seed)  # random-initialised candidates (tests) are the same in every run
        model = build(spec, config).to(DEVICE)
        started = time.time()
        a, b = _frozen_features(model, train_images), _frozen_features(model, validation)
        rows.append({"backbone": name, "features": int(a.shape[1]),
                     "linear_probe_auc": _linear_probe_auc(a, train_labels, b, validation_labels, config.seed),
                     "fisher_ratio": _fisher_ratio(b, validation_labels),
                     "silhouette": _silhouette(b, validation_labels), "seconds": round(time.time() - started, 1)})
        logger.info("separability %s", rows[-1])
    for name in config.finetune:
        # The same candidates after a short fine-tune with the teacher's recipe (manipulation map included):
        # frozen features can rank backbones differently from what they become once trained.
        # "dlib_resnet@1e-4": the same at another learning rate than finetune_train's.
        candidate, _, rate = name.partition("@")
        backbone, _, blocks = candidate.partition(":")
        spec = dataclasses.replace(config.teacher, backbone=backbone, blocks=int(blocks or 17), clip_weights="")
        schedule = dataclasses.replace(config.finetune_train, learning_rate=float(rate)) if rate else config.finetune_train
        summary = fit(config, spec, schedule, "finetune_" + name.replace(":", "_").replace("@", "_lr"))
        row = next((row for row in rows if row["backbone"] == name), None)
        if row is None:
            row = {"backbone": name}
            rows.append(row)
        row.update({"finetuned_validation_auc": summary["best_validation_auc"],
                    "finetune_steps": schedule.epochs * schedule.steps_per_epoch,
                    "finetune_learning_rate": schedule.learning_rate,
                    "finetune_seconds": summary["seconds"]})
        logger.info("separability (fine-tuned) %s", row)
    (config.run_dir / "separability.json").write_text(json.dumps(rows, indent=2))
    return rows
