//! systemd's watchdog and a live camera, through the supervisor as `deepgate run` drives it: while the camera
//! is lost and being re-opened the loop goes on pinging (a restart would do nothing more), while a camera that
//! says it streams delivers nothing the pings stop, so that the watchdog restarts the unit. One test in this
//! binary: it sets `NOTIFY_SOCKET` in its own process environment, which no other test may share.

mod common;

use deepgate::capture::scripted::{ScriptedCamera, Step, NAME};
use deepgate::config::BoardConfig;
use deepgate::frame::PixelFormat;
use deepgate::gate::stdout::StdoutGate;
use deepgate::supervisor::{Outputs, Supervisor};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long each phase of the camera lasts: frames, lost, frames, silent; then it sets `stop`.
const PHASE: Duration = Duration::from_millis(1200);
const PHASES: [Step; 4] = [Step::Frame, Step::Lost, Step::Frame, Step::Silent];

#[test]
fn a_lost_camera_being_reopened_keeps_the_watchdog_fed_and_a_silent_one_does_not() {
    let directory = common::temp_dir("notify-camera");
    let socket_path = directory.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    std::env::set_var("NOTIFY_SOCKET", &socket_path);
    std::env::set_var("WATCHDOG_USEC", "200000");
    std::env::remove_var("WATCHDOG_PID");
    let config = BoardConfig::load(&common::board(None, &[], &[])).unwrap();
    let image = deepgate::codec::decode_image_file(&common::fixture("scenes/coffee.png")).unwrap();
    assert_eq!(image.format, PixelFormat::Rgb24);
    let stop = AtomicBool::new(false);
    let outputs = Outputs { gate: Box::new(StdoutGate::default()), relay: None };
    let mut supervisor = Supervisor::start(&config, outputs, &stop).unwrap().expect("the models are valid");
    // Only what the run says is kept (the start-up status lines are drained), with its time since the camera
    // started.
    socket.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 512];
    while socket.recv(&mut buffer).is_ok() {}
    socket.set_nonblocking(false).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let started = Instant::now();
    let listening = AtomicBool::new(true);
    let messages = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            let mut buffer = [0u8; 512];
            let mut messages = Vec::new();
            while listening.load(Ordering::Relaxed) {
                if let Ok(length) = socket.recv(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                    messages.push((started.elapsed(), text));
                }
            }
            messages
        });
        // A camera's pace, and the V4L2 source's bounded wait when there is no frame.
        let mut camera =
            ScriptedCamera::timed(image, &PHASES, PHASE).paced(Duration::from_millis(50)).stopping(&stop);
        supervisor.run_live(&mut camera, NAME.into());
        assert!(supervisor.finish().frames > 0);
        listening.store(false, Ordering::Relaxed);
        receiver.join().unwrap()
    });
    let pings = |from: Duration, to: Duration| {
        messages.iter().filter(|(at, text)| text == "WATCHDOG=1" && *at >= from && *at < to).count()
    };
    let texts: Vec<&str> = messages.iter().map(|(_, text)| text.as_str()).collect();
    assert!(texts.iter().any(|text| text.starts_with("READY=1")), "{texts:?}");
    assert!(texts.iter().any(|text| text.starts_with("STATUS=health: camera_lost")), "{texts:?}");
    let margin = Duration::from_millis(300);
    // A ping every 100 ms while frames flow, and while the lost camera is re-opened.
    assert!(pings(margin, PHASE) >= 5, "pinged while frames flow: {messages:?}");
    assert!(pings(PHASE + margin, 2 * PHASE) >= 5, "pinged while the camera is re-opened: {messages:?}");
    assert!(pings(2 * PHASE + margin, 3 * PHASE) >= 5, "pinged when frames are back: {messages:?}");
    // Up but silent: the last frame's ping, then none, so that systemd's watchdog would fire.
    assert_eq!(pings(3 * PHASE + margin, 4 * PHASE), 0, "no ping while the camera is silent: {messages:?}");
}
