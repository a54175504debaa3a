//! The failure policy state by state, as the door and the controller see it: `supervisor::apply_health` on a relay driving
//! a recorded line (a maglock that unlocks on faults, so every state is visible on the line) and a gate that
//! records what the controller is told. The OSDP view of the same states is in tests/osdp.rs.

use deepgate::decide::Decision;
use deepgate::gate::relay::{DoorMode, DoorState, RecordingLine, RelayGate, RelaySettings};
use deepgate::gate::{Gate, VerdictMessage};
use deepgate::health::{Event, Health, Monitor, OverloadPolicy, State};
use deepgate::supervisor::apply_health;
use std::time::{Duration, Instant};

/// A controller link that records what it is told.
#[derive(Default)]
struct RecordingGate {
    told: Vec<Health>,
    verdicts: u32,
}

impl Gate for RecordingGate {
    fn report(&mut self, _verdict: &VerdictMessage<'_>) -> anyhow::Result<()> {
        self.verdicts += 1;
        Ok(())
    }

    fn flush(&mut self, _timeout: Duration) -> anyhow::Result<()> {
        Ok(())
    }

    fn describe(&self) -> &str {
        "recording"
    }

    fn set_health(&mut self, health: Health) {
        self.told.push(health);
    }
}

const GENUINE: VerdictMessage<'static> = VerdictMessage::sample("camera", Decision::Genuine);

/// Whether the line reaches `energised` within 3 s.
fn settles_at(line: &RecordingLine, energised: bool) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if line.energised() == Some(energised) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Whether a genuine verdict opens the door (a maglock: unlocked = not energised) within 1 s.
fn genuine_opens(relay: &mut RelayGate, line: &RecordingLine) -> bool {
    let before = line.writes().len();
    relay.feed();
    relay.report(&GENUINE).unwrap();
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        if line.writes()[before..].iter().any(|&(_, energised)| !energised) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn each_state_puts_the_door_and_the_controller_where_the_policy_says() {
    // (events entering the state, the state, door in its fault state)
    let cases: [(&[Event], State, bool); 11] = [
        (&[], State::Normal, false),
        (&[Event::GpuFailed], State::GpuLost, false),
        (&[Event::GateLinkDown], State::GateLinkDown, false),
        (&[Event::FrameTime { ms: 900.0 }, Event::FrameTime { ms: 900.0 }], State::Overloaded, false),
        (&[Event::ModelInvalid], State::ModelInvalid, true),
        (&[Event::CameraLost], State::CameraLost, true),
        (&[Event::AuditWriteFailed { blocking: false }], State::AuditDegraded, false),
        (&[Event::DeliveryFailed], State::DeliveryFailed, false),
        (&[Event::FrameFailed, Event::FrameFailed], State::FrameErrors, true),
        (&[Event::AuditWriteFailed { blocking: true }], State::AuditFailed, true),
        (&[Event::WorkerDied], State::WorkerDead, true),
    ];
    for (events, state, door_fault) in cases {
        let line = RecordingLine::default();
        let settings = RelaySettings {
            mode: DoorMode::FailSafe,
            fault_state: DoorState::Unlocked,
            authority: deepgate::gate::relay::Authority::Standalone,
            pulse: Duration::from_millis(150),
            watchdog: Duration::from_secs(5),
        };
        let mut relay = RelayGate::start(Box::new(line.clone()), settings).unwrap();
        relay.feed();
        assert!(settles_at(&line, true), "{state:?}: a fed maglock is held locked (energised)");
        let mut gate = RecordingGate::default();
        let mut monitor = Monitor::new(OverloadPolicy { budget_ms: 100.0, window: 2 });
        let mut health = monitor.health();
        for event in events {
            if let Some(changed) = monitor.observe(*event) {
                health = changed;
                apply_health(changed, &mut [&mut relay, &mut gate]);
            }
        }
        assert_eq!(health.state(), state);
        if state != State::Normal {
            assert_eq!(gate.told.last().map(|told| told.state()), Some(state), "the controller is told");
        }
        if door_fault {
            assert!(settles_at(&line, false), "{state:?}: the maglock releases into its fault state");
            let refused = relay.stats().refused;
            relay.feed();
            relay.report(&GENUINE).unwrap();
            assert_eq!(relay.stats().refused, refused + 1, "{state:?}: a genuine verdict does not open it");
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(line.energised(), Some(false), "{state:?}: the door stays in its fault state");
            // Recovery: the door works again; a dead worker has none until restart.
            let back: &[Event] = match state {
                State::CameraLost => &[Event::CameraBack],
                State::ModelInvalid => &[Event::ModelValid],
                State::FrameErrors => &[Event::FrameTime { ms: 10.0 }, Event::FrameTime { ms: 10.0 }],
                State::AuditFailed => &[Event::AuditWritten],
                _ => {
                    assert_eq!(monitor.observe(Event::AuditWritten), None, "{state:?}: stays");
                    continue;
                }
            };
            let recovered = back.iter().filter_map(|event| monitor.observe(*event)).last().expect("a change");
            apply_health(recovered, &mut [&mut relay, &mut gate]);
            assert_eq!(gate.told.last().map(|told| told.state()), Some(State::Normal));
            relay.feed();
            assert!(settles_at(&line, true), "{state:?}: locked again after recovery");
            assert!(
                genuine_opens(&mut relay, &line),
                "{state:?}: a genuine face opens the door after recovery"
            );
        } else if state == State::Normal {
            assert!(genuine_opens(&mut relay, &line), "{state:?}: verdicts still open the door");
        } else {
            // Standalone, a genuine verdict opens the door only while the health is normal: the controller
            // link down or any fault refuses it.
            assert!(
                !genuine_opens(&mut relay, &line),
                "{state:?}: a standalone relay refuses while a fault holds"
            );
        }
    }
}
