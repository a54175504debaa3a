//! The JSON lines `replay` prints: frames, verdicts and errors, in the documented shape.

use deepgate::decide::Verdict;
use deepgate::gate::{encode_line, round_to as round, Line, VerdictMessage};
use deepgate::pipeline::FaceResult;
use serde::Serialize;
use std::io::Write;

#[derive(Serialize)]
struct FaceLine {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    detector_score: f32,
    keypoints: [[f32; 2]; 6],
    fake_probability: Option<f32>,
    main: bool,
    quality_issue: Option<&'static str>,
}

#[derive(Serialize)]
struct FrameLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    source: &'a str,
    frame: u64,
    width: u32,
    height: u32,
    faces: Vec<FaceLine>,
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    source: &'a str,
    error: String,
}

pub fn frame_line(source: &str, frame: u64, width: u32, height: u32, faces: &[FaceResult]) -> String {
    let faces = faces
        .iter()
        .map(|result| FaceLine {
            bbox: result.face.bbox.map(|v| round(v, 0.01)),
            detector_score: round(result.face.score, 1e-4),
            keypoints: result.face.keypoints.map(|p| p.map(|v| round(v, 0.01))),
            fake_probability: result.fake_probability.map(|p| round(p, 1e-4)),
            main: result.main,
            quality_issue: result.issue.map(|issue| issue.describe()),
        })
        .collect();
    let line = FrameLine { kind: "frame", source, frame, width, height, faces };
    serde_json::to_string(&line)
        .unwrap_or_else(|error| format!("{{\"type\":\"error\",\"error\":\"{error}\"}}"))
}

pub fn error_line(source: &str, error: &anyhow::Error) -> String {
    let line = ErrorLine { kind: "error", source, error: format!("{error:#}") };
    serde_json::to_string(&line).unwrap_or_default()
}

pub fn verdict_line(source: &str, verdict: &Verdict) -> String {
    let mut line = Line::new();
    match encode_line(&VerdictMessage::new(source, verdict), &mut line) {
        Ok(()) => String::from_utf8_lossy(&line).into_owned(),
        Err(error) => error_line(source, &error),
    }
}

/// Prints one line to stdout; a closed pipe (`deepgate replay … | head`) ends quietly.
pub fn print(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").is_err() {
        std::process::exit(0);
    }
}
