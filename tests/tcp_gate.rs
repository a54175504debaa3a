//! The TCP gate against a fake controller on a local socket, as a door controller sees it: verdict lines with
//! ids, acknowledgements, a controller that is down, a runtime restarted on the same spool, a lost
//! acknowledgement, garbage from the controller, a full spool, and a controller that stalls.

mod common;

use deepgate::decide::Decision;
use deepgate::gate::tcp::{TcpGate, TcpGateSettings, TcpGateStats};
use deepgate::gate::{Gate, VerdictMessage};
use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generous: these tests must survive a loaded two-core machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// The verdict reported `index`-th; its `first_frame` is `index`, so that a line shows which verdict it carries.
fn verdict(source: &str, index: u64) -> VerdictMessage<'_> {
    VerdictMessage {
        first_frame: index,
        last_frame: index + 3,
        ..VerdictMessage::sample(source, decision(index))
    }
}

fn decision(index: u64) -> Decision {
    [Decision::Genuine, Decision::Fake, Decision::Uncertain, Decision::NoFace][(index % 4) as usize]
}

fn spool_in(name: &str) -> PathBuf {
    common::temp_dir(name).join("gate.spool")
}

fn start(address: &str, spool: &Path, capacity: usize) -> TcpGate {
    TcpGate::start(TcpGateSettings::new(address, spool, capacity)).unwrap()
}

fn report(gate: &mut TcpGate, indices: impl IntoIterator<Item = u64>) {
    for index in indices {
        gate.report(&verdict("camera", index)).unwrap();
    }
}

/// A port nothing listens on (until a test binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(gate: &TcpGate, what: &str, condition: impl Fn(TcpGateStats) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition(gate.stats()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", gate.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One connection from the gate, seen from the controller's side.
struct Controller {
    reader: BufReader<TcpStream>,
}

impl Controller {
    fn accept(listener: &TcpListener) -> Controller {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(PATIENCE)).unwrap();
                    return Controller { reader: BufReader::new(stream) };
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => panic!("no connection from the gate: {error}"),
            }
        }
    }

    /// The next line, parsed; the verdict fields are all there, with the id first.
    fn line(&mut self) -> Value {
        let mut text = String::new();
        let count = self.reader.read_line(&mut text).unwrap();
        assert!(
            count > 0 && text.ends_with('\n'),
            "the gate closed the connection instead of sending a line"
        );
        assert!(text.starts_with("{\"id\":"), "{text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "verdict", "{text}");
        for field in
            ["source", "decision", "fake_probability", "frames", "frames_seen", "last_frame", "reason"]
        {
            assert!(value.get(field).is_some(), "{field} missing: {text}");
        }
        value
    }

    /// The next line as sent, and parsed.
    fn text_line(&mut self) -> (String, Value) {
        let mut text = String::new();
        assert!(self.reader.read_line(&mut text).unwrap() > 0, "the gate closed the connection");
        let value = serde_json::from_str(&text).unwrap();
        (text, value)
    }

    /// Reads one line per id and checks each carries that id and the verdict reported with that index.
    fn expect(&mut self, ids: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut seen = Vec::new();
        for id in ids {
            let value = self.line();
            assert_eq!(value["id"], id, "{value}");
            assert_eq!(value["first_frame"], id, "{value}");
            assert_eq!(value["decision"], decision(id).name(), "{value}");
            seen.push(id);
        }
        seen
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    fn ack(&mut self, id: u64) {
        self.send(format!("{{\"ack\":{id}}}\n").as_bytes());
    }

    /// The next line, which must be a health line (no id: health is not spooled or acknowledged).
    fn health(&mut self) -> Value {
        let mut text = String::new();
        assert!(self.reader.read_line(&mut text).unwrap() > 0, "the gate closed the connection");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "health", "{text}");
        assert!(value.get("id").is_none(), "{text}");
        value
    }

    /// Waits for the gate to close the connection, with nothing more sent.
    fn expect_closed(&mut self) {
        let mut rest = String::new();
        assert_eq!(self.reader.read_line(&mut rest).unwrap(), 0, "unexpected line {rest}");
    }
}

#[test]
fn verdicts_arrive_in_order_with_their_ids_and_leave_the_spool_when_acknowledged() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut gate = start(&address, &spool_in("order"), 64);
    let mut controller = Controller::accept(&listener);
    report(&mut gate, 1..=20);
    controller.expect(1..=10);
    controller.ack(10);
    controller.expect(11..=20);
    controller.ack(20);
    gate.flush(PATIENCE).unwrap();
    let expected = TcpGateStats { sent: 20, acked: 20, connects: 1, ..TcpGateStats::default() };
    assert_eq!(gate.stats(), expected);
    assert_eq!(gate.describe(), format!("tcp {address}"));
}

#[test]
fn verdicts_reported_while_the_controller_is_down_are_delivered_when_it_comes_up() {
    let port = free_port();
    let mut gate = start(&format!("127.0.0.1:{port}"), &spool_in("down"), 16);
    report(&mut gate, 1..=5);
    assert_eq!(gate.stats().queued, 5);
    let error = gate.flush(Duration::from_millis(50)).unwrap_err();
    assert!(format!("{error:#}").contains("5 verdict(s) not acknowledged"), "{error:#}");
    std::thread::sleep(Duration::from_millis(300));

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut controller = Controller::accept(&listener);
    controller.expect(1..=5);
    controller.ack(5);
    gate.flush(PATIENCE).unwrap();
    assert_eq!(gate.stats(), TcpGateStats { sent: 5, acked: 5, connects: 1, ..TcpGateStats::default() });
}

#[test]
fn the_gate_reconnects_after_the_controller_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut gate = start(&listener.local_addr().unwrap().to_string(), &spool_in("reconnect"), 16);
    let mut first = Controller::accept(&listener);
    report(&mut gate, 1..=3);
    first.expect(1..=3);
    first.ack(3);
    wait_for(&gate, "the acknowledgement", |stats| stats.acked == 3);
    drop(first);
    wait_for(&gate, "a second connection", |stats| stats.connects == 2);
    report(&mut gate, 4..=6);
    let mut second = Controller::accept(&listener);
    second.expect(4..=6);
    second.ack(6);
    gate.flush(PATIENCE).unwrap();
    assert_eq!(gate.stats(), TcpGateStats { sent: 6, acked: 6, connects: 2, ..TcpGateStats::default() });
}

#[test]
fn a_restart_sends_the_waiting_verdicts_with_their_ids_and_ids_go_on_after_it() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let spool = spool_in("restart");
    let mut gate = start(&address, &spool, 16);
    report(&mut gate, 1..=4);
    // The runtime stops while the controller is down: the verdicts stay in the spool.
    drop(gate);

    let mut gate = start(&address, &spool, 16);
    assert_eq!(gate.recovered(), 4);
    assert_eq!(gate.stats().queued, 4);
    report(&mut gate, 5..=6);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut controller = Controller::accept(&listener);
    assert_eq!(controller.expect(1..=6), [1, 2, 3, 4, 5, 6], "each id once, in order");
    controller.ack(6);
    gate.flush(PATIENCE).unwrap();
    // The four from before the restart may have reached the controller then: they count as sent again.
    // Made by the earlier start, they go out expired: for the record, not to act on.
    let expected =
        TcpGateStats { sent: 6, resent: 4, expired: 4, acked: 6, connects: 1, ..TcpGateStats::default() };
    assert_eq!(gate.stats(), expected);
    drop(gate);
    controller.expect_closed();

    // Emptied, the spool still remembers the ids it gave: the next verdict is 7, never a reused 1.
    let mut gate = start(&address, &spool, 16);
    assert_eq!(gate.recovered(), 0);
    let mut controller = Controller::accept(&listener);
    // Acknowledging an id of the runtime's earlier life again is harmless, not a refused line.
    controller.ack(6);
    report(&mut gate, 7..=7);
    controller.expect(7..=7);
    controller.ack(7);
    gate.flush(PATIENCE).unwrap();
    assert_eq!(gate.stats(), TcpGateStats { sent: 1, acked: 1, connects: 1, ..TcpGateStats::default() });
}

#[test]
fn after_a_restart_only_unacknowledged_verdicts_come_again_and_ids_make_them_exactly_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let spool = spool_in("exactly-once");
    let mut gate = start(&address, &spool, 16);
    let mut first = Controller::accept(&listener);
    report(&mut gate, 1..=4);
    let mut seen = first.expect(1..=4);
    first.ack(2);
    wait_for(&gate, "the acknowledgement of 1 and 2", |stats| stats.acked == 2);
    drop(gate);
    first.expect_closed();

    let mut gate = start(&address, &spool, 16);
    let mut second = Controller::accept(&listener);
    seen.extend(second.expect(3..=4));
    second.ack(4);
    gate.flush(PATIENCE).unwrap();
    assert_eq!(
        gate.stats(),
        TcpGateStats { sent: 2, resent: 2, expired: 2, acked: 2, connects: 1, ..TcpGateStats::default() },
        "made by the earlier start, 3 and 4 come again marked expired"
    );

    // A controller without deduplication saw 3 and 4 twice, but never an acknowledged id again.
    assert_eq!(seen, [1, 2, 3, 4, 3, 4]);
    // One that acts only on ids above the highest it acted on acts on each verdict exactly once.
    let mut highest = 0;
    let acted: Vec<u64> = seen
        .into_iter()
        .filter(|&id| {
            let new = id > highest;
            highest = highest.max(id);
            new
        })
        .collect();
    assert_eq!(acted, [1, 2, 3, 4]);
}

#[test]
fn a_lost_acknowledgement_brings_the_same_id_again() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut gate = start(&listener.local_addr().unwrap().to_string(), &spool_in("lost-ack"), 16);
    let mut first = Controller::accept(&listener);
    report(&mut gate, 1..=1);
    let line = first.line();
    assert_eq!(line["id"], 1);
    // The controller read the verdict but went away before acknowledging it.
    drop(first);
    let mut second = Controller::accept(&listener);
    assert_eq!(second.line(), line, "the same verdict with the same id");
    second.ack(1);
    gate.flush(PATIENCE).unwrap();
    assert_eq!(
        gate.stats(),
        TcpGateStats { sent: 2, resent: 1, acked: 1, connects: 2, ..TcpGateStats::default() }
    );
}

#[test]
fn a_controller_that_never_acknowledges_is_given_up_on_and_gets_the_lines_again() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut settings =
        TcpGateSettings::new(&listener.local_addr().unwrap().to_string(), &spool_in("ack-timeout"), 16);
    settings.ack_timeout = Duration::from_millis(300);
    let mut gate = TcpGate::start(settings).unwrap();
    let mut silent = Controller::accept(&listener);
    report(&mut gate, 1..=2);
    silent.expect(1..=2);
    // No acknowledgement: after the timeout the gate closes this connection and sends both again on a new one.
    silent.expect_closed();
    let mut second = Controller::accept(&listener);
    second.expect(1..=2);
    second.ack(2);
    gate.flush(PATIENCE).unwrap();
    assert_eq!(gate.stats().resent, 2);
}

#[test]
fn bad_acknowledgements_are_refused_counted_and_delivery_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut gate = start(&listener.local_addr().unwrap().to_string(), &spool_in("bad-acks"), 16);
    report(&mut gate, 1..=1);
    let garbage: [&[u8]; 4] = [
        b"hello\n",
        b"{\"ack\":99}\n",                // an id never sent
        &[b'7'; 200],                     // an overlong line, without newline
        b"{\"ack\":1,\"please\":true}\n", // more than an acknowledgement
    ];
    for (refused, bytes) in garbage.iter().enumerate() {
        let mut controller = Controller::accept(&listener);
        controller.expect(1..=1);
        controller.send(bytes);
        controller.expect_closed();
        wait_for(&gate, "the refusal to be counted", |stats| stats.bad_acks == refused as u64 + 1);
    }
    let mut controller = Controller::accept(&listener);
    controller.expect(1..=1);
    controller.ack(1);
    report(&mut gate, 2..=2);
    controller.expect(2..=2);
    controller.ack(2);
    gate.flush(PATIENCE).unwrap();
    let stats = gate.stats();
    assert_eq!((stats.bad_acks, stats.connects, stats.acked, stats.resent, stats.queued), (4, 5, 2, 4, 0));
}

#[test]
fn a_full_spool_drops_the_oldest() {
    let port = free_port();
    let mut gate = start(&format!("127.0.0.1:{port}"), &spool_in("full"), 3);
    report(&mut gate, 1..=5);
    assert_eq!(gate.stats(), TcpGateStats { dropped: 2, queued: 3, ..TcpGateStats::default() });

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut controller = Controller::accept(&listener);
    controller.expect(3..=5);
    controller.ack(5);
    gate.flush(PATIENCE).unwrap();
    assert_eq!(
        gate.stats(),
        TcpGateStats { sent: 3, acked: 3, dropped: 2, connects: 1, ..TcpGateStats::default() }
    );
    drop(gate);
    // Exactly three: the gate closed the connection and nothing followed them.
    controller.expect_closed();
}

#[test]
fn a_stalled_controller_never_blocks_reporting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut gate = start(&listener.local_addr().unwrap().to_string(), &spool_in("stalled"), 8);
    // Accepted and held open, never read: the socket buffers fill and writes stall (for 2 s each).
    let _stalled = Controller::accept(&listener);
    wait_for(&gate, "the connection", |stats| stats.connects == 1);
    // Long lines (with the envelope, near the 2 KB limit), so that 2500 of them (about 5 MB) overflow what the kernel buffers on loopback (under 3 MB
    // when the reader never reads). Each report syncs the spool, so more would only make the test slow.
    let source = "x".repeat(1600);
    let mut slowest = Duration::ZERO;
    for index in 1..=2500 {
        let started = Instant::now();
        gate.report(&verdict(&source, index)).unwrap();
        slowest = slowest.max(started.elapsed());
    }
    // A report costs a disk sync, never a wait for the network.
    assert!(slowest < Duration::from_secs(1), "the slowest report took {slowest:?}");
    let stats = gate.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.acked + stats.dropped + stats.queued as u64, 2500, "{stats:?}");
    assert!(stats.sent < 2500, "the controller never reads, yet every line went out: {stats:?}");

    let started = Instant::now();
    drop(gate);
    assert!(started.elapsed() < Duration::from_secs(4), "drop took {:?}", started.elapsed());
}

#[test]
fn bad_settings_are_refused_clearly() {
    let spool = spool_in("settings");
    let message = |address: &str, spool: &Path, capacity: usize| match TcpGate::start(TcpGateSettings::new(
        address, spool, capacity,
    )) {
        Ok(_) => panic!("{address} with capacity {capacity} was accepted"),
        Err(error) => format!("{error:#}"),
    };
    assert!(message("controller", &spool, 16).contains("must be host:port"));
    assert!(message(":4000", &spool, 16).contains("host is missing"));
    assert!(message("controller:http", &spool, 16).contains("not a port number"));
    assert!(message("controller:70000", &spool, 16).contains("not a port number"));
    assert!(message("controller:0", &spool, 16).contains("port 0"));
    assert!(message("::1:4000", &spool, 16).contains("IPv6"));
    assert!(message("127.0.0.1:4000", &spool, 0).contains("capacity 0 must be 1 to 4096"));
    assert!(message("127.0.0.1:4000", &spool, 4097).contains("capacity 4097 must be 1 to 4096"));
    assert!(!spool.exists(), "a refused setting creates no spool");
    let nowhere = spool.with_file_name("missing").join("gate.spool");
    assert!(message("127.0.0.1:4000", &nowhere, 16).contains(&nowhere.display().to_string()));

    let address = format!("127.0.0.1:{}", free_port());
    let _running = start(&address, &spool, 16);
    let second = message(&address, &spool, 16);
    assert!(second.contains("in use by another process"), "{second}");
}

#[test]
fn the_controller_hears_each_health_change_and_the_current_health_on_every_connection() {
    use deepgate::health::{Event, Monitor, OverloadPolicy};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut gate = start(&listener.local_addr().unwrap().to_string(), &spool_in("health"), 16);
    let mut monitor = Monitor::new(OverloadPolicy { budget_ms: 100.0, window: 3 });
    let mut first = Controller::accept(&listener);
    gate.set_health(monitor.observe(Event::CameraLost).unwrap());
    let health = first.health();
    assert_eq!(
        (&health["state"], &health["code"], &health["can_decide"], &health["tamper"]),
        (&Value::from("camera_lost"), &Value::from(5), &Value::from(false), &Value::from(true)),
        "{health}"
    );
    gate.set_health(monitor.observe(Event::GpuFailed).unwrap());
    let health = first.health();
    assert_eq!(health["active"], serde_json::json!(["gpu_lost", "camera_lost"]), "{health}");
    // Verdicts and health lines share the connection; acknowledgements concern verdicts only.
    report(&mut gate, 1..=1);
    first.expect(1..=1);
    first.ack(1);
    wait_for(&gate, "the acknowledgement", |stats| stats.acked == 1);

    // A new connection (the controller restarted) starts with the current health, then what is owed.
    drop(first);
    gate.set_health(monitor.observe(Event::CameraBack).unwrap());
    let mut second = Controller::accept(&listener);
    let health = second.health();
    assert_eq!((&health["state"], &health["can_decide"]), (&Value::from("gpu_lost"), &Value::from(true)));
}

/// A controller's grant line, and the gate's answer to it.
fn grant(controller: &mut Controller, id: u64) -> Value {
    controller.reader.get_mut().write_all(format!("{{\"grant\":{id}}}\n").as_bytes()).unwrap();
    let mut text = String::new();
    controller.reader.read_line(&mut text).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!((value["type"].as_str(), value["id"].as_u64()), (Some("grant"), Some(id)), "{text}");
    value
}

#[test]
fn the_door_opens_only_on_the_controllers_grant_of_a_genuine_verdict_once() {
    use deepgate::gate::relay::{Authority, DoorMode, DoorState, RecordingLine, RelayGate, RelaySettings};
    let line = RecordingLine::default();
    let settings = RelaySettings {
        mode: DoorMode::FailSecure,
        fault_state: DoorState::Locked,
        authority: Authority::Controller,
        pulse: Duration::from_millis(300),
        watchdog: Duration::from_secs(30),
    };
    let mut relay = RelayGate::start(Box::new(line.clone()), settings).unwrap();
    relay.feed();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut settings = TcpGateSettings::new(&address, &spool_in("tcp-grant"), 16);
    settings.door = Some(relay.control());
    let mut gate = TcpGate::start(settings).unwrap();
    let mut controller = Controller::accept(&listener);
    // Verdicts 1 (genuine) and 2 (fake): the relay hears both, and opens for neither by itself.
    report(&mut gate, [0, 1]);
    relay.report(&verdict("camera", 0)).unwrap();
    let lines = [controller.line(), controller.line()];
    assert_eq!((lines[0]["id"].as_u64(), lines[0]["decision"].as_str()), (Some(1), Some("genuine")));
    assert_eq!((lines[1]["id"].as_u64(), lines[1]["decision"].as_str()), (Some(2), Some("fake")));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!line.writes().iter().any(|&(_, energised)| energised), "a verdict alone opened the door");

    let refused = grant(&mut controller, 2);
    assert_eq!(refused["opened"], false, "a fake verdict is not grantable: {refused}");
    let opened = grant(&mut controller, 1);
    assert_eq!(opened["opened"], true, "{opened}");
    let deadline = Instant::now() + PATIENCE;
    while !line.writes().iter().any(|&(_, energised)| energised) {
        assert!(Instant::now() < deadline, "the grant did not open the door");
        std::thread::sleep(Duration::from_millis(10));
    }
    let again = grant(&mut controller, 1);
    assert_eq!(again["opened"], false, "one opening per verdict: {again}");
    // A grant of an id never sent is misbehaviour: the connection goes, and the refusal is counted.
    controller.reader.get_mut().write_all(b"{\"grant\":99}\n").unwrap();
    wait_for(&gate, "the bad grant refused", |stats| stats.bad_acks == 1);
    let stats = gate.stats();
    assert_eq!((stats.grants, stats.grants_refused), (1, 2), "{stats:?}");
    assert_eq!(relay.stats().grants, 1);
    assert_eq!(relay.stats().evidence_only, 1);
}

/// Checks a verdict line's signature as the module documentation of `gate::tcp` tells a controller to: cut at
/// the signature field, close the object, verify against the device's public key.
fn signed_by(key: &ed25519_dalek::VerifyingKey, text: &str) -> bool {
    use deepgate::gate::tcp::SIGNATURE_FIELD;
    let text = text.trim_end();
    let Some(at) = text.rfind(SIGNATURE_FIELD) else { return false };
    let Some(hex) = text.get(at + SIGNATURE_FIELD.len()..text.len() - 2) else { return false };
    let Ok(bytes) = deepgate::gate::from_hex::<64>(hex, "signature") else { return false };
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    key.verify_strict(format!("{}}}", &text[..at]).as_bytes(), &signature).is_ok()
}

fn signed_settings(address: &str, spool: &Path, max_age: Duration) -> TcpGateSettings {
    let mut settings = TcpGateSettings::new(address, spool, 16);
    settings.board = "door-1".into();
    settings.model_sha256 = Some("ab".repeat(32));
    settings.signing_key = Some(ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
    settings.max_age = max_age;
    settings
}

#[test]
fn verdict_lines_are_signed_envelopes_and_old_ones_or_an_earlier_starts_go_out_expired() {
    let public = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let spool = spool_in("envelope");

    // A verdict of a start that ends before the controller is back.
    let mut gate = TcpGate::start(signed_settings(&address, &spool, Duration::from_secs(30))).unwrap();
    report(&mut gate, [1]);
    drop(gate);
    // The next start: verdict 2 waits longer than max_age, verdict 3 goes out at once.
    let mut gate = TcpGate::start(signed_settings(&address, &spool, Duration::from_millis(1000))).unwrap();
    report(&mut gate, [2]);
    std::thread::sleep(Duration::from_millis(1300));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut controller = Controller::accept(&listener);
    let lines: Vec<(String, Value)> = (0..2).map(|_| controller.text_line()).collect();
    report(&mut gate, [3]);
    let third = controller.text_line();
    let lines: Vec<(String, Value)> = lines.into_iter().chain([third]).collect();
    for (index, (text, value)) in lines.iter().enumerate() {
        assert!(signed_by(&public, text), "line {index} must verify: {text}");
        assert_eq!(value["id"].as_u64(), Some(index as u64 + 1), "{text}");
        assert_eq!((value["schema"].as_u64(), value["board"].as_str()), (Some(2), Some("door-1")), "{text}");
        assert_eq!(value["model_sha256"].as_str().map(str::len), Some(64), "{text}");
        assert_eq!(value["boot"].as_str().map(str::len), Some(32), "{text}");
        assert!(value["wall_ms"].as_u64().is_some() && value["mono_ms"].as_u64().is_some(), "{text}");
        assert_eq!(value["first_frame"].as_u64(), Some(index as u64 + 1), "{text}");
    }
    let field = |index: usize, name: &str| lines[index].1[name].clone();
    assert_eq!(field(0, "expired"), true, "made by the earlier start");
    assert_eq!(field(1, "expired"), true, "older than max_age when sent");
    assert_eq!(field(2, "expired"), false, "fresh");
    assert_ne!(field(0, "boot"), field(1, "boot"), "every start has its own boot id");
    assert_eq!(field(1, "boot"), field(2, "boot"));
    assert_eq!((field(0, "seq"), field(1, "seq"), field(2, "seq")), (1.into(), 1.into(), 2.into()));
    // Any changed byte breaks the signature, including the expiry and the id.
    let (text, _) = &lines[1];
    for (from, to) in
        [("\"expired\":true", "\"expired\":false"), ("\"id\":2", "\"id\":9"), ("\"seq\":1", "\"seq\":7")]
    {
        let tampered = text.replacen(from, to, 1);
        assert_ne!(&tampered, text);
        assert!(!signed_by(&public, &tampered), "{tampered}");
    }
    controller.ack(3);
    gate.flush(PATIENCE).unwrap();
    assert_eq!((gate.stats().sent, gate.stats().expired), (3, 2));
    drop(gate);
    controller.expect_closed();

    // A moved spool starts ids again at 1, but never a (boot, seq) pair the controller has seen.
    let mut gate =
        TcpGate::start(signed_settings(&address, &spool_in("envelope-moved"), Duration::from_secs(5)))
            .unwrap();
    report(&mut gate, [4]);
    let mut controller = Controller::accept(&listener);
    let (text, value) = controller.text_line();
    assert!(signed_by(&public, &text), "{text}");
    assert_eq!((value["id"].as_u64(), value["seq"].as_u64()), (Some(1), Some(1)), "{text}");
    assert!(lines.iter().all(|(_, seen)| seen["boot"] != value["boot"]), "{text}");
}
