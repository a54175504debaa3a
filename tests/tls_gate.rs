//! The TCP gate's TLS link against a real TLS peer that no one here wrote: Python's `ssl` module (OpenSSL) as
//! the controller (`tests/tls/controller.py`), requiring the device's certificate. Certificates and keys are
//! made at test time with rcgen; none is committed. The pinned controller gets verdicts; a controller from
//! another CA, with an expired certificate or another name, and a plaintext peer are refused and counted,
//! and get no verdict.

mod common;

use deepgate::decide::Decision;
use deepgate::gate::tcp::{TcpGate, TcpGateSettings, TcpGateStats, TlsSettings};
use deepgate::gate::{Gate, VerdictMessage};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(15);

struct Authority {
    certificate: Certificate,
    key: KeyPair,
}

fn authority(name: &str) -> Authority {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Authority { certificate: params.self_signed(&key).unwrap(), key }
}

/// A certificate for `name` issued by `issuer`, written with its key into `directory` as `<file>.crt/.key`;
/// `expired`: valid only in 2020.
fn issue(
    directory: &Path,
    file: &str,
    issuer: &Authority,
    name: &str,
    purpose: ExtendedKeyUsagePurpose,
    expired: bool,
) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![purpose];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    }
    let certificate = params.signed_by(&key, &issuer.certificate, &issuer.key).unwrap();
    let (certificate_path, key_path) =
        (directory.join(format!("{file}.crt")), directory.join(format!("{file}.key")));
    std::fs::write(&certificate_path, certificate.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (certificate_path, key_path)
}

fn write_ca(directory: &Path, file: &str, authority: &Authority) -> PathBuf {
    let path = directory.join(format!("{file}.crt"));
    std::fs::write(&path, authority.certificate.pem()).unwrap();
    path
}

/// A Python with `ssl` and the pinned `cryptography` (tests/osdp/requirements.txt): the test venv that `cargo
/// xtask ci` installs (or DEEPGATE_OSDP_PYTHON), else the system's python3 if it has both.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("DEEPGATE_OSDP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("tests/osdp/.venv/bin/python"));
    let usable = |python: &Path| {
        Command::new(python)
            .args(["-c", "import ssl, cryptography.hazmat.primitives.asymmetric.ed25519"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let found = [venv.clone(), PathBuf::from("python3")].into_iter().find(|python| usable(python));
    if found.is_none() {
        common::skip(
            common::Need::Osdp,
            &format!(
                "no Python with ssl and cryptography for the TLS controller ({} lacks them, and so does \
                 python3). `cargo xtask ci` installs tests/osdp/requirements.txt there; or set \
                 DEEPGATE_OSDP_PYTHON.",
                venv.display()
            ),
        );
    }
    found
}

/// The device key of these tests and its public half in hex, as `deepgate audit public-key` prints it.
fn signing_key() -> (ed25519_dalek::SigningKey, String) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let public = deepgate::gate::to_hex(key.verifying_key().as_bytes());
    (key, public)
}

/// Runs the Python controller's signature check on `lines`: one of valid / invalid / absent per line.
fn python_check(python: &Path, public: &str, lines: &[String]) -> Vec<String> {
    let mut child = Command::new(python)
        .arg(common::root().join("tests/tls/controller.py"))
        .args(["--check", public])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(lines.concat().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// The Python controller and what it prints.
struct Controller {
    child: Child,
    lines: Receiver<Value>,
    port: u16,
}

impl Controller {
    fn start(python: &Path, certificate: &Path, key: &Path, device_ca: &Path) -> Controller {
        let mut child = Command::new(python)
            .arg(common::root().join("tests/tls/controller.py"))
            .args([certificate, key, device_ca])
            .arg(signing_key().1)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(serde_json::from_str::<Value>(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(PATIENCE).expect("the controller prints its port");
        let port = first["port"].as_u64().unwrap() as u16;
        Controller { child, lines, port }
    }

    fn wait_for(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + PATIENCE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("the controller never printed {what}"),
            }
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verdict() -> VerdictMessage<'static> {
    VerdictMessage::sample("camera", Decision::Genuine)
}

fn start_gate(directory: &Path, port: u16, tls: TlsSettings) -> TcpGate {
    let mut settings = TcpGateSettings::new(&format!("127.0.0.1:{port}"), &directory.join("gate.spool"), 16);
    settings.tls = Some(tls);
    settings.board = "kiosk-1".into();
    settings.signing_key = Some(signing_key().0);
    TcpGate::start(settings).unwrap()
}

fn wait_stats(gate: &TcpGate, what: &str, condition: impl Fn(TcpGateStats) -> bool) {
    let end = Instant::now() + PATIENCE;
    while !condition(gate.stats()) {
        assert!(Instant::now() < end, "timed out waiting for {what}: {:?}", gate.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn only_the_pinned_controller_gets_verdicts_over_tls_and_every_impostor_is_refused_and_counted() {
    let Some(python) = python() else { return };
    let directory = common::temp_dir("tls-gate");
    let site = authority("site CA");
    let other = authority("another CA");
    let site_ca = write_ca(&directory, "site-ca", &site);
    let (device_certificate, device_key) =
        issue(&directory, "device", &site, "kiosk-1", ExtendedKeyUsagePurpose::ClientAuth, false);
    let tls = TlsSettings {
        certificate: device_certificate,
        private_key: device_key,
        controller_ca: site_ca.clone(),
        controller_name: "controller.test".into(),
    };
    let server = ExtendedKeyUsagePurpose::ServerAuth;

    // The pinned controller: the verdict arrives, the device's certificate was required and checked.
    let (certificate, key) = issue(&directory, "controller", &site, "controller.test", server.clone(), false);
    let controller = Controller::start(&python, &certificate, &key, &site_ca);
    let mut gate = start_gate(&directory.join(""), controller.port, tls.clone());
    gate.report(&verdict()).unwrap();
    let client = controller.wait_for("the device's certificate", |line| line.get("client").is_some());
    assert_eq!(client["client"]["commonName"], "kiosk-1", "{client}");
    let line = controller.wait_for("the verdict", |line| line.get("line").is_some());
    assert!(line["line"].as_str().unwrap().contains("\"decision\":\"genuine\""), "{line}");
    // The controller checked the device's signature against the pinned public key.
    assert_eq!(line["signature"], "valid", "{line}");
    let text = line["line"].as_str().unwrap().to_owned();
    let verdict_line: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (verdict_line["board"].as_str(), verdict_line["expired"].as_bool()),
        (Some("kiosk-1"), Some(false))
    );
    // Tampered lines fail the same check: a changed decision, a forged huge id, a line with its signature cut.
    let tampered = [
        text.replacen("\"genuine\"", "\"fake\"", 1),
        text.replacen("{\"id\":1,", "{\"id\":18446744073709551615,", 1),
        text.replacen("\"expired\":false", "\"expired\":true", 1),
        format!("{}}}\n", &text[..text.rfind(deepgate::gate::tcp::SIGNATURE_FIELD).unwrap()]),
    ];
    assert!(tampered.iter().all(|line| line != &text));
    let mut checked = vec![text.clone()];
    checked.extend(tampered);
    assert_eq!(
        python_check(&python, &signing_key().1, &checked),
        ["valid", "invalid", "invalid", "invalid", "absent"]
    );
    wait_stats(&gate, "the acknowledgement", |stats| stats.acked == 1);
    assert_eq!(gate.stats().tls_refused, 0);
    drop(gate);
    drop(controller);

    // Impostors: each is refused at the handshake, counted, and given nothing.
    let impostors = [
        ("another CA", issue(&directory, "wrong-ca", &other, "controller.test", server.clone(), false)),
        (
            "an expired certificate",
            issue(&directory, "expired", &site, "controller.test", server.clone(), true),
        ),
        ("another name", issue(&directory, "wrong-name", &site, "other.test", server.clone(), false)),
    ];
    for (what, (certificate, key)) in impostors {
        let controller = Controller::start(&python, &certificate, &key, &site_ca);
        let spool = common::temp_dir("tls-impostor");
        let mut gate = start_gate(&spool, controller.port, tls.clone());
        gate.report(&verdict()).unwrap();
        wait_stats(&gate, what, |stats| stats.tls_refused >= 1);
        let stats = gate.stats();
        assert_eq!((stats.connects, stats.sent, stats.queued), (0, 0, 1), "{what}: {stats:?}");
        controller.wait_for("the failed handshake", |line| line.get("error").is_some());
    }

    // A plaintext peer: it answers in the clear, and gets nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hello = [0u8; 512];
        let read = stream.read(&mut hello).unwrap_or(0);
        let _ = stream.write_all(b"{\"ack\":1}\n");
        hello[..read].to_vec()
    });
    let spool = common::temp_dir("tls-plaintext");
    let mut gate = start_gate(&spool, port, tls);
    gate.report(&verdict()).unwrap();
    wait_stats(&gate, "the plaintext peer refused", |stats| stats.tls_refused >= 1);
    let hello = peer.join().unwrap();
    assert_eq!(hello.first(), Some(&0x16), "the peer saw a TLS handshake record, never a verdict");
    assert!(!String::from_utf8_lossy(&hello).contains("verdict"));
    let stats = gate.stats();
    assert_eq!((stats.connects, stats.sent, stats.acked, stats.queued), (0, 0, 0, 1), "{stats:?}");
}
