"""The runtime as the pipeline's tool: `deepgate crops` makes the training crops, `deepgate eval` and `deepgate
bench` check the exported student. Training therefore sees exactly what deployment sees, through the same code.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import tomlkit

logger = logging.getLogger(__name__)

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
        logger.warning("deepgate crops reported unreadable inputs:\n%s", result.stderr.strip()[-2000:])
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


LOGITS_MEANING = ("logits genuine, fake (cosine head plus the manipulation map's evidence where the model has one; "
                  "softmax gives the fake probability)")
MAP_MEANING = ("manipulation map over the aligned crop, logits per cell (sigmoid: probability): channel 0, the face "
               "under the cell was blended in (the manipulated region); channel 1, the cell holds the blend's seam "
               "(Face X-ray boundary)")


def _table(values: dict) -> tomlkit.items.Table:
    table = tomlkit.table()
    for key, value in values.items():
        table.add(key, value)
    return table


def manifest_entry(model_id: str, file: Path, sha256: str, size: int, input_size: int, mean, std,
                   provenance: str, licence: str = "Apache-2.0", licence_file: str = "",
                   manipulation_map: list[int] | None = None) -> str:
    """The manifest entry of an exported classifier, in the format `models/manifest.toml` documents, written by
    a TOML writer (tomlkit: quoting and escaping are its business); with `manipulation_map` (its output shape)
    the model's second output is its manipulation map. Normalisation constants keep 8 significant digits."""
    model = _table({"id": model_id, "role": "classifier", "file": file.name, "sha256": sha256, "bytes": int(size),
                    "licence": licence})
    if licence_file:
        model.add("licence_file", licence_file)
    model.add("provenance", provenance)
    model.add("input", _table({
        "name": "image", "shape": [1, 3, int(input_size), int(input_size)], "layout": "NCHW", "colour": "RGB",
        "mean": [float(f"{value:.8g}") for value in mean], "std": [float(f"{value:.8g}") for value in std]}))
    outputs = tomlkit.aot()
    outputs.append(_table({"name": "logits", "shape": [1, 2], "meaning": LOGITS_MEANING}))
    if manipulation_map is not None:
        outputs.append(_table({"name": "map", "shape": [int(v) for v in manipulation_map], "meaning": MAP_MEANING}))
    model.add("outputs", outputs)
    classifier = _table({"output": "softmax", "fake_index": 1})
    if manipulation_map is not None:
        classifier.add("map_output", "map")
    model.add("classifier", classifier)
    entries = tomlkit.aot()
    entries.append(model)
    document = tomlkit.document()
    document.add("model", entries)
    return tomlkit.dumps(document)


BEGIN = "# BEGIN generated by models/distill (export step): do not edit by hand"
END = "# END generated by models/distill"


def write_manifest(manifest: Path, entry: str, base: Path = MODELS / "manifest.toml") -> None:
    """Writes `manifest`: `base` with the generated classifier block (between the BEGIN and END comments, the
    rest of the file and its comments untouched) replaced by (or appended as) `entry`, one `[[model]]` as
    `manifest_entry` writes it. The result is parsed back before it is written: valid TOML, holding the entry."""
    text = base.read_text()
    block = f"{BEGIN}\n{entry}{END}\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    (model,) = tomlkit.parse(entry)["model"]
    written = [m for m in tomlkit.parse(text)["model"] if m["id"] == model["id"]]
    if written != [model]:
        raise RuntimeError(f"{manifest}: the manifest would not hold exactly the entry of {model['id']}")
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
