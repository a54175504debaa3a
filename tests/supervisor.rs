//! The supervisor driven directly, as `deepgate run` drives it, with a recording gate and a door relay on a
//! recorded line: a replay board played to its end (verdicts to the gate and the door, a failed input counted),
//! a scripted live camera that goes and comes back (the failure policy told to every gate, the door in its
//! fault state meanwhile), and models that fail their checks on a board that allows retries.

mod common;

use deepgate::capture::scripted::{ScriptedCamera, Step, NAME};
use deepgate::config::BoardConfig;
use deepgate::decide::Decision;
use deepgate::frame::PixelFormat;
use deepgate::gate::relay::{Authority, DoorMode, DoorState, RecordingLine, RelayGate, RelaySettings};
use deepgate::gate::{Gate, VerdictMessage};
use deepgate::health::{Health, State};
use deepgate::supervisor::{Outputs, Supervisor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the controller's gate was told.
#[derive(Default)]
struct Told {
    verdicts: Vec<(String, Decision)>,
    health: Vec<Health>,
}

/// A controller gate that records what it is told; the test keeps a clone to read it.
#[derive(Clone, Default)]
struct RecordingGate(Arc<Mutex<Told>>);

impl RecordingGate {
    fn verdicts(&self) -> Vec<(String, Decision)> {
        self.0.lock().unwrap().verdicts.clone()
    }

    fn states(&self) -> Vec<State> {
        self.0.lock().unwrap().health.iter().map(Health::state).collect()
    }
}

impl Gate for RecordingGate {
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> anyhow::Result<()> {
        self.0.lock().unwrap().verdicts.push((verdict.source.to_string(), verdict.decision));
        Ok(())
    }

    fn flush(&mut self, _timeout: Duration) -> anyhow::Result<()> {
        Ok(())
    }

    fn describe(&self) -> &str {
        "recording"
    }

    fn set_health(&mut self, health: Health) {
        self.0.lock().unwrap().health.push(health);
    }
}

/// A maglock (energised = locked) whose fault state is unlocked, so that every fault is visible on the line.
fn maglock() -> (RelayGate, RecordingLine) {
    let line = RecordingLine::default();
    let settings = RelaySettings {
        mode: DoorMode::FailSafe,
        fault_state: DoorState::Unlocked,
        authority: Authority::Standalone,
        pulse: Duration::from_millis(100),
        watchdog: Duration::from_secs(10),
    };
    (RelayGate::start(Box::new(line.clone()), settings).expect("the relay starts"), line)
}

/// The line's states in order, repeated writes of one state counted once.
fn transitions(line: &RecordingLine) -> Vec<bool> {
    let mut states: Vec<bool> = line.writes().into_iter().map(|(_, energised)| energised).collect();
    states.dedup();
    states
}

#[test]
fn a_replay_board_plays_to_its_end_with_verdicts_at_the_gate_and_a_failed_input_counted() {
    let inputs = [
        common::fixture("faces/obama.jpg"),
        common::fixture("scenes/coffee.png"),
        common::fixture("bad/text.jpg"),
    ];
    let paths: Vec<&std::path::Path> = inputs.iter().map(|path| path.as_path()).collect();
    // Paced like a camera at 5 frames a second, so that the relay's thread sees the door fed between frames.
    let board = common::board(None, &paths, &[("source.frame_rate", "5.0")]);
    let config = BoardConfig::load(&board).unwrap();
    let gate = RecordingGate::default();
    let (relay, line) = maglock();
    let stop = AtomicBool::new(false);
    let outputs = Outputs { gate: Box::new(gate.clone()), relay: Some(relay) };
    let mut supervisor = Supervisor::start(&config, outputs, &stop).unwrap().expect("the models are valid");
    assert_eq!(supervisor.health().state(), State::Normal);
    supervisor.run().unwrap();
    let summary = supervisor.finish();
    assert_eq!(
        (summary.frames, summary.verdicts, summary.withheld, summary.failures),
        (2, 2, 0, 1),
        "{summary:?}"
    );
    assert!(!summary.live && summary.failed(), "a replay input that failed fails the run");
    let verdicts = gate.verdicts();
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    assert!(verdicts[0].0.ends_with("obama.jpg") && verdicts[0].1 != Decision::NoFace, "{verdicts:?}");
    assert!(verdicts[1].0.ends_with("coffee.png") && verdicts[1].1 == Decision::NoFace, "{verdicts:?}");
    assert_eq!(gate.states(), [], "nothing failed that the controller must hear of");
    // Held in its fault state (unlocked) until the first frame, locked while fed, in its fault state again
    // once the supervisor has finished.
    assert_eq!(transitions(&line), [false, true, false], "{:?}", line.writes());
}

#[test]
fn a_camera_that_goes_puts_the_door_in_its_fault_state_and_tells_the_controller_until_it_is_back() {
    let config = BoardConfig::load(&common::board(None, &[], &[])).unwrap();
    let image = deepgate::codec::decode_image_file(&common::fixture("scenes/coffee.png")).unwrap();
    assert_eq!(image.format, PixelFormat::Rgb24);
    let gate = RecordingGate::default();
    let (relay, line) = maglock();
    let stop = AtomicBool::new(false);
    let outputs = Outputs { gate: Box::new(gate.clone()), relay: Some(relay) };
    let mut supervisor = Supervisor::start(&config, outputs, &stop).unwrap().expect("the models are valid");
    let mut script = vec![Step::Frame; 2];
    script.extend([Step::Lost; 3]);
    script.extend([Step::Frame; 2]);
    // A camera's pace (about 15 frames a second), and a loss long enough for the relay's thread to write the
    // fault state before the camera is back: the relay's thread sees each change of the door.
    let mut camera = ScriptedCamera::new(image, script).paced(Duration::from_millis(60)).stopping(&stop);
    supervisor.run_live(&mut camera, NAME.into());
    let summary = supervisor.finish();
    assert_eq!((summary.frames, summary.failures), (4, 0), "{summary:?}");
    assert!(summary.live && !summary.failed(), "a camera run ends on a signal, its normal end");
    assert_eq!(
        gate.states(),
        [State::CameraLost, State::Normal],
        "the controller hears of the loss and the return"
    );
    // Fault state until fed, locked, the fault state while the camera is gone, locked again, and the fault state
    // at the end.
    assert_eq!(transitions(&line), [false, true, false, true, false], "{:?}", line.writes());
    // The open session (no face) was abandoned when the camera went; the one after it ends with the run.
    assert!(gate.verdicts().is_empty(), "{:?}", gate.verdicts());
}

#[test]
fn invalid_models_on_a_board_that_retries_hold_the_door_and_tell_the_controller_until_stopped() {
    let board = common::board(None, &[], &[("runtime.model_retry_s", "1")]);
    let model = board.parent().unwrap().join("blazeface_front_128.onnx");
    std::fs::write(&model, b"not a model").unwrap();
    let config = BoardConfig::load(&board).unwrap();
    let gate = RecordingGate::default();
    let (relay, line) = maglock();
    let stop = AtomicBool::new(false);
    let outputs = Outputs { gate: Box::new(gate.clone()), relay: Some(relay) };
    let started = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            stop.store(true, Ordering::Relaxed);
        });
        Supervisor::start(&config, outputs, &stop)
    });
    assert!(
        started.unwrap().is_none(),
        "a stop while the models are invalid ends the start without a pipeline"
    );
    assert_eq!(gate.states(), [State::ModelInvalid], "told once, however often the load is retried");
    assert_eq!(line.energised(), Some(false), "the maglock is in its fault state: {:?}", line.writes());
    assert!(!transitions(&line).contains(&true), "the door never locked: {:?}", line.writes());
}

/// A gate that refuses the verdicts the test marks (as a TCP gate whose spool write fails) and whose worker
/// thread panics at the report the test names (a real thread, a real panic); it records like `RecordingGate`.
struct FailingGate {
    recording: RecordingGate,
    reports: u32,
    refuse: Vec<u32>,
    panic_at: u32,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Gate for FailingGate {
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> anyhow::Result<()> {
        self.reports += 1;
        if self.reports == self.panic_at {
            let worker =
                std::thread::spawn(|| panic!("the gate's worker panicked (deliberately, in a test)"));
            while !worker.is_finished() {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.worker = Some(worker);
        }
        if self.refuse.contains(&self.reports) {
            anyhow::bail!("writing the spool: No space left on device (os error 28)");
        }
        self.recording.report(verdict)
    }

    fn flush(&mut self, _timeout: Duration) -> anyhow::Result<()> {
        Ok(())
    }

    fn describe(&self) -> &str {
        "failing"
    }

    fn set_health(&mut self, health: Health) {
        self.recording.set_health(health);
    }

    fn worker_alive(&self) -> bool {
        self.worker.as_ref().is_none_or(|worker| !worker.is_finished())
    }
}

#[test]
fn a_verdict_the_gate_refuses_and_a_dead_gate_worker_are_health_the_controller_sees() {
    let photo = common::fixture("faces/obama.jpg");
    let scene = common::fixture("scenes/coffee.png");
    let board = common::board(None, &[&photo, &scene, &photo, &scene, &photo], &[]);
    let config = BoardConfig::load(&board).unwrap();
    let recording = RecordingGate::default();
    let gate =
        FailingGate { recording: recording.clone(), reports: 0, refuse: vec![1], panic_at: 3, worker: None };
    let stop = AtomicBool::new(false);
    let outputs = Outputs { gate: Box::new(gate), relay: None };
    let mut supervisor = Supervisor::start(&config, outputs, &stop).unwrap().expect("the models are valid");
    supervisor.run().unwrap();
    assert!(!supervisor.health().can_decide(), "a dead worker stops decisions");
    let summary = supervisor.finish();
    // The first verdict refused (delivery_failed), the second taken (normal again), the third taken while
    // its worker died; from the next frame on: worker_dead, verdicts withheld.
    assert_eq!(recording.states(), [State::DeliveryFailed, State::Normal, State::WorkerDead], "{summary:?}");
    assert_eq!((summary.verdicts, summary.withheld), (3, 2), "{summary:?}");
    assert_eq!(recording.verdicts().len(), 2, "the refused one is not delivered");
}

/// A live source that fails where its script says (as the V4L2 source fails a corrupt MJPEG or short frame)
/// and otherwise is the scripted camera.
struct Failing<'a> {
    camera: ScriptedCamera<'a>,
    fails: std::collections::VecDeque<bool>,
}

impl deepgate::capture::FrameSource for Failing<'_> {
    fn next_frame(&mut self) -> anyhow::Result<Option<deepgate::frame::Frame<'_>>> {
        if self.fails.pop_front() == Some(true) {
            std::thread::sleep(Duration::from_millis(10));
            anyhow::bail!("{NAME}: MJPEG frame is not a complete JPEG; dropped");
        }
        self.camera.next_frame()
    }

    fn describe(&self) -> &str {
        self.camera.describe()
    }

    fn camera_up(&self) -> Option<bool> {
        self.camera.camera_up()
    }
}

#[test]
fn a_streak_of_failed_frames_stops_decisions_until_as_many_good_frames_follow() {
    let board = common::board(None, &[], &[("runtime.overload_frames", "3")]);
    let config = BoardConfig::load(&board).unwrap();
    let image = deepgate::codec::decode_image_file(&common::fixture("scenes/coffee.png")).unwrap();
    let gate = RecordingGate::default();
    let (relay, line) = maglock();
    let stop = AtomicBool::new(false);
    let outputs = Outputs { gate: Box::new(gate.clone()), relay: Some(relay) };
    let mut supervisor = Supervisor::start(&config, outputs, &stop).unwrap().expect("the models are valid");
    // Two failures (no streak), a frame, four failures (a streak of three and more), four frames.
    let fails = [false, true, true, false, true, true, true, true, false, false, false, false];
    let frames = fails.iter().filter(|fail| !**fail).count();
    let camera = ScriptedCamera::new(image, vec![Step::Frame; frames])
        .paced(Duration::from_millis(60))
        .stopping(&stop);
    let mut source = Failing { camera, fails: fails.into_iter().collect() };
    supervisor.run_live(&mut source, NAME.into());
    let summary = supervisor.finish();
    assert_eq!((summary.frames, summary.failures), (frames as u64, 6), "{summary:?}");
    assert_eq!(gate.states(), [State::FrameErrors, State::Normal], "told of the streak and its end");
    // The door: fault state until fed, locked, fault state during the streak, locked again, fault state at the end.
    assert_eq!(transitions(&line), [false, true, false, true, false], "{:?}", line.writes());
}

#[test]
fn a_panic_on_a_gate_thread_ends_the_run_with_status_101_for_a_restart() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let spool = common::temp_dir("panic-spool").join("gate.spool");
    let inputs = [common::fixture("faces/obama.jpg")];
    let board = common::board(
        None,
        &[&inputs[0]],
        &[
            ("gate", &format!("{{ kind = \"tcp\", address = \"{address}\", queue = 16, spool = {spool:?}, insecure = true }}")),
            ("source.repeat", "true"),
            ("source.frame_rate", "5.0"),
        ],
    );
    let output = std::process::Command::new(common::exe())
        .args(["run", "--board", common::text(&board)])
        .env("RUST_LOG", "warn")
        .env("DEEPGATE_DEBUG_PANIC", "gate-tcp")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("thread `gate-tcp` panicked: ending the process"), "{stderr}");
    // Without the switch the same board runs until stopped: the panic, not the board, ended it.
    let mut child = std::process::Command::new(common::exe())
        .args(["run", "--board", common::text(&board)])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "the run goes on");
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
