//! The door relay driven by verdicts, faults and its watchdog, observed on a recording line: which writes
//! reach the relay, in what order and when. Timing bounds are generous (a loaded two-core machine): lower
//! bounds are exact because a pulse may never end early, upper bounds only catch a pulse that does not end.

use deepgate::decide::Decision;
use deepgate::gate::relay::{Authority, DoorMode, DoorState, RecordingLine, RelayGate, RelaySettings};
use deepgate::gate::{Gate, VerdictMessage};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(5);
/// What "at once" may take here: a thread wake-up on a busy machine.
const PROMPT: Duration = Duration::from_millis(250);
/// How late a timed transition (pulse end, watchdog expiry, a retried write) may be.
const LATE: Duration = Duration::from_millis(400);

fn start(
    mode: DoorMode,
    fault_state: DoorState,
    pulse_ms: u64,
    watchdog_ms: u64,
) -> (RelayGate, RecordingLine) {
    start_with(mode, fault_state, Authority::Standalone, pulse_ms, watchdog_ms)
}

fn start_with(
    mode: DoorMode,
    fault_state: DoorState,
    authority: Authority,
    pulse_ms: u64,
    watchdog_ms: u64,
) -> (RelayGate, RecordingLine) {
    let line = RecordingLine::default();
    let settings = RelaySettings {
        mode,
        fault_state,
        authority,
        pulse: Duration::from_millis(pulse_ms),
        watchdog: Duration::from_millis(watchdog_ms),
    };
    let relay = RelayGate::start(Box::new(line.clone()), settings).expect("the relay starts");
    (relay, line)
}

fn verdict(decision: Decision) -> VerdictMessage<'static> {
    VerdictMessage::sample("camera", decision)
}

fn values(line: &RecordingLine) -> Vec<bool> {
    line.writes().into_iter().map(|(_, energised)| energised).collect()
}

/// Waits until the line has seen exactly `expected` writes, and returns the time of each.
fn wait_for(line: &RecordingLine, expected: &[bool]) -> Vec<Instant> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let writes = line.writes();
        let seen: Vec<bool> = writes.iter().map(|&(_, energised)| energised).collect();
        if seen == expected {
            return writes.into_iter().map(|(at, _)| at).collect();
        }
        assert!(
            seen.len() < expected.len() && expected.starts_with(&seen) && Instant::now() < deadline,
            "expected writes {expected:?}, saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks that the line stays at `expected` for a while: nothing further is written.
fn stays(line: &RecordingLine, expected: &[bool], quiet: Duration) {
    std::thread::sleep(quiet);
    assert_eq!(values(line), expected, "the relay was written when it should not have been");
}

#[test]
fn a_genuine_verdict_energises_a_strike_for_the_pulse_then_releases_it() {
    let (mut relay, line) = start(DoorMode::FailSecure, DoorState::Locked, 200, 5000);
    assert!(relay.describe().contains("recording line (fail_secure, pulse 200 ms"), "{}", relay.describe());
    // The fault state (locked: released) is written at start; feeding locks the door, which is the same
    // write.
    wait_for(&line, &[false]);
    relay.feed();
    let reported = Instant::now();
    relay.report(&verdict(Decision::Genuine)).unwrap();
    let times = wait_for(&line, &[false, true, false]);
    let (on, off) = (times[1] - reported, times[2].saturating_duration_since(reported));
    assert!(on < PROMPT, "the door opened {on:?} after the verdict");
    assert!(off >= Duration::from_millis(200), "the pulse ended early: {off:?}");
    assert!(off <= Duration::from_millis(200) + LATE, "the pulse ended late: {off:?}");
    assert_eq!(relay.stats().pulses, 1);
    stays(&line, &[false, true, false], Duration::from_millis(200));
}

#[test]
fn a_maglock_is_held_energised_and_released_for_the_pulse() {
    let (mut relay, line) = start(DoorMode::FailSafe, DoorState::Unlocked, 200, 5000);
    // Fault state unlocked: released at start; the first feed locks it: energised.
    wait_for(&line, &[false]);
    relay.feed();
    wait_for(&line, &[false, true]);
    let reported = Instant::now();
    relay.report(&verdict(Decision::Genuine)).unwrap();
    let times = wait_for(&line, &[false, true, false, true]);
    let held_open = times[3].saturating_duration_since(reported);
    assert!(held_open >= Duration::from_millis(200), "{held_open:?}");
    assert!(held_open <= Duration::from_millis(200) + LATE, "{held_open:?}");
}

#[test]
fn fake_uncertain_and_no_face_verdicts_leave_the_door_locked() {
    for (mode, fault_state, locked) in
        [(DoorMode::FailSecure, DoorState::Locked, false), (DoorMode::FailSafe, DoorState::Unlocked, true)]
    {
        let (mut relay, line) = start(mode, fault_state, 200, 5000);
        relay.feed();
        let expected = if locked { vec![false, true] } else { vec![false] };
        wait_for(&line, &expected);
        for decision in [Decision::Fake, Decision::Uncertain, Decision::NoFace] {
            relay.report(&verdict(decision)).unwrap();
        }
        stays(&line, &expected, Duration::from_millis(300));
        assert_eq!(relay.stats().pulses, 0);
    }
}

#[test]
fn a_genuine_verdict_during_a_pulse_restarts_it() {
    let (mut relay, line) = start(DoorMode::FailSecure, DoorState::Locked, 300, 5000);
    relay.feed();
    relay.report(&verdict(Decision::Genuine)).unwrap();
    wait_for(&line, &[false, true]);
    std::thread::sleep(Duration::from_millis(150));
    let second = Instant::now();
    relay.report(&verdict(Decision::Genuine)).unwrap();
    let times = wait_for(&line, &[false, true, false]);
    let off = times[2].saturating_duration_since(second);
    assert!(off >= Duration::from_millis(300), "the second verdict did not restart the pulse: {off:?}");
    assert!(off <= Duration::from_millis(300) + LATE, "{off:?}");
    assert_eq!(relay.stats().pulses, 2);
}

#[test]
fn the_door_holds_the_fault_state_until_the_first_feed_and_refuses_genuine_before_it() {
    let (mut relay, line) = start(DoorMode::FailSafe, DoorState::Unlocked, 200, 5000);
    wait_for(&line, &[false]);
    relay.report(&verdict(Decision::Genuine)).unwrap();
    stays(&line, &[false], Duration::from_millis(200));
    assert_eq!(relay.stats().refused, 1);
    relay.feed();
    wait_for(&line, &[false, true]);
}

#[test]
fn an_unfed_watchdog_puts_the_door_into_the_fault_state_and_a_feed_ends_it() {
    // A fire-egress maglock: the fault state is unlocked, so the watchdog's fault is a visible release.
    let (mut relay, line) = start(DoorMode::FailSafe, DoorState::Unlocked, 200, 300);
    relay.feed();
    let fed = Instant::now();
    wait_for(&line, &[false, true]);
    let times = wait_for(&line, &[false, true, false]);
    let expired = times[2].saturating_duration_since(fed);
    assert!(expired >= Duration::from_millis(300), "the watchdog expired early: {expired:?}");
    assert!(expired <= Duration::from_millis(300) + LATE, "the watchdog expired late: {expired:?}");
    assert_eq!(relay.stats().watchdog_trips, 1);

    relay.report(&verdict(Decision::Genuine)).unwrap();
    assert_eq!(relay.stats().refused, 1, "a genuine verdict while the watchdog holds the fault is refused");

    let fed_again = Instant::now();
    relay.feed();
    let times = wait_for(&line, &[false, true, false, true]);
    assert!(
        times[3] - fed_again < PROMPT,
        "the door left the fault state {:?} after the feed",
        times[3] - fed_again
    );
}

#[test]
fn a_steadily_fed_watchdog_never_trips() {
    let (relay, line) = start(DoorMode::FailSafe, DoorState::Unlocked, 200, 300);
    relay.feed();
    wait_for(&line, &[false, true]);
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        relay.feed();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(values(&line), [false, true]);
    assert_eq!(relay.stats().watchdog_trips, 0);
}

#[test]
fn a_fault_ends_a_pulse_at_once_and_the_door_stays_locked_after_it_clears() {
    let (mut relay, line) = start(DoorMode::FailSecure, DoorState::Locked, 3000, 5000);
    relay.feed();
    relay.report(&verdict(Decision::Genuine)).unwrap();
    wait_for(&line, &[false, true]);
    let faulted = Instant::now();
    relay.fault("camera lost");
    let times = wait_for(&line, &[false, true, false]);
    assert!(times[2] - faulted < PROMPT, "the pulse went on {:?} after the fault", times[2] - faulted);

    // Feeds do not end a reported fault, and a genuine verdict during it is refused, not deferred.
    relay.feed();
    relay.report(&verdict(Decision::Genuine)).unwrap();
    assert_eq!(relay.stats().refused, 1);
    relay.clear_fault();
    relay.feed();
    // The cut pulse does not resume, and the refused verdict does not open the door now.
    stays(&line, &[false, true, false], Duration::from_millis(300));

    relay.report(&verdict(Decision::Genuine)).unwrap();
    wait_for(&line, &[false, true, false, true]);
}

#[test]
fn an_unlocked_fault_state_holds_a_strike_open_until_the_fault_clears() {
    // Accepted (with a warning at start): the site wants the strike open on faults the runtime handles.
    let (relay, line) = start(DoorMode::FailSecure, DoorState::Unlocked, 200, 5000);
    wait_for(&line, &[true]);
    relay.feed();
    wait_for(&line, &[true, false]);
    relay.fault("model invalid");
    wait_for(&line, &[true, false, true]);
    stays(&line, &[true, false, true], Duration::from_millis(300));
    relay.clear_fault();
    wait_for(&line, &[true, false, true, false]);
}

#[test]
fn drop_writes_the_fault_state_before_it_returns() {
    let (relay, line) = start(DoorMode::FailSafe, DoorState::Unlocked, 200, 5000);
    relay.feed();
    wait_for(&line, &[false, true]);
    drop(relay);
    assert_eq!(values(&line), [false, true, false], "no wait: the write happened inside drop");

    // During a pulse, a strike that fails locked is released (locked) by the drop, not by the pulse's end.
    let (mut relay, line) = start(DoorMode::FailSecure, DoorState::Locked, 3000, 5000);
    relay.feed();
    relay.report(&verdict(Decision::Genuine)).unwrap();
    wait_for(&line, &[false, true]);
    drop(relay);
    assert_eq!(values(&line), [false, true, false]);
}

#[test]
fn a_panic_on_the_owning_thread_unwinds_into_the_fault_state() {
    let (relay, line) = start(DoorMode::FailSafe, DoorState::Unlocked, 200, 5000);
    relay.feed();
    wait_for(&line, &[false, true]);
    let owner = std::thread::spawn(move || {
        let _relay = relay;
        panic!("the capture loop panicked (deliberately, in a test)");
    });
    assert!(owner.join().is_err());
    assert_eq!(values(&line), [false, true, false]);
}

#[test]
fn a_failing_line_is_retried_until_it_takes_the_write() {
    let (mut relay, line) = start(DoorMode::FailSecure, DoorState::Locked, 1000, 5000);
    relay.feed();
    wait_for(&line, &[false]);
    line.set_failing(true);
    let reported = Instant::now();
    relay.report(&verdict(Decision::Genuine)).unwrap();
    while relay.stats().write_failures < 2 {
        assert!(reported.elapsed() < PATIENCE, "the failed write was not retried: {:?}", relay.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
    let repaired = Instant::now();
    line.set_failing(false);
    let times = wait_for(&line, &[false, true]);
    let retried = times[1].saturating_duration_since(repaired);
    assert!(retried < Duration::from_millis(100) + LATE, "retried {retried:?} after the line was repaired");
    // The pulse still ends on time, counted from the verdict.
    let times = wait_for(&line, &[false, true, false]);
    let off = times[2].saturating_duration_since(reported);
    assert!(off >= Duration::from_millis(1000) && off <= Duration::from_millis(1000) + LATE, "{off:?}");
}

/// Health after `events`, as the supervisor's monitor reports it.
fn health_after(events: &[deepgate::health::Event]) -> deepgate::health::Health {
    use deepgate::health::{Monitor, OverloadPolicy};
    let mut monitor = Monitor::new(OverloadPolicy { budget_ms: 100.0, window: 3 });
    for &event in events {
        monitor.observe(event);
    }
    monitor.health()
}

#[test]
fn under_the_controller_a_genuine_verdict_opens_nothing_and_only_a_grant_opens_the_door() {
    let (mut relay, line) =
        start_with(DoorMode::FailSecure, DoorState::Locked, Authority::Controller, 600, 5000);
    relay.feed();
    wait_for(&line, &[false]);
    relay.report(&verdict(Decision::Genuine)).unwrap();
    std::thread::sleep(PROMPT);
    assert_eq!(values(&line), [false], "a verdict is evidence, not an authorisation");
    let control = relay.control();
    let asked = Instant::now();
    let granted = control.grant(Some(Duration::from_millis(300)), "test grant").expect("no fault holds");
    assert_eq!(granted, Duration::from_millis(300));
    let times = wait_for(&line, &[false, true, false]);
    // Counted from the grant, as the relay counts it (under emulation the unlock itself may be written late).
    let off = times[2].saturating_duration_since(asked);
    assert!(off >= Duration::from_millis(300), "the grant's time is kept: locked again after {off:?}");
    // A grant longer than pulse_ms is cut to it; the controller's lock ends it at once.
    assert_eq!(
        control.grant(Some(Duration::from_secs(60)), "long grant").unwrap(),
        Duration::from_millis(600)
    );
    wait_for(&line, &[false, true, false, true]);
    control.lock("test lock");
    let times = wait_for(&line, &[false, true, false, true, false]);
    assert!(times[4] - times[3] < Duration::from_millis(600), "locked before the pulse ended");
    // While a fault holds the controller is refused too.
    relay.fault("camera lost");
    let message = format!("{:#}", control.grant(None, "grant during a fault").unwrap_err());
    assert!(message.contains("refused"), "{message}");
    let stats = relay.stats();
    assert_eq!(
        (stats.evidence_only, stats.grants, stats.grants_refused, stats.pulses),
        (1, 2, 1, 0),
        "{stats:?}"
    );
}

#[test]
fn standalone_a_genuine_verdict_is_refused_while_the_controller_link_or_any_fault_is_down() {
    use deepgate::health::Event;
    let (mut relay, line) =
        start_with(DoorMode::FailSecure, DoorState::Locked, Authority::Standalone, 200, 5000);
    relay.feed();
    wait_for(&line, &[false]);
    relay.set_health(health_after(&[Event::GateLinkDown]));
    relay.report(&verdict(Decision::Genuine)).unwrap();
    relay.set_health(health_after(&[
        Event::FrameTime { ms: 500.0 },
        Event::FrameTime { ms: 500.0 },
        Event::FrameTime { ms: 500.0 },
    ]));
    relay.report(&verdict(Decision::Genuine)).unwrap();
    std::thread::sleep(PROMPT);
    assert_eq!(
        values(&line),
        [false],
        "no standalone opening while the link is down or the kiosk overloaded"
    );
    assert_eq!(relay.stats().refused, 2);
    relay.set_health(health_after(&[Event::GateLinkDown, Event::GateLinkUp]));
    relay.report(&verdict(Decision::Genuine)).unwrap();
    wait_for(&line, &[false, true, false]);
    assert_eq!(relay.stats().pulses, 1);
}
