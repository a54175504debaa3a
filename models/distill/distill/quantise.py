"""int8 student: static quantisation with onnxruntime, calibrated on TRAINING crops, judged on held-out people.

`python -m distill.quantise --config configs/full.toml` writes, into the run directory:
  quantised/<model_id>_int8_qdq.onnx    QuantizeLinear/DequantizeLinear pairs around each weight and activation
  quantised/<model_id>_int8_qop.onnx    QOperator format, every op onnxruntime can quantise (QLinearConv and
                                         onnxruntime's own com.microsoft QLinearAdd, QGemm, ...)
  quantised/<model_id>_int8_qconv.onnx  QOperator format, convolutions only: standard ONNX QLinearConv between
                                         QuantizeLinear/DequantizeLinear, the form other runtimes (tract) can read
  quantised.json                         per-family AUC on the held-out test people, f32 against each int8 form

Calibration: the training identities' crops and, for each, one forgery of every trained family (forge.py), so
that the activation ranges cover what the model sees at work. Never the validation or test people.

The rule for shipping, fixed BEFORE any test figure was looked at: an int8 form may replace the f32 student only
if, on the held-out test people, no family's AUC (PNG and JPEG together) falls by more than `AUC_LOSS_BOUND`, and
only if tract runs it faster than the f32 student (measured by
`cargo run --release --features infer-bench --example infer_variants`).
The test crops are the evaluate step's (`evaluate.test_crops`), scored by onnxruntime for both forms: nothing
here is tuned on them (calibration method and format are fixed choices, not picked by their test scores).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from . import config as configuration
from . import evaluate, runtime, train

logger = logging.getLogger(__name__)

AUC_LOSS_BOUND = 0.005
CALIBRATION_SEED_OFFSET = 7


def normalised(images: np.ndarray, mean, std) -> np.ndarray:
    """[N, 3, H, W] in [0, 1] → the model's input, as the runtime normalises it (manifest mean/std)."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((images - mean) / std).astype(np.float32)


def calibration_images(config: configuration.Config) -> np.ndarray:
    """Training people's crops, each genuine and once forged per trained family, in [0, 1], NCHW."""
    faces = train.split_faces(config, "train")
    if not faces.crops:
        raise RuntimeError("no training faces to calibrate on: run the faces step first")
    rng = np.random.default_rng(config.seed + CALIBRATION_SEED_OFFSET)
    forged = [train.forgery(faces, index, family, rng).image for index in range(len(faces.crops))
              for family in faces.families_for(index, config.data.families)]
    return train.tensor(faces.crops + forged).numpy()


class Reader:
    """onnxruntime's calibration interface over a fixed batch, one image per call."""

    def __init__(self, name: str, images: np.ndarray):
        self.name, self.images, self.index = name, images, 0

    def get_next(self):
        if self.index >= len(self.images):
            return None
        self.index += 1
        return {self.name: self.images[self.index - 1:self.index]}

    def rewind(self):
        self.index = 0


FORMATS = ("qdq", "qop", "qconv")


def quantise(f32: Path, out: Path, images: np.ndarray, fmt: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(f32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader("image", images),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    op_types_to_quantize=["Conv"] if fmt == "qconv" else None,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    prepared.unlink()


def fake_probabilities(model: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(["logits"], {"image": images[i:i + 1]})[0] for i in range(len(images))])
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted[:, 1] / shifted.sum(axis=1)


def run(config: configuration.Config) -> dict:
    run_dir = config.run_dir
    student = train.load(config, config.student, "student")
    mean, std = student.backbone.mean, student.backbone.std
    f32 = runtime.MODELS / f"{config.model_id}.onnx" if config.export_to_models else \
        run_dir / "models" / f"{config.model_id}.onnx"
    out = run_dir / "quantised"
    out.mkdir(exist_ok=True)
    calibration = normalised(calibration_images(config), mean, std)
    logger.info("calibrating on %d training crops (genuine and forged)", len(calibration))
    _, scored, images = evaluate.test_crops(config)
    test = normalised(images.numpy(), mean, std)
    reference = fake_probabilities(f32, test)
    results = {"model": config.model_id, "calibration_crops": len(calibration), "test_crops": len(test),
               "auc_loss_bound": AUC_LOSS_BOUND, "f32": evaluate.family_aucs(scored, reference), "int8": {}}
    for fmt in FORMATS:
        path = out / f"{config.model_id}_int8_{fmt}.onnx"
        quantise(f32, path, calibration, fmt)
        scores = fake_probabilities(path, test)
        families = evaluate.family_aucs(scored, scores)
        loss = {family: results["f32"][family]["auc"] - report["auc"] for family, report in families.items()}
        results["int8"][fmt] = {"file": str(path), "bytes": path.stat().st_size, "families": families,
                                "auc_loss": loss, "max_abs_probability_difference":
                                    float(np.abs(scores - reference).max()),
                                "within_bound": max(loss.values()) <= AUC_LOSS_BOUND}
        logger.info("int8 %s: AUC loss per family %s", fmt, json.dumps(loss))
    (run_dir / "quantised.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.quantise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(json.dumps(run(configuration.load(args.config)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
