import re
import tempfile
import tomllib
import unittest
from pathlib import Path

from distill import runtime

SHIPPED = runtime.MODELS / "manifest.toml"


def shipped_block() -> str:
    """The generated classifier entry of models/manifest.toml, between its BEGIN and END comments."""
    text = SHIPPED.read_text()
    return re.search(re.escape(runtime.BEGIN) + r"\n(.*?)" + re.escape(runtime.END), text, re.S).group(1)


def entry_like(model: dict, provenance: str | None = None) -> str:
    """`manifest_entry` called with the values of a parsed entry."""
    outputs = {output["name"]: output for output in model["outputs"]}
    return runtime.manifest_entry(
        model["id"], Path("anywhere") / model["file"], model["sha256"], model["bytes"], model["input"]["shape"][2],
        model["input"]["mean"], model["input"]["std"], provenance or model["provenance"], model["licence"],
        model.get("licence_file", ""), outputs["map"]["shape"] if "map" in outputs else None)


class Manifest(unittest.TestCase):
    def test_the_entry_is_written_as_the_shipped_manifest_holds_it(self):
        (model,) = tomllib.loads(shipped_block())["model"]
        self.assertEqual(entry_like(model), shipped_block())

    def test_the_entry_parses_back_to_its_values_whatever_the_strings_hold(self):
        (model,) = tomllib.loads(shipped_block())["model"]
        awkward = 'config "odd" \\ name\nwith a newline; see models/CARD.md'
        (parsed,) = tomllib.loads(entry_like(model, awkward))["model"]
        self.assertEqual(parsed["provenance"], awkward)
        self.assertEqual({key: value for key, value in parsed.items() if key != "provenance"},
                         {key: value for key, value in model.items() if key != "provenance"})

    def test_without_a_map_there_is_no_map_output(self):
        entry = runtime.manifest_entry("candidate", Path("candidate.onnx"), "0" * 64, 10, 96, [0.5] * 3, [0.25] * 3,
                                       "latency probe")
        (model,) = tomllib.loads(entry)["model"]
        self.assertEqual([output["name"] for output in model["outputs"]], ["logits"])
        self.assertNotIn("map_output", model["classifier"])
        self.assertNotIn("licence_file", model)
        self.assertEqual(model["input"]["shape"], [1, 3, 96, 96])

    def test_writing_replaces_only_the_generated_block(self):
        (model,) = tomllib.loads(shipped_block())["model"]
        entry = entry_like(model, "another run")
        with tempfile.TemporaryDirectory() as directory:
            written = Path(directory) / "manifest.toml"
            runtime.write_manifest(written, entry, base=SHIPPED)
            before, after = SHIPPED.read_text(), written.read_text()
            self.assertEqual(after, before.replace(shipped_block(), entry))
            self.assertNotEqual(after, before)
            ids = [entry["id"] for entry in tomllib.loads(after)["model"]]
            self.assertEqual(ids.count(model["id"]), 1, ids)


if __name__ == "__main__":
    unittest.main()
