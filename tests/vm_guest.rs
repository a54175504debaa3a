//! Tests that run inside the guest of `cargo xtask vm-test`: Debian's kernel under qemu, where `deepgate`
//! captures from real V4L2 drivers: vivid (the kernel's virtual camera) and v4l2loopback fed with face photos.
//! Outside that guest every test prints why it does not run (`SKIPPED [vm]`) and passes; inside it the guest's
//! `/init` sets DEEPGATE_REQUIRE=vm, and `cargo xtask vm-test` fails if the console shows any skip.
//!
//! The guest's `/init` sets DEEPGATE_VM_GUEST=1, DEEPGATE_BIN (the deepgate binary), DEEPGATE_VM_ROOT (the
//! repository's board/, models/ and tests/fixtures/ as a copy) and DEEPGATE_VM_MODULES (v4l2loopback.ko), has
//! loaded vivid with one capture node (/dev/video0), and runs these tests one at a time: they load and unload
//! modules and bind and unbind vivid, so each starts by putting the drivers back as /init left them.

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct Guest {
    deepgate: PathBuf,
    root: PathBuf,
    modules: PathBuf,
}

/// The guest's paths, or `None` (with the reason printed) anywhere else.
fn guest() -> Option<Guest> {
    if std::env::var("DEEPGATE_VM_GUEST").as_deref() != Ok("1") {
        common::skip(common::Need::Vm, "runs inside the guest of `cargo xtask vm-test`");
        return None;
    }
    let variable =
        |name: &str| PathBuf::from(std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set")));
    let guest = Guest {
        deepgate: variable("DEEPGATE_BIN"),
        root: variable("DEEPGATE_VM_ROOT"),
        modules: variable("DEEPGATE_VM_MODULES"),
    };
    reset_drivers(&guest);
    Some(guest)
}

const VIVID_DEVICE: &str = "vivid.0";
const VIVID_DRIVER: &str = "/sys/bus/platform/drivers/vivid";

/// v4l2loopback unloaded and vivid bound, as /init left them.
fn reset_drivers(_guest: &Guest) {
    if Path::new("/sys/module/v4l2loopback").exists() {
        run_tool("rmmod", &["v4l2loopback"]);
    }
    if !Path::new(VIVID_DRIVER).join(VIVID_DEVICE).exists() {
        vivid_bind(true);
    }
    wait_until("/dev/video0 from vivid", Duration::from_secs(10), || {
        driver_name(0).as_deref() == Some("vivid")
    });
}

fn run_tool(program: &str, arguments: &[&str]) {
    let output =
        Command::new(program).args(arguments).output().unwrap_or_else(|error| panic!("{program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        arguments.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Unplugs (false) or plugs (true) vivid's platform device, as a USB camera's disconnect would.
fn vivid_bind(bind: bool) {
    let file = Path::new(VIVID_DRIVER).join(if bind { "bind" } else { "unbind" });
    std::fs::write(&file, VIVID_DEVICE)
        .unwrap_or_else(|error| panic!("writing {VIVID_DEVICE} to {}: {error}", file.display()));
}

/// The name sysfs gives /dev/videoN (the card name), if the node exists.
fn driver_name(index: u32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/sys/class/video4linux/video{index}/name")).ok()?;
    let name = name.trim();
    Some(if name.starts_with("vivid") { "vivid".into() } else { name.to_string() })
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn insmod_loopback(guest: &Guest, video_nr: u32) {
    let number = format!("video_nr={video_nr}");
    let module = guest.modules.join("v4l2loopback.ko");
    run_tool(
        "insmod",
        &[
            module.to_str().unwrap(),
            &number,
            "card_label=deepgate-loopback",
            "exclusive_caps=0",
            "max_buffers=4",
        ],
    );
    let node = format!("/dev/video{video_nr}");
    wait_until(&node, Duration::from_secs(10), || Path::new(&node).exists());
}

/// A board config in the guest's board/ directory: host.toml with a V4L2 source (and whatever else is given).
fn board(guest: &Guest, name: &str, source: &str, rest: &str) -> PathBuf {
    board_with_threads(guest, name, source, 1, rest)
}

/// `board`, judging frames on `threads` threads (`[runtime] threads`).
fn board_with_threads(guest: &Guest, name: &str, source: &str, threads: usize, rest: &str) -> PathBuf {
    let path = guest.root.join("board").join(format!("{name}.toml"));
    // Emulated CPUs are slow: a frame's budget is widened so the runtime does not report overload for what
    // is the emulator's speed.
    let text = format!(
        "inherit = \"host.toml\"\n\n[source]\nkind = \"v4l2\"\nbuffers = 4\n{source}\n\n\
         [runtime]\nframe_budget_ms = 60000.0\nthreads = {threads}\n\n{rest}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn deepgate(guest: &Guest, arguments: &[&str]) -> std::process::Output {
    Command::new(&guest.deepgate)
        .args(arguments)
        .current_dir(&guest.root)
        .output()
        .unwrap_or_else(|error| panic!("starting {}: {error}", guest.deepgate.display()))
}

fn json_lines(text: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(text).lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// `deepgate capture --frames N`: the capture line and the whole output.
fn capture(guest: &Guest, board: &Path, frames: u32) -> (Option<Value>, std::process::Output) {
    let output =
        deepgate(guest, &["capture", "--board", board.to_str().unwrap(), "--frames", &frames.to_string()]);
    let line = json_lines(&output.stdout).into_iter().find(|line| line["type"] == "capture");
    (line, output)
}

#[test]
fn deepgate_runs_in_the_guest_and_decides_on_a_photo() {
    let Some(guest) = guest() else { return };
    let help = deepgate(&guest, &["--help"]);
    assert!(help.status.success(), "{}", String::from_utf8_lossy(&help.stderr));
    // The shipped models load and run on this CPU (tract's kernels for it) and a face is found.
    let output = deepgate(&guest, &["replay", "tests/fixtures/faces/astronaut.png"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = json_lines(&output.stdout);
    let verdict = lines.iter().find(|line| line["type"] == "verdict").unwrap_or_else(|| panic!("{lines:#?}"));
    assert_ne!(verdict["decision"], "no_face", "{verdict}");
}

/// Packed formats' bytes per pixel; NV12 has a full-size luma plane and a half-size chroma plane.
fn expected_layout(format: &str, width: u32, height: u32) -> (u32, u32) {
    match format {
        "YUYV" | "UYVY" => (width * 2, width * 2 * height),
        "RGB24" => (width * 3, width * 3 * height),
        "GREY" => (width, width * height),
        "NV12" => (width, width * height * 3 / 2),
        other => panic!("no layout for {other}"),
    }
}

#[test]
fn vivid_delivers_the_formats_and_sizes_asked_for() {
    let Some(guest) = guest() else { return };
    // Sizes from vivid's webcam input (its discrete list); frame rates it offers at each size.
    for (format, width, height, rate) in [
        ("YUYV", 640, 480, 25.0),
        ("NV12", 1280, 720, 10.0),
        ("RGB24", 320, 180, 30.0),
        ("GREY", 640, 360, 15.0),
    ] {
        let source = format!(
            "device = \"/dev/video0\"\nformat = \"{format}\"\nwidth = {width}\nheight = {height}\n\
             frame_rate = {rate:.1}\nallow_virtual = true"
        );
        let board = board(&guest, "vivid-format", &source, "");
        let (line, output) = capture(&guest, &board, 10);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{format} {width}x{height}: {stderr}");
        let line = line.unwrap_or_else(|| panic!("no capture line for {format}: {stderr}"));
        let (stride, size_image) = expected_layout(format, width, height);
        assert_eq!(line["driver"], "vivid", "{line}");
        assert_eq!(line["virtual"], true, "{line}");
        assert_eq!(line["format"], format, "{line}");
        assert_eq!(
            (line["width"].as_u64(), line["height"].as_u64()),
            (Some(width.into()), Some(height.into())),
            "{line}"
        );
        assert_eq!(line["stride"].as_u64(), Some(stride.into()), "{line}");
        assert_eq!(line["size_image"].as_u64(), Some(size_image.into()), "{line}");
        assert_eq!(line["frames"].as_u64(), Some(10), "{line}");
        assert_eq!(line["corrupt"].as_u64(), Some(0), "{line}");
        println!("vivid {format} {width}x{height}: {line}");
    }
}

#[test]
fn vivid_refuses_a_format_it_does_not_have() {
    let Some(guest) = guest() else { return };
    // vivid generates raw formats only: MJPEG is not among them, and the runtime must not take a substitute.
    let source =
        "device = \"/dev/video0\"\nformat = \"MJPEG\"\nwidth = 640\nheight = 480\nframe_rate = 25.0\n\
                  allow_virtual = true";
    let board = board(&guest, "vivid-mjpeg", source, "");
    let (_, output) = capture(&guest, &board, 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("MJPEG"), "the refusal names the format: {stderr}");
}

#[test]
fn a_virtual_camera_is_refused_unless_allowed() {
    let Some(guest) = guest() else { return };
    // A real camera's board names its enrolment file (required); the virtual device is refused before that.
    let source =
        "device = \"/dev/video0\"\nformat = \"YUYV\"\nwidth = 640\nheight = 480\nframe_rate = 25.0\n\
                  allow_virtual = false\nenrolment = \"/tmp/deepgate-not-allowed/camera.json\"";
    let board = board(&guest, "vivid-not-allowed", source, "");
    let (_, output) = capture(&guest, &board, 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("vivid"), "the refusal names the driver: {stderr}");
}

/// Frames written into a v4l2loopback device's output side at about 10 per second, from a thread, until
/// dropped. The frames can be replaced while it runs (a different photo in front of the camera).
struct Writer {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const WIDTH: u32 = 640;
const HEIGHT: u32 = 480;

impl Writer {
    fn start(node: &str, frames: Vec<Vec<u8>>) -> Writer {
        use v4l::video::Output;
        let device = v4l::Device::with_path(node).unwrap_or_else(|error| panic!("opening {node}: {error}"));
        let format = v4l::Format::new(WIDTH, HEIGHT, v4l::FourCC::new(b"YUYV"));
        let accepted = Output::set_format(&device, &format).expect("VIDIOC_S_FMT on the loopback output");
        assert_eq!((accepted.width, accepted.height, accepted.fourcc), (WIDTH, HEIGHT, format.fourcc));
        Output::set_params(&device, &v4l::video::output::Parameters::with_fps(10)).expect("VIDIOC_S_PARM");
        // v4l2loopback takes frames by write(2) on the output side: each write is one whole frame.
        let mut file = std::fs::OpenOptions::new().write(true).open(node).unwrap();
        let frames = Arc::new(Mutex::new(frames));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (frames.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _device = device;
            let mut index = 0;
            while !stopped.load(Ordering::Relaxed) {
                let started = Instant::now();
                {
                    let frames = shared.lock().unwrap();
                    let frame = &frames[index % frames.len()];
                    file.write_all(frame).expect("writing a frame to the loopback output");
                }
                index += 1;
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        });
        Writer { frames, stop, thread: Some(thread) }
    }

    fn show(&self, frames: Vec<Vec<u8>>) {
        *self.frames.lock().unwrap() = frames;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// A fixture photo as YUYV 640x480 frames: scaled so that its longer side is `scale` times the frame's height
/// (above 1 it is cropped by the frame, as a person close to the camera is), centred on grey, drifting a few
/// pixels from frame to frame as a hand-held photo or a person does in front of a camera.
fn photo_frames(guest: &Guest, fixture: &str, scale: f32, count: u32) -> Vec<Vec<u8>> {
    let photo = image::open(guest.root.join("tests/fixtures").join(fixture)).unwrap().to_rgb8();
    let side = (HEIGHT as f32 * scale) as u32;
    let (width, height) = if photo.width() >= photo.height() {
        (side, side * photo.height() / photo.width())
    } else {
        (side * photo.width() / photo.height(), side)
    };
    let photo = image::imageops::resize(&photo, width, height, image::imageops::FilterType::Triangle);
    (0..count)
        .map(|index| {
            let mut canvas = image::RgbImage::from_pixel(WIDTH, HEIGHT, image::Rgb([128, 128, 128]));
            let x =
                (i64::from(WIDTH) - i64::from(width)) / 2 - 4 * i64::from(count) / 2 + 4 * i64::from(index);
            image::imageops::replace(&mut canvas, &photo, x, (i64::from(HEIGHT) - i64::from(height)) / 2);
            yuyv(&canvas)
        })
        .collect()
}

/// RGB to YUYV (BT.601, limited range, as webcams deliver), through the runtime's one camera-frame encoder.
fn yuyv(image: &image::RgbImage) -> Vec<u8> {
    let format = deepgate::frame::PixelFormat::Yuyv;
    let stride = format.min_stride(image.width());
    deepgate::capture::synthetic::camera_frame(image.as_raw(), image.width(), image.height(), format, stride)
        .expect("a YUYV frame")
}

#[test]
fn loopback_frames_are_read_back_byte_for_byte() {
    let Some(guest) = guest() else { return };
    insmod_loopback(&guest, 10);
    let frame = photo_frames(&guest, "faces/astronaut.png", 0.9, 1).remove(0);
    let writer = Writer::start("/dev/video10", vec![frame.clone()]);
    std::thread::sleep(Duration::from_millis(500));
    {
        use v4l::io::traits::CaptureStream;
        use v4l::video::Capture;
        let device = v4l::Device::with_path("/dev/video10").unwrap();
        let format = Capture::format(&device).expect("the capture side has the writer's format");
        assert_eq!((format.width, format.height, &format.fourcc.repr), (WIDTH, HEIGHT, b"YUYV"));
        let mut stream =
            v4l::io::mmap::Stream::with_buffers(&device, v4l::buffer::Type::VideoCapture, 4).unwrap();
        for _ in 0..3 {
            let (data, metadata) = CaptureStream::next(&mut stream).unwrap();
            assert_eq!(metadata.bytesused as usize, frame.len());
            assert!(data[..frame.len()] == frame[..], "a frame read back differs from the one written");
        }
    }
    drop(writer);
    run_tool("rmmod", &["v4l2loopback"]);
}

/// A running `deepgate run`: its JSON lines as they come, its standard error kept.
struct Running {
    child: Child,
    lines: Receiver<Value>,
    stderr: Arc<Mutex<String>>,
    seen: Vec<Value>,
}

impl Running {
    fn start(guest: &Guest, board: &Path) -> Running {
        let mut child = Command::new(&guest.deepgate)
            .args(["run", "--board", board.to_str().unwrap()])
            .current_dir(&guest.root)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("deepgate run: {line}");
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if sender.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let kept = stderr.clone();
        let error_stream = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(error_stream).lines().map_while(Result::ok) {
                eprintln!("deepgate run (stderr): {line}");
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        Running { child, lines, stderr, seen: Vec::new() }
    }

    /// Lines until one satisfies `found` (returned with those before it); fails naming `what` after `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, found: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let done = found(&line);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(_) => panic!(
                    "{what}: not within {timeout:?}; lines since the last wait: {lines:#?}\nstderr:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Every line that arrives within `period`.
    fn collect(&mut self, period: Duration) -> Vec<Value> {
        let deadline = Instant::now() + period;
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line.clone());
            lines.push(line);
        }
        lines
    }

    /// Waits until the runtime logs that the camera streams (models load first; under emulation that takes
    /// tens of seconds), so that what a test observes afterwards is about frames.
    fn wait_until_streaming(&self, timeout: Duration) {
        let start = Instant::now();
        while !self.stderr().contains("streaming, first frame after opening") {
            assert!(
                start.elapsed() < timeout,
                "the camera did not stream within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the standard error holds `text`: its lines come through another pipe and thread than the
    /// JSON lines, so a log line written before a health line may be read after it.
    fn wait_for_log(&self, text: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.stderr().contains(text) {
            assert!(
                start.elapsed() < timeout,
                "no log line with `{text}` within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, as a service manager stops the kiosk; the runtime must exit cleanly and soon.
    fn stop(mut self) -> ExitStatus {
        run_tool("kill", &["-TERM", &self.child.id().to_string()]);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "deepgate run ignored SIGTERM for 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave the runtime holding a device for the next one.
        if self.child.try_wait().ok().flatten().is_none() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

fn is_verdict(line: &Value) -> bool {
    line["type"] == "verdict"
}

fn is_health(line: &Value, state: &str) -> bool {
    line["type"] == "health" && line["state"] == state
}

#[test]
fn face_photos_through_a_loopback_camera_get_verdicts() {
    let Some(guest) = guest() else { return };
    faces_through_a_loopback_camera(&guest, 1);
}

/// The same on two threads (`[runtime] threads = 2`): the V4L2 source, asked not to wait while a frame is in
/// flight (`FrameSource::may_wait`), polls without waiting and says it has no frame now, and the frame in flight
/// still reaches its verdict.
#[test]
fn face_photos_through_a_loopback_camera_get_verdicts_on_two_threads() {
    let Some(guest) = guest() else { return };
    faces_through_a_loopback_camera(&guest, 2);
}

fn faces_through_a_loopback_camera(guest: &Guest, threads: usize) {
    insmod_loopback(guest, 10);
    // A scene without a face first; the capture side has a format only once a writer streams.
    let writer = Writer::start("/dev/video10", photo_frames(guest, "scenes/coffee.png", 0.9, 6));
    std::thread::sleep(Duration::from_millis(500));
    let source =
        "device = \"/dev/video10\"\nformat = \"YUYV\"\nwidth = 640\nheight = 480\nframe_rate = 10.0\n\
                  allow_virtual = true";
    let board = board_with_threads(guest, &format!("loopback-faces-{threads}"), source, threads, "");
    let mut running = Running::start(guest, &board);
    running.wait_until_streaming(Duration::from_secs(120));
    let scene = running.collect(Duration::from_secs(20));
    assert!(
        !scene.iter().any(|line| is_verdict(line) && line["decision"] == "genuine"),
        "a scene without a face was let through: {scene:#?}"
    );
    // Then a genuine face is filmed: it must be let through within a bounded time. The face must be large in
    // the frame, as at a kiosk (BlazeFace's front model misses faces under about a fifth of the frame).
    writer.show(photo_frames(guest, "faces/astronaut.png", 1.2, 6));
    let lines = running.wait_for("a verdict on the filmed face", Duration::from_secs(120), is_verdict);
    let verdict = lines.last().unwrap();
    assert_eq!(verdict["decision"], "genuine", "{verdict}\nstderr:\n{}", running.stderr());
    let stderr = running.stderr();
    let status = running.stop();
    assert!(status.success(), "deepgate run ended with {status} after SIGTERM\n{stderr}");
    drop(writer);
    run_tool("rmmod", &["v4l2loopback"]);
}

fn vivid_source(pins: &str) -> String {
    format!(
        "device = \"/dev/video0\"\nformat = \"YUYV\"\nwidth = 640\nheight = 480\nframe_rate = 25.0\n\
         allow_virtual = true\n{pins}"
    )
}

/// Starts `deepgate run` on vivid and waits until it streams (the first health or verdict line, or a while).
fn run_on_vivid(guest: &Guest, name: &str, pins: &str) -> Running {
    let board = board(guest, name, &vivid_source(pins), "");
    let mut running = Running::start(guest, &board);
    running.wait_until_streaming(Duration::from_secs(120));
    running.collect(Duration::from_secs(3));
    assert!(running.child.try_wait().unwrap().is_none(), "deepgate run ended early:\n{}", running.stderr());
    running
}

#[test]
fn an_unplugged_camera_is_reported_lost_and_recovers_when_plugged_back() {
    let Some(guest) = guest() else { return };
    let mut running = run_on_vivid(&guest, "vivid-unplug", "");
    vivid_bind(false);
    running.wait_for("camera_lost after vivid was unbound", Duration::from_secs(60), |line| {
        is_health(line, "camera_lost")
    });
    let while_lost = running.collect(Duration::from_secs(5));
    assert!(!while_lost.iter().any(is_verdict), "verdicts while the camera was lost: {while_lost:#?}");
    vivid_bind(true);
    running.wait_for("normal after vivid was bound again", Duration::from_secs(60), |line| {
        is_health(line, "normal")
    });
    // Frames flow again: a second unplug is noticed too.
    running.collect(Duration::from_secs(3));
    vivid_bind(false);
    running.wait_for("camera_lost after the second unbind", Duration::from_secs(60), |line| {
        is_health(line, "camera_lost")
    });
    vivid_bind(true);
    running
        .wait_for("normal after the second bind", Duration::from_secs(60), |line| is_health(line, "normal"));
    let status = running.stop();
    assert!(status.success(), "deepgate run ended with {status} after SIGTERM");
}

#[test]
fn a_different_camera_at_the_same_path_is_not_taken_for_the_pinned_one() {
    let Some(guest) = guest() else { return };
    // The identity vivid reports, pinned as a site would pin its camera.
    let probe = board(&guest, "vivid-probe", &vivid_source(""), "");
    let (line, output) = capture(&guest, &probe, 1);
    let line = line.unwrap_or_else(|| panic!("no capture line: {}", String::from_utf8_lossy(&output.stderr)));
    let pins =
        format!("driver = {}\ncard = {}\nbus_info = {}", line["driver"], line["card"], line["bus_info"]);
    let mut running = run_on_vivid(&guest, "vivid-pinned", &pins);
    vivid_bind(false);
    running.wait_for("camera_lost after vivid was unbound", Duration::from_secs(60), |line| {
        is_health(line, "camera_lost")
    });
    // Another driver's device appears at /dev/video0 (the runtime has let go of the old node).
    insmod_loopback(&guest, 0);
    assert_eq!(driver_name(0).as_deref(), Some("deepgate-loopback"), "v4l2loopback did not get /dev/video0");
    let lines = running.collect(Duration::from_secs(15));
    assert!(!lines.iter().any(|line| is_health(line, "normal")), "recovered onto another camera: {lines:#?}");
    assert!(!lines.iter().any(is_verdict), "verdicts from another camera: {lines:#?}");
    let stderr = running.stderr();
    assert!(
        stderr.contains("is not the pinned camera"),
        "no log line says the device at the path is not the pinned camera:\n{stderr}"
    );
    run_tool("rmmod", &["v4l2loopback"]);
    vivid_bind(true);
    running.wait_for("normal when vivid is back", Duration::from_secs(60), |line| is_health(line, "normal"));
    let status = running.stop();
    assert!(status.success(), "deepgate run ended with {status} after SIGTERM");
}

/// A fresh, empty state directory for one test, and the enrolment file in it (not there yet).
fn enrolment_file(guest: &Guest, name: &str) -> PathBuf {
    let directory = guest.root.join("state").join(name);
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory.join("camera.json")
}

/// `deepgate enroll --board FILE` and its JSON line.
fn enroll(guest: &Guest, board: &Path, replace: bool) -> (Option<Value>, std::process::Output) {
    let mut arguments = vec!["enroll", "--board", board.to_str().unwrap()];
    if replace {
        arguments.push("--replace");
    }
    let output = deepgate(guest, &arguments);
    let line = json_lines(&output.stdout).into_iter().find(|line| line["type"] == "enrolment");
    (line, output)
}

#[test]
fn only_the_enrolled_camera_is_used_across_restarts() {
    let Some(guest) = guest() else { return };
    let file = enrolment_file(&guest, "enrolled");
    let pins = format!("enrolment = \"{}\"", file.display());
    let board = board(&guest, "vivid-enrolled", &vivid_source(&pins), "");
    // Nothing enrolled: every camera is refused, at install time (capture) and by the runtime, which waits in
    // camera_lost (the controller sees tamper) and takes the camera once it is enrolled.
    let (_, output) = capture(&guest, &board, 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no camera is enrolled"), "{stderr}");
    let mut running = Running::start(&guest, &board);
    running.wait_for("camera_lost before enrolment", Duration::from_secs(120), |line| {
        is_health(line, "camera_lost")
    });
    running.wait_for_log("no camera is enrolled", Duration::from_secs(10));
    let (line, output) = enroll(&guest, &board, false);
    let line =
        line.unwrap_or_else(|| panic!("no enrolment line: {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        (&line["driver"], &line["device"]),
        (&Value::from("vivid"), &Value::from("/dev/video0")),
        "{line}"
    );
    assert!(line["usb"].is_null() && line["replaced"].is_null(), "vivid is no USB device: {line}");
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!((&stored["bus_info"], &stored["usb"]), (&line["bus_info"], &Value::Null), "{stored}");
    running.wait_for("normal once the camera is enrolled", Duration::from_secs(60), |line| {
        is_health(line, "normal")
    });
    // A second enrolment needs --replace.
    let (_, output) = enroll(&guest, &board, false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already enrolled") && stderr.contains("--replace"), "{stderr}");
    assert!(running.stop().success());

    // A restart: the enrolment is read back and the camera accepted from the first frame.
    let mut running = Running::start(&guest, &board);
    running.wait_until_streaming(Duration::from_secs(120));
    let lines = running.collect(Duration::from_secs(3));
    assert!(
        !lines.iter().any(|line| is_health(line, "camera_lost")),
        "the enrolled camera refused: {lines:#?}"
    );
    // Another camera where the enrolled one was (same path, nothing else pinned) at the next start: nothing
    // pinned in memory yet, the enrolment alone refuses it, and the runtime waits for the enrolled camera.
    assert!(running.stop().success());
    vivid_bind(false);
    insmod_loopback(&guest, 0);
    assert_eq!(driver_name(0).as_deref(), Some("deepgate-loopback"), "v4l2loopback did not get /dev/video0");
    let mut running = Running::start(&guest, &board);
    running.wait_for("camera_lost for another camera", Duration::from_secs(120), |line| {
        is_health(line, "camera_lost")
    });
    let lines = running.collect(Duration::from_secs(10));
    assert!(!lines.iter().any(|line| is_health(line, "normal")), "another camera was used: {lines:#?}");
    assert!(!lines.iter().any(is_verdict), "verdicts from another camera: {lines:#?}");
    running.wait_for_log(
        "is not the enrolled camera: driver: enrolled `vivid`, found `v4l2 loopback`",
        Duration::from_secs(10),
    );
    let stderr = running.stderr();
    assert!(!stderr.contains("streaming, first frame"), "another camera streamed:\n{stderr}");
    run_tool("rmmod", &["v4l2loopback"]);
    vivid_bind(true);
    running.wait_for("normal when vivid is back", Duration::from_secs(60), |line| is_health(line, "normal"));
    let status = running.stop();
    assert!(status.success(), "deepgate run ended with {status} after SIGTERM");
}

#[test]
fn a_frozen_picture_is_a_camera_fault_until_it_moves() {
    let Some(guest) = guest() else { return };
    insmod_loopback(&guest, 10);
    // One still, written over and over: what an injector replaying a photo, or a stuck camera, delivers.
    let still = photo_frames(&guest, "faces/astronaut.png", 1.2, 1);
    let writer = Writer::start("/dev/video10", still);
    std::thread::sleep(Duration::from_millis(500));
    let source =
        "device = \"/dev/video10\"\nformat = \"YUYV\"\nwidth = 640\nheight = 480\nframe_rate = 10.0\n\
                  allow_virtual = true\nfrozen_frames = 20";
    // Three frames at least for a decision: a still gives two (the first and the one its repeats are compared
    // with); its repeats are no new evidence and are withheld.
    let board = board(&guest, "loopback-frozen", source, "[decision]\nmin_frames = 3");
    let mut running = Running::start(&guest, &board);
    running.wait_until_streaming(Duration::from_secs(120));
    let lines = running.wait_for("camera_lost for a frozen picture", Duration::from_secs(60), |line| {
        is_health(line, "camera_lost")
    });
    assert!(!lines.iter().any(is_verdict), "a verdict on a still picture: {lines:#?}");
    running.wait_for_log("frozen: 20 frames in a row repeat the one before", Duration::from_secs(10));
    let while_frozen = running.collect(Duration::from_secs(5));
    assert!(!while_frozen.iter().any(is_verdict), "verdicts on a frozen picture: {while_frozen:#?}");
    // The picture moves again: the camera is live, and the controller told so.
    writer.show(photo_frames(&guest, "faces/astronaut.png", 1.2, 6));
    running
        .wait_for("normal once the picture moves", Duration::from_secs(60), |line| is_health(line, "normal"));
    running.wait_for_log("the picture changes again", Duration::from_secs(10));
    let log = running.stderr.clone();
    let status = running.stop();
    assert!(status.success(), "deepgate run ended with {status} after SIGTERM");
    // The camera's summary at exit: the still's repeats were withheld, and it froze once.
    wait_until("the camera summary", Duration::from_secs(5), || {
        log.lock().unwrap().contains("frames delivered")
    });
    let log = log.lock().unwrap().clone();
    let summary = log.lines().find(|line| line.contains("frames delivered")).unwrap();
    let repeated: u64 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" repeated (withheld)"))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no repeat count in {summary}"));
    assert!(repeated >= 20 && summary.contains(", 1 frozen,"), "{summary}");
    drop(writer);
    run_tool("rmmod", &["v4l2loopback"]);
}
