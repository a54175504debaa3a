"""Steps 6–7: export the student and evaluate it — in PyTorch and in the runtime, on the same test photos.

The held-out identities' test photos (see faces.py) are scored twice:
- Python: the runtime's own crops of each photo (main face, quality gates passed), scored by the PyTorch
  student;
- the runtime: `deepgate eval` over the same photos, with the exported ONNX student (tract).
Metrics are reported per manipulation family (SBI seen in training, face swap never seen) and per
compression (PNG, JPEG), and the two sets of numbers must agree.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from . import export, faces, metrics, runtime, train
from .sources import sha256_of as sha256_file
from .config import Config
from .train import load, probabilities

logger = logging.getLogger(__name__)


def export_student(config: Config) -> dict:
    """ONNX + manifest entry; into models/ for the shipped run, else into the run directory."""
    student = load(config, config.student, "student")
    size = config.data.crop_size
    run = config.run_dir
    onnx = (runtime.MODELS if config.export_to_models else run / "models") / f"{config.model_id}.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    export.write_onnx(student, size, onnx)
    mean, std = student.backbone.mean, student.backbone.std
    provenance = f"models/distill (config {config.path.name}, seed {config.seed}); see models/CARD.md"
    manipulation_map = export.map_shape(student, size)
    entry = runtime.manifest_entry(config.model_id, onnx, sha256_file(onnx), onnx.stat().st_size, size, mean, std,
                                   provenance, config.licence, config.licence_file, manipulation_map)
    if config.export_to_models:
        runtime.write_manifest(runtime.MODELS / "manifest.toml", entry)
        manifest = runtime.MODELS / "manifest.toml"
    else:
        manifest = export.staging_models(run, onnx, config.model_id, size, mean, std, provenance, manipulation_map)
    photos = sorted({face.photo for face in faces.load_faces(config) if face.split != "train"})
    check = export.check_in_runtime(student, manifest, config.model_id, size, photos, run / "export_check")
    # The frame threshold at which the student's errors balance on the VALIDATION people (genuine vs the trained
    # families): where the sequential test's neutral point belongs before a site calibrates. Never the test set.
    validation, validation_labels = train.validation_set(config)
    validation_scores = probabilities(student, validation)
    summary = {"onnx": str(onnx), "sha256": sha256_file(onnx), "bytes": onnx.stat().st_size, "manifest": str(manifest),
               "validation_eer_threshold": metrics.eer_threshold(validation_scores, validation_labels),
               "validation_auc": metrics.auc(validation_scores, validation_labels),
               "tract_vs_pytorch": check, "tolerance": 1e-3,
               "latency_ms": runtime.bench_classifier_ms(runtime.board_for(run, config.model_id, manifest))}
    (run / "export.json").write_text(json.dumps(summary, indent=2))
    if check["max_abs_difference"] > summary["tolerance"]:
        raise RuntimeError(f"tract and PyTorch disagree: {check}")
    return summary


def evaluate(config: Config) -> dict:
    run = config.run_dir
    exported = json.loads((run / "export.json").read_text())
    manifest = Path(exported["manifest"])
    student = load(config, config.student, "student")
    rows, scored, images = test_crops(config, fresh=True)
    python_scores = probabilities(student, images)
    # The teacher on the same crops, for comparison only (it does not ship).
    teacher_scores = probabilities(load(config, config.teacher, "teacher"), images)
    for row, score, teacher_score in zip(scored, python_scores, teacher_scores):
        row["python"], row["teacher"] = float(score), float(teacher_score)
    board = runtime.board_for(run, config.model_id, manifest)
    families = sorted({row["family"] for row in rows if row["label"] == "1"})
    results = {"model": config.model_id, "test_images": len(rows), "acquired": len(scored), "subsets": []}
    for family in families:
        for compression in ("png", "jpeg", "all"):
            subset = [row for row in rows if (row["family"] in ("genuine", family))
                      and (compression == "all" or row["compression"] == compression)]
            if len({row["label"] for row in subset}) < 2:
                continue
            name = f"{family}_{compression}"
            python_subset = [row for row in subset if "python" in row]
            if len({row["label"] for row in python_subset}) < 2:
                continue
            ours = metrics.report([row["python"] for row in python_subset], [int(row["label"]) for row in python_subset])
            labels = faces.write_labels(config, subset, f"labels_{name}.csv")
            theirs = runtime.eval_json(board, labels)
            teacher = metrics.report([row["teacher"] for row in python_subset], [int(row["label"]) for row in python_subset])
            results["subsets"].append({"subset": name, "python": ours, "runtime": theirs["metrics"], "teacher": teacher,
                                       "runtime_failure_to_acquire": theirs["failure_to_acquire"]})
            logger.info("%s: python AUC %.4f EER %.4f | runtime AUC %.4f EER %.4f | teacher AUC %.4f", name,
                        ours["auc"], ours["eer"], theirs["metrics"]["auc"], theirs["metrics"]["eer"], teacher["auc"])
    results["max_auc_difference"] = max(
        (abs(s["python"]["auc"] - s["runtime"]["auc"]) for s in results["subsets"]), default=0.0)
    (run / "evaluation.json").write_text(json.dumps(results, indent=2))
    return results


def test_crops(config: Config, fresh: bool = False):
    """The test photos' rows, the rows the runtime acquired a face in, and those faces' crops as one batch.

    The runtime's crops of every test photo; the main face is scored where the quality gates passed, which is
    exactly the frame `deepgate eval` uses (a still is one frame). `fresh` makes them anew (the evaluate step);
    otherwise the evaluate step's crops are reused."""
    run = config.run_dir
    rows = faces.test_rows(config)
    test_dir = run / "test"
    index = run / "eval_crops" / "index.csv"
    if fresh or not index.exists():
        shutil.rmtree(run / "eval_crops", ignore_errors=True)
    crops = runtime.crops([test_dir / row["file"] for row in rows], run / "eval_crops", size=config.data.crop_size) \
        if fresh or not index.exists() else runtime.read_index(run / "eval_crops")
    usable = {crop.source: crop for crop in crops if crop.main and not crop.quality_issue}
    scored = [row for row in rows if str(test_dir / row["file"]) in usable]
    images = export.read_crops([usable[str(test_dir / row["file"])].file for row in scored])
    return rows, scored, images


def family_aucs(rows: list[dict], scores) -> dict[str, dict]:
    """AUC (with counts) of each forged family against the genuine photos, PNG and JPEG together."""
    results = {}
    labelled = [(row, float(score)) for row, score in zip(rows, scores)]
    for family in sorted({row["family"] for row in rows if row["label"] == "1"}):
        subset = [(row, score) for row, score in labelled if row["family"] in ("genuine", family)]
        labels = [int(row["label"]) for row, _ in subset]
        if len(set(labels)) < 2:
            continue
        report = metrics.report([score for _, score in subset], labels)
        results[family] = {key: report[key] for key in ("genuine", "attacks", "auc", "eer", "bpcer_at_apcer_5")}
    return results


def leave_one_family_out(config: Config) -> dict:
    """For each training family: a student trained WITHOUT it (its validation without it too), tested on every
    family, so the held-out family's column says how the method generalises to a manipulation it never saw.
    Trained directly on the labels and masks (no teacher: the shipped teacher saw every family, and
    distilling from it would leak the held-out one). Beside it, the same recipe with every family, for the
    seen-family comparison."""
    run = config.run_dir
    rows, scored, images = test_crops(config)
    table = []
    held_out_families = config.data.families if config.lofo_families is None else config.lofo_families
    for held_out in [None, *held_out_families]:
        trained = [family for family in config.data.families if family != held_out]
        name = "lofo_all" if held_out is None else f"lofo_without_{held_out}"
        summary = train.fit(config, config.student, config.lofo_train or config.student_train, name, families=trained)
        scores = probabilities(load(config, config.student, name), images)
        table.append({"held_out": held_out, "trained_on": trained, "best_validation_auc": summary["best_validation_auc"],
                      "seconds": summary["seconds"], "test": family_aucs(scored, scores)})
        if held_out is None:  # the input size's cost in the runtime, for the resolution comparison
            student = load(config, config.student, name)
            try:
                table[-1]["latency_ms"] = export.latency_ms(student, config.data.crop_size, student.backbone.mean,
                                                            student.backbone.std)
            except RuntimeError as error:  # recorded, never hidden: the table says why there is no figure
                table[-1]["latency_error"] = str(error)[-500:]
                logger.warning("lofo: no latency figure: %s", error)
        logger.info("lofo %s: %s", name, json.dumps(table[-1]["test"]))
    results = {"student": config.student.backbone, "blocks": config.student.blocks,
               "crop_size": config.data.crop_size, "rows": table}
    (run / "lofo.json").write_text(json.dumps(results, indent=2))
    return results


def agreement_ok(results: dict, tolerance: float = 0.01) -> bool:
    return results["max_auc_difference"] <= tolerance and bool(results["subsets"])

