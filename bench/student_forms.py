"""Writes ONNX forms of the student's architecture, with random weights, for timing in the runtime's plan.

    models/distill/.venv/bin/python bench/student_forms.py OUT_DIR [NAME=blocks:B[,fused:I+J...]]...
    cargo run --release --features infer-bench --example infer_variants -- --rounds 11 --runs 60 \\
        --form deepgate_student=OUT_DIR/NAME.onnx ...

An experiment for issue 15 point 3 (BENCHMARKS.md "Student forms for the runtime's plan"): which architecture of
the student runs fastest in tract as the runtime plans it, before any is trained. Inference time does not depend
on the weights' values, so each form is the pipeline's own classifier (distill.backbones: MobileNetV2 cut after
B inverted-residual blocks, the blocks named by `fused` rebuilt as fused blocks, the map head, the cosine head)
with random weights and randomised batch-norm statistics, exported as the pipeline exports the student
(distill.export.write_onnx: TorchScript ONNX, opset 17, input 1×3×112×112, outputs `logits` and `map`). With no
form named, the default set: the shipped recipe (10 blocks) and the forms the profile suggested. Needs the
training pipeline's environment (torch, onnx): models/distill/.venv.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "distill"))
from distill.backbones import Classifier, MobileNetV2  # noqa: E402
from distill.export import write_onnx  # noqa: E402

DEFAULT = ["shipped=blocks:10", "blocks_9=blocks:9", "blocks_8=blocks:8", "fused_2=blocks:10,fused:2",
           "fused_2_4=blocks:10,fused:2+4", "fused_2_blocks_9=blocks:9,fused:2", "fused_2_blocks_8=blocks:8,fused:2",
           "fused_1_to_4=blocks:10,fused:1+2+3+4"]


def parse(text: str) -> tuple[str, int, list[int]]:
    """NAME=blocks:B[,fused:I+J...] → (name, blocks, fused blocks); anything else is refused."""
    name, _, spec = text.partition("=")
    if not name.isidentifier() or not spec:
        raise SystemExit(f"a form is NAME=blocks:B[,fused:I+J...]; got {text!r}")
    blocks, fused = None, []
    for part in spec.split(","):
        key, _, value = part.partition(":")
        try:
            if key == "blocks":
                blocks = int(value)
            elif key == "fused":
                fused = [int(index) for index in value.split("+")]
            else:
                raise ValueError(key)
        except ValueError:
            raise SystemExit(f"{text!r}: {part!r} is not blocks:B or fused:I+J") from None
    if blocks is None:
        raise SystemExit(f"{text!r}: blocks:B is required")
    return name, blocks, fused


def form(blocks: int, fused: list[int], seed: int) -> Classifier:
    torch.manual_seed(seed)
    backbone = MobileNetV2(blocks)
    backbone.fuse(fused)
    model = Classifier(backbone, embedding=128, manipulation_map=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("forms", nargs="*", default=DEFAULT)
    parser.add_argument("--size", type=int, default=112, help="the crop's side (the manifest's input)")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    for text in arguments.forms:
        name, blocks, fused = parse(text)
        model = form(blocks, fused, seed=0)
        path = arguments.out / f"{name}.onnx"
        write_onnx(model, arguments.size, path)
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{path}: {blocks} blocks, fused {fused or 'none'}, {parameters / 1e6:.3f} M parameters")


if __name__ == "__main__":
    main()
