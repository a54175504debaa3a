"""Export: the student as ONNX with its manifest entry, checked in the runtime (tract) against PyTorch.

The exported graph takes the input the manifest describes (NCHW RGB, normalised by the runtime with the stated
mean/std) and returns two logits (genuine, fake) and, when the model has one, its manipulation map (the
manifest's `map_output`: region and seam logits per cell, what `deepgate explain` shows). The check runs `deepgate crops` with the new classifier over
real photos: the runtime's per-face probability (tract) must match PyTorch's on the very crop the runtime made.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import runtime
from .backbones import Classifier
from .faces import read_rgb
from .train import probabilities, tensor
from .sources import sha256_of as sha256_file


class Exported(nn.Module):
    """The student as deployed: normalised input → logits (and the manipulation map when the model has one);
    the runtime normalises; no resize inside."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, normalised):
        logits, _, _, manipulation_map = self.model.forward_outputs(normalised)
        return logits if manipulation_map is None else (logits, manipulation_map)


def map_shape(model: Classifier, input_size: int) -> list[int] | None:
    """The manipulation map's output shape for one crop, or None when the model has no map."""
    if model.map_head is None:
        return None
    with torch.no_grad():
        return list(model.eval().forward_outputs(torch.zeros(1, 3, input_size, input_size))[3].shape)


class NotShippable(ValueError):
    """The model may not be exported: its backbone's weights are for training-time use only."""


def refuse_training_only(model: Classifier) -> None:
    """Raises `NotShippable` when the backbone is marked `training_only` (face_teachers.py: weights whose licence
    does not allow shipping them, MobileFaceNet and HSE FaceRes), naming the backbone and the reason."""
    reason = getattr(model.backbone, "training_only", "")
    if reason:
        raise NotShippable(f"refusing to export a student built on {type(model.backbone).__name__}: its weights "
                           f"are a training-time teacher only, never shipped ({reason}). Choose another "
                           f"student.backbone (mobilenet_v2, efficientnet_lite0, dlib_resnet).")


def write_onnx(model: Classifier, input_size: int, path: Path) -> None:
    refuse_training_only(model)
    model = model.eval()
    example = torch.zeros(1, 3, input_size, input_size)
    names = ["logits"] if model.map_head is None else ["logits", "map"]
    # The TorchScript exporter: a static graph of plain ONNX ops, which tract loads without help.
    torch.onnx.export(Exported(model), (example,), str(path), input_names=["image"], output_names=names,
                      opset_version=17, dynamo=False)


def staging_models(directory: Path, onnx: Path, model_id: str, input_size: int, mean, std, provenance: str,
                   manipulation_map: list[int] | None = None) -> Path:
    """A models directory for checks: the shipped manifest and detector plus `onnx` under `model_id`.
    Returns the manifest path."""
    models = directory / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(runtime.MODELS / "blazeface_front_128.onnx", models)
    if onnx.parent != models:
        shutil.copy(onnx, models / onnx.name)
    entry = runtime.manifest_entry(model_id, onnx, sha256_file(onnx), onnx.stat().st_size, input_size, mean, std,
                                   provenance, manipulation_map=manipulation_map)
    manifest = models / "manifest.toml"
    runtime.write_manifest(manifest, entry)
    return manifest


def read_crops(crops: list[Path]) -> torch.Tensor:
    """The 8-bit crop files the runtime wrote, as one batch in [0, 1]."""
    return tensor([read_rgb(path) for path in crops])


def check_in_runtime(model: Classifier, manifest: Path, model_id: str, input_size: int, photos: list[Path],
                     directory: Path) -> dict:
    """Runs the runtime with the exported classifier over `photos` and compares, face by face, its probability
    with PyTorch's on the same crop. Returns counts and the largest difference."""
    board = runtime.board_for(directory, model_id, manifest)
    faces = runtime.crops(photos, directory / "check_crops", size=input_size, board=board)
    faces = [face for face in faces if face.fake_probability is not None]
    if not faces:
        raise RuntimeError("the runtime found no face to compare on")
    ours = probabilities(model, read_crops([face.file for face in faces]))
    theirs = np.array([face.fake_probability for face in faces])
    difference = np.abs(ours - theirs)
    return {"faces": len(faces), "max_abs_difference": float(difference.max()),
            "mean_abs_difference": float(difference.mean())}


def latency_ms(model: Classifier, input_size: int, mean, std) -> float:
    """The classifier stage's median per-face time in the runtime on this machine (tract, one thread)."""
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        onnx = directory / "candidate.onnx"
        write_onnx(model, input_size, onnx)
        manifest = staging_models(directory, onnx, "candidate", input_size, mean, std, "latency probe",
                                  map_shape(model, input_size))
        return runtime.bench_classifier_ms(runtime.board_for(directory, "candidate", manifest))
