//! `cargo xtask bench-peer`: deepgate against its Python peer (`bench/peer.py`: OpenCV, onnxruntime and numpy,
//! pinned in `bench/requirements.txt`, installed into `bench/.venv` on first use) on exactly the same frames:
//! `deepgate bench --save-frames` writes the frames it synthesised and the peer reads them. The two run
//! alternately in one run (round 1 deepgate, round 1 peer, round 2 ...), one thread each, and every round the
//! peer's findings must agree with deepgate's (`agreement`) or the run fails. Prints one table per size and
//! format: stage, the medians of the rounds' medians, the ratio, the rounds' spread; `--json` the same as JSON.

use crate::ci::{root, target_dir};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const USAGE: &str = "usage: cargo xtask bench-peer [--rounds N (>= 3, default 3)] [--frames N (default 50)] \
[--sizes 640x480,1280x720] [--formats YUYV,NV12,MJPEG] [--board board/host.toml] [--json] | --check";

/// How far the peer may be from deepgate on the same frame. The two are not bit-exact by design: OpenCV's
/// colour conversion rounds to 8 bits where deepgate keeps floats, the letterbox's `resize` INTER_AREA is an
/// exact area average where deepgate averages 4×4 bilinear samples (the keypoints move by up to about 0.5 px in
/// the frame), JPEG decoders differ in their last bit, OpenCV's warp places samples to 1/32 px, and onnxruntime
/// and tract sum in other orders. Measured on the bench frames: box and keypoints within 0.6 % of the face,
/// scores within 0.004, fake probabilities within 0.03 end to end (the classifier moves about 0.03 for a
/// quarter-pixel shift of the keypoints) and within 0.005 on deepgate's own faces, sharpness within 4 % and 0.3 %.
#[derive(Clone, Copy)]
pub struct Bounds {
    /// Box corners and keypoints, as a fraction of the box's shorter side.
    pub geometry: f64,
    /// Detector score (after the sigmoid).
    pub score: f64,
    pub fake_probability: f64,
    /// Mean luminance of the quality crop's centre, in 8-bit levels.
    pub brightness: f64,
    /// Variance of the Laplacian of the quality crop, relative to deepgate's.
    pub sharpness: f64,
}

/// The peer's own detection, crops and classifier against deepgate's.
pub const END_TO_END: Bounds =
    Bounds { geometry: 0.02, score: 0.02, fake_probability: 0.05, brightness: 2.0, sharpness: 0.10 };
/// The peer's crops, quality measures and classifier on deepgate's faces (its keypoints): the same crop
/// definition and normalisation checked without the detectors' differences, so much tighter.
pub const ON_DEEPGATE_FACES: Bounds =
    Bounds { geometry: 0.0, score: 0.0, fake_probability: 0.015, brightness: 1.0, sharpness: 0.03 };

impl Bounds {
    fn to_json(self) -> Value {
        json!({
            "geometry_of_box_side": self.geometry, "score": self.score, "fake_probability": self.fake_probability,
            "brightness": self.brightness, "sharpness_relative": self.sharpness,
        })
    }
}

struct Options {
    rounds: usize,
    frames: usize,
    sizes: Vec<String>,
    formats: Vec<String>,
    board: PathBuf,
    json: bool,
    /// The CI check: one round of a few frames, agreement only, no table.
    check: bool,
}

fn parse(arguments: &[String]) -> Result<Options> {
    let mut options = Options {
        rounds: 3,
        frames: 50,
        sizes: vec!["640x480".into(), "1280x720".into()],
        formats: vec!["YUYV".into(), "NV12".into(), "MJPEG".into()],
        board: root().join("board/host.toml"),
        json: false,
        check: false,
    };
    let mut arguments = arguments.iter();
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().with_context(|| format!("{argument} needs a value\n{USAGE}"));
        let list = |text: &String| text.split(',').map(str::to_string).collect::<Vec<_>>();
        match argument.as_str() {
            "--rounds" => options.rounds = value()?.parse().context("--rounds")?,
            "--frames" => options.frames = value()?.parse().context("--frames")?,
            "--sizes" => options.sizes = list(value()?),
            "--formats" => options.formats = list(value()?),
            "--board" => options.board = root().join(value()?),
            "--json" => options.json = true,
            "--check" => options.check = true,
            _ => bail!("unknown argument `{argument}`\n{USAGE}"),
        }
    }
    if options.check {
        (options.rounds, options.frames) = (1, 2);
    } else {
        ensure!(
            options.rounds >= 3,
            "--rounds must be at least 3 (the spread of the rounds is part of the figure)"
        );
    }
    ensure!((1..=100_000).contains(&options.frames), "--frames must be 1 to 100000");
    Ok(options)
}

pub fn bench_peer(arguments: &[String]) -> Result<()> {
    let options = parse(arguments)?;
    // Timings want the release build; the check only needs an answer.
    let binary = match std::env::var_os("DEEPGATE") {
        Some(path) => PathBuf::from(path),
        None => crate::ci::deepgate_binary(!options.check)?,
    };
    run(&options, &binary)
}

/// For `cargo xtask ci`: both sizes and all three formats, one round of two frames with `binary`; fails unless
/// the peer runs and agrees.
pub fn check(binary: &Path) -> Result<()> {
    let mut options = parse(&["--check".into()])?;
    options.json = false;
    run(&options, binary)
}

/// Runs `command`, and parses its standard output as JSON; on failure shows its standard error.
fn json_of(command: &mut Command, what: &str) -> Result<Value> {
    let output = command.output().with_context(|| format!("{what}: could not start {command:?}"))?;
    if !output.status.success() {
        bail!("{what} failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!("{what}: its output is not JSON:\n{}", String::from_utf8_lossy(&output.stdout))
    })
}

/// One side's per-round stage medians for one size and format.
#[derive(Default)]
struct Samples {
    deepgate: BTreeMap<String, Vec<f64>>,
    peer: BTreeMap<String, Vec<f64>>,
    /// Stage names in deepgate's order, then any the peer alone has.
    order: Vec<String>,
    faces: u64,
    agreement: Option<Agreement>,
}

impl Samples {
    fn add(&mut self, deepgate: &Value, peer: &Value) -> Result<()> {
        for (side, result) in [(&mut self.deepgate, deepgate), (&mut self.peer, peer)] {
            for stage in result["stages"].as_array().context("no stages")? {
                let name = stage["stage"].as_str().context("stage without a name")?.to_string();
                let median = stage["median_ms"].as_f64().context("stage without a median")?;
                side.entry(name.clone()).or_default().push(median);
                if !self.order.contains(&name) {
                    self.order.push(name);
                }
            }
        }
        self.faces = deepgate["faces"].as_u64().unwrap_or(0);
        Ok(())
    }
}

/// The peer's python: `bench/.venv` with `bench/requirements.txt` (pinned), installed when missing or changed.
pub(crate) fn peer_python() -> Result<PathBuf> {
    crate::distill::python_environment(&root().join("bench"))
}

fn run(options: &Options, binary: &Path) -> Result<()> {
    let python = peer_python()?;
    let peer_script = root().join("bench/peer.py");
    let mut results: BTreeMap<(usize, usize), Samples> = BTreeMap::new();
    let mut last_found: BTreeMap<(usize, usize), (Value, Value)> = BTreeMap::new();
    let mut versions = Value::Null;
    let frames = options.frames.to_string();
    for round in 1..=options.rounds {
        for (size_index, size) in options.sizes.iter().enumerate() {
            let directory = target_dir().join("bench-peer").join(size);
            eprintln!("bench-peer: round {round}/{}, {size}: deepgate, then the peer", options.rounds);
            let ours = json_of(
                Command::new(binary)
                    .args(["bench", "--json", "--size", size, "--frames", &frames, "--formats"])
                    .arg(options.formats.join(","))
                    .arg("--board")
                    .arg(&options.board)
                    .arg("--save-frames")
                    .arg(&directory)
                    .current_dir(root()),
                "deepgate bench",
            )?;
            // The peer also judges deepgate's own faces (outside its timings): the crops and the classifier
            // checked apart from the detectors.
            let reference = directory.join("deepgate.json");
            std::fs::write(&reference, serde_json::to_string(&ours)?)
                .with_context(|| format!("writing {}", reference.display()))?;
            let theirs = json_of(
                Command::new(&python)
                    .arg(&peer_script)
                    .arg("--frames-dir")
                    .arg(&directory)
                    .arg("--reference")
                    .arg(&reference)
                    .args(["--frames", &frames])
                    .env("OMP_NUM_THREADS", "1")
                    .current_dir(root()),
                "the peer (bench/peer.py)",
            )?;
            versions = theirs["versions"].clone();
            let ours = ours.as_array().context("deepgate bench --json gave no list")?;
            let theirs = theirs["results"].as_array().context("the peer gave no results")?;
            ensure!(ours.len() == options.formats.len(), "deepgate benched {} formats", ours.len());
            ensure!(
                theirs.len() == ours.len(),
                "the peer ran {} frame files, deepgate {}",
                theirs.len(),
                ours.len()
            );
            for (format_index, (deepgate, peer)) in ours.iter().zip(theirs).enumerate() {
                let name = format!("round {round}, {} {size}", options.formats[format_index]);
                ensure!(deepgate["format"] == peer["format"], "{name}: the peer ran {}", peer["format"]);
                ensure!(
                    deepgate["faces"] == peer["faces"],
                    "{name}: deepgate found {} faces in all its frames, the peer {}",
                    deepgate["faces"],
                    peer["faces"]
                );
                let agreement =
                    agreement(&deepgate["faces_found"], &peer["faces_found"], &peer["on_deepgate_faces"])
                        .with_context(|| {
                            format!("{name}: the peer disagrees with deepgate on the same frame")
                        })?;
                // Both sides are deterministic: every round must find exactly what the first found.
                let found = (deepgate["faces_found"].clone(), peer["faces_found"].clone());
                let key = (size_index, format_index);
                if let Some(first) = last_found.get(&key) {
                    ensure!(first.0 == found.0, "{name}: deepgate found something else than in round 1");
                    ensure!(first.1 == found.1, "{name}: the peer found something else than in round 1");
                }
                last_found.insert(key, found);
                let samples = results.entry(key).or_default();
                samples.add(deepgate, peer)?;
                samples.agreement = Some(agreement);
            }
        }
    }
    let mut report = Vec::new();
    for ((size_index, format_index), samples) in &results {
        let (size, format) = (&options.sizes[*size_index], &options.formats[*format_index]);
        let agreement = samples.agreement.as_ref().context("no round ran")?;
        let stages: Vec<Value> = samples
            .order
            .iter()
            .map(|stage| {
                let ours = samples.deepgate.get(stage).map(|values| spread(values));
                let theirs = samples.peer.get(stage).map(|values| spread(values));
                let ratio = match (ours, theirs) {
                    (Some(ours), Some(theirs)) if theirs.0 > 0.0 => Some(ours.0 / theirs.0),
                    _ => None,
                };
                json!({
                    "stage": stage, "deepgate_ms": ours.map(|s| s.0), "peer_ms": theirs.map(|s| s.0),
                    "ratio": ratio, "deepgate_rounds_ms": samples.deepgate.get(stage),
                    "peer_rounds_ms": samples.peer.get(stage),
                })
            })
            .collect();
        if options.check {
            eprintln!("bench-peer: {format} {size}: the peer agrees ({})", agreement.describe());
        } else if !options.json {
            print_table(format, size, options, samples.faces, agreement, &stages);
        }
        report.push(json!({
            "format": format, "size": size, "faces_per_frame": samples.faces as f64 / options.frames as f64,
            "agreement": agreement.to_json(),
            "stages": stages,
        }));
    }
    if options.json {
        let output = json!({
            "rounds": options.rounds, "frames": options.frames, "board": options.board, "cpu": cpu_model(),
            "peer": versions,
            "tolerances": { "end_to_end": END_TO_END.to_json(), "on_deepgate_faces": ON_DEEPGATE_FACES.to_json() },
            "results": report,
        });
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else if !options.check {
        println!(
            "{}; peer: {versions}; one thread each side; medians of the rounds' per-stage medians",
            cpu_model().unwrap_or_else(|| "unknown CPU".into())
        );
    }
    Ok(())
}

/// The CPU's model name, for the record (figures are only comparable on the same machine).
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Median, minimum and maximum of the rounds' medians.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median =
        if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 };
    (median, sorted[0], sorted[sorted.len() - 1])
}

fn print_table(
    format: &str,
    size: &str,
    options: &Options,
    faces: u64,
    agreement: &Agreement,
    stages: &[Value],
) {
    let per_frame = faces as f64 / options.frames as f64;
    println!(
        "{format} {size}: {} rounds x {} frames each side, alternating; {per_frame} face(s) a frame; the peer \
         agrees ({})",
        options.rounds,
        options.frames,
        agreement.describe()
    );
    println!(
        "  {:<20} {:>11} {:>9} {:>7}   {:>13} {:>13}",
        "stage", "deepgate ms", "peer ms", "ratio", "deepgate range", "peer range"
    );
    let number = |value: &Value| value.as_f64().map_or("-".to_string(), |v| format!("{v:.3}"));
    let range = |value: &Value| match value.as_array() {
        Some(values) => {
            let values: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
            let (_, low, high) = spread(&values);
            format!("{low:.2}-{high:.2}")
        }
        None => "-".to_string(),
    };
    for stage in stages {
        println!(
            "  {:<20} {:>11} {:>9} {:>7}   {:>13} {:>13}",
            stage["stage"].as_str().unwrap_or("?"),
            number(&stage["deepgate_ms"]),
            number(&stage["peer_ms"]),
            stage["ratio"].as_f64().map_or("-".to_string(), |r| format!("{r:.2}x")),
            range(&stage["deepgate_rounds_ms"]),
            range(&stage["peer_rounds_ms"]),
        );
    }
    println!();
}

/// The largest differences between the peer's findings and deepgate's on one frame.
#[derive(Debug, Default, PartialEq)]
pub struct Agreement {
    pub faces: usize,
    /// End to end: box corners and keypoints in pixels and as a fraction of the box's shorter side, score,
    /// fake probability, brightness, relative sharpness.
    pub geometry_px: f64,
    pub geometry: f64,
    pub score: f64,
    pub judgement: Judgement,
    /// The peer's crops and classifier on deepgate's faces.
    pub on_deepgate_faces: Judgement,
}

/// Largest differences of what is judged on a face's crops.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Judgement {
    pub fake_probability: f64,
    pub brightness: f64,
    pub sharpness: f64,
}

impl Judgement {
    fn max(self, other: Judgement) -> Judgement {
        Judgement {
            fake_probability: self.fake_probability.max(other.fake_probability),
            brightness: self.brightness.max(other.brightness),
            sharpness: self.sharpness.max(other.sharpness),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "fake_probability": self.fake_probability, "brightness": self.brightness,
            "sharpness_relative": self.sharpness,
        })
    }
}

impl Agreement {
    fn describe(&self) -> String {
        format!(
            "{} face(s); largest differences: box and keypoints {:.2} px ({:.2} % of the face), score {:.4}, fake \
             probability {:.4} ({:.4} on deepgate's faces), sharpness {:.1} % ({:.1} %)",
            self.faces,
            self.geometry_px,
            100.0 * self.geometry,
            self.score,
            self.judgement.fake_probability,
            self.on_deepgate_faces.fake_probability,
            100.0 * self.judgement.sharpness,
            100.0 * self.on_deepgate_faces.sharpness,
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "faces": self.faces, "geometry_px": self.geometry_px, "geometry_of_box_side": self.geometry,
            "score": self.score, "end_to_end": self.judgement.to_json(),
            "on_deepgate_faces": self.on_deepgate_faces.to_json(),
        })
    }
}

fn number(value: &Value, what: &str) -> Result<f64> {
    value.as_f64().with_context(|| format!("{what} is not a number: {value}"))
}

fn numbers(value: &Value, what: &str) -> Result<Vec<f64>> {
    let values = value.as_array().with_context(|| format!("{what} is not a list: {value}"))?;
    let mut flat = Vec::new();
    for item in values {
        match item.as_array() {
            Some(inner) => {
                for value in inner {
                    flat.push(number(value, what)?);
                }
            }
            None => flat.push(number(item, what)?),
        }
    }
    Ok(flat)
}

/// Compares what two sides judged on a face's crops: the quality gate, brightness, sharpness, fake probability.
fn judgement(ours: &Value, theirs: &Value, bounds: &Bounds) -> Result<Judgement> {
    ensure!(
        ours["issue"] == theirs["issue"],
        "quality gate {} for deepgate, {} for the peer",
        ours["issue"],
        theirs["issue"]
    );
    ensure!(
        ours["quality"].is_object() && theirs["quality"].is_object(),
        "quality measured by one side only: {} and {}",
        ours["quality"],
        theirs["quality"]
    );
    let value = |face: &Value, key: &str| number(&face["quality"][key], key);
    let brightness = (value(ours, "brightness")? - value(theirs, "brightness")?).abs();
    ensure!(
        brightness <= bounds.brightness,
        "brightness {} and {} (at most {} apart)",
        ours["quality"]["brightness"],
        theirs["quality"]["brightness"],
        bounds.brightness
    );
    let sharpness = value(ours, "sharpness")?;
    let sharpness = (sharpness - value(theirs, "sharpness")?).abs() / sharpness.abs().max(1.0);
    ensure!(
        sharpness <= bounds.sharpness,
        "sharpness {} and {} (at most {} % apart)",
        ours["quality"]["sharpness"],
        theirs["quality"]["sharpness"],
        100.0 * bounds.sharpness
    );
    let fake_probability = match (ours["fake_probability"].as_f64(), theirs["fake_probability"].as_f64()) {
        (Some(x), Some(y)) => (x - y).abs(),
        _ => bail!("fake probability {} and {}", ours["fake_probability"], theirs["fake_probability"]),
    };
    ensure!(
        fake_probability <= bounds.fake_probability,
        "fake probability {} and {} (at most {} apart)",
        ours["fake_probability"],
        theirs["fake_probability"],
        bounds.fake_probability
    );
    Ok(Judgement { fake_probability, brightness, sharpness })
}

/// Checks one frame: `deepgate` and `peer` are the `faces_found` of either side's JSON, `on_deepgate_faces` the
/// peer's judgement of deepgate's faces. The same number of faces, at least one, in the same order; for each
/// the box, keypoints, score and judgement within `END_TO_END`, and the peer's judgement of deepgate's face
/// within `ON_DEEPGATE_FACES`. Returns the largest differences seen.
pub fn agreement(deepgate: &Value, peer: &Value, on_deepgate_faces: &Value) -> Result<Agreement> {
    let ours = deepgate.as_array().context("deepgate reported no faces list")?;
    let theirs = peer.as_array().context("the peer reported no faces list")?;
    let judged = on_deepgate_faces.as_array().context("the peer did not judge deepgate's faces")?;
    ensure!(!ours.is_empty(), "deepgate found no face: there is nothing to compare");
    ensure!(ours.len() == theirs.len(), "deepgate found {} face(s), the peer {}", ours.len(), theirs.len());
    ensure!(
        ours.len() == judged.len(),
        "the peer judged {} of deepgate's {} face(s)",
        judged.len(),
        ours.len()
    );
    let mut found = Agreement { faces: ours.len(), ..Agreement::default() };
    for (index, ((a, b), c)) in ours.iter().zip(theirs).zip(judged).enumerate() {
        let face = format!("face {index}");
        let (box_a, box_b) = (numbers(&a["box"], "box")?, numbers(&b["box"], "box")?);
        ensure!(box_a.len() == 4 && box_b.len() == 4, "{face}: a box has 4 values");
        let side = box_a[2].min(box_a[3]);
        ensure!(side > 0.0, "{face}: deepgate's box is empty");
        // Corners rather than sizes: [left, top, right, bottom].
        let corners = |b: &[f64]| [b[0], b[1], b[0] + b[2], b[1] + b[3]];
        let mut points_a = corners(&box_a).to_vec();
        let mut points_b = corners(&box_b).to_vec();
        points_a.extend(numbers(&a["keypoints"], "keypoints")?);
        points_b.extend(numbers(&b["keypoints"], "keypoints")?);
        ensure!(points_a.len() == points_b.len(), "{face}: different keypoint counts");
        let geometry_px = points_a.iter().zip(&points_b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        ensure!(
            geometry_px <= END_TO_END.geometry * side,
            "{face}: box or keypoints {geometry_px:.2} px apart, more than {:.0} % of the {side:.0} px face",
            100.0 * END_TO_END.geometry
        );
        let score = (number(&a["score"], "score")? - number(&b["score"], "score")?).abs();
        ensure!(score <= END_TO_END.score, "{face}: detector scores {} and {}", a["score"], b["score"]);
        let end_to_end = judgement(a, b, &END_TO_END).with_context(|| format!("{face}, end to end"))?;
        let on_ours = judgement(a, c, &ON_DEEPGATE_FACES)
            .with_context(|| format!("{face}, the peer's crops and classifier on deepgate's face"))?;
        found.geometry_px = found.geometry_px.max(geometry_px);
        found.geometry = found.geometry.max(geometry_px / side);
        found.score = found.score.max(score);
        found.judgement = found.judgement.max(end_to_end);
        found.on_deepgate_faces = found.on_deepgate_faces.max(on_ours);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(shift: f64, probability: f64, issue: Value) -> Value {
        json!({
            "box": [100.0 + shift, 80.0, 200.0, 220.0], "score": 0.93,
            "keypoints": [[150.0 + shift, 150.0], [250.0, 150.0], [200.0, 200.0], [200.0, 250.0], [110.0, 160.0],
                          [290.0, 160.0]],
            "quality": { "brightness": 120.0, "sharpness": 80.0 }, "issue": issue,
            "fake_probability": probability,
        })
    }

    #[test]
    fn the_same_faces_agree() {
        let ours = json!([face(0.0, 0.1, Value::Null)]);
        let found =
            agreement(&ours, &json!([face(1.0, 0.13, Value::Null)]), &json!([face(0.0, 0.105, Value::Null)]))
                .expect("agrees");
        assert_eq!(found.faces, 1);
        assert!((found.geometry_px - 1.0).abs() < 1e-9);
        assert!((found.judgement.fake_probability - 0.03).abs() < 1e-9);
        assert!((found.on_deepgate_faces.fake_probability - 0.005).abs() < 1e-9);
    }

    #[test]
    fn a_diverging_peer_is_refused() {
        let ours = json!([face(0.0, 0.1, Value::Null)]);
        let same = json!([face(0.0, 0.1, Value::Null)]);
        for (theirs, judged, reason) in [
            (json!([face(0.0, 0.3, Value::Null)]), &same, "fake probability"),
            // Within the end-to-end bound, beyond the bound on deepgate's own face.
            (same.clone(), &json!([face(0.0, 0.13, Value::Null)]), "on deepgate's face"),
            (json!([face(20.0, 0.1, Value::Null)]), &same, "px apart"),
            (json!([face(0.0, 0.1, json!("blurred"))]), &same, "quality gate"),
            // A NaN becomes null in JSON: a face the peer did not judge.
            (json!([face(0.0, f64::NAN, Value::Null)]), &same, "fake probability"),
            (json!([]), &same, "face(s)"),
            (json!([face(0.0, 0.1, Value::Null), face(300.0, 0.1, Value::Null)]), &same, "face(s)"),
            (same.clone(), &json!([]), "judged"),
        ] {
            let error = agreement(&ours, &theirs, judged).expect_err(reason);
            assert!(format!("{error:#}").contains(reason), "{error:#} should name {reason}");
        }
    }

    #[test]
    fn no_face_is_no_agreement() {
        assert!(agreement(&json!([]), &json!([]), &json!([])).is_err());
    }
}
