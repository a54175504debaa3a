"""The training objective in one place: every loss term of the teacher and the student (decision, metric learning
on the hypersphere, reconstruction, manipulation map, distillation from the teacher), and the self-supervised
pretraining's contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbones import Classifier
from .config import Config, Model


def hypersphere_terms(embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Metric learning on the unit sphere (Wang & Isola's alignment and uniformity): same-class embeddings pulled
    together, all embeddings spread over the sphere."""
    distances = torch.cdist(embedding, embedding).pow(2)
    eye = torch.eye(len(labels), dtype=torch.bool, device=embedding.device)
    same = (labels[:, None] == labels[None, :]) & ~eye
    alignment = distances[same].mean() if same.any() else distances.new_zeros(())
    off = ~eye
    uniformity = torch.log(torch.exp(-2 * distances[off]).mean() + 1e-8)
    return alignment + uniformity


def map_targets(region: torch.Tensor, seam: torch.Tensor, size) -> torch.Tensor:
    """The masks at the map's grid: the share of each cell that was blended in, and the strongest seam in it."""
    return torch.cat([F.adaptive_avg_pool2d(region, size), F.adaptive_max_pool2d(seam, size)], 1)


def losses(config: Config, spec: Model, model: Classifier, images, labels, region, seam,
           teacher: Classifier | None) -> dict[str, torch.Tensor]:
    """Every term of the training objective, by name (their weighted sum is the loss)."""
    normalised = model.prepare(images)
    logits, embedding, reconstruction, manipulation_map = model.forward_outputs(normalised)
    terms = {"decision": F.cross_entropy(logits, labels)}
    if spec.metric > 0:
        terms["hypersphere"] = spec.metric * hypersphere_terms(embedding, labels)
    if reconstruction is not None and bool((labels == 0).any()):
        # Genuine faces only (RECCE's idea): the decoder learns what a real face looks like, so the shared encoder
        # must hold what a forgery's reconstruction would lack.
        genuine = labels == 0
        terms["reconstruction"] = spec.reconstruction * F.l1_loss(reconstruction[genuine], normalised[genuine])
    if manipulation_map is not None:
        target = map_targets(region, seam, manipulation_map.shape[-2:])
        terms["map"] = spec.map * F.binary_cross_entropy_with_logits(manipulation_map, target)
    if teacher is not None:
        with torch.no_grad():
            teacher_logits, teacher_embedding, _, teacher_map = teacher.forward_outputs(teacher.prepare(images))
        t = config.distill.temperature
        soft = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean")
        terms["soft"] = config.distill.soft * t * t * soft
        terms["embedding"] = config.distill.embedding * (1 - (embedding * teacher_embedding).sum(1)).mean()
        if manipulation_map is not None and teacher_map is not None and config.distill.map > 0:
            teacher_map = F.interpolate(teacher_map, size=manipulation_map.shape[-2:], mode="bilinear",
                                        align_corners=False)
            terms["map_distill"] = config.distill.map * F.mse_loss(manipulation_map.sigmoid(), teacher_map.sigmoid())
    return terms


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's partner is the positive, every other view in the batch a negative."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    count = len(a)
    partners = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(z.device)
    return F.cross_entropy(similarity, partners)
