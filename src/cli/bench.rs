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
//!
//! `--threads 1,2` compares one thread with frame pipelining on two (`[runtime] threads`) the same way: block by
//! block, alternating, frames pushed back to back (the whole-frame time, and frames per second sustained over
//! each block, the last frame's flush included); with `--latency`, as a camera would deliver them, two threads
//! measured twice: flushing the frame in flight whenever no new frame has come yet (what the session loop does
//! when a live source says it has no frame now), and waiting for the next frame instead (a source that blocks
//! until its next frame).

use anyhow::{bail, Context, Result};
use deepgate::capture::synthetic::camera_frame;
use deepgate::frame::{Frame, PixelFormat};
use deepgate::pipeline::FaceResult;
use deepgate::pipeline::Pipeline;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What `deepgate bench` was asked to do: its command-line arguments.
#[derive(clap::Args)]
pub struct BenchOptions {
    #[arg(long, default_value = crate::DEFAULT_BOARD)]
    pub board: PathBuf,
    /// The photo the frames are made from (resized to --size).
    #[arg(long, default_value = "tests/fixtures/faces/obama.jpg")]
    pub image: PathBuf,
    #[arg(long, default_value = "640x480")]
    pub size: String,
    #[arg(long, value_delimiter = ',', default_value = "YUYV,NV12,MJPEG,RGB24")]
    pub formats: Vec<String>,
    #[arg(long, default_value_t = 50)]
    pub frames: usize,
    #[arg(long)]
    pub json: bool,
    /// Also write the synthesised frames and an index (frames.json) into DIR, for the Python peer
    /// (`cargo xtask bench-peer`).
    #[arg(long)]
    pub save_frames: Option<PathBuf>,
    /// Detector schedules (`[detector] redetect_every` values) to compare side by side, e.g. `1,3`; none: the
    /// board's only.
    #[arg(long, value_delimiter = ',')]
    pub redetect_every: Vec<u32>,
    /// Capture-to-verdict latency and time to the first verdict, frames delivered at --camera-fps.
    #[arg(long)]
    pub latency: bool,
    #[arg(long, default_value_t = 30.0)]
    pub camera_fps: f64,
    /// Thread counts (`[runtime] threads` values) to compare side by side, e.g. `1,2`; none: the board's only.
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
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
    if let Some(bad) = options.threads.iter().find(|&&threads| !(1..=2).contains(&threads)) {
        bail!("--threads {bad}: each value must be 1 or 2");
    }
    if !options.threads.is_empty() && !options.redetect_every.is_empty() {
        bail!("--threads and --redetect-every cannot be combined: two threads need redetect_every = 1");
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
            // The board's schedule, or each one asked for in turn; the board's threads, or each count asked for
            // (two threads twice: flushing when no frame has come, and waiting for the next frame).
            let board = LatencySetting { redetect_every: None, threads: None, flush_when_idle: true };
            let mut settings: Vec<LatencySetting> = match options.redetect_every.as_slice() {
                [] => vec![board],
                values => values
                    .iter()
                    .map(|&every| LatencySetting { redetect_every: Some(every), ..board })
                    .collect(),
            };
            if !options.threads.is_empty() {
                settings = options
                    .threads
                    .iter()
                    .flat_map(|&threads| {
                        let flushing = LatencySetting { threads: Some(threads), ..board };
                        let waiting = LatencySetting { flush_when_idle: false, ..flushing };
                        if threads == 1 {
                            vec![flushing]
                        } else {
                            vec![flushing, waiting]
                        }
                    })
                    .collect();
            }
            for LatencySetting { redetect_every: schedule, threads, flush_when_idle } in settings {
                if let Some(every) = schedule {
                    pipeline.set_redetect_every(every);
                }
                if let Some(threads) = threads {
                    pipeline.set_threads(threads)?;
                }
                let still = [Frame::still(format, width, height, stride, &data, "bench")];
                let measured =
                    latency(&mut pipeline, &still, frames, options.camera_fps, started, flush_when_idle)?;
                let first = *first_verdict.get_or_insert(measured.first_verdict_ms);
                let moving = [
                    Frame::still(format, width, height, stride, &data, "bench"),
                    Frame::still(format, width, height, stride, &moved_data, "bench"),
                ];
                let moving =
                    latency(&mut pipeline, &moving, frames, options.camera_fps, started, flush_when_idle)?;
                if !json {
                    println!(
                        "{} {width}x{height} at {} fps, redetect_every {}, {} thread(s){}: models loaded in \
                         {:.0} ms, first verdict {:.0} ms after start",
                        format.name(),
                        options.camera_fps,
                        schedule.map_or("as the board says".to_string(), |every| every.to_string()),
                        pipeline.threads(),
                        if pipeline.threads() == 1 {
                            ""
                        } else if flush_when_idle {
                            ", flushed when no frame has come"
                        } else {
                            ", waiting for the next frame"
                        },
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
                    "threads": pipeline.threads(), "flush_when_idle": flush_when_idle,
                    "models_loaded_ms": loaded.as_secs_f64() * 1e3, "first_verdict_after_start_ms": first,
                    "still": measured, "moving": moving, "rss": memory(),
                }));
            }
            continue;
        }
        if !options.threads.is_empty() {
            let report = compare_threads(
                &mut pipeline,
                &options.threads,
                &data,
                (format, width, height, stride),
                frames,
            )?;
            if !json {
                println!(
                    "{} {width}x{height}: {frames} frames a block, {ROUNDS} blocks each, alternating",
                    format.name()
                );
                println!("  {:<8} {:>14} {:>14} {:>8}", "threads", "frame median", "sustained", "ratio");
                for row in &report {
                    println!(
                        "  {:<8} {:>11.3} ms {:>10.1} fps {:>7.2}×",
                        row.threads, row.frame_ms, row.frames_per_second, row.ratio
                    );
                }
                for row in &report {
                    let stages: Vec<String> = row
                        .stages
                        .iter()
                        .filter(|stage| stage.stage != "frame")
                        .map(|stage| format!("{} {:.2}", stage.stage, stage.median_ms))
                        .collect();
                    println!(
                        "  {} thread(s), last block's stage medians (ms): {}",
                        row.threads,
                        stages.join(", ")
                    );
                }
            }
            results.push(json!({
                "format": format.name(), "width": width, "height": height, "threads": report, "rss": memory(),
            }));
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

/// One setting `--latency` measures: a detector schedule, a thread count (None: the board's), and with two
/// threads whether the frame in flight is flushed when no new frame has come.
#[derive(Clone, Copy)]
struct LatencySetting {
    redetect_every: Option<u32>,
    threads: Option<usize>,
    flush_when_idle: bool,
}

/// One thread count's figures.
#[derive(serde::Serialize)]
struct ThreadsRow {
    threads: usize,
    /// Median of the blocks' whole-frame medians (with two threads: one `push`, the frame period when busy).
    frame_ms: f64,
    /// Median of the blocks' frames per second: frames over the block's wall time, the last flush included.
    frames_per_second: f64,
    /// `frames_per_second` over the first thread count's.
    ratio: f64,
    /// The stages of the last block (with two threads, the worker's crops, quality and classifier too).
    stages: Vec<deepgate::timing::Summary>,
}

/// Each thread count in turn, `ROUNDS` times, frames pushed back to back, the classifier on every frame.
fn compare_threads(
    pipeline: &mut Pipeline,
    counts: &[usize],
    data: &[u8],
    (format, width, height, stride): (PixelFormat, u32, u32, usize),
    frames: usize,
) -> Result<Vec<ThreadsRow>> {
    let mut medians = vec![Vec::new(); counts.len()];
    let mut stages = vec![Vec::new(); counts.len()];
    let mut rates = vec![Vec::new(); counts.len()];
    let mut frame = Frame::still(format, width, height, stride, data, "bench");
    for _ in 0..ROUNDS {
        for (index, &threads) in counts.iter().enumerate() {
            pipeline.set_threads(threads)?;
            pipeline.finish();
            // Warm-up, then measure.
            for measured in [false, true] {
                let started = Instant::now();
                if measured {
                    pipeline.times.clear();
                }
                let count = if measured { frames } else { 5 };
                for _ in 0..count {
                    frame.sequence += 1;
                    if let Some(completed) = pipeline.push(&frame) {
                        completed.outcome?;
                    }
                }
                if let Some(completed) = pipeline.flush() {
                    completed.outcome?;
                }
                if measured {
                    rates[index].push(count as f64 / started.elapsed().as_secs_f64());
                }
            }
            let summary = pipeline.times.summary();
            medians[index]
                .push(summary.iter().find(|s| s.stage == "frame").map_or(f64::NAN, |s| s.median_ms));
            stages[index] = summary;
        }
    }
    let median = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let first_rate = median(&mut rates[0].clone());
    Ok(counts
        .iter()
        .enumerate()
        .map(|(index, &threads)| {
            let frames_per_second = median(&mut rates[index]);
            ThreadsRow {
                threads,
                frame_ms: median(&mut medians[index]),
                frames_per_second,
                ratio: frames_per_second / first_rate,
                stages: std::mem::take(&mut stages[index]),
            }
        })
        .collect())
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
/// waiting for the next capture when none is new. A verdict starts a new person session. With two threads a
/// frame's results come with the next frame's `push`; `flush_when_idle` completes the frame in flight as soon as
/// no new frame has been captured (before waiting for one), as the session loop does when its source says it
/// has no frame now.
fn latency(
    pipeline: &mut Pipeline,
    pictures: &[Frame],
    frames: usize,
    fps: f64,
    started: Instant,
    flush_when_idle: bool,
) -> Result<Latency> {
    let period = Duration::from_secs_f64(1.0 / fps);
    pipeline.finish();
    let stream_start = Instant::now();
    let capture = |index: u64| stream_start + period * index as u32;
    let mut next = 0u64;
    let mut measured = Measured { session_first: None, first_verdict: None, ..Measured::default() };
    // The capture time and session start of the frame in flight (two threads).
    let mut in_flight = None;
    while next < frames as u64 {
        let now = Instant::now();
        if now < capture(next) {
            if flush_when_idle {
                if let Some(completed) = pipeline.flush() {
                    let verdict = completed.outcome?.1;
                    let of = in_flight.take();
                    measured.completed(pipeline, of, &mut in_flight, verdict.is_some(), started);
                }
            }
            std::thread::sleep(capture(next) - Instant::now().min(capture(next)));
        }
        // The newest frame captured by now; the ones before it were dropped.
        let newest = ((Instant::now() - stream_start).as_secs_f64() / period.as_secs_f64()) as u64;
        let index = newest.clamp(next, frames as u64 - 1);
        measured.dropped += index - next;
        let mut frame = pictures[index as usize % pictures.len()];
        frame.sequence = index;
        let captured = capture(index);
        let this = (captured, *measured.session_first.get_or_insert(captured));
        let two_threads = pipeline.threads() == 2;
        let verdict = match pipeline.push(&frame) {
            Some(completed) => Some(completed.outcome?.1.is_some()),
            None => None,
        };
        let of = if two_threads { in_flight.replace(this) } else { Some(this) };
        if let Some(verdict) = verdict {
            measured.completed(pipeline, of, &mut in_flight, verdict, started);
        }
        next = index + 1;
    }
    if let Some(completed) = pipeline.flush() {
        let verdict = completed.outcome?.1;
        let of = in_flight.take();
        measured.completed(pipeline, of, &mut in_flight, verdict.is_some(), started);
    }
    pipeline.finish();
    let median = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Ok(Latency {
        first_verdict_ms: measured.first_verdict.map_or(f64::NAN, |elapsed| elapsed.as_secs_f64() * 1e3),
        capture_to_verdict_max_ms: measured.to_verdict.iter().copied().fold(f64::NAN, f64::max),
        capture_to_verdict_ms: median(&mut measured.to_verdict),
        session_to_verdict_ms: median(&mut measured.session_to_verdict),
        verdicts: measured.session_to_verdict.len(),
        delivered: frames as u64,
        dropped: measured.dropped,
    })
}

/// What `latency` gathers as frames complete.
#[derive(Default)]
struct Measured {
    session_first: Option<Instant>,
    first_verdict: Option<Duration>,
    to_verdict: Vec<f64>,
    session_to_verdict: Vec<f64>,
    dropped: u64,
}

impl Measured {
    /// A frame completed: `of` is its capture time and its session's first capture; a verdict ends the
    /// session: the next frame starts a new one (with two threads, the frame in flight, whose session start
    /// becomes its own capture).
    fn completed(
        &mut self,
        pipeline: &mut Pipeline,
        of: Option<(Instant, Instant)>,
        in_flight: &mut Option<(Instant, Instant)>,
        verdict: bool,
        started: Instant,
    ) {
        let (Some((captured, session_start)), true) = (of, verdict) else { return };
        let done = Instant::now();
        self.first_verdict.get_or_insert(done - started);
        self.to_verdict.push((done - captured).as_secs_f64() * 1e3);
        self.session_to_verdict.push((done - session_start).as_secs_f64() * 1e3);
        self.session_first = None;
        if let Some((captured, session_start)) = in_flight.as_mut() {
            *session_start = *captured;
            self.session_first = Some(*captured);
        }
        pipeline.finish();
    }
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
