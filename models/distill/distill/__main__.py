"""`python -m distill <step> --config configs/<run>.toml` (or `cargo xtask distill <step> <config>`).

Steps, each reproducible from its config and seed, each writing into runs/<name>/:
  faces         real photos → runtime crops → identity split
  mesh          MediaPipe's 468-point face mesh on every face (per-face masks for the forgeries)
  testset       held-out test photos: genuine, and every forgery family pasted back into them
  separability  frozen-feature linear probe and Fisher ratio per candidate backbone
  teacher       the teacher, trained on forgeries (with their masks) of the training identities
  student       the student, distilled from the teacher
  export        ONNX + manifest entry, checked in the runtime against PyTorch
  evaluate      metrics per family and compression, in Python and through `deepgate eval`
  sequences     per-person decisions of `deepgate replay` on Y4M sequences of held-out people
  lofo          leave-one-family-out: a student trained without each family, tested on it
  levers        variants of the student (backbone, depth, reconstruction, self-supervised pretraining, learning
                rate) at one budget, compared on the validation people with their runtime latency
  all           every step in order
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from . import config as configuration
from . import evaluate, faces, logs, train

logger = logging.getLogger("distill")

STEPS = ["faces", "mesh", "testset", "separability", "teacher", "student", "export", "evaluate", "sequences",
         "lofo", "levers"]


def run_step(step: str, config: configuration.Config) -> dict | list:
    if step == "faces":
        return faces.prepare(config)
    if step == "mesh":
        from . import mesh

        return mesh.mesh_for_faces(config)
    if step == "testset":
        return faces.make_test_set(config)
    if step == "sequences":
        from . import sequences

        return sequences.evaluate_sequences(config)
    if step == "lofo":
        return evaluate.leave_one_family_out(config)
    if step == "levers":
        from . import levers

        return levers.levers(config)
    if step == "separability":
        return train.separability(config)
    if step == "teacher":
        return train.fit(config, config.teacher, config.teacher_train, "teacher")
    if step == "student":
        teacher = train.load(config, config.teacher, "teacher")
        return train.fit(config, config.student, config.student_train, "student", teacher=teacher)
    if step == "export":
        return evaluate.export_student(config)
    if step == "evaluate":
        results = evaluate.evaluate(config)
        if not evaluate.agreement_ok(results):
            raise SystemExit(f"Python and runtime metrics disagree by {results['max_auc_difference']:.4f} AUC")
        return results
    raise ValueError(step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=[*STEPS, "all"])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads, overriding the config's (e.g. 1 each for two steps run side by side)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING or ERROR")
    arguments = parser.parse_args(argv)
    logs.configure(arguments.log_level)
    config = configuration.load(arguments.config)
    if arguments.threads or config.threads:
        torch.set_num_threads(arguments.threads or config.threads)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(arguments.config, config.run_dir / "config.toml")  # the recorded config of this run
    for step in STEPS if arguments.step == "all" else [arguments.step]:
        logger.info("== %s (%s)", step, config.name)
        result = run_step(step, config)
        summary = result if isinstance(result, list) else {k: v for k, v in result.items() if k != "history"}
        logger.info("%s done: %s", step, json.dumps(summary, indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
