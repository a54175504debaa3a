//! `deepgate explain` as an operator runs it: the PNG's shape, byte-identical output on a second run, finite
//! occlusion heat on the shipped classifier, the predicted manipulation map of the shipped classifier and of a
//! stand-in (tests/fixtures/models/make_map_model.py), and a clear error for an image without a face.

mod common;

use common::deepgate;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The one JSON line `explain` prints.
fn explained(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

/// A board whose classifier is the map stand-in: its model and manifest entry added to the test models.
fn map_board() -> PathBuf {
    let board = common::board(Some("map_stand_in"), &[], &[]);
    let models = board.parent().unwrap();
    let fixtures = common::fixture("models");
    std::fs::copy(fixtures.join("map_stand_in.onnx"), models.join("map_stand_in.onnx")).unwrap();
    let mut manifest = std::fs::read_to_string(models.join("manifest.toml")).unwrap();
    manifest.push_str(&std::fs::read_to_string(fixtures.join("map_classifier.toml")).unwrap());
    std::fs::write(models.join("manifest.toml"), manifest).unwrap();
    board
}

fn explain(board: Option<&Path>, image: &str, out: &Path, extra: &[&str]) -> Output {
    let mut arguments = vec!["explain", "--out", out.to_str().unwrap()];
    if let Some(board) = board {
        arguments.extend(["--board", board.to_str().unwrap()]);
    }
    arguments.extend(extra);
    arguments.push(image);
    deepgate(&arguments)
}

#[test]
fn occlusion_on_the_shipped_classifier_is_finite_deterministic_and_the_documented_shape_and_auto_shows_its_map(
) {
    let directory = common::temp_dir("explain-occlusion");
    let (first, second) = (directory.join("first.png"), directory.join("second.png"));
    let image = "tests/fixtures/faces/obama.jpg";
    let line = explained(&explain(None, image, &first, &["--method", "occlusion"]));
    assert_eq!(line["type"], "explain");
    assert_eq!(line["method"], "occlusion");
    assert_eq!(line["model"], "deepgate_student");
    let (low, high) = (line["map_min"].as_f64().unwrap(), line["map_max"].as_f64().unwrap());
    assert!(low.is_finite() && high.is_finite() && low <= high, "{line}");
    assert!(high - low > 0.0, "occluding different regions changes the score differently: {line}");
    assert!(line["heat_scale"].as_f64().unwrap() >= low.abs().max(high.abs()) - 1e-6, "{line}");

    // The same fake probability as the runtime gives this face.
    let replay = deepgate(&["replay", image]);
    let frame: Value =
        serde_json::from_str(String::from_utf8_lossy(&replay.stdout).lines().next().unwrap()).unwrap();
    let runtime = frame["faces"][0]["fake_probability"].as_f64().unwrap();
    assert!((line["fake_probability"].as_f64().unwrap() - runtime).abs() < 1e-4, "{line} vs {runtime}");

    // Two crops side by side, each the classifier's crop enlarged 4 times.
    let side = 4 * common::classifier_input_side("deepgate_student");
    let picture = image::open(&first).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), (2 * side, side));
    assert_eq!(line["output_size"], serde_json::json!([2 * side, side]));
    // The left half is the plain crop: 4x4 blocks of one colour.
    assert_eq!(picture.get_pixel(200, 200), picture.get_pixel(203, 203));

    let again = explained(&explain(None, image, &second, &["--method", "occlusion"]));
    assert_eq!(std::fs::read(&first).unwrap(), std::fs::read(&second).unwrap(), "byte-identical PNGs");
    assert_eq!(again["map_min"], line["map_min"]);
    assert_eq!(again["map_max"], line["map_max"]);

    // The shipped classifier predicts a map (manifest `map_output`): auto shows it, on its 14 x 14 grid.
    let shipped = explained(&explain(None, image, &directory.join("shipped.png"), &[]));
    assert_eq!(shipped["method"], "map", "{shipped}");
    assert_eq!(shipped["cells"], serde_json::json!([14, 14]));
    assert_eq!(shipped["fake_probability"], line["fake_probability"]);

    // A classifier without a map: auto takes occlusion, and asking for its map is refused.
    let board = common::board(Some("stand_in"), &[], &[]);
    let plain = explained(&explain(Some(&board), image, &directory.join("plain.png"), &[]));
    assert_eq!(plain["method"], "occlusion", "{plain}");
    let output = explain(Some(&board), image, &directory.join("never.png"), &["--method", "map"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("map_output"));
    assert!(!directory.join("never.png").exists());
}

#[test]
fn the_predicted_manipulation_map_is_drawn_where_the_model_has_one() {
    let directory = common::temp_dir("explain-map");
    let board = map_board();
    let image = "tests/fixtures/faces/astronaut.png";
    let out = directory.join("map.png");
    let line = explained(&explain(Some(&board), image, &out, &[]));
    assert_eq!(line["method"], "map", "auto takes the model's map");
    assert_eq!(line["cells"], serde_json::json!([7, 7]));
    assert!(line["map_meaning"].as_str().unwrap().contains("manipulation logits"), "{line}");
    let (low, high) = (line["map_min"].as_f64().unwrap(), line["map_max"].as_f64().unwrap());
    assert!(0.0 <= low && low < high && high <= 1.0, "probabilities that vary over the face: {line}");
    let picture = image::open(&out).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), (2 * 4 * 112, 4 * 112));

    // Each of the 7x7 cells covers 16x16 crop pixels (64x64 output pixels) with one opacity of red on the
    // right half: estimated from the green channel, which the red tint only darkens.
    let right = 4 * 112;
    let opacity = |x: u32, y: u32| {
        let plain = f64::from(picture.get_pixel(x, y).0[1]);
        let tinted = f64::from(picture.get_pixel(right + x, y).0[1]);
        (plain >= 60.0).then(|| 1.0 - tinted / plain)
    };
    let (mut checked, mut strongest) = (0, 0f64);
    for cell_y in 0..7u32 {
        for cell_x in 0..7u32 {
            let samples: Vec<f64> = [(4, 4), (60, 8), (30, 50), (8, 59)]
                .iter()
                .filter_map(|(dx, dy)| opacity(cell_x * 64 + dx, cell_y * 64 + dy))
                .collect();
            if samples.len() < 2 {
                continue;
            }
            checked += 1;
            assert!(samples.iter().all(|a| *a >= -0.01), "red only darkens green: {samples:?}");
            strongest = samples.iter().fold(strongest, |m, a| m.max(*a));
            let spread =
                samples.iter().fold(0f64, |m, a| m.max(*a)) - samples.iter().fold(1f64, |m, a| m.min(*a));
            assert!(spread < 0.03, "one opacity per cell ({cell_x}, {cell_y}): {samples:?}");
        }
    }
    assert!(checked >= 10, "enough cells with a green channel to check: {checked}");
    assert!(strongest > 0.1, "some cell is clearly tinted: {strongest}");

    let again = directory.join("again.png");
    explained(&explain(Some(&board), image, &again, &["--method", "map"]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap(), "byte-identical PNGs");

    // Occlusion on demand with the same model.
    let occluded =
        explained(&explain(Some(&board), image, &directory.join("o.png"), &["--method", "occlusion"]));
    assert_eq!(occluded["method"], "occlusion");
    assert_eq!(occluded["fake_probability"], line["fake_probability"]);
}

#[test]
fn an_image_without_a_face_is_a_clear_error() {
    let directory = common::temp_dir("explain-no-face");
    let out = directory.join("none.png");
    let output = explain(None, "tests/fixtures/scenes/coffee.png", &out, &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no face found") && stderr.contains("coffee.png"), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(!out.exists());

    let output = explain(None, "tests/fixtures/no/such.jpg", &out, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("such.jpg"));
}
