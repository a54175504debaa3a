//! The fleet output against a real broker that no one here wrote: Debian's Mosquitto, started by each test on
//! its own ports with a generated configuration (persistence on) in a temporary directory. Subscribers are a
//! rumqttc client with a persistent session (the way a fleet's back office listens) and, for the retained
//! messages, Mosquitto's own `mosquitto_sub`. Network loss is a TCP relay between kiosk and broker that the
//! test cuts; TLS certificates are made at test time with rcgen.

mod common;

use common::{skip, Need};
use deepgate::decide::Decision;
use deepgate::gate::mqtt::{MqttGate, MqttSettings, TlsFiles};
use deepgate::gate::tcp::SIGNATURE_FIELD;
use deepgate::gate::{Gate, VerdictMessage};
use deepgate::health::{Event as HealthEvent, Monitor, OverloadPolicy};
use ed25519_dalek::{Signature, SigningKey, Verifier};
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

fn scratch(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("deepgate-mqtt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Mosquitto, or a visible skip.
fn mosquitto_present() -> bool {
    let present =
        Path::new(MOSQUITTO).exists() && Command::new("mosquitto_sub").arg("--help").output().is_ok();
    if !present {
        skip(
            Need::Mosquitto,
            "no /usr/sbin/mosquitto or mosquitto_sub: `cargo xtask setup` installs Debian's mosquitto and \
             mosquitto-clients",
        );
    }
    present
}

/// A Mosquitto on a plaintext port (and a TLS one when asked), persistence in its directory.
struct Broker {
    directory: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start(directory: &Path, tls: Option<(u16, &str)>) -> Broker {
        let port = free_port();
        let mut config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             max_queued_messages 100\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            directory.display()
        );
        // As root, Mosquitto would drop to the `mosquitto` user, which cannot read this directory.
        if Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.starts_with(b"0\n")) {
            config.push_str("user root\n");
        }
        if let Some((tls_port, tls_lines)) = tls {
            config.push_str(&format!("listener {tls_port} 127.0.0.1\n{tls_lines}"));
        }
        std::fs::write(directory.join("mosquitto.conf"), config).unwrap();
        let mut broker = Broker { directory: directory.to_path_buf(), port, child: None };
        broker.run();
        broker
    }

    /// Starts the process and waits for its plaintext port.
    fn run(&mut self) {
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.directory.join("mosquitto.conf"))
            .stdout(Stdio::null())
            // Its warnings and errors (TLS refusals) go to a file beside its configuration.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.directory.join("mosquitto.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as an operator's restart: Mosquitto saves its persistence file and exits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message as a subscriber got it.
#[derive(Clone, Debug)]
struct Message {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
}

impl Message {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// A rumqttc subscriber with a persistent session (clean_session = false, QoS 1), so that what is published
/// while it reconnects (after a broker restart) waits for it at the broker.
struct Subscriber {
    messages: Receiver<Message>,
    stop: Arc<AtomicBool>,
}

impl Subscriber {
    fn start(port: u16, id: &str, filter: &str) -> Subscriber {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(options, 64);
        let (sender, messages) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        std::thread::spawn({
            let (stop, subscribed, filter) = (Arc::clone(&stop), Arc::clone(&subscribed), filter.to_owned());
            move || {
                for event in connection.iter() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match event {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            client.try_subscribe(filter.clone(), QoS::AtLeastOnce).unwrap();
                        }
                        Ok(Event::Incoming(Incoming::SubAck(_))) => {
                            *subscribed.0.lock().unwrap() = true;
                            subscribed.1.notify_all();
                        }
                        Ok(Event::Incoming(Incoming::Publish(publish))) => {
                            let message = Message {
                                topic: publish.topic.clone(),
                                payload: publish.payload.to_vec(),
                                qos: publish.qos,
                                retain: publish.retain,
                            };
                            if sender.send(message).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            }
        });
        let guard = subscribed.0.lock().unwrap();
        let (guard, _) = subscribed.1.wait_timeout_while(guard, PATIENCE, |done| !*done).unwrap();
        assert!(*guard, "the subscriber did not subscribe within {PATIENCE:?}");
        Subscriber { messages, stop }
    }

    /// Messages until `done` says so (given all so far), or the patience runs out.
    fn collect_until(&self, mut done: impl FnMut(&[Message]) -> bool) -> Vec<Message> {
        let deadline = Instant::now() + PATIENCE;
        let mut messages = Vec::new();
        while !done(&messages) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(message) => messages.push(message),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("gave up waiting; got {} message(s)", messages.len())
                }
                Err(RecvTimeoutError::Disconnected) => panic!("the subscriber ended"),
            }
        }
        messages
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn verdicts(messages: &[Message]) -> Vec<&Message> {
    messages.iter().filter(|message| message.topic.ends_with("/verdict")).collect()
}

/// The distinct verdict ids among `messages`, and how many arrived more than once.
fn distinct_ids(messages: &[Message]) -> (BTreeSet<u64>, usize) {
    let mut ids = BTreeSet::new();
    let mut duplicates = 0;
    for message in verdicts(messages) {
        if !ids.insert(message.json()["id"].as_u64().unwrap()) {
            duplicates += 1;
        }
    }
    (ids, duplicates)
}

/// Reports verdict `index` and returns how long `report` took.
fn report(gate: &mut MqttGate, index: u32) -> Duration {
    let (source, reason) = (format!("camera-{index}"), format!("verdict {index}"));
    let message = VerdictMessage {
        kind: "verdict",
        source: &source,
        decision: if index.is_multiple_of(2) { Decision::Genuine } else { Decision::Fake },
        fake_probability: Some(0.25),
        frames: 5,
        frames_seen: 6,
        first_frame: u64::from(index) * 10,
        last_frame: u64::from(index) * 10 + 5,
        reason: &reason,
    };
    let started = Instant::now();
    gate.report(&message).unwrap();
    started.elapsed()
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Whether the verdict payload's signature verifies: the bytes before the signature field, closed with `}`.
fn signature_valid(payload: &[u8]) -> bool {
    let text = std::str::from_utf8(payload).unwrap();
    let Some(at) = text.rfind(SIGNATURE_FIELD) else { return false };
    let hex = &text[at + SIGNATURE_FIELD.len()..text.len() - 2];
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let signature = Signature::from_slice(&bytes).unwrap();
    let signed = format!("{}}}", &text[..at]);
    signing_key().verifying_key().verify(signed.as_bytes(), &signature).is_ok()
}

fn settings(port: u16, site: &str, spool: &Path) -> MqttSettings {
    // The gate's log lines in the test's output (RUST_LOG), for a failure's diagnosis.
    let _ = env_logger::builder().is_test(true).try_init();
    let mut settings = MqttSettings::new("127.0.0.1", port, site, "kiosk-7", spool, 1024);
    settings.signing_key = Some(signing_key());
    settings.keep_alive = Duration::from_secs(5);
    settings
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mosquitto_sub` as a subscriber that arrives late: the first message on `topic` (a retained one), or none.
fn retained(port: u16, topic: &str) -> Option<String> {
    let output = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "3",
            "-v",
            "--retained-only",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    text.strip_prefix(&format!("{topic} ")).map(|payload| payload.trim_end().to_owned())
}

#[test]
fn verdicts_arrive_in_order_with_qos_1_signed_health_and_status_retained() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("order");
    let broker = Broker::start(&directory, None);
    let subscriber = Subscriber::start(broker.port, "back-office-order", "deepgate/order/+/#");
    let mut gate = MqttGate::start(settings(broker.port, "order", &directory.join("mqtt.spool"))).unwrap();
    let mut monitor = Monitor::new(OverloadPolicy { budget_ms: 100.0, window: 3 });
    gate.set_health(monitor.observe(HealthEvent::CameraLost).unwrap());
    for index in 1..=20 {
        report(&mut gate, index);
    }
    gate.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| verdicts(messages).len() >= 20);
    let verdicts = verdicts(&messages);
    let ids: Vec<u64> = verdicts.iter().map(|message| message.json()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>(), "in order, each once");
    for (index, message) in verdicts.iter().enumerate() {
        assert_eq!(message.topic, "deepgate/order/kiosk-7/verdict");
        assert_eq!((message.qos, message.retain), (QoS::AtLeastOnce, false));
        let value = message.json();
        assert_eq!(value["board"], "kiosk-7");
        assert_eq!(value["seq"].as_u64(), Some(index as u64 + 1));
        assert_eq!(value["reason"], format!("verdict {}", index + 1));
        assert!(signature_valid(&message.payload), "{}", String::from_utf8_lossy(&message.payload));
    }
    let stats = gate.stats();
    assert_eq!(
        (stats.published, stats.acked, stats.queued, stats.connects, stats.unpaired),
        (20, 20, 0, 1, 0),
        "{stats:?}"
    );
    // A back office that arrives now learns the kiosk's state from the retained messages.
    assert_eq!(retained(broker.port, "deepgate/order/kiosk-7/status").as_deref(), Some("online"));
    let health: Value = serde_json::from_str(
        &retained(broker.port, "deepgate/order/kiosk-7/health").expect("retained health"),
    )
    .unwrap();
    assert_eq!(
        (health["state"].as_str(), health["can_decide"].as_bool()),
        (Some("camera_lost"), Some(false))
    );
    // A clean stop says offline itself.
    drop(gate);
    assert_eq!(retained(broker.port, "deepgate/order/kiosk-7/status").as_deref(), Some("offline"));
}

#[test]
fn a_broker_restart_while_verdicts_flow_loses_none() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("restart");
    let mut broker = Broker::start(&directory, None);
    let subscriber = Subscriber::start(broker.port, "back-office-restart", "deepgate/restart/+/verdict");
    let mut gate = MqttGate::start(settings(broker.port, "restart", &directory.join("mqtt.spool"))).unwrap();
    let mut slowest = Duration::ZERO;
    for index in 1..=150 {
        if index == 50 {
            broker.stop();
        }
        if index == 100 {
            broker.run();
        }
        slowest = slowest.max(report(&mut gate, index));
        std::thread::sleep(Duration::from_millis(10));
    }
    gate.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| distinct_ids(messages).0.len() >= 150);
    let (ids, duplicates) = distinct_ids(&messages);
    assert_eq!(ids, (1..=150).collect::<BTreeSet<_>>(), "none lost");
    let stats = gate.stats();
    assert_eq!(stats.unpaired, 0, "{stats:?}");
    eprintln!("broker restart: {duplicates} duplicate(s) before de-duplication; slowest report {slowest:?}; {stats:?}");
    assert!(stats.connects >= 2 && stats.failures >= 1, "{stats:?}");
    assert_eq!((stats.acked, stats.queued, stats.dropped), (150, 0, 0));
    // Duplicates only from PUBACKs lost with the broker, at most a window's worth.
    assert!(duplicates <= deepgate::gate::mqtt::WINDOW, "{duplicates} duplicates");
    assert!(slowest < Duration::from_millis(500), "a report waited {slowest:?} for the network");
}

/// A TCP relay between kiosk and broker that the test can cut (both directions shut down at once, as a
/// network loss that the broker notices) and refuse (no new connections get through).
struct Relay {
    port: u16,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    refuse: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let refuse = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let (streams, refuse) = (Arc::clone(&streams), Arc::clone(&refuse));
            move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if refuse.load(Ordering::Relaxed) {
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                    let mut list = streams.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                    for (mut from, mut to) in
                        [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                    {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                }
            }
        });
        Relay { port, streams, refuse }
    }

    fn cut(&self) {
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn a_lost_network_makes_the_broker_say_offline_and_loses_nothing() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("network");
    let broker = Broker::start(&directory, None);
    let relay = Relay::start(broker.port);
    let subscriber = Subscriber::start(broker.port, "back-office-network", "deepgate/network/+/#");
    let mut gate = MqttGate::start(settings(relay.port, "network", &directory.join("mqtt.spool"))).unwrap();
    wait_for("the kiosk's connection", || gate.link_up() == Some(true));
    for index in 1..=10 {
        report(&mut gate, index);
    }
    relay.refuse.store(true, Ordering::Relaxed);
    relay.cut();
    // The kiosk is cut off: verdicts wait in its spool; the broker publishes the last will.
    for index in 11..=20 {
        report(&mut gate, index);
    }
    let statuses = |messages: &[Message]| -> Vec<String> {
        messages
            .iter()
            .filter(|message| message.topic.ends_with("/status"))
            .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
            .collect()
    };
    let before = subscriber.collect_until(|messages| statuses(messages).contains(&"offline".to_owned()));
    wait_for("the kiosk to notice", || gate.link_up() == Some(false));
    relay.refuse.store(false, Ordering::Relaxed);
    gate.flush(PATIENCE).unwrap();
    let after = subscriber.collect_until(|messages| {
        distinct_ids(&[before.as_slice(), messages].concat()).0.len() >= 20
            && statuses(messages).contains(&"online".to_owned())
    });
    let all = [before.as_slice(), after.as_slice()].concat();
    let (ids, duplicates) = distinct_ids(&all);
    assert_eq!(ids, (1..=20).collect::<BTreeSet<_>>());
    let seen = statuses(&all);
    let offline = seen.iter().position(|status| status == "offline").unwrap();
    assert_eq!(seen[offline + 1..].first().map(String::as_str), Some("online"), "{seen:?}");
    let stats = gate.stats();
    eprintln!("network loss: {duplicates} duplicate(s), statuses {seen:?}, {stats:?}");
    assert_eq!((stats.unpaired, stats.acked, stats.queued), (0, 20, 0), "{stats:?}");
}

#[test]
fn a_restarted_kiosk_publishes_what_its_spool_still_holds() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("kiosk-restart");
    let broker = Broker::start(&directory, None);
    let relay = Relay::start(broker.port);
    relay.refuse.store(true, Ordering::Relaxed);
    let subscriber = Subscriber::start(broker.port, "back-office-kiosk", "deepgate/kiosk/+/verdict");
    let spool = directory.join("mqtt.spool");
    // The first run cannot reach the broker; it stops with five verdicts in its spool.
    let mut first = MqttGate::start(settings(relay.port, "kiosk", &spool)).unwrap();
    for index in 1..=5 {
        report(&mut first, index);
    }
    assert!(first.flush(Duration::from_millis(300)).is_err());
    let boot = |message: &Message| message.json()["boot"].as_str().unwrap().to_owned();
    drop(first);
    relay.refuse.store(false, Ordering::Relaxed);
    let mut second = MqttGate::start(settings(relay.port, "kiosk", &spool)).unwrap();
    assert_eq!(second.recovered(), 5);
    report(&mut second, 6);
    second.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| distinct_ids(messages).0.len() >= 6);
    let verdicts = verdicts(&messages);
    let ids: Vec<u64> = verdicts.iter().map(|message| message.json()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    // The first five keep the first run's boot and seq, and go out expired: they were made by an earlier
    // start.
    assert!(verdicts[..5]
        .iter()
        .all(|message| boot(message) == boot(verdicts[0]) && message.json()["expired"] == true));
    assert_ne!(boot(verdicts[5]), boot(verdicts[0]));
    assert_eq!(verdicts[5].json()["seq"].as_u64(), Some(1));
    let stats = second.stats();
    assert_eq!((stats.published, stats.republished, stats.acked, stats.unpaired), (6, 5, 6, 0), "{stats:?}");
}

#[test]
fn a_slow_subscriber_does_not_stall_the_kiosk() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("slow");
    let broker = Broker::start(&directory, None);
    // A subscriber that stops reading once subscribed: it never acknowledges, so the broker's in-flight
    // window for it (20) and its queue (max_queued_messages 100) fill, and the broker drops the rest for it.
    let mut options = MqttOptions::new("slow", "127.0.0.1", broker.port);
    options.set_clean_session(false);
    let (slow, mut slow_connection) = Client::new(options, 8);
    slow.subscribe("deepgate/slow/+/verdict", QoS::AtLeastOnce).unwrap();
    for event in slow_connection.iter() {
        if let Ok(Event::Incoming(Incoming::SubAck(_))) = event {
            break;
        }
    }
    let subscriber = Subscriber::start(broker.port, "back-office-slow", "deepgate/slow/+/verdict");
    let mut gate = MqttGate::start(settings(broker.port, "slow", &directory.join("mqtt.spool"))).unwrap();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for index in 1..=300 {
        slowest = slowest.max(report(&mut gate, index));
    }
    gate.flush(PATIENCE).unwrap();
    let elapsed = started.elapsed();
    let messages = subscriber.collect_until(|messages| distinct_ids(messages).0.len() >= 300);
    assert_eq!(distinct_ids(&messages).0.len(), 300);
    // The slow subscriber, read again: it got far from everything, and the kiosk never waited for it.
    let mut slow_got = 0;
    while let Ok(event) = slow_connection.recv_timeout(Duration::from_millis(500)) {
        slow_got += usize::from(matches!(event, Ok(Event::Incoming(Incoming::Publish(_)))));
    }
    assert!(slow_got < 300, "the slow subscriber got {slow_got}");
    eprintln!("slow subscriber: 300 verdicts acknowledged in {elapsed:?}; slowest report {slowest:?}; the slow one got {slow_got}");
    assert!(slowest < Duration::from_millis(500), "a report waited {slowest:?}");
    assert!(elapsed < Duration::from_secs(15), "the kiosk took {elapsed:?}");
}

/// A CA and what it issued, written into `directory`.
struct Authority {
    certificate: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn authority(name: &str) -> Authority {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    Authority { certificate: params.self_signed(&key).unwrap(), key }
}

fn issue(directory: &Path, file: &str, issuer: &Authority, name: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let certificate = params.signed_by(&key, &issuer.certificate, &issuer.key).unwrap();
    let paths = (directory.join(format!("{file}.crt")), directory.join(format!("{file}.key")));
    std::fs::write(&paths.0, certificate.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&paths.1, std::fs::Permissions::from_mode(0o600)).unwrap();
    paths
}

#[test]
fn tls_with_a_device_certificate_is_accepted_and_a_wrong_ca_or_no_certificate_refused() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("tls");
    let site_ca = authority("site CA");
    let other_ca = authority("another CA");
    let ca_path = directory.join("ca.crt");
    std::fs::write(&ca_path, site_ca.certificate.pem()).unwrap();
    let other_ca_path = directory.join("other-ca.crt");
    std::fs::write(&other_ca_path, other_ca.certificate.pem()).unwrap();
    let (broker_certificate, broker_key) = issue(&directory, "broker", &site_ca, "localhost");
    let device = issue(&directory, "kiosk-7", &site_ca, "kiosk-7");
    let tls_port = free_port();
    let tls_lines = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n",
        ca_path.display(),
        broker_certificate.display(),
        broker_key.display()
    );
    let broker = Broker::start(&directory, Some((tls_port, &tls_lines)));
    let subscriber = Subscriber::start(broker.port, "back-office-tls", "deepgate/tls/+/verdict");
    let tls_settings = |ca: &Path, identity: Option<(PathBuf, PathBuf)>, spool: &str| {
        let mut settings = settings(tls_port, "tls", &directory.join(spool));
        settings.host = "localhost".into();
        settings.tls = Some(TlsFiles { ca: ca.to_path_buf(), identity });
        settings
    };
    let mut good = MqttGate::start(tls_settings(&ca_path, Some(device.clone()), "good.spool")).unwrap();
    report(&mut good, 1);
    good.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| !messages.is_empty());
    assert_eq!(messages[0].json()["reason"], "verdict 1");
    // Another CA: the kiosk refuses the broker. No client certificate: the broker refuses the kiosk.
    let mut wrong_ca = MqttGate::start(tls_settings(&other_ca_path, Some(device), "wrong-ca.spool")).unwrap();
    let mut anonymous = MqttGate::start(tls_settings(&ca_path, None, "anonymous.spool")).unwrap();
    report(&mut wrong_ca, 2);
    report(&mut anonymous, 3);
    wait_for("failed attempts", || wrong_ca.stats().failures >= 2 && anonymous.stats().failures >= 2);
    for gate in [&wrong_ca, &anonymous] {
        let stats = gate.stats();
        assert_eq!((stats.connects, stats.acked, stats.queued), (0, 0, 1), "{stats:?}");
        assert_eq!(gate.link_up(), Some(false));
    }
    assert!(subscriber.messages.recv_timeout(Duration::from_millis(500)).is_err(), "nothing else arrived");
    assert_eq!(good.stats().acked, 1);
}

#[test]
fn a_board_with_an_mqtt_section_reports_to_the_broker_beside_its_door_gate() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("board");
    let broker = Broker::start(&directory, None);
    let subscriber = Subscriber::start(broker.port, "back-office-board", "deepgate/board-site/+/#");
    let spool = directory.join("mqtt.spool");
    let section = format!(
        "{{ broker = \"127.0.0.1:{}\", site = \"board-site\", queue = 16, spool = \"{}\", insecure = true }}",
        broker.port,
        spool.display()
    );
    let board = common::board(None, &[], &[("mqtt", &section)]);
    let config = deepgate::config::BoardConfig::load(&board).unwrap();
    let mut outputs = deepgate::supervisor::Outputs::open(&config).unwrap();
    assert!(outputs.gate.describe().starts_with("stdout + mqtt 127.0.0.1:"), "{}", outputs.gate.describe());
    let (source, reason) = ("camera-0", "from the board");
    let message = VerdictMessage {
        kind: "verdict",
        source,
        decision: Decision::Genuine,
        fake_probability: Some(0.01),
        frames: 5,
        frames_seen: 5,
        first_frame: 1,
        last_frame: 5,
        reason,
    };
    outputs.gate.report(&message).unwrap();
    outputs.gate.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| !verdicts(messages).is_empty());
    let verdict = verdicts(&messages)[0].json();
    assert_eq!(verdicts(&messages)[0].topic, format!("deepgate/board-site/{}/verdict", config.board.id));
    assert_eq!(
        (verdict["board"].as_str(), verdict["reason"].as_str()),
        (Some(config.board.id.as_str()), Some(reason))
    );
    assert!(verdict["model_sha256"].is_string() == config.models.classifier.is_some(), "{verdict}");
    // The metrics endpoint reads the fleet output's counters at each scrape.
    let metrics = deepgate::metrics::Metrics::new(&config.board.id).unwrap();
    metrics.watch_fleet(outputs.gate.fleet().expect("the fleet output beside the gate")).unwrap();
    let text = metrics.render().unwrap();
    for line in ["deepgate_mqtt_published_total 1", "deepgate_mqtt_acked_total 1", "deepgate_mqtt_queued 0"] {
        assert!(text.lines().any(|metric| metric == line), "{line} missing from\n{text}");
    }
    assert!(text.lines().any(|metric| metric == "deepgate_mqtt_link_up 1"), "{text}");
    // And Prometheus' own checker accepts them where it is installed (tests/metrics.rs requires it in CI).
    if let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = promtool.wait_with_output().unwrap();
        assert!(output.status.success(), "promtool: {}", String::from_utf8_lossy(&output.stdout));
    }
}
