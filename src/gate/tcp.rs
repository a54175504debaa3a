//! The TCP gate: verdicts as JSON lines to a controller, kept in an on-disk spool (`spool.rs`) until the
//! controller acknowledges them and delivered by one background thread that owns the connection, so that a slow,
//! absent or flapping controller never blocks the capture loop, and neither a controller outage nor a restart of
//! the runtime loses a verdict that was reported.
//!
//! The wire format is `protocol` (id framing, strict acknowledgements); the connection thread is `connection`.
//!
//! # Protocol
//!
//! Each verdict is one line: the verdict object with its id first, `{"id":17,"type":"verdict","source":...}`.
//! Ids are unique and increasing for the life of the spool, across restarts; lines go out in id order, with
//! gaps where verdicts were dropped. The controller acknowledges on the same connection with lines
//! `{"ack":17}`, meaning "every id ≤ 17 received"; it may acknowledge each line or only now and then. Only
//! acknowledged verdicts leave the spool. On every new connection (after an outage, a lost acknowledgement or a
//! runtime restart) the unacknowledged verdicts are sent again, in order, with the same ids. So a controller
//! that acts on a line only when its id is above the highest it has acted on acts on every verdict exactly once;
//! one that does not check ids sees an id twice only when its acknowledgement was lost.
//!
//! Anything else from the controller (a line that is not `{"ack":N}`, a line over 64 bytes, an acknowledgement
//! of an id never sent) is refused: counted in `bad_acks`, logged, and the connection is dropped and made again,
//! with a back-off that keeps growing while the controller keeps misbehaving. A controller that acknowledges
//! nothing for `ack_timeout` while lines wait is treated the same way (without the count). A line cut off by a
//! dropped connection has no newline: the controller discards it, and the verdict comes again, whole.
//!
//! # Grants: the controller opens the door
//!
//! A verdict is evidence for the controller, not an authorisation (`gate::relay`, "Who opens the door"). With a
//! `[relay]`, the controller opens the door by answering a genuine verdict with `{"grant":17}`: the id of the
//! verdict it answers. The gate opens the door for `relay.pulse_ms` if verdict 17 was a `genuine` verdict
//! reported by this run less than `GRANT_WINDOW` ago and not granted before (one opening per verdict), and no
//! relay fault holds; it answers `{"type":"grant","id":17,"opened":true}` or `... "opened":false,"reason":"..."}`
//! on the same connection. A grant naming an id never sent is misbehaviour, like such an acknowledgement.
//!
//! A verdict that cannot be stored (a full disk, an I/O error) is not sent either: `report` returns the error,
//! and the door hears nothing rather than a verdict that might be lost unnoticed.
//!
//! # Blocking
//!
//! `report` stores the verdict in the spool and syncs it to disk (one `fdatasync`: well under a millisecond on
//! an SSD, a few on eMMC) before returning Ok; now and then a drop or an acknowledgement also rewrites the spool,
//! bounded by its capacity. Everything on the network happens on the thread. When the spool is full the oldest
//! waiting verdict is dropped, counted and logged (once per burst): the newest verdicts are about the people at
//! the door now.

mod connection;
mod envelope;
mod link;
mod protocol;

pub use envelope::{SCHEMA, SIGNATURE_FIELD};
pub use link::{Tls, TlsSettings};
#[doc(hidden)]
pub use protocol::read_controller_lines;

/// The envelope and the sealed line's frame, shared with the fleet output (`gate::mqtt`), which publishes the
/// same signed lines.
pub(crate) use envelope::{new_boot_id, Sealer, Stamper};

use super::spool::{Spool, MAX_CAPACITY};
use super::{Gate, Line, VerdictMessage};
use anyhow::{bail, ensure, Context, Result};
use connection::run;
pub(crate) use protocol::Frame;
use serde::Deserialize;
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the controller may leave sent lines unacknowledged (with none acknowledged meanwhile) before the
/// connection is dropped and the lines are sent again on a new one.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a genuine verdict the controller may grant it: the person is still at the door.
pub const GRANT_WINDOW: Duration = Duration::from_secs(10);
/// The default of `[gate] max_age_ms`: a verdict sent later than this after it was made is marked expired.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5);
/// Genuine verdicts remembered for grants; older ones are forgotten first.
const GRANTABLE: usize = 32;

/// How long `Drop` waits for the thread: one connection attempt and one write, with a margin. Past that (a name
/// resolution that hangs, say) the thread is left to finish on its own rather than hanging shutdown.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Where and how a `TcpGate` delivers.
#[derive(Clone, Debug)]
pub struct TcpGateSettings {
    /// The controller, `host:port`.
    pub address: String,
    /// The spool file (created if missing; its directory must exist).
    pub spool: PathBuf,
    /// Verdicts kept until acknowledged, 1 to 4096; beyond that the oldest is dropped.
    pub capacity: usize,
    /// See [`ACK_TIMEOUT`].
    pub ack_timeout: Duration,
    /// The door relay the controller opens with grants; `None`: no relay, grants are answered "refused".
    pub door: Option<crate::gate::relay::DoorControl>,
    /// TLS 1.3 with the pinned controller; `None` only with `insecure = true`.
    pub tls: Option<TlsSettings>,
    /// The board id every verdict line carries.
    pub board: String,
    /// The sha256 (hex) of the model that judged, carried by every verdict line; `None`: no classifier.
    pub model_sha256: Option<String>,
    /// The device key that signs every verdict line (`envelope`); `None` only with `insecure = true`.
    pub signing_key: Option<ed25519_dalek::SigningKey>,
    /// A verdict sent later than this after it was made goes out marked expired (`envelope`, "Expiry"), and
    /// cannot be granted.
    pub max_age: Duration,
}

impl TcpGateSettings {
    /// Settings with the default acknowledgement timeout.
    pub fn new(address: &str, spool: &Path, capacity: usize) -> TcpGateSettings {
        TcpGateSettings {
            address: address.to_owned(),
            spool: spool.to_path_buf(),
            capacity,
            ack_timeout: ACK_TIMEOUT,
            door: None,
            tls: None,
            board: "unnamed".to_owned(),
            model_sha256: None,
            signing_key: None,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// Counters of a `TcpGate`, read together so that they are consistent: every verdict found in the spool at start
/// (`TcpGate::recovered`) or reported since is exactly one of acked, dropped or queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpGateStats {
    /// Lines written completely to a controller, first sendings and sendings again.
    pub sent: u64,
    /// Of `sent`, lines sent again: after a reconnection, or found in the spool at start (they may have reached
    /// the controller before the restart).
    pub resent: u64,
    /// Verdicts the controller acknowledged, removed from the spool.
    pub acked: u64,
    /// Verdicts dropped because the spool was full (at start too, when it held more than its capacity).
    pub dropped: u64,
    /// Lines from the controller refused: not an acknowledgement, too long, or acknowledging an id never sent.
    pub bad_acks: u64,
    /// Successful connections since start.
    pub connects: u64,
    /// Connections refused because the peer failed TLS: another CA, an expired certificate, another name, no
    /// TLS at all, or it refused the device's certificate.
    pub tls_refused: u64,
    /// Of `sent`, verdict lines sent marked expired: older than `max_age`, or made by an earlier start.
    pub expired: u64,
    /// The controller's grants that opened the door.
    pub grants: u64,
    /// Grants refused: not a recent genuine verdict of this run, granted before, no relay, or a relay fault.
    pub grants_refused: u64,
    /// Verdicts in the spool, waiting for an acknowledgement.
    pub queued: usize,
}

/// Verdicts as JSON lines over TCP to a controller at a `host:port` address, resolved again on every connection
/// attempt so that a DNS change is followed. `report` stores in the spool; one thread named "gate-tcp" connects,
/// writes, reads acknowledgements and reconnects with exponential back-off.
pub struct TcpGate {
    shared: Arc<Shared>,
    /// Encoding happens here, outside the lock.
    line: Line,
    /// Stamps each verdict with the board, boot id, sequence, clocks, model and schema (`envelope`).
    stamper: envelope::Stamper,
    description: String,
    recovered: usize,
    thread: Option<JoinHandle<()>>,
}

/// What `TcpGate` and its thread share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: a verdict was stored, or it must stop.
    work: Condvar,
    /// Wakes `flush` and `Drop`: a verdict was acknowledged, or the thread exited.
    progress: Condvar,
}

struct State {
    spool: Spool,
    stop: bool,
    exited: bool,
    /// A clone of the thread's connection, so that `Drop` can shut it down and end a write stalled on the peer.
    connection: Option<TcpStream>,
    stats: TcpGateStats,
    /// Verdicts dropped since the last line sent: the drop warning is logged once per burst, when this leaves zero.
    dropped_in_burst: u64,
    /// The runtime's current health as a line with its newline (empty until the first change), and a number
    /// that grows with each change: each connection sends the current one once, and again when it changes.
    /// Health lines carry no id and are not spooled or acknowledged: only the present state matters.
    health: Frame,
    health_version: u64,
    /// The audit log's chain head line with its newline, and its version: sent like the health line (each
    /// connection the latest once, and again when it changes), never spooled.
    audit_head: Frame,
    audit_head_version: u64,
    /// Genuine verdicts of this run that the controller may still grant: (id, when reported).
    grantable: heapless::Deque<(u64, Instant), GRANTABLE>,
    door: Option<crate::gate::relay::DoorControl>,
    /// See `TcpGateSettings::max_age`: grants of older verdicts are refused too.
    max_age: Duration,
}

/// Locks the shared state. A poisoned lock is taken over rather than propagated: every change to the state is
/// made in one step after its spool write succeeded, so a panic elsewhere cannot have left it half-changed, and
/// the gate should keep delivering.
fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` for at most `timeout`, taking over a poisoned lock for the reason given at `lock`.
fn wait<'a>(condvar: &Condvar, guard: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
    condvar.wait_timeout(guard, timeout).unwrap_or_else(PoisonError::into_inner).0
}

/// Checks that `address` is `host:port` with a non-zero port; IPv6 hosts must be bracketed (`[::1]:4000`), as
/// the resolver expects. The name itself is resolved later, on each connection attempt.
fn validate_address(address: &str) -> Result<()> {
    let (host, port) =
        address.rsplit_once(':').with_context(|| format!("gate address `{address}` must be host:port"))?;
    ensure!(!host.is_empty(), "gate address `{address}` must be host:port: the host is missing");
    ensure!(
        !host.contains(':') || (host.starts_with('[') && host.ends_with(']')),
        "gate address `{address}` must be host:port: write an IPv6 host in brackets, as in [::1]:4000"
    );
    let port: u16 = port.parse().with_context(|| {
        format!("gate address `{address}` must be host:port: `{port}` is not a port number")
    })?;
    ensure!(port != 0, "gate address `{address}` must be host:port: port 0 cannot be connected to");
    Ok(())
}

/// The board config's `[gate] kind = "tcp"` keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSection {
    /// The controller, `host:port`.
    pub address: String,
    /// Verdicts kept until the controller acknowledges them, 1 to 4096; when full, the oldest is dropped.
    pub queue: usize,
    /// The spool file (created if missing, in an existing directory). A spool on a RAM file system
    /// (`/run/...`) is the explicit choice of keeping verdicts across controller outages but not reboots.
    pub spool: PathBuf,
    /// true: plaintext to an unauthenticated peer (a lab only); false: TLS 1.3, the four keys below required.
    pub insecure: bool,
    /// The device's certificate (PEM).
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The device's private key (PEM), mode 600.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// The CA that issued the controller's certificate (PEM): the only one trusted.
    #[serde(default)]
    pub controller_ca: Option<PathBuf>,
    /// The name the controller's certificate must carry.
    #[serde(default)]
    pub controller_name: Option<String>,
    /// The device's Ed25519 key (64 hex digits of seed, mode 600; `deepgate audit keygen` makes one) that signs
    /// every verdict line; required unless `insecure = true`. `deepgate audit public-key FILE` prints the public
    /// key the controller pins.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// A verdict sent later than this after it was made goes out marked `"expired":true` (never actionable),
    /// 100 to 60000 ms; default 5000.
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
}

fn default_max_age_ms() -> u64 {
    DEFAULT_MAX_AGE.as_millis() as u64
}

impl TcpSection {
    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        ensure!((1..=MAX_CAPACITY).contains(&self.queue), "gate.queue must be 1 to {MAX_CAPACITY} verdicts");
        ensure!(
            self.spool.file_name().is_some() && !self.spool.to_string_lossy().ends_with('/'),
            "gate.spool `{}` must name a file",
            self.spool.display()
        );
        ensure!(
            self.address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
            "gate.address `{}` must be host:port",
            self.address
        );
        let tls_keys = [
            ("certificate", self.certificate.is_some()),
            ("private_key", self.private_key.is_some()),
            ("controller_ca", self.controller_ca.is_some()),
            ("controller_name", self.controller_name.is_some()),
        ];
        ensure!(
            (100..=60_000).contains(&self.max_age_ms),
            "gate.max_age_ms must be 100 to 60000 (a verdict older than that is not acted on)"
        );
        for (key, present) in tls_keys {
            match self.insecure {
                true => ensure!(!present, "gate.{key} is set but gate.insecure = true sends plaintext: choose one"),
                false => ensure!(
                    present,
                    "gate.{key} is missing: the controller link is TLS unless gate.insecure = true (a lab only)"
                ),
            }
        }
        ensure!(
            self.insecure || self.signing_key.is_some(),
            "gate.signing_key is missing: every verdict line is signed unless gate.insecure = true (a lab only)"
        );
        Ok(())
    }

    /// The TLS settings, paths resolved by `resolve`; `None` with `insecure = true`.
    pub fn tls(&self, resolve: impl Fn(&Path) -> PathBuf) -> Option<TlsSettings> {
        match (&self.certificate, &self.private_key, &self.controller_ca, &self.controller_name) {
            (Some(certificate), Some(private_key), Some(controller_ca), Some(name)) if !self.insecure => {
                Some(TlsSettings {
                    certificate: resolve(certificate),
                    private_key: resolve(private_key),
                    controller_ca: resolve(controller_ca),
                    controller_name: name.clone(),
                })
            }
            _ => None,
        }
    }
}

impl TcpGate {
    /// Validates the settings, opens (or creates) the spool, and starts the thread, which connects at once and
    /// first sends whatever the spool still holds. An absent controller is not an error: verdicts wait in the
    /// spool until it appears.
    pub fn start(settings: TcpGateSettings) -> Result<TcpGate> {
        let address = settings.address;
        validate_address(&address)?;
        ensure!(
            (1..=MAX_CAPACITY).contains(&settings.capacity),
            "gate queue capacity {} must be 1 to {MAX_CAPACITY} verdicts",
            settings.capacity
        );
        ensure!(!settings.ack_timeout.is_zero(), "gate acknowledgement timeout must be above zero");
        let tls = match &settings.tls {
            Some(tls) => Some(Tls::load(tls).with_context(|| format!("gate tcp {address}"))?),
            None => {
                log::warn!("gate tcp {address}: insecure = true: verdicts go in PLAINTEXT to an unauthenticated peer");
                None
            }
        };
        let spool =
            Spool::open(&settings.spool, settings.capacity).with_context(|| format!("gate tcp {address}"))?;
        let recovery = spool.recovery();
        let boot = envelope::new_boot_id()?;
        let started = Instant::now();
        match &settings.signing_key {
            Some(key) => log::info!(
                "gate tcp {address}: boot {boot}; verdict lines signed (public key {})",
                super::to_hex(key.verifying_key().as_bytes())
            ),
            None => {
                log::warn!("gate tcp {address}: boot {boot}; verdict lines UNSIGNED (no gate.signing_key)")
            }
        }
        let stamper =
            envelope::Stamper::new(&settings.board, &boot, settings.model_sha256.as_deref(), started);
        let sealer = envelope::Sealer::new(&boot, started, settings.max_age, settings.signing_key);
        // Every id below the next one was given out and may have been sent before the start.
        let highest_given = spool.next_id() - 1;
        if recovery.records > 0 {
            log::info!(
                "gate tcp {address}: {} verdict(s) waiting in {} since before the start; they are sent again \
                 with their ids",
                spool.len(),
                spool.path().display()
            );
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                spool,
                stop: false,
                exited: false,
                connection: None,
                stats: TcpGateStats { dropped: recovery.dropped, ..TcpGateStats::default() },
                dropped_in_burst: 0,
                health: Frame::new(),
                health_version: 0,
                audit_head: Frame::new(),
                audit_head_version: 0,
                grantable: heapless::Deque::new(),
                door: settings.door,
                max_age: settings.max_age,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("gate-tcp".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let address = address.clone();
                let ack_timeout = settings.ack_timeout;
                move || {
                    crate::health::debug_panic_point("gate-tcp");
                    run(&shared, &address, tls.as_ref(), &sealer, ack_timeout, highest_given)
                }
            })
            .with_context(|| format!("starting the gate thread for {address}"))?;
        Ok(TcpGate {
            shared,
            line: Line::new(),
            stamper,
            description: format!("tcp {address}"),
            recovered: recovery.records,
            thread: Some(thread),
        })
    }

    /// The counters, read under one lock.
    pub fn stats(&self) -> TcpGateStats {
        let state = lock(&self.shared.state);
        TcpGateStats { queued: state.spool.len(), ..state.stats }
    }

    /// Verdicts found waiting in the spool at start.
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    /// Logs the start of a burst of drops; the thread logs its end when a line goes out again.
    fn warn_drops(&self, burst_started: bool) {
        if burst_started {
            log::warn!(
                "gate {}: spool full, dropping the oldest verdicts until the controller catches up",
                self.description
            );
        }
    }
}

impl Gate for TcpGate {
    /// Stores the verdict in the spool, synced to disk, and returns; never waits for the network.
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> Result<()> {
        self.stamper.stamp(verdict, &mut self.line).with_context(|| format!("gate {}", self.description))?;
        let burst_started = {
            let mut state = lock(&self.shared.state);
            let appended =
                state.spool.append(&self.line).with_context(|| format!("gate {}", self.description))?;
            if verdict.decision == crate::decide::Decision::Genuine {
                if state.grantable.is_full() {
                    state.grantable.pop_front();
                }
                // Cannot fail: room was just made.
                let _ = state.grantable.push_back((appended.id, Instant::now()));
            }
            let burst_started = appended.dropped.is_some() && state.dropped_in_burst == 0;
            if appended.dropped.is_some() {
                state.stats.dropped += 1;
                state.dropped_in_burst += 1;
            }
            burst_started
        };
        self.shared.work.notify_one();
        self.warn_drops(burst_started);
        Ok(())
    }

    /// Waits until the controller acknowledged every stored verdict, or `timeout` passed. What is not
    /// acknowledged stays in the spool for the next start.
    fn flush(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while !state.spool.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "gate {}: {} verdict(s) not acknowledged within {timeout:?}; they stay in {} for the next \
                     start",
                    self.description,
                    state.spool.len(),
                    state.spool.path().display()
                );
            }
            state = wait(&self.shared.progress, state, deadline - now);
        }
        Ok(())
    }

    fn describe(&self) -> &str {
        &self.description
    }

    fn link_up(&self) -> Option<bool> {
        Some(lock(&self.shared.state).connection.is_some())
    }

    /// Queues `{"type":"health","state":...,"code":N,"active":[...],"can_decide":bool,"tamper":bool}` for
    /// the controller (ARCHITECTURE.md, "Failure policy").
    fn set_health(&mut self, health: crate::health::Health) {
        if let Err(error) = super::encode_health(health, &mut self.line) {
            log::error!("gate {}: {error:#}", self.description);
            return;
        }
        {
            let mut state = lock(&self.shared.state);
            state.health.clear();
            // Cannot fail: a health line is far shorter than a verdict line.
            let _ = state.health.extend_from_slice(&self.line);
            let _ = state.health.push(b'\n');
            state.health_version += 1;
        }
        self.shared.work.notify_one();
    }

    /// Queues the audit head line for the controller, as the health line is.
    fn audit_head(&mut self, line: &Line) {
        {
            let mut state = lock(&self.shared.state);
            state.audit_head.clear();
            let stored =
                state.audit_head.extend_from_slice(line).is_ok() && state.audit_head.push(b'\n').is_ok();
            if !stored {
                state.audit_head.clear();
                log::error!("gate {}: the audit head line does not fit", self.description);
                return;
            }
            state.audit_head_version += 1;
        }
        self.shared.work.notify_one();
    }

    /// The connection thread is running, unless it ended (a panic) before the gate was dropped.
    fn worker_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|thread| !thread.is_finished())
    }
}

impl Drop for TcpGate {
    /// Stops the thread and waits for it, at most `EXIT_WAIT`: a write stalled on the peer is ended by shutting
    /// the connection down; a connection attempt ends within its own timeout. The spool keeps what is waiting.
    fn drop(&mut self) {
        let connection = {
            let mut state = lock(&self.shared.state);
            state.stop = true;
            state.connection.take()
        };
        if let Some(connection) = connection {
            // Write only: whatever was sent is still delivered, followed by a clean end of stream.
            if let Err(error) = connection.shutdown(Shutdown::Write) {
                log::debug!("gate {}: shutting the connection down: {error}", self.description);
            }
        }
        self.shared.work.notify_all();
        let deadline = Instant::now() + EXIT_WAIT;
        let mut state = lock(&self.shared.state);
        while !state.exited {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = wait(&self.shared.progress, state, deadline - now);
        }
        let (exited, stats) = (state.exited, TcpGateStats { queued: state.spool.len(), ..state.stats });
        drop(state);
        log::info!(
            "gate {}: {} line(s) sent ({} again), {} acknowledged, {} dropped, {} refused acknowledgement(s), {} \
             waiting in the spool",
            self.description,
            stats.sent,
            stats.resent,
            stats.acked,
            stats.dropped,
            stats.bad_acks,
            stats.queued
        );
        let Some(thread) = self.thread.take() else { return };
        if !exited {
            log::warn!(
                "gate {}: thread did not stop within {EXIT_WAIT:?}; leaving it to finish",
                self.description
            );
        } else if thread.join().is_err() {
            log::error!("gate {}: thread panicked", self.description);
        }
    }
}
