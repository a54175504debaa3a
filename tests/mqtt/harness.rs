//! The fleet output tests' harness: Mosquitto started on free ports with a generated configuration, a
//! persistent-session subscriber, a TCP relay that cuts, silences or refuses, certificates made with rcgen,
//! and the helpers that report, verify and count verdicts.

use crate::common::{skip, Need};
use deepgate::decide::Decision;
use deepgate::gate::mqtt::{MqttGate, MqttSettings};
use deepgate::gate::tcp::SIGNATURE_FIELD;
use deepgate::gate::{Gate, VerdictMessage};
use ed25519_dalek::{Signature, SigningKey, Verifier};
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PATIENCE: Duration = Duration::from_secs(20);
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub fn scratch(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("deepgate-mqtt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Mosquitto, or a visible skip.
pub fn mosquitto_present() -> bool {
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
pub struct Broker {
    pub directory: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
}

impl Broker {
    pub fn start(directory: &Path, tls: Option<(u16, &str)>) -> Broker {
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
    pub fn run(&mut self) {
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
    pub fn stop(&mut self) {
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
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// A rumqttc subscriber with a persistent session (clean_session = false, QoS 1), so that what is published
/// while it reconnects (after a broker restart) waits for it at the broker.
pub struct Subscriber {
    pub messages: Receiver<Message>,
    pub stop: Arc<AtomicBool>,
}

impl Subscriber {
    pub fn start(port: u16, id: &str, filter: &str) -> Subscriber {
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
    pub fn collect_until(&self, mut done: impl FnMut(&[Message]) -> bool) -> Vec<Message> {
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

pub fn verdicts(messages: &[Message]) -> Vec<&Message> {
    messages.iter().filter(|message| message.topic.ends_with("/verdict")).collect()
}

/// The distinct verdict ids among `messages`, and how many arrived more than once.
pub fn distinct_ids(messages: &[Message]) -> (BTreeSet<u64>, usize) {
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
pub fn report(gate: &mut MqttGate, index: u32) -> Duration {
    let (source, reason) = (format!("camera-{index}"), format!("verdict {index}"));
    let decision = if index.is_multiple_of(2) { Decision::Genuine } else { Decision::Fake };
    let message = VerdictMessage {
        first_frame: u64::from(index) * 10,
        last_frame: u64::from(index) * 10 + 5,
        reason: &reason,
        ..VerdictMessage::sample(&source, decision)
    };
    let started = Instant::now();
    gate.report(&message).unwrap();
    started.elapsed()
}

pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Whether the verdict payload's signature verifies: the bytes before the signature field, closed with `}`.
pub fn signature_valid(payload: &[u8]) -> bool {
    let text = std::str::from_utf8(payload).unwrap();
    let Some(at) = text.rfind(SIGNATURE_FIELD) else { return false };
    let hex = &text[at + SIGNATURE_FIELD.len()..text.len() - 2];
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let signature = Signature::from_slice(&bytes).unwrap();
    let signed = format!("{}}}", &text[..at]);
    signing_key().verifying_key().verify(signed.as_bytes(), &signature).is_ok()
}

pub fn settings(port: u16, site: &str, spool: &Path) -> MqttSettings {
    // The gate's log lines in the test's output (RUST_LOG), for a failure's diagnosis.
    let _ = env_logger::builder().is_test(true).try_init();
    let mut settings = MqttSettings::new("127.0.0.1", port, site, "kiosk-7", spool, 1024);
    settings.signing_key = Some(signing_key());
    settings.keep_alive = Duration::from_secs(5);
    settings
}

pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mosquitto_sub` as a subscriber that arrives late: the first message on `topic` (a retained one), or none.
pub fn retained(port: u16, topic: &str) -> Option<String> {
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

/// A TCP relay between kiosk and broker that the test can cut (both directions shut down at once, as a
/// network loss that the broker notices), silence (the connections made so far carry nothing more but stay
/// open, as a cable pulled somewhere between: only keep-alive notices) and refuse (no new connections get
/// through).
pub struct Relay {
    pub port: u16,
    pub streams: Arc<Mutex<Vec<TcpStream>>>,
    pub refuse: Arc<AtomicBool>,
    /// Connections numbered below this one are silenced.
    pub silenced_below: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

impl Relay {
    pub fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let refuse = Arc::new(AtomicBool::new(false));
        let (silenced_below, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        std::thread::spawn({
            let (streams, refuse) = (Arc::clone(&streams), Arc::clone(&refuse));
            let (silenced_below, connections) = (Arc::clone(&silenced_below), Arc::clone(&connections));
            move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if refuse.load(Ordering::Relaxed) {
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                    let number = connections.fetch_add(1, Ordering::Relaxed);
                    let mut list = streams.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                    for (mut from, mut to) in
                        [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                    {
                        let silenced_below = Arc::clone(&silenced_below);
                        std::thread::spawn(move || {
                            let mut buffer = [0u8; 4096];
                            while let Ok(read @ 1..) = from.read(&mut buffer) {
                                // A silenced connection loses whatever is sent on it.
                                if number >= silenced_below.load(Ordering::Relaxed)
                                    && to.write_all(&buffer[..read]).is_err()
                                {
                                    break;
                                }
                            }
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                }
            }
        });
        Relay { port, streams, refuse, silenced_below, connections }
    }

    pub fn cut(&self) {
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn silence(&self) {
        self.silenced_below.store(self.connections.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A CA and what it issued, written into `directory`.
pub struct Authority {
    pub certificate: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

pub fn authority(name: &str) -> Authority {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    Authority { certificate: params.self_signed(&key).unwrap(), key }
}

pub fn issue(directory: &Path, file: &str, issuer: &Authority, name: &str) -> (PathBuf, PathBuf) {
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
