//! The supervisor driven directly, as `deepgate run` drives it, with a recording gate and a door relay on a
//! recorded line: a replay board played to its end (verdicts to the gate and the door, a failed input counted),
//! a scripted live camera that goes and comes back (the failure policy told to every gate, the door in its
//! fault state meanwhile), and models that fail their checks on a board that allows retries.

mod common;

use deepgate::capture::FrameSource;
use deepgate::config::BoardConfig;
use deepgate::decide::Decision;
use deepgate::frame::{Frame, PixelFormat};
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
    let board = common::board(None, &paths, &[("frame_rate = 0.0", "frame_rate = 5.0")]);
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

/// What the scripted camera does on each call.
#[derive(Clone, Copy)]
enum Step {
    Frame,
    Lost,
}

/// A live source that lends one photo as its frames, loses the camera where the script says, and sets the
/// stop flag (as a signal would) when the script is over.
struct ScriptedCamera<'a> {
    script: std::collections::VecDeque<Step>,
    photo: Vec<u8>,
    width: u32,
    height: u32,
    up: bool,
    delivered: u64,
    stop: &'a AtomicBool,
}

impl FrameSource for ScriptedCamera<'_> {
    fn next_frame(&mut self) -> anyhow::Result<Option<Frame<'_>>> {
        match self.script.pop_front() {
            Some(Step::Frame) => {
                // A camera's pace (about 15 frames a second): the relay's thread sees each change of the door.
                std::thread::sleep(Duration::from_millis(60));
                let discontinuity = !self.up || self.delivered == 0;
                self.up = true;
                self.delivered += 1;
                Ok(Some(Frame {
                    format: PixelFormat::Rgb24,
                    width: self.width,
                    height: self.height,
                    stride: self.width as usize * 3,
                    data: &self.photo,
                    source: "/dev/video-scripted",
                    sequence: self.delivered - 1,
                    timestamp_ns: self.delivered * 33_000_000,
                    discontinuity,
                }))
            }
            Some(Step::Lost) => {
                self.up = false;
                // Long enough for the relay's thread to write the fault state before the camera is back.
                std::thread::sleep(Duration::from_millis(100));
                Ok(None)
            }
            None => {
                self.stop.store(true, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    fn describe(&self) -> &str {
        "/dev/video-scripted"
    }

    fn camera_up(&self) -> Option<bool> {
        Some(self.up)
    }
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
    let mut camera = ScriptedCamera {
        script: script.into(),
        photo: image.data,
        width: image.width,
        height: image.height,
        up: true,
        delivered: 0,
        stop: &stop,
    };
    supervisor.run_live(&mut camera, "/dev/video-scripted".into());
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
    let board = common::board(None, &[], &[("model_retry_s = 0", "model_retry_s = 1")]);
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
