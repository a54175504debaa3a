//! `deepgate calibrate` as a site runs it: the threshold it prints agrees with the scores `replay` shows for
//! the same genuine captures, too few faces are refused, the histogram PNG is drawn, and `--write` gives a board
//! file that differs from the original in that one value and loads.

mod common;

use common::deepgate;

use deepgate::config::BoardConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Two genuine people filmed (photos drifting across Y4M videos, as a camera delivers them) and the stills.
fn genuine_captures() -> Vec<PathBuf> {
    let directory = common::temp_dir("calibrate-videos");
    let (astronaut, obama) = (directory.join("astronaut.y4m"), directory.join("obama.y4m"));
    common::drifting_video(&astronaut, "faces/astronaut.png", 400, 480, 16, 4);
    common::drifting_video(&obama, "faces/obama2.jpg", 601, 900, 8, 3);
    vec![astronaut, obama, common::fixture("faces")]
}

/// The main faces' fake probabilities that `replay` reports without a quality issue (4 decimals).
fn usable_scores(board: &Path, inputs: &[PathBuf]) -> Vec<f64> {
    let mut arguments = vec!["replay".to_string(), "--board".into(), board.display().to_string()];
    arguments.extend(inputs.iter().map(|path| path.display().to_string()));
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let output = deepgate(&arguments);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut scores = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        for face in line["faces"].as_array().into_iter().flatten() {
            if face["main"] == true && face["quality_issue"].is_null() {
                scores.push(face["fake_probability"].as_f64().unwrap());
            }
        }
    }
    scores
}

fn calibrate(board: &Path, inputs: &[PathBuf], extra: &[&str]) -> Output {
    let mut arguments = vec!["calibrate".to_string(), "--board".into(), board.display().to_string()];
    arguments.extend(extra.iter().map(|argument| argument.to_string()));
    arguments.extend(inputs.iter().map(|path| path.display().to_string()));
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    deepgate(&arguments)
}

#[test]
fn the_threshold_meets_the_target_on_the_scores_the_runtime_gives_and_is_written_into_a_board_copy() {
    let board = common::board(None, &[], &[]);
    let inputs = genuine_captures();
    let directory = board.parent().unwrap().to_path_buf();
    let (plot, written) = (directory.join("hist.png"), directory.join("site.toml"));
    let output = calibrate(
        &board,
        &inputs,
        &[
            "--json",
            "--target-bpcer",
            "0.1",
            "--plot",
            plot.to_str().unwrap(),
            "--write",
            written.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["type"], "calibration");
    assert_eq!(result["model"], "deepgate_student");

    let scores = usable_scores(&board, &inputs);
    assert!(scores.len() >= 10, "enough usable faces for the test: {}", scores.len());
    assert_eq!(result["usable_faces"].as_u64(), Some(scores.len() as u64), "{result}");
    let threshold = result["frame_threshold"].as_f64().unwrap();
    let allowed = (0.1 * scores.len() as f64).floor() as usize;
    let at_or_above = |t: f64| scores.iter().filter(|&&score| score >= t).count();
    // replay rounds to 4 decimals: compare with a margin of half a step.
    assert!(at_or_above(threshold + 5e-5) <= allowed, "{threshold}: {scores:?}");
    assert!(
        at_or_above(threshold - 1e-4 - 5e-5) > allowed || threshold <= 0.01,
        "the lowest such threshold: {threshold} {scores:?}"
    );
    let calibration = &result["calibration"];
    assert!(calibration["bpcer"].as_f64().unwrap() <= 0.1);
    assert!(calibration["bpcer_upper_95"].as_f64().unwrap() >= calibration["bpcer"].as_f64().unwrap());
    let distribution = &result["distribution"];
    assert_eq!(distribution["count"].as_u64(), Some(scores.len() as u64));
    let histogram: u64 =
        distribution["histogram"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(histogram, scores.len() as u64);
    let low = scores.iter().copied().fold(1.0, f64::min);
    assert!((distribution["min"].as_f64().unwrap() - low).abs() <= 5e-5, "{distribution}");
    assert!(result["meaning"].as_str().unwrap().contains("neutral evidence"));
    assert_eq!(result["sessions"].as_u64(), Some(2 + 6), "two videos, six portraits with a face");

    let picture = image::open(&plot).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), (512, 512));

    // The written copy: one line differs, its comment kept, and it loads with the new value.
    let original = std::fs::read_to_string(&board).unwrap();
    let copy = std::fs::read_to_string(&written).unwrap();
    let differing: Vec<(&str, &str)> = original.lines().zip(copy.lines()).filter(|(a, b)| a != b).collect();
    assert_eq!(original.lines().count(), copy.lines().count());
    assert_eq!(differing.len(), 1, "{differing:?}");
    assert!(differing[0].0.starts_with("frame_threshold = 0.5 "), "{differing:?}");
    assert_eq!(differing[0].1, differing[0].0.replacen("0.5", &format!("{threshold:.4}"), 1), "comment kept");
    let loaded = BoardConfig::load(&written).unwrap();
    assert_eq!(loaded.decision.frame_threshold, threshold as f32);
    assert_eq!(result["written"].as_str(), Some(written.to_str().unwrap()));

    // The table for people: the same threshold, the histogram drawn in text.
    let output = calibrate(&board, &inputs, &["--target-bpcer", "0.1"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(text.contains(&format!("frame_threshold {threshold:.4} for target BPCER 0.1")), "{text}");
    assert!(text.contains("0.00-0.05") && text.contains('#'), "{text}");
}

#[test]
fn too_few_faces_for_the_target_are_refused_and_a_copy_elsewhere_is_not_written() {
    let board = common::board(None, &[], &[]);
    let photo = common::fixture("faces/obama.jpg");
    let output = calibrate(&board, std::slice::from_ref(&photo), &["--json"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 20") && stderr.contains("1 usable genuine face"), "{stderr}");
    let result: Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert!(result["frame_threshold"].is_null());
    assert_eq!(result["distribution"]["count"], 1, "what was seen is still shown: {result}");

    // A copy outside the board's directory would resolve its relative paths elsewhere: refused.
    let elsewhere = common::temp_dir("calibrate-elsewhere").join("site.toml");
    let two = [photo, common::fixture("faces/biden.jpg")];
    let output = calibrate(&board, &two, &["--target-bpcer", "0.5", "--write", elsewhere.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("board file's directory"));
    assert!(!elsewhere.exists());

    let output = calibrate(&board, &[], &["--target-bpcer", "0.7"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--target-bpcer"));
}

#[test]
fn without_inputs_the_board_source_is_used() {
    // board/host.toml replays the fixture faces and scenes: 5 usable portraits, so target 0.25 (4 needed).
    let output = deepgate(&["calibrate", "--json", "--target-bpcer", "0.25"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(result["inputs"].as_array().unwrap().len() == 2, "{result}");
    assert!(result["frames_without_face"].as_u64().unwrap() >= 3, "the scenes: {result}");
    assert!(result["frame_threshold"].as_f64().is_some(), "{result}");
    assert!(!result["warnings"].as_array().unwrap().is_empty(), "a handful of stills is worth a warning");
}
