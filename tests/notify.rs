//! `deepgate run` tells systemd what it is doing: the real binary, started with `NOTIFY_SOCKET` pointing at a
//! datagram socket this test reads (as systemd's would be) and `WATCHDOG_USEC` set, plays a Y4M video from a
//! named pipe that the test writes. `READY=1` must wait for the first processed frame, `WATCHDOG=1` must come
//! while frames flow and stop while the pipe gives nothing (the frame loop blocked in its source), and
//! `STATUS=` lines carry the health state.

mod common;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Half of it is the ping period: 200 ms.
const WATCHDOG_USEC: &str = "400000";

/// The runtime under test, killed if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every datagram that arrives on `socket` within `window`.
fn receive_for(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut buffer = [0u8; 1024];
    let mut messages = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) {
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(length) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
    }
    messages
}

fn pings(messages: &[String]) -> usize {
    messages.iter().filter(|message| message.as_str() == "WATCHDOG=1").count()
}

#[test]
fn ready_waits_for_the_first_frame_pings_stop_when_the_source_stalls_and_status_carries_health() {
    let directory = common::temp_dir("notify");
    let fifo = directory.join("camera.y4m");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    // The video's bytes, streamed into the pipe in steps: its header, then frames, then nothing for a while.
    let video = directory.join("video.y4m");
    common::drifting_video(&video, "faces/astronaut.png", 256, 256, 12, 4);
    let bytes = std::fs::read(&video).unwrap();
    let header_end = bytes.iter().position(|&byte| byte == b'\n').unwrap() + 1;
    // Every frame over a tiny budget: after 3 frames the runtime is `overloaded`, a change STATUS= must carry.
    let board = common::board(
        None,
        &[&fifo],
        &[
            ("source.frame_rate", "10.0"),
            ("runtime.frame_budget_ms", "1.0"),
            ("runtime.overload_frames", "3"),
        ],
    );
    let socket_path = directory.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let child = Command::new(common::exe())
        .args(["run", "--board"])
        .arg(&board)
        .current_dir(common::root())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("deepgate runs");
    let mut child = KillOnDrop(child);

    // The writer: the pipe opens once the runtime has loaded its models and opens its source.
    let (step_sender, step_receiver) = mpsc::channel::<&str>();
    let (done_sender, done_receiver) = mpsc::channel::<&str>();
    let writer = std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        pipe.write_all(&bytes[..header_end]).unwrap();
        done_sender.send("header").unwrap();
        step_receiver.recv().unwrap();
        pipe.write_all(&bytes[header_end..]).unwrap();
        done_sender.send("frames").unwrap();
        // Hold the pipe open with nothing in it: the runtime blocks reading its next frame.
        step_receiver.recv().unwrap();
        drop(pipe);
    });

    // The runtime loads its models, then opens its source: the pipe.
    let deadline = Instant::now() + Duration::from_secs(120);
    while done_receiver.recv_timeout(Duration::from_millis(100)).is_err() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("deepgate run ended before opening its source: {status}");
        }
        assert!(Instant::now() < deadline, "the runtime opens its source");
    }
    // Models loaded, source open, no frame yet: not ready.
    let before_frames = receive_for(&socket, Duration::from_millis(1500));
    assert!(before_frames.iter().all(|message| !message.contains("READY=1")), "{before_frames:?}");
    assert!(before_frames.iter().all(|message| message != "WATCHDOG=1"), "{before_frames:?}");

    step_sender.send("frames").unwrap();
    // 12 frames at 10 a second; the writer returns when at most a pipe's worth is left unread.
    let mut flowing = receive_for(&socket, Duration::from_millis(900));
    assert_eq!(done_receiver.recv_timeout(Duration::from_secs(60)), Ok("frames"));
    // What the pipe still held is played out, then the loop blocks in its source.
    flowing.extend(receive_for(&socket, Duration::from_millis(1500)));
    let ready =
        flowing.iter().position(|message| message.starts_with("READY=1")).expect("READY=1 after frames");
    assert_eq!(flowing[ready], "READY=1\nSTATUS=health: normal", "{flowing:?}");
    assert!(pings(&flowing[ready..]) >= 2, "WATCHDOG=1 while frames flow: {flowing:?}");
    assert!(
        flowing.iter().any(|message| message.starts_with("STATUS=health: overloaded")),
        "the health change in a STATUS= line: {flowing:?}"
    );

    // Stalled: three ping periods and more without a ping (a watchdog of 400 ms would fire).
    let stalled = receive_for(&socket, Duration::from_millis(1200));
    assert_eq!(pings(&stalled), 0, "no WATCHDOG=1 while the source gives nothing: {stalled:?}");

    // The end of the input ends the run cleanly, and says so.
    step_sender.send("close").unwrap();
    writer.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the run ends at the end of its input");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let last = receive_for(&socket, Duration::from_millis(200));
    assert!(last.iter().any(|message| message == "STOPPING=1"), "{last:?}");
}
