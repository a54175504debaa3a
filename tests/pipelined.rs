//! Two threads (`[runtime] threads = 2`) judge the same frames as one: the same input played through the session
//! loop gives the same events (each frame's faces, bit for bit, its verdicts and errors) in the same order,
//! including what a live source sees between frames, on a scripted stream with several people, pixel formats,
//! faces and no faces, a frame that fails on each thread's side, a source error, a live source without a frame,
//! and a stop. The combinations two threads cannot do are refused at config load, naming both keys.

mod common;

use anyhow::{bail, Result};
use deepgate::capture::synthetic::camera_frame;
use deepgate::capture::FrameSource;
use deepgate::config::BoardConfig;
use deepgate::frame::{Frame, PixelFormat};
use deepgate::pipeline::{Models, Pipeline};
use deepgate::session::{play_source, Event, Played};
use std::cell::RefCell;

/// What the script's source does at one call.
enum Step {
    /// A frame: its pixels, and whether it starts a stream.
    Frame { format: PixelFormat, width: u32, height: u32, data: Vec<u8>, discontinuity: bool },
    /// No frame now (a live source only).
    Idle,
    /// The source fails this call.
    Error,
}

/// A source that plays its steps in order, live (it asks for a frame when it has none) or finite.
struct Scripted {
    steps: Vec<Step>,
    next: usize,
    sequence: u64,
    live: bool,
}

impl FrameSource for Scripted {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let Some(step) = self.steps.get(self.next) else { return Ok(None) };
        self.next += 1;
        match step {
            Step::Frame { format, width, height, data, discontinuity } => {
                let stride = if *format == PixelFormat::Mjpeg { 0 } else { format.min_stride(*width) };
                let mut frame = Frame::still(*format, *width, *height, stride, data, "scripted");
                frame.sequence = self.sequence;
                frame.discontinuity = *discontinuity;
                self.sequence += 1;
                Ok(Some(frame))
            }
            Step::Idle => Ok(None),
            Step::Error => bail!("scripted source error"),
        }
    }

    fn describe(&self) -> &str {
        "scripted"
    }

    fn camera_up(&self) -> Option<bool> {
        self.live.then_some(true)
    }
}

/// `name` (a fixture) as a `format` frame, its picture moved right by `shift` pixels (a person moving).
fn frame(name: &str, format: PixelFormat, shift: usize, discontinuity: bool) -> Step {
    let photo = image::open(common::fixture(name)).expect("fixture").to_rgb8();
    let (width, height) = photo.dimensions();
    let mut rgb = photo.into_raw();
    for row in rgb.chunks_mut(width as usize * 3) {
        row.rotate_right(shift * 3);
    }
    let data = camera_frame(&rgb, width, height, format, format.min_stride(width)).expect("camera frame");
    Step::Frame { format, width, height, data, discontinuity }
}

/// Several person sessions in several formats, with a frame without a face, a corrupt MJPEG frame (fails on the
/// caller's side), and for a live source idle calls and a source error between frames.
fn script(live: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let streams: [(&str, PixelFormat); 4] = [
        ("faces/obama.jpg", PixelFormat::Yuyv),
        ("faces/astronaut.png", PixelFormat::Rgb24),
        ("scenes/coffee.png", PixelFormat::Nv12),
        ("faces/biden.jpg", PixelFormat::Mjpeg),
    ];
    for (name, format) in streams {
        for index in 0..5 {
            steps.push(frame(name, format, index * 3, index == 0));
            if live && index == 2 {
                steps.extend([Step::Idle, Step::Idle]);
            }
        }
        if live {
            steps.push(Step::Error);
        }
    }
    steps.push(Step::Frame {
        format: PixelFormat::Mjpeg,
        width: 64,
        height: 64,
        data: vec![0xff, 0xd8, 0xff, 0x00, 1, 2, 3],
        discontinuity: false,
    });
    steps.push(frame("faces/obama2.jpg", PixelFormat::Uyvy, 0, false));
    steps.push(frame("faces/obama2.jpg", PixelFormat::Uyvy, 4, false));
    steps
}

fn pipeline(threads: usize, classifier: Option<&str>) -> Pipeline {
    let board = common::board(
        classifier,
        &[],
        &[("decision.max_frames", "4"), ("runtime.threads", &threads.to_string())],
    );
    let config = BoardConfig::load(&board).expect("board");
    let pipeline = Pipeline::new(&config, Models::load(&config).expect("models")).expect("pipeline");
    assert_eq!(pipeline.threads(), threads);
    pipeline
}

/// Every event and every call of `before_frame`, as text (floats printed exactly), and how the play ended.
/// A live play is stopped at the frame `stop_at`.
fn play(pipeline: &mut Pipeline, live: bool, stop_at: Option<u64>) -> (Vec<String>, Played) {
    let mut source = Scripted { steps: script(live), next: 0, sequence: 0, live };
    let lines = RefCell::new(Vec::new());
    let played = play_source(
        pipeline,
        &mut source,
        "scripted".into(),
        &mut |frame| match frame {
            Some(frame) => Some(frame.sequence) != stop_at,
            None => {
                lines.borrow_mut().push("no frame now".to_string());
                // A live source with nothing left ends the play as a stop would.
                !lines.borrow().iter().rev().take(3).all(|line| line == "no frame now")
            }
        },
        &mut |event| {
            let line = match event {
                Event::Frame { frame, faces } => format!(
                    "frame {} {} {}x{} {:?}: {faces:?}",
                    frame.source, frame.sequence, frame.width, frame.height, frame.format
                ),
                Event::Verdict { source, verdict } => format!("verdict {source}: {verdict:?}"),
                Event::Error { source, error } => format!("error {source}: {error:#}"),
                Event::Camera { source, up } => format!("camera {source} {up}"),
                Event::GpuLost { error } => format!("gpu lost {error:#}"),
            };
            lines.borrow_mut().push(line);
        },
    );
    (lines.into_inner(), played)
}

#[test]
fn one_thread_and_two_give_the_same_events_in_the_same_order() {
    let _alone = lock();
    let mut one = pipeline(1, None);
    let mut two = pipeline(2, None);
    for (live, stop_at) in [(false, None), (true, None), (true, Some(17))] {
        let (expected, expected_end) = play(&mut one, live, stop_at);
        let (found, end) = play(&mut two, live, stop_at);
        assert_eq!(found, expected, "live {live}, stop at {stop_at:?}");
        assert_eq!(end, expected_end);
        let count = |prefix: &str| expected.iter().filter(|line| line.starts_with(prefix)).count();
        assert!(count("verdict") >= 3, "sessions were decided: {expected:#?}");
        assert!(expected.iter().any(|line| line.contains("fake_probability: Some(")), "faces were judged");
        assert!(expected.iter().any(|line| line.contains("frame scripted") && line.ends_with(": []")));
        assert!(count("error") >= 1, "the corrupt frame failed: {expected:#?}");
        if live {
            // What a live source sees between frames comes after the frame before it, as with one thread.
            assert!(count("no frame now") >= 2 && count("error scripted: scripted source error") >= 1);
        }
        if stop_at.is_some() {
            assert_eq!(end, Played::Stopped);
            assert!(expected.iter().any(|line| line.starts_with("frame scripted 16 ")), "{expected:#?}");
            assert!(!expected.iter().any(|line| line.starts_with("frame scripted 17 ")));
        }
    }
}

/// A classifier that fails on every crop (its output is NaN): the worker's error comes back as that frame's
/// error, in its turn, exactly as with one thread.
#[test]
fn an_error_on_the_worker_is_that_frames_error() {
    let _alone = lock();
    let (expected, _) = play(&mut pipeline(1, Some("nan_output")), false, None);
    let (found, _) = play(&mut pipeline(2, Some("nan_output")), false, None);
    assert_eq!(found, expected);
    assert!(found.iter().filter(|line| line.starts_with("error")).count() >= 10, "{found:#?}");
}

/// The worker is named, one per pipeline, and gone once the pipeline is dropped; switching to one thread
/// ends it too.
#[test]
fn the_worker_thread_lives_as_long_as_the_two_thread_pipeline() {
    let count = || {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == deepgate::pipeline::pipelined::WORKER_NAME)
            .count()
    };
    // A new thread names itself as it starts: wait a little for the count to settle.
    let workers = |expected: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while count() != expected && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        count()
    };
    let _alone = lock();
    let before = count();
    let mut pipeline = pipeline(2, None);
    assert_eq!(workers(before + 1), before + 1);
    pipeline.set_threads(1).expect("one thread");
    assert_eq!(workers(before), before, "ended when going back to one thread");
    pipeline.set_threads(2).expect("two threads again");
    assert_eq!(workers(before + 1), before + 1);
    drop(pipeline);
    assert_eq!(workers(before), before, "ended on drop");
}

/// The tests that make worker threads, one at a time while one counts them.
fn lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn two_threads_with_held_detections_or_the_classifier_on_the_gpu_are_refused_naming_both_keys() {
    let refused = |settings: &[(&str, &str)]| {
        let board = common::board(None, &[], settings);
        format!("{:#}", BoardConfig::load(&board).expect_err("refused"))
    };
    let error = refused(&[("runtime.threads", "2"), ("detector.redetect_every", "3")]);
    assert!(error.contains("runtime.threads") && error.contains("detector.redetect_every"), "{error}");
    let error = refused(&[
        ("runtime.threads", "2"),
        ("runtime.backend", "\"auto\""),
        ("runtime.classifier_inference", "\"cuda\""),
    ]);
    assert!(error.contains("runtime.threads") && error.contains("runtime.classifier_inference"), "{error}");
    assert!(refused(&[("runtime.threads", "3")]).contains("runtime.threads must be 1 or 2"));
}

/// `deepgate bench --threads 1,2` reports both counts side by side, and with `--latency` one thread and two
/// (flushed and waiting); bad values and the combination with held detections are refused.
#[test]
fn bench_compares_one_thread_with_two() {
    use serde_json::Value;
    let output = common::deepgate(&[
        "bench",
        "--frames",
        "3",
        "--size",
        "320x240",
        "--formats",
        "YUYV",
        "--threads",
        "1,2",
        "--json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let rows = results[0]["threads"].as_array().expect("rows").clone();
    assert_eq!(rows.iter().map(|row| row["threads"].as_u64()).collect::<Vec<_>>(), [Some(1), Some(2)]);
    for row in &rows {
        assert!(row["frames_per_second"].as_f64().is_some_and(|rate| rate > 0.0), "{row}");
        let stages: Vec<&str> =
            row["stages"].as_array().expect("stages").iter().filter_map(|s| s["stage"].as_str()).collect();
        assert!(stages.contains(&"classifier") && stages.contains(&"detector"), "{stages:?}");
    }
    assert_eq!(rows[0]["ratio"].as_f64(), Some(1.0));

    let output = common::deepgate(&[
        "bench",
        "--frames",
        "6",
        "--size",
        "320x240",
        "--formats",
        "YUYV",
        "--threads",
        "1,2",
        "--latency",
        "--camera-fps",
        "200",
        "--json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let settings: Vec<(u64, bool)> = results
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| Some((row["threads"].as_u64()?, row["flush_when_idle"].as_bool()?)))
        .collect();
    assert_eq!(settings, [(1, true), (2, true), (2, false)]);

    for (arguments, message) in [
        (&["--threads", "3"][..], "--threads 3: each value must be 1 or 2"),
        (&["--threads", "1,2", "--redetect-every", "1,3"][..], "cannot be combined"),
    ] {
        let output = common::deepgate(&[&["bench", "--frames", "1"][..], arguments].concat());
        assert_eq!(output.status.code(), Some(2), "{arguments:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains(message), "{arguments:?}");
    }
}

/// What the session loop's consumers print and write is the same with two threads: `deepgate replay`'s JSON
/// lines and `deepgate crops`' index and crops (cut from the frame's copy the event carries), on a video (one
/// stream: frames in flight) and on still images (each its own stream).
#[test]
fn replay_and_crops_print_and_write_the_same_with_two_threads() {
    let directory = common::temp_dir("pipelined-consumers");
    let video = directory.join("drift.y4m");
    common::drifting_video(&video, "faces/obama2.jpg", 601, 900, 8, 3);
    let stills = common::root().join("tests/fixtures/faces");
    let inputs = [video.to_str().expect("UTF-8"), stills.to_str().expect("UTF-8")];
    let mut printed = Vec::new();
    let mut written = Vec::new();
    for threads in ["1", "2"] {
        let board = common::board(None, &[], &[("runtime.threads", threads)]);
        let board = board.to_str().expect("UTF-8");
        let output = common::deepgate(&[&["replay", "--board", board][..], &inputs].concat());
        printed.push(String::from_utf8(output.stdout).expect("UTF-8"));
        let out = directory.join(format!("crops-{threads}"));
        let output = common::deepgate(
            &[&["crops", "--board", board, "--out", out.to_str().expect("UTF-8")][..], &inputs].concat(),
        );
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&out)
            .expect("crops written")
            .map(|entry| {
                let path = entry.expect("entry").path();
                (
                    path.file_name().expect("name").to_string_lossy().into_owned(),
                    std::fs::read(&path).expect("crop"),
                )
            })
            .collect();
        files.sort();
        written.push(files);
    }
    assert_eq!(printed[1], printed[0]);
    assert!(printed[0].matches("\"type\":\"verdict\"").count() >= 2, "{}", printed[0]);
    assert!(written[0].len() > 8, "a crop per face and the index: {}", written[0].len());
    assert!(written[1] == written[0], "the same crops, byte for byte");
}

/// A panic on the worker thread: `deepgate run` ends (status 101, for systemd to restart it) as for any thread;
/// elsewhere (`deepgate replay`, no such hook) nothing waits for the dead worker: every frame reports it.
#[test]
fn a_panic_on_the_worker_ends_the_run_and_never_hangs_a_replay() {
    let inputs = [common::fixture("faces/obama.jpg")];
    let board = common::board(
        None,
        &[&inputs[0]],
        &[("runtime.threads", "2"), ("source.repeat", "true"), ("source.frame_rate", "20.0")],
    );
    let run = |arguments: &[&str]| {
        std::process::Command::new(common::exe())
            .args(arguments)
            .env("RUST_LOG", "warn")
            .env("DEEPGATE_DEBUG_PANIC", deepgate::pipeline::pipelined::WORKER_NAME)
            .output()
            .expect("deepgate runs")
    };
    let output = run(&["run", "--board", common::text(&board)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("thread `deepgate-judge` panicked: ending the process"), "{stderr}");

    let video = common::temp_dir("pipelined-panic").join("drift.y4m");
    common::drifting_video(&video, "faces/obama2.jpg", 601, 900, 4, 3);
    let output = run(&["replay", "--board", common::text(&board), common::text(&video)]);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.matches("worker thread has ended").count() >= 3, "{stdout}");
}

/// A live camera between two frames: a call that may not wait (`FrameSource::may_wait(false)`) finds no frame
/// yet, as the V4L2 source's poll that does not wait; one that may wait gets the next frame. Without
/// `needs_waiting`, a frame is always there at once (a camera faster than the pipeline).
struct BetweenFrames {
    data: Vec<u8>,
    left: usize,
    sequence: u64,
    patient: bool,
    needs_waiting: bool,
}

impl FrameSource for BetweenFrames {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.left == 0 || (self.needs_waiting && !self.patient) {
            return Ok(None);
        }
        self.left -= 1;
        let mut frame =
            Frame::still(PixelFormat::Yuyv, 320, 240, PixelFormat::Yuyv.min_stride(320), &self.data, "cam");
        frame.sequence = self.sequence;
        frame.discontinuity = self.sequence == 0;
        self.sequence += 1;
        Ok(Some(frame))
    }

    fn describe(&self) -> &str {
        "cam"
    }

    /// Live while frames are left; then it ends as a finite source does.
    fn camera_up(&self) -> Option<bool> {
        (self.left > 0).then_some(true)
    }

    fn may_wait(&mut self, wait: bool) {
        self.patient = wait;
    }
}

/// With two threads, the session loop asks a live source not to wait while a frame is in flight, so each
/// frame's results come before the next frame is taken when the camera has none yet (the verdict never waits
/// for the camera's next frame); when the next frame is already there, it is taken first (the pipelining).
#[test]
fn with_a_frame_in_flight_the_source_is_not_waited_for() {
    let _alone = lock();
    let photo = image::open(common::fixture("faces/obama.jpg")).expect("fixture").resize_exact(
        320,
        240,
        image::imageops::FilterType::Triangle,
    );
    let data = camera_frame(
        photo.to_rgb8().as_raw(),
        320,
        240,
        PixelFormat::Yuyv,
        PixelFormat::Yuyv.min_stride(320),
    )
    .expect("camera frame");
    let mut two = pipeline(2, None);
    for needs_waiting in [true, false] {
        let mut camera =
            BetweenFrames { data: data.clone(), left: 6, sequence: 0, patient: true, needs_waiting };
        let order = RefCell::new(Vec::new());
        play_source(
            &mut two,
            &mut camera,
            "cam".into(),
            &mut |frame| {
                if let Some(frame) = frame {
                    order.borrow_mut().push(format!("take {}", frame.sequence));
                }
                true
            },
            &mut |event| {
                if let Event::Frame { frame, .. } = event {
                    order.borrow_mut().push(format!("result {}", frame.sequence));
                }
            },
        );
        let order = order.into_inner();
        let alternating: Vec<String> =
            (0..6).flat_map(|sequence| [format!("take {sequence}"), format!("result {sequence}")]).collect();
        if needs_waiting {
            assert_eq!(order, alternating, "each frame's results before the next frame is taken");
        } else {
            assert_ne!(order, alternating, "frames already there are pipelined: {order:?}");
            assert_eq!(order.iter().filter(|line| line.starts_with("result")).count(), 6, "{order:?}");
        }
    }
}
