//! `deepgate bench`: per-stage timings of the pipeline on camera frames synthesised in each pixel format at a
//! camera resolution, all formats measured in one run so that their figures compare. With `--save-frames DIR`
//! it also writes those frames and an index, so that the Python peer (`bench/peer.py`, run by
//! `cargo xtask bench-peer`) works on exactly the same bytes; `--json` reports what the last frame found, for
//! the peer's agreement check.
//!
//! `--redetect-every 1,3` measures detector schedules side by side: the settings alternate, block by block,
//! in one run, on a still picture (the best case: every held frame is kept) and on a moving one (the worst:
//! every held frame fails the motion test and is detected again). `--latency` plays the frames as a camera
//! at `--camera-fps` would deliver them (the newest frame when the pipeline is free, older ones dropped) and
//! measures capture-to-verdict latency, as well as the time from start (models loading) to the first verdict;
//! the resident memory after the run is always reported.

use anyhow::{bail, Context, Result};
use deepgate::capture::synthetic::camera_frame;
use deepgate::frame::{Frame, PixelFormat};
use deepgate::pipeline::FaceResult;
use deepgate::pipeline::Pipeline;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What `deepgate bench` was asked to do.
pub struct BenchOptions {
    pub board: PathBuf,
    pub image: PathBuf,
    pub size: String,
    pub formats: Vec<String>,
    pub frames: usize,
    pub json: bool,
    pub save_frames: Option<PathBuf>,
    /// Detector schedules to compare (`[detector] redetect_every` values); empty: the board's only.
    pub redetect_every: Vec<u32>,
    /// Measure capture-to-verdict latency with frames delivered at `camera_fps`.
    pub latency: bool,
    pub camera_fps: f64,
}

/// Blocks each schedule of `--redetect-every` gets, alternating.
const ROUNDS: usize = 3;

/// The index `--save-frames` writes beside the frames.
const FRAMES_INDEX: &str = "frames.json";

/// Parses "640x480".
pub(super) fn parse_size(text: &str) -> Result<(u32, u32)> {
    let (width, height) =
        text.split_once('x').with_context(|| format!("size `{text}` must be WIDTHxHEIGHT"))?;
    let size = (width.parse::<u32>()?, height.parse::<u32>()?);
    if !(16..=8192).contains(&size.0) || !(16..=8192).contains(&size.1) {
        bail!("size `{text}` must be between 16x16 and 8192x8192");
    }
    Ok(size)
}

pub(super) fn parse_format(text: &str) -> Result<PixelFormat> {
    PixelFormat::from_name(text).with_context(|| {
        format!("unknown pixel format `{text}` (RGB24, BGR24, GREY, YUYV, UYVY, NV12, MJPEG)")
    })
}

/// One face of a frame as `--json` reports it: box and keypoints in frame pixels, the quality measures, the fake
/// probability.
fn face_json(result: &FaceResult) -> serde_json::Value {
    json!({
        "box": result.face.bbox, "score": result.face.score, "keypoints": result.face.keypoints,
        "quality": result.quality, "issue": result.issue, "fake_probability": result.fake_probability,
        "main": result.main,
    })
}

/// Writes one synthesised frame into `directory` and returns its index entry.
fn save_frame(
    directory: &Path,
    format: PixelFormat,
    (width, height, stride): (u32, u32, usize),
    data: &[u8],
) -> Result<serde_json::Value> {
    let extension = if format == PixelFormat::Mjpeg { "jpg" } else { "raw" };
    let file = format!("{}_{width}x{height}.{extension}", format.name());
    let path = directory.join(&file);
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(json!({ "format": format.name(), "width": width, "height": height, "stride": stride, "file": file }))
}

pub fn bench(options: &BenchOptions) -> Result<ExitCode> {
    let (board, image, json) = (options.board.as_path(), options.image.as_path(), options.json);
    let (frames, save_frames) = (options.frames, options.save_frames.as_deref());
    let (width, height) = parse_size(&options.size)?;
    let formats: Vec<PixelFormat> = options.formats.iter().map(|f| parse_format(f)).collect::<Result<_>>()?;
    if !(1..=100_000).contains(&frames) {
        bail!("--frames must be 1 to 100000");
    }
    if let Some(bad) = options.redetect_every.iter().find(|&&every| !(1..=30).contains(&every)) {
        bail!("--redetect-every {bad}: each value must be 1 to 30");
    }
    if !(1.0..=1000.0).contains(&options.camera_fps) {
        bail!("--camera-fps must be 1 to 1000");
    }
    let photo = image::open(image).with_context(|| format!("reading {}", image.display()))?.to_rgb8();
    let photo = image::imageops::resize(&photo, width, height, image::imageops::FilterType::Triangle);
    // The same picture moved by 2 % of its width: what a held face's motion test sees when the person moves.
    let mut moved = photo.clone();
    for row in moved.chunks_mut(width as usize * 3) {
        row.rotate_right((width as usize / 50).max(1) * 3);
    }
    let started = Instant::now();
    let (config, mut pipeline) = super::start(board)?;
    let loaded = started.elapsed();
    let mut first_verdict = None;
    if let Some(directory) = save_frames {
        std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    }
    let mut saved = Vec::new();
    let mut results = Vec::new();
    for format in formats {
        let stride = format.min_stride(width);
        let data = camera_frame(photo.as_raw(), width, height, format, stride)?;
        if let Some(directory) = save_frames {
            saved.push(save_frame(directory, format, (width, height, stride), &data)?);
        }
        if options.latency {
            let moved_data = camera_frame(moved.as_raw(), width, height, format, stride)?;
            // The board's schedule, or each one asked for in turn.
            let schedules: Vec<Option<u32>> = match options.redetect_every.as_slice() {
                [] => vec![None],
                values => values.iter().copied().map(Some).collect(),
            };
            for schedule in schedules {
                if let Some(every) = schedule {
                    pipeline.set_redetect_every(every);
                }
                let still = [Frame::still(format, width, height, stride, &data, "bench")];
                let measured = latency(&mut pipeline, &still, frames, options.camera_fps, started)?;
                let first = *first_verdict.get_or_insert(measured.first_verdict_ms);
                let moving = [
                    Frame::still(format, width, height, stride, &data, "bench"),
                    Frame::still(format, width, height, stride, &moved_data, "bench"),
                ];
                let moving = latency(&mut pipeline, &moving, frames, options.camera_fps, started)?;
                if !json {
                    println!(
                        "{} {width}x{height} at {} fps, redetect_every {}: models loaded in {:.0} ms, first \
                         verdict {:.0} ms after start",
                        format.name(),
                        options.camera_fps,
                        schedule.map_or("as the board says".to_string(), |every| every.to_string()),
                        loaded.as_secs_f64() * 1e3,
                        first
                    );
                    for (name, measured) in [("still", &measured), ("moving", &moving)] {
                        println!(
                            "  {name:<7} capture-to-verdict median {:.1} ms (max {:.1}), session first frame \
                             to verdict median {:.1} ms, {} verdicts, {} of {} frames dropped",
                            measured.capture_to_verdict_ms,
                            measured.capture_to_verdict_max_ms,
                            measured.session_to_verdict_ms,
                            measured.verdicts,
                            measured.dropped,
                            measured.delivered
                        );
                    }
                }
                results.push(json!({
                    "format": format.name(), "width": width, "height": height,
                    "camera_fps": options.camera_fps, "redetect_every": schedule,
                    "models_loaded_ms": loaded.as_secs_f64() * 1e3, "first_verdict_after_start_ms": first,
                    "still": measured, "moving": moving, "rss": memory(),
                }));
            }
            continue;
        }
        if !options.redetect_every.is_empty() {
            let moved_data = camera_frame(moved.as_raw(), width, height, format, stride)?;
            let report = compare_schedules(
                &mut pipeline,
                &options.redetect_every,
                [&data, &moved_data],
                (format, width, height, stride),
                frames,
            )?;
            if !json {
                println!(
                    "{} {width}x{height}: {frames} frames a block, {ROUNDS} blocks each, alternating",
                    format.name()
                );
                println!(
                    "  {:<8} {:<14} {:>14} {:>16}",
                    "picture", "redetect_every", "frame median", "detector runs"
                );
                for row in &report {
                    println!(
                        "  {:<8} {:<14} {:>11.3} ms {:>9} / {}",
                        row.picture, row.redetect_every, row.frame_ms, row.detector_runs, row.frames
                    );
                }
            }
            results.push(
                json!({ "format": format.name(), "width": width, "height": height, "schedules": report }),
            );
            continue;
        }
        let mut frame = Frame::still(format, width, height, stride, &data, "bench");
        // Warm-up, then measure; a session restart every frame budget keeps the classifier path busy.
        for sequence in 0..5 {
            frame.sequence = sequence;
            pipeline.process(&frame)?;
        }
        pipeline.times.clear();
        let mut faces = 0;
        let mut last = Vec::new();
        for sequence in 0..frames as u64 {
            frame.sequence = 5 + sequence;
            let found = pipeline.process(&frame)?.0;
            faces += found.len();
            if sequence + 1 == frames as u64 {
                last = found.iter().map(face_json).collect();
            }
        }
        pipeline.finish();
        let summary = pipeline.times.summary();
        if !json {
            println!("{} {width}x{height}: {frames} frames, {faces} faces", format.name());
            println!("  {:<22} {:>11} {:>9} {:>9}", "stage", "median ms", "min ms", "max ms");
            for stage in &summary {
                println!(
                    "  {:<22} {:>11.3} {:>9.3} {:>9.3}",
                    stage.stage, stage.median_ms, stage.min_ms, stage.max_ms
                );
            }
        }
        results.push(json!({
            "format": format.name(), "width": width, "height": height, "frames": frames, "faces": faces,
            "stages": summary, "faces_found": last, "rss": memory(),
        }));
    }
    if let Some(directory) = save_frames {
        // What the peer needs besides the frames, as the pipeline loaded it: the model and alignment definitions
        // it reads itself, the board's settings, and the pipeline's own constants.
        let detector = config.detector;
        let index = json!({
            "source_image": image, "board": board, "frames": saved,
            "manifest": config.resolve(&config.models.manifest),
            "alignment": config.resolve(&config.models.alignment),
            "detector": config.models.detector, "classifier": config.models.classifier,
            "detector_settings": {
                "score_threshold": detector.score_threshold, "min_face_px": detector.min_face_px,
                "nms_iou": detector.nms_iou,
            },
            "quality_settings": config.quality,
            "quality_crop": deepgate::pipeline::QUALITY_CROP, "max_faces": deepgate::detect::MAX_FACES,
            "max_taps": deepgate::preprocess::MAX_TAPS,
        });
        let path = directory.join(FRAMES_INDEX);
        std::fs::write(&path, serde_json::to_string_pretty(&index)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let rss = memory();
    if json {
        // The shape `cargo xtask bench-peer` reads: an array, one entry per format, each with its `rss`.
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("resident memory after the run: {rss}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One schedule's figures on one picture.
#[derive(serde::Serialize)]
struct ScheduleRow {
    picture: &'static str,
    redetect_every: u32,
    /// Median of the blocks' whole-frame medians.
    frame_ms: f64,
    detector_runs: u64,
    frames: u64,
}

/// Each `schedules` value in turn, `ROUNDS` times, on a still picture (`pictures[0]` on every frame) and a
/// moving one (`pictures` alternating).
fn compare_schedules(
    pipeline: &mut Pipeline,
    schedules: &[u32],
    pictures: [&[u8]; 2],
    (format, width, height, stride): (PixelFormat, u32, u32, usize),
    frames: usize,
) -> Result<Vec<ScheduleRow>> {
    let mut rows = Vec::new();
    for (picture, moving) in [("still", false), ("moving", true)] {
        let mut medians = vec![Vec::new(); schedules.len()];
        let mut runs = vec![(0u64, 0u64); schedules.len()];
        let mut sequence = 0;
        for _ in 0..ROUNDS {
            for (index, &every) in schedules.iter().enumerate() {
                pipeline.set_redetect_every(every);
                pipeline.finish();
                let before = pipeline.hold_counts();
                // Warm-up, then measure.
                for measured in [false, true] {
                    if measured {
                        pipeline.times.clear();
                    }
                    for count in 0..if measured { frames } else { 5 } {
                        let data = pictures[usize::from(moving && count % 2 == 1)];
                        let mut frame = Frame::still(format, width, height, stride, data, "bench");
                        frame.sequence = sequence;
                        sequence += 1;
                        // The classifier runs on every frame, before and after a verdict.
                        pipeline.process(&frame)?;
                    }
                }
                let after = pipeline.hold_counts();
                let summary = pipeline.times.summary();
                let frame_ms = summary.iter().find(|s| s.stage == "frame").map_or(f64::NAN, |s| s.median_ms);
                medians[index].push(frame_ms);
                runs[index].0 += after.detected - before.detected;
                runs[index].1 += (after.detected + after.held) - (before.detected + before.held);
            }
        }
        for (index, &every) in schedules.iter().enumerate() {
            let samples = &mut medians[index];
            samples.sort_by(f64::total_cmp);
            rows.push(ScheduleRow {
                picture,
                redetect_every: every,
                frame_ms: samples[samples.len() / 2],
                detector_runs: runs[index].0,
                frames: runs[index].1,
            });
        }
    }
    Ok(rows)
}

/// Capture-to-verdict figures of one run.
#[derive(serde::Serialize)]
struct Latency {
    /// From the start of `bench` (before the models load) to the first verdict: meaningful for the first run.
    first_verdict_ms: f64,
    /// Median and largest time from the capture of the frame that decided to its verdict.
    capture_to_verdict_ms: f64,
    capture_to_verdict_max_ms: f64,
    /// Median time from the capture of a person session's first frame to its verdict.
    session_to_verdict_ms: f64,
    verdicts: usize,
    /// Frames the camera delivered, and those dropped because the pipeline was busy when a newer one came.
    delivered: u64,
    dropped: u64,
}

/// Plays `pictures` (in turn) as a camera at `fps` would deliver them for `frames` frame periods: when the
/// pipeline is free it takes the newest frame captured (older ones are dropped, as a camera queue of one),
/// waiting for the next capture when none is new. A verdict starts a new person session.
fn latency(
    pipeline: &mut Pipeline,
    pictures: &[Frame],
    frames: usize,
    fps: f64,
    started: Instant,
) -> Result<Latency> {
    let period = Duration::from_secs_f64(1.0 / fps);
    pipeline.finish();
    let stream_start = Instant::now();
    let capture = |index: u64| stream_start + period * index as u32;
    let (mut next, mut first_verdict, mut session_first) = (0u64, None, None);
    let (mut to_verdict, mut session_to_verdict, mut dropped) = (Vec::new(), Vec::new(), 0);
    while next < frames as u64 {
        let now = Instant::now();
        if now < capture(next) {
            std::thread::sleep(capture(next) - now);
        }
        // The newest frame captured by now; the ones before it were dropped.
        let newest = ((Instant::now() - stream_start).as_secs_f64() / period.as_secs_f64()) as u64;
        let index = newest.clamp(next, frames as u64 - 1);
        dropped += index - next;
        let mut frame = pictures[index as usize % pictures.len()];
        frame.sequence = index;
        let captured = capture(index);
        let session_start = *session_first.get_or_insert(captured);
        let (_, verdict) = pipeline.process(&frame)?;
        if verdict.is_some() {
            let done = Instant::now();
            first_verdict.get_or_insert(done - started);
            to_verdict.push((done - captured).as_secs_f64() * 1e3);
            session_to_verdict.push((done - session_start).as_secs_f64() * 1e3);
            session_first = None;
            // The next person: a new session, and a new detection.
            pipeline.finish();
        }
        next = index + 1;
    }
    pipeline.finish();
    let median = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Ok(Latency {
        first_verdict_ms: first_verdict.map_or(f64::NAN, |elapsed| elapsed.as_secs_f64() * 1e3),
        capture_to_verdict_max_ms: to_verdict.iter().copied().fold(f64::NAN, f64::max),
        capture_to_verdict_ms: median(&mut to_verdict),
        session_to_verdict_ms: median(&mut session_to_verdict),
        verdicts: session_to_verdict.len(),
        delivered: frames as u64,
        dropped,
    })
}

/// This process's resident memory now and at its peak (Linux `/proc/self/status`), as text.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    format!("VmRSS {}, VmHWM {}", field("VmRSS:"), field("VmHWM:"))
}
