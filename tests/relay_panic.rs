//! The relay's panic hook, in a test binary of its own because the hook is process-wide: a panic on any
//! thread puts the door into its fault state at once, latched until the process restarts.

use deepgate::decide::Decision;
use deepgate::gate::relay::{
    install_panic_hook, Authority, DoorMode, DoorState, RecordingLine, RelayGate, RelaySettings,
};
use deepgate::gate::{Gate, VerdictMessage};
use std::time::{Duration, Instant};

#[test]
fn a_panic_on_another_thread_latches_the_fault_state() {
    install_panic_hook();
    let line = RecordingLine::default();
    let settings = RelaySettings {
        mode: DoorMode::FailSafe,
        fault_state: DoorState::Unlocked,
        authority: Authority::Standalone,
        pulse: Duration::from_millis(200),
        watchdog: Duration::from_secs(5),
    };
    let mut relay = RelayGate::start(Box::new(line.clone()), settings).unwrap();
    relay.feed();
    let deadline = Instant::now() + Duration::from_secs(5);
    while line.energised() != Some(true) {
        assert!(Instant::now() < deadline, "the first feed did not lock the maglock");
        std::thread::sleep(Duration::from_millis(2));
    }

    // A GPU library's panic that the runtime contains (and falls back from) is not a fault of the process.
    let contained = deepgate::gpu::contain("the CUDA library", || -> anyhow::Result<()> {
        panic!("could not create a stream (deliberately, in a test)")
    });
    assert!(contained.unwrap_err().to_string().contains("could not create a stream"));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(line.energised(), Some(true), "a contained panic released the maglock");

    // Not the relay's owner: nothing unwinds into the relay, only the hook can act.
    let worker = std::thread::spawn(|| panic!("a worker panicked (deliberately, in a test)"));
    assert!(worker.join().is_err());
    // The hook ran on the panicking thread before it finished: no wait needed.
    assert_eq!(line.energised(), Some(false), "the maglock was not released into its fault state");

    // Latched: neither a feed nor clear_fault ends it, and a genuine verdict is refused.
    relay.feed();
    relay.clear_fault();
    let verdict = VerdictMessage::sample("camera", Decision::Genuine);
    relay.report(&verdict).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        line.writes().iter().map(|&(_, energised)| energised).collect::<Vec<_>>(),
        [false, true, false]
    );
    assert_eq!(relay.stats().refused, 1);
}
