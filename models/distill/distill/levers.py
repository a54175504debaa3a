"""The levers step: does a change to the student help? Each lever (config `[[levers]]`) is the student's recipe
with a few keys changed (another backbone or depth, the reconstruction branch, self-supervised pretraining, a
learning rate); each is trained directly on every family at one budget (`levers_train`), beside the unchanged
recipe ("baseline"), and compared on the VALIDATION people only, per family, with its classifier latency in the
runtime. The test people are never looked at here: a lever is chosen on validation, and only the shipped
recipe is then measured on the test set (evaluate, lofo, sequences)."""

from __future__ import annotations

import dataclasses
import json
import logging

from . import export, metrics, train
from .config import Config, Model
from .sources import sha256_of

logger = logging.getLogger(__name__)


def lever_spec(config: Config, lever: dict) -> tuple[Model, train.Train]:
    """The student's Model and schedule with the lever's keys applied; a key of the wrong type is refused."""
    spec = config.student
    changes = {key: value for key, value in lever.items() if key not in ("name", "learning_rate")}
    for key, value in changes.items():
        expected = type(getattr(spec, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            changes[key] = value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"lever {lever['name']}: {key} must be {expected.__name__}; got {value!r}")
    schedule = config.levers_train or config.lofo_train or config.student_train
    if "learning_rate" in lever:
        rate = lever["learning_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ValueError(f"lever {lever['name']}: learning_rate must be a positive number; got {rate!r}")
        schedule = dataclasses.replace(schedule, learning_rate=float(rate))
    return dataclasses.replace(spec, **changes), schedule


def validation_by_family(config: Config) -> dict:
    """Each trained family's validation set (the validation people's genuine faces and that family's fixed
    forgeries of them), made once for every lever to be judged on."""
    return {family: train.validation_set(config, [family]) for family in config.data.families}


def family_aucs(model, sets: dict) -> dict[str, float | None]:
    """AUC on each family's validation set; None where the family cannot be made of the validation people (a
    face swap needs two of them)."""
    results = {}
    for family, (images, labels) in sets.items():
        both = len(set(labels.tolist())) == 2
        results[family] = metrics.auc(train.probabilities(model, images), labels) if both else None
    return results


def levers(config: Config) -> dict:
    """Every lever in turn; levers.json is rewritten after each, and a lever already measured with the same
    changes, schedule and faces (a rerun after an interruption) is kept rather than trained again."""
    path = config.run_dir / "levers.json"
    faces_digest = sha256_of(config.run_dir / "faces.csv")
    previous = {}
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("faces_sha256") == faces_digest and earlier.get("student") == dataclasses.asdict(config.student):
            previous = {row["lever"]: row for row in earlier.get("rows", [])}
    rows = []
    results = {"crop_size": config.data.crop_size, "student": dataclasses.asdict(config.student),
               "faces_sha256": faces_digest, "rows": rows}
    sets = None
    for lever in [{"name": "baseline"}, *config.levers]:
        spec, schedule = lever_spec(config, lever)
        changes = {k: v for k, v in lever.items() if k != "name"}
        kept = previous.get(lever["name"])
        if kept is not None and kept["changes"] == changes and kept["schedule"] == dataclasses.asdict(schedule):
            logger.info("lever %s: measured before with the same recipe, kept", lever["name"])
            rows.append(kept)
            continue
        name = f"lever_{lever['name']}"
        summary = train.fit(config, spec, schedule, name)
        model = train.load(config, spec, name)
        sets = sets if sets is not None else validation_by_family(config)
        row = {"lever": lever["name"], "changes": changes, "schedule": dataclasses.asdict(schedule),
               "best_validation_auc": summary["best_validation_auc"], "best_epoch": summary["best_epoch"],
               "validation_by_family": family_aucs(model, sets), "parameters": summary["parameters"],
               "steps": schedule.epochs * schedule.steps_per_epoch, "seconds": summary["seconds"]}
        if "ssl" in summary:
            row["ssl"] = summary["ssl"]
        try:
            row["latency_ms"] = export.latency_ms(model, config.data.crop_size, model.backbone.mean,
                                                  model.backbone.std)
        except RuntimeError as error:  # recorded, never hidden: the table says why there is no figure
            row["latency_error"] = str(error)[-500:]
            logger.warning("levers: no latency figure for %s: %s", lever["name"], error)
        rows.append(row)
        path.write_text(json.dumps(results, indent=2))
        logger.info("lever %s: validation AUC %.4f %s latency %s", lever["name"], row["best_validation_auc"],
                    json.dumps(row["validation_by_family"]), row.get("latency_ms"))
    path.write_text(json.dumps(results, indent=2))
    return results
