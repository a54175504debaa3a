//! `deepgate calibrate`: a site's own genuine captures (images, directories, Y4M videos or the board's camera)
//! through the runtime's own pipeline, and the `[decision] frame_threshold` that meets a target BPCER on them,
//! with the score distribution it rests on; optionally a histogram PNG and a copy of the board file with that
//! one key changed.

use anyhow::{bail, ensure, Context, Result};
use deepgate::capture::v4l2::{OpenError, V4l2Source};
use deepgate::capture::FrameSource;
use deepgate::capture::SourceSection;
use deepgate::config::BoardConfig;
use deepgate::decide::DecisionSettings;
use deepgate::eval::calibration::{self, Calibration, Distribution};
use deepgate::frame::Frame;
use deepgate::session::{play_input, play_source, Event, Played};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `deepgate calibrate` was asked to do besides its inputs.
pub struct Options {
    pub target_bpcer: f64,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub write: Option<PathBuf>,
    /// Read the board's V4L2 camera (also the default when no inputs are given and the board's source is one).
    pub camera: bool,
    /// Frames to take from the camera.
    pub frames: u64,
}

/// A camera that delivers no frame for this long ends the capture (with the frames it gave so far).
const CAMERA_SILENCE: Duration = Duration::from_secs(10);

/// What the pipeline saw, counted the way the decision counts it.
#[derive(Default)]
struct Collected {
    /// The fake probability of every usable main face: the frames the sequential test takes as evidence.
    scores: Vec<f64>,
    frames: u64,
    frames_without_face: u64,
    /// Main faces a quality gate turned away, by gate.
    rejected: BTreeMap<&'static str, u64>,
    /// Other faces in the frames (bystanders): classified by the runtime but never evidence.
    other_faces: u64,
    /// Person sessions that saw a face (one per still, one per stream and person).
    sessions: u64,
    failed_inputs: u64,
}

pub fn calibrate(board: &Path, inputs: &[PathBuf], options: &Options) -> Result<ExitCode> {
    let target = options.target_bpcer;
    ensure!(target > 0.0 && target <= 0.5, "--target-bpcer {target} must be in (0, 0.5]");
    ensure!(options.frames >= 1, "--frames must be at least 1");
    ensure!(!options.camera || inputs.is_empty(), "give either inputs or --camera, not both");
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    let (config, mut pipeline) = super::start(board)?;
    let Some(classifier) = &pipeline.models().classifier else {
        bail!("no classifier configured in {}: calibrate needs models.classifier", board.display());
    };
    let model = classifier.entry().id.clone();
    let mut collected = Collected::default();
    let mut emit = |event: Event| match event {
        Event::Frame { faces, .. } => {
            collected.frames += 1;
            let Some(main) = faces.iter().find(|face| face.main) else {
                collected.frames_without_face += 1;
                return;
            };
            collected.other_faces += faces.len() as u64 - 1;
            match (main.issue, main.fake_probability) {
                (Some(issue), _) => *collected.rejected.entry(issue.describe()).or_default() += 1,
                (None, Some(probability)) => collected.scores.push(f64::from(probability)),
                (None, None) => {}
            }
        }
        Event::Verdict { verdict, .. } => {
            if verdict.decision != deepgate::decide::Decision::NoFace {
                collected.sessions += 1;
            }
        }
        Event::Error { source, error } => {
            log::error!("{source}: {error:#}");
            collected.failed_inputs += 1;
        }
        Event::Camera { source, up } => {
            log::warn!("{source}: camera {}", if up { "back" } else { "lost" })
        }
        Event::GpuLost { error } => log::error!("{error:#}"),
    };
    let use_camera = options.camera || (inputs.is_empty() && matches!(config.source, SourceSection::V4l2(_)));
    let described_inputs: Vec<String>;
    if use_camera {
        let Some(settings) = config.source.v4l2().map(|section| section.settings()).transpose()? else {
            bail!("board config {}: --camera needs [source] kind = \"v4l2\"", board.display());
        };
        // As `deepgate capture`: at calibration time a camera that is absent or not the pinned one is an error.
        let mut camera = V4l2Source::open(settings, true).map_err(OpenError::into_error)?;
        let name = camera.describe().to_string();
        log::info!("calibrating on {} frames from {name}; Ctrl-C ends early", options.frames);
        let (mut taken, mut last_frame) = (0u64, Instant::now());
        let mut before_frame = |frame: Option<&Frame>| {
            if stop.load(Ordering::Relaxed) || taken >= options.frames {
                return false;
            }
            if frame.is_none() {
                return last_frame.elapsed() < CAMERA_SILENCE;
            }
            taken += 1;
            last_frame = Instant::now();
            true
        };
        play_source(&mut pipeline, &mut camera, name.clone(), &mut before_frame, &mut emit);
        // The session of the person in front of the camera when the frames ran out counts too.
        if pipeline.finish().is_some_and(|verdict| verdict.decision != deepgate::decide::Decision::NoFace) {
            collected.sessions += 1;
        }
        if taken < options.frames && !stop.load(Ordering::Relaxed) {
            log::warn!("{name}: {taken} of {} frames arrived (none for {CAMERA_SILENCE:?})", options.frames);
        }
        described_inputs = vec![name];
    } else {
        let paths: Vec<PathBuf> = if inputs.is_empty() {
            let SourceSection::Replay { paths, .. } = &config.source else {
                bail!("no inputs given and the board's source is not a replay");
            };
            paths.iter().map(|path| config.resolve(path)).collect()
        } else {
            inputs.to_vec()
        };
        for path in &paths {
            let played = play_input(&mut pipeline, path, &mut |_| !stop.load(Ordering::Relaxed), &mut emit);
            if played == Played::Stopped {
                break;
            }
        }
        described_inputs = paths.iter().map(|path| path.display().to_string()).collect();
    }

    let scores = std::mem::take(&mut collected.scores);
    let distribution = (!scores.is_empty()).then(|| calibration::distribution(&scores)).transpose()?;
    let result = calibration::calibrate(&scores, target);
    let current = f64::from(config.decision.frame_threshold);
    let mut warnings = Vec::new();
    if let Ok(found) = &result {
        warnings.extend(warnings_for(found, &collected));
    }
    let refused = result.as_ref().err().map(|error| format!("{error:#}"));
    if let (Some(plot), Some(distribution)) = (&options.plot, &distribution) {
        let threshold = result.as_ref().map_or(current, |found| found.frame_threshold);
        deepgate::eval::plot::write_histogram_png(&distribution.histogram, threshold, Some(current), plot)?;
    }
    let written = match (&options.write, &result) {
        (Some(path), Ok(found)) => {
            write_board_override(board, &config, path, found.frame_threshold)?;
            Some(path.clone())
        }
        _ => None,
    };
    let report = Report {
        board,
        model: &model,
        inputs: &described_inputs,
        collected: &collected,
        distribution: distribution.as_ref(),
        calibration: result.as_ref().ok(),
        current,
        current_flagged: calibration::flagged_at(&scores, current),
        decision: &config.decision,
        warnings: &warnings,
        refused: refused.as_deref(),
        plot: options.plot.as_deref().filter(|_| distribution.is_some()),
        written: written.as_deref(),
    };
    if options.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if let Some(refused) = refused {
        eprintln!("deepgate calibrate: {refused}");
        return Ok(ExitCode::from(1));
    }
    Ok(if collected.failed_inputs > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// What a careful reader of the result should be told.
fn warnings_for(found: &Calibration, collected: &Collected) -> Vec<String> {
    let mut warnings = Vec::new();
    let stable = 10 * calibration::minimum_samples(found.target_bpcer);
    if found.samples < stable {
        warnings.push(format!(
            "{} usable faces: fewer than {stable} (10/target), so the threshold rests on {} score(s) above it; \
             the true BPCER may be as high as {:.1} % (95 % upper bound)",
            found.samples,
            found.allowed,
            100.0 * found.bpcer_upper_95
        ));
    }
    if collected.sessions < 5 {
        warnings.push(format!(
            "{} person session(s): frames of one person are alike, so a site needs several genuine people \
             (README, \"How a site calibrates\")",
            collected.sessions
        ));
    }
    if found.clamped {
        let (low, high) = calibration::THRESHOLD_RANGE;
        warnings.push(format!(
            "the threshold the scores ask for is outside the range the board config accepts ({low} to {high}); \
             {} was used",
            found.frame_threshold
        ));
    }
    if found.flagged > found.allowed {
        warnings.push(format!(
            "even at {} the target is missed: {} of {} genuine faces are flagged; the classifier does not \
             separate this site's genuine faces (models/CARD.md)",
            found.frame_threshold, found.flagged, found.samples
        ));
    }
    warnings
}

/// Everything the command prints, as a table or as JSON.
struct Report<'a> {
    board: &'a Path,
    model: &'a str,
    inputs: &'a [String],
    collected: &'a Collected,
    distribution: Option<&'a Distribution>,
    calibration: Option<&'a Calibration>,
    current: f64,
    current_flagged: usize,
    decision: &'a DecisionSettings,
    warnings: &'a [String],
    refused: Option<&'a str>,
    plot: Option<&'a Path>,
    written: Option<&'a Path>,
}

impl Report<'_> {
    /// What the number means for the sequential decision (src/decide.rs), with this board's figures.
    fn meaning(&self) -> String {
        let (genuine_at, fake_at) = self.decision.thresholds();
        format!(
            "frame_threshold is the fake probability at which one usable frame is neutral evidence. The decision \
             (Wald's SPRT, src/decide.rs) adds evidence_weight x (logit(p) - logit(frame_threshold)), capped at \
             +-{cap} before weighting (weight {weight}), for each usable frame of the tracked person, and decides \
             genuine at or below {genuine_at:.2} and fake at or above {fake_at:.2} (from max_false_reject \
             {alpha} and max_false_accept {beta}). A genuine frame scoring at or above the threshold pushes \
             towards fake: the target BPCER is the share of this site's genuine frames allowed to do that (ties \
             count as flagged, as in `deepgate eval`). A person's verdict pools many frames, so the per-person \
             rates differ from the per-frame ones; check them with `deepgate eval` or `deepgate replay`.",
            cap = self.decision.max_frame_evidence,
            weight = self.decision.evidence_weight,
            alpha = self.decision.max_false_reject,
            beta = self.decision.max_false_accept,
        )
    }

    fn json(&self) -> serde_json::Value {
        let collected = self.collected;
        let samples = self.distribution.map_or(0, |distribution| distribution.count);
        serde_json::json!({
            "type": "calibration",
            "board": self.board.display().to_string(),
            "model": self.model,
            "inputs": self.inputs,
            "frames": collected.frames,
            "frames_without_face": collected.frames_without_face,
            "rejected_by_quality": collected.rejected,
            "other_faces": collected.other_faces,
            "sessions": collected.sessions,
            "failed_inputs": collected.failed_inputs,
            "usable_faces": samples,
            "target_bpcer": self.calibration.map(|found| found.target_bpcer),
            "frame_threshold": self.calibration.map(|found| found.frame_threshold),
            "calibration": self.calibration,
            "current_frame_threshold": self.current,
            "current_bpcer": (samples > 0).then(|| self.current_flagged as f64 / samples as f64),
            "distribution": self.distribution,
            "meaning": self.meaning(),
            "warnings": self.warnings,
            "refused": self.refused,
            "plot": self.plot.map(|path| path.display().to_string()),
            "written": self.written.map(|path| path.display().to_string()),
        })
    }

    fn text(&self) -> String {
        use std::fmt::Write;
        let collected = self.collected;
        let mut out = String::new();
        let _ = writeln!(out, "model {} on board {}", self.model, self.board.display());
        let _ = writeln!(
            out,
            "{} frames from {} input(s): {} without a face, {} main faces turned away by quality gates, {} \
             other faces ignored, {} person session(s), {} failed input(s)",
            collected.frames,
            self.inputs.len(),
            collected.frames_without_face,
            collected.rejected.values().sum::<u64>(),
            collected.other_faces,
            collected.sessions,
            collected.failed_inputs
        );
        for (gate, count) in &collected.rejected {
            let _ = writeln!(out, "  {count:>6}  {gate}");
        }
        if let Some(distribution) = self.distribution {
            let _ = writeln!(
                out,
                "\nfake probability of {} usable genuine faces: min {:.4}, mean {:.4}, max {:.4}",
                distribution.count, distribution.min, distribution.mean, distribution.max
            );
            let quantiles: Vec<String> = distribution
                .quantiles
                .iter()
                .map(|(level, value)| format!("q{:.0} {value:.4}", 100.0 * level))
                .collect();
            let _ = writeln!(out, "  {}", quantiles.join(", "));
            let fullest = distribution.histogram.iter().copied().max().unwrap_or(0).max(1);
            let width = 1.0 / distribution.histogram.len() as f64;
            for (index, count) in distribution.histogram.iter().enumerate() {
                let bar = "#".repeat(((count * 50).div_ceil(fullest)) as usize);
                let low = index as f64 * width;
                let _ = writeln!(out, "  {low:.2}-{:.2} {count:>7} {bar}", low + width);
            }
        }
        match (self.calibration, self.refused) {
            (Some(found), _) => {
                let _ = writeln!(
                    out,
                    "\nframe_threshold {:.4} for target BPCER {}: {} of {} genuine faces at or above it \
                     (BPCER {:.2} %, 95 % upper bound {:.2} %)",
                    found.frame_threshold,
                    found.target_bpcer,
                    found.flagged,
                    found.samples,
                    100.0 * found.bpcer,
                    100.0 * found.bpcer_upper_95
                );
                let _ = writeln!(
                    out,
                    "the board's current frame_threshold {:.4} flags {} of them ({:.2} %)",
                    self.current,
                    self.current_flagged,
                    100.0 * self.current_flagged as f64 / found.samples as f64
                );
            }
            (None, Some(refused)) => {
                let _ = writeln!(out, "\nno threshold: {refused}");
            }
            (None, None) => {}
        }
        let _ = writeln!(out, "\n{}", self.meaning());
        for warning in self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        if let Some(plot) = self.plot {
            let _ = writeln!(out, "histogram written to {}", plot.display());
        }
        if let Some(written) = self.written {
            let _ = writeln!(
                out,
                "board override written to {} (check it with `deepgate eval`)",
                written.display()
            );
        }
        out
    }
}

/// Writes a copy of the board file `board` to `out` with only `[decision] frame_threshold` set to `threshold`
/// (comments and layout kept), after checking that the copy loads with `BoardConfig::load` and differs from
/// `config` in that key alone. `out` must sit in the board file's directory, so that its relative paths and
/// `inherit` mean the same, and must not be the board file itself.
fn write_board_override(board: &Path, config: &BoardConfig, out: &Path, threshold: f64) -> Result<()> {
    let directory = |path: &Path| -> Result<PathBuf> {
        let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        parent.canonicalize().with_context(|| format!("--write: the directory of {}", path.display()))
    };
    ensure!(
        directory(board)? == directory(out)?,
        "--write {}: the copy must be in the board file's directory ({}) so that its relative paths and \
         `inherit` resolve the same",
        out.display(),
        directory(board)?.display()
    );
    let same_file = out.canonicalize().ok().zip(board.canonicalize().ok()).is_some_and(|(a, b)| a == b);
    ensure!(!same_file, "--write {}: that is the board file itself; write a copy", out.display());
    let text = std::fs::read_to_string(board).with_context(|| format!("reading {}", board.display()))?;
    let changed = set_frame_threshold(&text, threshold)
        .with_context(|| format!("setting [decision] frame_threshold in {}", board.display()))?;
    let file_name = out.file_name().context("--write needs a file name")?.to_string_lossy().into_owned();
    let staging = out.with_file_name(format!(".{file_name}.calibrate-{}", std::process::id()));
    std::fs::write(&staging, &changed).with_context(|| format!("writing {}", staging.display()))?;
    let checked = BoardConfig::load(&staging).and_then(|loaded| {
        let expected = DecisionSettings { frame_threshold: threshold as f32, ..config.decision };
        ensure!(
            loaded.decision == expected,
            "the written [decision] section is {:?}, expected {expected:?}",
            loaded.decision
        );
        Ok(())
    });
    if let Err(error) = checked {
        let _ = std::fs::remove_file(&staging);
        return Err(error.context(format!("the board override {} does not load as intended", out.display())));
    }
    std::fs::rename(&staging, out)
        .with_context(|| format!("moving {} to {}", staging.display(), out.display()))
}

/// `text` (a board config) with `[decision] frame_threshold` set to `threshold` (written with 4 decimals),
/// every other byte as it was: the value is replaced where it stands (its comment kept), added under the
/// `[decision]` header when that table lacks it (a variant that inherits it), or added as a `[decision]` table
/// at the end. Checked: the result parses to the same TOML as `text` but for that key.
pub fn set_frame_threshold(text: &str, threshold: f64) -> Result<String> {
    let value = format!("{threshold:.4}");
    let document = toml_edit::ImDocument::parse(text).context("parsing the board file")?;
    let line = format!("frame_threshold = {value}          # set by `deepgate calibrate`\n");
    let mut changed = text.to_string();
    match document.as_table().get("decision") {
        None => {
            if !changed.is_empty() && !changed.ends_with('\n') {
                changed.push('\n');
            }
            changed.push_str(&format!("\n[decision]\n{line}"));
        }
        Some(item) => {
            let table = item.as_table().context("`decision` is not a [decision] table")?;
            match table.get("frame_threshold") {
                Some(existing) => {
                    let span = existing.span().context("no position for decision.frame_threshold")?;
                    changed.replace_range(span, &value);
                }
                None => {
                    let header = table.span().filter(|_| !table.is_implicit() && !table.is_dotted());
                    let header =
                        header.context("`decision` has no [decision] header to add the key under")?;
                    // The table's span starts at its header, which is one line (the span runs on over the
                    // table's keys).
                    let after =
                        text[header.start..].find('\n').map_or(text.len(), |at| header.start + at + 1);
                    if after == text.len() && !text.ends_with('\n') {
                        changed.push('\n');
                        changed.push_str(&line);
                    } else {
                        changed.insert_str(after, &line);
                    }
                }
            }
        }
    }
    let mut expected: toml::Table = toml::from_str(text).context("parsing the board file")?;
    let number: f64 = value.parse().context("formatting the threshold")?;
    let decision = expected.entry("decision").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let decision = decision.as_table_mut().context("`decision` is not a table")?;
    decision.insert("frame_threshold".into(), toml::Value::Float(number));
    let found: toml::Table = toml::from_str(&changed).context("parsing the changed board file")?;
    ensure!(found == expected, "changing frame_threshold would change more than that key");
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::set_frame_threshold;

    #[test]
    fn only_the_threshold_changes_and_comments_stay() {
        let text =
            "# a board\n[decision]                 # the test\nframe_threshold = 0.5   # neutral point\n\
                    max_frames = 30\n";
        let changed = set_frame_threshold(text, 0.3127).expect("set");
        assert_eq!(
            changed,
            "# a board\n[decision]                 # the test\nframe_threshold = 0.3127   # neutral point\n\
             max_frames = 30\n"
        );
    }

    #[test]
    fn a_variant_without_the_key_or_the_table_gets_it_added() {
        let inherits = "inherit = \"host.toml\"\n[decision]  # overrides\nmax_frames = 10\n";
        let changed = set_frame_threshold(inherits, 0.25).expect("set");
        assert!(
            changed.starts_with(
                "inherit = \"host.toml\"\n[decision]  # overrides\nframe_threshold = 0.2500          # set by"
            ),
            "{changed}"
        );
        assert!(changed.ends_with("max_frames = 10\n"), "{changed}");
        let bare = "inherit = \"host.toml\"\n[board]\nid = \"x\"";
        let changed = set_frame_threshold(bare, 0.25).expect("set");
        assert!(
            changed.starts_with("inherit = \"host.toml\"\n[board]\nid = \"x\"\n\n[decision]\n"),
            "{changed}"
        );
        assert!(set_frame_threshold("decision = 3\n", 0.25).is_err(), "not a table");
        assert!(set_frame_threshold("[decision\n", 0.25).is_err(), "not TOML");
    }
}
