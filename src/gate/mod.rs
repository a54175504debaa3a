//! The gate: where verdicts go (stdout, a TCP controller, an OSDP controller, a door relay), and their JSON
//! form.

pub mod audit;
pub mod mqtt;
pub mod osdp;
pub mod relay;
pub mod spool;
pub mod stdout;
pub mod tcp;

use crate::decide::{Decision, Verdict};
use anyhow::Result;
use serde::Serialize;

/// One verdict as reported to the gate and on the replay output.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct VerdictMessage<'a> {
    /// Always "verdict": lets a reader of mixed JSON lines tell objects apart.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub source: &'a str,
    pub decision: Decision,
    /// Mean fake probability over the frames used; `null` when no frame was classified.
    pub fake_probability: Option<f32>,
    /// Frames of the session that passed the quality gates and were classified.
    pub frames: u32,
    /// Frames seen in the session, used or not.
    pub frames_seen: u32,
    /// Sequence numbers of the first and last frame of the session.
    pub first_frame: u64,
    pub last_frame: u64,
    pub reason: &'a str,
}

impl<'a> VerdictMessage<'a> {
    /// The message for `verdict` about `source`, its mean fake probability rounded to 0.0001 (more digits are
    /// noise): what every gate, the audit log's caller and `replay`'s output send.
    pub fn new(source: &'a str, verdict: &'a Verdict) -> VerdictMessage<'a> {
        VerdictMessage {
            kind: "verdict",
            source,
            decision: verdict.decision,
            fake_probability: verdict.fake_probability.map(|p| round_to(p, 1e-4)),
            frames: verdict.frames_used,
            frames_seen: verdict.frames_seen,
            first_frame: verdict.first_frame,
            last_frame: verdict.last_frame,
            reason: &verdict.reason,
        }
    }

    /// A plausible message of `decision` about `source`, for tests and tools that exercise delivery (gates, the
    /// relay, the spool) without running the models: 5 of 6 frames used, frames 1 to 6, a mean fake
    /// probability that fits the decision (none for `no_face`). Change a field with struct update syntax.
    #[doc(hidden)]
    pub const fn sample(source: &'a str, decision: Decision) -> VerdictMessage<'a> {
        let (fake_probability, reason) = match decision {
            Decision::Genuine => (Some(0.05), "sample: genuine"),
            Decision::Fake => (Some(0.95), "sample: fake"),
            Decision::Uncertain => (Some(0.5), "sample: uncertain"),
            Decision::NoFace => (None, "sample: no face"),
        };
        VerdictMessage {
            kind: "verdict",
            source,
            decision,
            fake_probability,
            frames: 5,
            frames_seen: 6,
            first_frame: 1,
            last_frame: 6,
            reason,
        }
    }
}

/// Rounds to a multiple of `step` (0.01 pixel, 0.0001 probability) for JSON lines that people read.
pub fn round_to(value: f32, step: f32) -> f32 {
    (value / step).round() * step
}

/// The largest JSON line the gate carries. Sources are file paths or device names, reasons short sentences;
/// longer lines are refused rather than truncated.
pub const MAX_LINE: usize = 2048;

/// A JSON line without its newline, in fixed storage so that reporting allocates nothing.
pub type Line = heapless::Vec<u8, MAX_LINE>;

/// Writes `value` as one JSON line (no newline) into `line`, which is cleared first.
pub fn encode_line<T: Serialize>(value: &T, line: &mut Line) -> Result<()> {
    line.clear();
    serde_json::to_writer(LineWriter(line), value)
        .map_err(|error| anyhow::anyhow!("gate message does not fit in {MAX_LINE} bytes: {error}"))
}

/// The health line every gate that speaks JSON sends on a change of health (ARCHITECTURE.md, "Failure
/// policy"): `{"type":"health","state":"camera_lost","code":5,"active":["camera_lost"],"can_decide":false,
/// "tamper":true}`. No id: it is not spooled or acknowledged.
#[derive(Serialize)]
struct HealthMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    state: &'static str,
    code: u8,
    active: &'a [&'static str],
    can_decide: bool,
    tamper: bool,
}

/// Writes the health line of `health` (no newline) into `line`: the one encoder of the TCP and stdout gates.
pub fn encode_health(health: crate::health::Health, line: &mut Line) -> Result<()> {
    let active: heapless::Vec<&'static str, 16> = health.active().map(crate::health::State::name).collect();
    let message = HealthMessage {
        kind: "health",
        state: health.state().name(),
        code: health.state().code(),
        active: &active,
        can_decide: health.can_decide(),
        tamper: health.tamper(),
    };
    encode_line(&message, line)
}

/// `io::Write` over a `Line` that fails, instead of growing, when the line is full.
struct LineWriter<'a>(&'a mut Line);

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .extend_from_slice(bytes)
            .map_err(|()| std::io::Error::new(std::io::ErrorKind::WriteZero, "line full"))?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
/// The board config's `[gate]` section: where verdicts go.
pub enum GateSection {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines over TCP to a controller, with reconnection, kept in an on-disk spool until acknowledged
    /// (`src/gate/tcp.rs` states the protocol).
    Tcp(tcp::TcpSection),
    /// An OSDP peripheral device on a serial (RS-485) line, polled by the access controller; Secure Channel
    /// enforced (`gate::osdp`).
    Osdp(osdp::OsdpSection),
}

impl GateSection {
    /// Refuses gate settings that cannot work, naming the key (each gate checks its own).
    pub fn validate(&self) -> Result<()> {
        match self {
            GateSection::Stdout => Ok(()),
            GateSection::Tcp(section) => section.validate(),
            GateSection::Osdp(section) => section.validate(),
        }
    }
}

/// Where verdicts are delivered. Implementations must never block the capture loop for long: a slow or absent
/// controller is absorbed by a bounded queue, and what is lost is counted.
pub trait Gate: Send {
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> Result<()>;

    /// Delivers what is queued, waiting at most `timeout`; called once at shutdown.
    fn flush(&mut self, timeout: std::time::Duration) -> Result<()>;

    /// A name for logs: "stdout", "tcp 10.0.0.5:4000".
    fn describe(&self) -> &str;

    /// Whether the link to the controller is up (TCP connected, OSDP secure channel established); `None` for
    /// a gate without one (stdout, the relay). Called once per frame: must be cheap.
    fn link_up(&self) -> Option<bool> {
        None
    }

    /// A change of the runtime's health (`health::Monitor`): gates that can tell their controller, do.
    fn set_health(&mut self, _health: crate::health::Health) {}

    /// Whether every thread the gate needs is still running: false once one has ended (returned or
    /// panicked) before the gate was dropped, which the supervisor turns into health `worker_dead`. Called
    /// once per frame: must be cheap.
    fn worker_alive(&self) -> bool {
        true
    }

    /// The audit log's chain head as a JSON line (`gate::audit::HeadMessage`), every `[audit]
    /// head_interval_s`: gates that speak JSON lines send it (not spooled or acknowledged: only the latest
    /// matters); OSDP has no place for it.
    fn audit_head(&mut self, _line: &Line) {}

    /// The counters of the fleet output beside this gate (`mqtt::WithFleet`), for the metrics endpoint.
    fn fleet(&self) -> Option<mqtt::MqttStatsSource> {
        None
    }
}

/// Reads a secret (a device key) from `path`, refusing a file that group or others can read: a key others can
/// read is a key others can use. `what` names the key in errors.
pub fn read_private_file(path: &std::path::Path, what: &str) -> Result<String> {
    use anyhow::{ensure, Context};
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let mode = metadata.permissions().mode();
    ensure!(
        mode & 0o077 == 0,
        "{what} {} is readable by group or others (mode {:o}); chmod 600 it",
        path.display(),
        mode & 0o777
    );
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

pub use crate::hex::{from_hex, to_hex};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Event, Monitor, OverloadPolicy};

    #[test]
    fn the_health_line_says_state_code_faults_and_consequences() {
        let mut monitor = Monitor::new(OverloadPolicy { budget_ms: 100.0, window: 3 });
        monitor.observe(Event::GateLinkDown);
        let health = monitor.observe(Event::CameraLost).expect("a change");
        let mut line = Line::new();
        encode_health(health, &mut line).expect("fits");
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            r#"{"type":"health","state":"camera_lost","code":5,"active":["gate_link_down","camera_lost"],"can_decide":false,"tamper":true}"#
        );
        let health = monitor.observe(Event::CameraBack).expect("a change");
        encode_health(health, &mut line).expect("fits");
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            (value["state"].as_str(), value["can_decide"].as_bool()),
            (Some("gate_link_down"), Some(true))
        );
    }
}
