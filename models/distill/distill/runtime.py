"""The runtime as the pipeline's tool: `deepgate crops` makes the training crops, `deepgate eval` and `deepgate
bench` check the exported student. Training therefore sees exactly what deployment sees, through the same code.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "models"
HOST_BOARD = ROOT / "board" / "host.toml"


@functools.cache
def binary() -> Path:
    """The release `deepgate` binary (`DEEPGATE` overrides), built with cargo once per process when it is
    missing or older than the sources."""
    override = os.environ.get("DEEPGATE")
    if override:
        return Path(override)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "deepgate"], cwd=ROOT, check=True)
    return ROOT / "target" / "release" / "deepgate"


def run(arguments: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Runs deepgate; a failure raises with its stderr."""
    result = subprocess.run([str(binary()), *arguments], cwd=ROOT, capture_output=True, text=True, **kwargs)
    if result.returncode not in (0,):
        raise RuntimeError(f"deepgate {' '.join(arguments[:2])} … failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@dataclass
class Crop:
    file: Path
    source: str
    face: int
    main: bool
    detector_score: float
    box: tuple[float, float, float, float]  # x, y, width, height in the input's pixels
    quality_issue: str
    fake_probability: float | None
    crop_to_photo: tuple[float, float, float, float, float, float]


def crops(inputs: list[Path], out: Path, size: int | None = None, board: Path | None = None) -> list[Crop]:
    """`deepgate crops` over `inputs`: every face found, aligned as the runtime aligns it. Inputs the runtime
    cannot read are reported by it and skipped (exit status 1 is accepted when some crops were written).
    `board` None: the host board without a classifier (crops only; no model needed but the detector)."""
    out.mkdir(parents=True, exist_ok=True)
    if board is None:
        board = board_for(out / "board", None, MODELS / "manifest.toml")
    arguments = ["crops", "--board", str(board), "--out", str(out)]
    if size is not None:
        arguments += ["--size", str(size)]
    result = subprocess.run([str(binary()), *arguments, *map(str, inputs)], cwd=ROOT, capture_output=True, text=True)
    index = out / "index.csv"
    if result.returncode not in (0, 1) or not index.exists():
        raise RuntimeError(f"deepgate crops failed ({result.returncode}):\n{result.stderr[-3000:]}")
    if result.returncode == 1:
        print(f"deepgate crops reported unreadable inputs:\n{result.stderr.strip()[-2000:]}")
    return read_index(out)


def read_index(out: Path) -> list[Crop]:
    """The crops `deepgate crops` wrote into `out`, from its index.csv."""
    rows = []
    with open(out / "index.csv", newline="") as file:
        for row in csv.DictReader(file):
            probability = row["fake_probability"]
            rows.append(Crop(
                file=out / row["crop"], source=row["source"], face=int(row["face"]), main=row["main"] == "true",
                detector_score=float(row["detector_score"]),
                box=tuple(float(row[k]) for k in ("x", "y", "width", "height")), quality_issue=row["quality_issue"],
                fake_probability=float(probability) if probability else None,
                crop_to_photo=tuple(float(row[f"map_{k}"]) for k in ("a", "b", "c", "d", "tx", "ty")),
            ))
    return rows


def manifest_entry(model_id: str, file: Path, sha256: str, size: int, input_size: int, mean, std,
                   provenance: str, licence: str = "Apache-2.0", licence_file: str = "",
                   manipulation_map: list[int] | None = None) -> str:
    """The manifest entry of an exported classifier, in the format `models/manifest.toml` documents; with
    `manipulation_map` (its output shape) the model's second output is its manipulation map."""
    map_output = "" if manipulation_map is None else f'''
[[model.outputs]]
name = "map"
shape = {list(manipulation_map)}
meaning = "manipulation map over the aligned crop, logits per cell (sigmoid: probability): channel 0, the face under the cell was blended in (the manipulated region); channel 1, the cell holds the blend's seam (Face X-ray boundary)"
'''
    map_key = "" if manipulation_map is None else 'map_output = "map"\n'
    return f'''[[model]]
id = "{model_id}"
role = "classifier"
file = "{file.name}"
sha256 = "{sha256}"
bytes = {size}
licence = "{licence}"
{f'licence_file = "{licence_file}"' + chr(10) if licence_file else ""}provenance = "{provenance}"

[model.input]
name = "image"
shape = [1, 3, {input_size}, {input_size}]
layout = "NCHW"
colour = "RGB"
mean = [{", ".join(f"{v:.8g}" for v in mean)}]
std = [{", ".join(f"{v:.8g}" for v in std)}]

[[model.outputs]]
name = "logits"
shape = [1, 2]
meaning = "logits genuine, fake (cosine head plus the manipulation map's evidence where the model has one; softmax gives the fake probability)"
{map_output}
[model.classifier]
output = "softmax"
fake_index = 1
{map_key}'''


BEGIN = "# BEGIN generated by models/distill (export step): do not edit by hand"
END = "# END generated by models/distill"


def write_manifest(manifest: Path, entry: str, base: Path = MODELS / "manifest.toml") -> None:
    """Writes `manifest`: `base` with the generated classifier block replaced by (or appended as) `entry`."""
    text = base.read_text()
    block = f"{BEGIN}\n{entry}{END}\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    manifest.write_text(text)


def board_for(directory: Path, classifier: str | None, manifest: Path, inputs: list[Path] | None = None) -> Path:
    """A board config for checks: board/host.toml with this manifest and classifier, paths made absolute."""
    text = HOST_BOARD.read_text()
    text = text.replace('"../models/manifest.toml"', json.dumps(str(manifest)))
    text = text.replace('"../models/alignment.toml"', json.dumps(str(MODELS / "alignment.toml")))
    text = re.sub(r"^classifier = .*\n", "", text, flags=re.M)
    if classifier is not None:
        text = text.replace('detector = "blazeface_front_128"', f'detector = "blazeface_front_128"\nclassifier = "{classifier}"')
    text = text.replace('"../tests/', json.dumps(str(ROOT / "tests"))[:-1] + "/")
    if inputs is not None:
        text = re.sub(r"^paths = \[.*?\]", "paths = " + json.dumps([str(p) for p in inputs]), text, flags=re.M | re.S)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "board.toml"
    path.write_text(text)
    return path


def eval_json(board: Path, labels: Path) -> dict:
    """`deepgate eval --json` on a labels CSV (file,label,...)."""
    result = subprocess.run([str(binary()), "eval", "--board", str(board), "--json", "--labels", str(labels)], cwd=ROOT,
                            capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"deepgate eval failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def bench_classifier_ms(board: Path, frames: int = 30) -> float:
    """The classifier stage's median time per face (ms) from `deepgate bench` on this machine's CPU."""
    result = run(["bench", "--board", str(board), "--json", "--formats", "RGB24", "--frames", str(frames)])
    results = json.loads(result.stdout)
    for stage in results[0]["stages"]:
        if stage["stage"] == "classifier":
            return float(stage["median_ms"])
    raise RuntimeError(f"deepgate bench reported no classifier stage: {result.stdout[:500]}")
