//! The fleet output: verdicts, health and liveness of one kiosk published to a site's MQTT broker, beside the
//! door's own gate, with the TCP gate's guarantee (an on-disk spool, ids, nothing lost across broker outages
//! and restarts of either side). The gate and its settings are here; the `[mqtt]` keys are `section`, the
//! connection `session`, the broker's TLS `tls`.
//!
//! # Topics
//!
//! Under `<topic_prefix>/<site>/<board id>/` (prefix `deepgate` by default), MQTT 3.1.1:
//!
//! - `verdict`: every verdict, QoS 1, not retained. The payload is the TCP gate's signed verdict line without
//!   its newline (`gate::tcp`, "Protocol", and its envelope: `{"id":17,"schema":2,"board":..,"boot":..,
//!   "seq":..,...,"expired":false,"signature":".."}`), `id` being this output's own spool id.
//! - `health`: the runtime's health line (`gate::encode_health`), QoS 1, retained: a subscriber that arrives
//!   later gets the current state at once. Published on every change and again on every connection.
//! - `status`: `online` (QoS 1, retained) on every connection; `offline` (retained) as the last will the
//!   broker publishes when the connection dies without a goodbye (power cut, network loss, crash), and
//!   published by the kiosk itself when it stops cleanly.
//!
//! # Delivery: at least once, with ids
//!
//! `report` stores the stamped verdict in this output's own spool (`gate::spool`, synced to disk) and
//! returns; the output's thread publishes waiting verdicts in id order with QoS 1, at most [`WINDOW`]
//! unacknowledged at a time, and removes a verdict from the spool only when the broker's PUBACK for it (and
//! for every earlier one) has arrived. The MQTT session is clean (`clean_session = true`): the spool is the
//! session (a persistent session's unacknowledged publications live in the client's memory, which a restart
//! loses; and the kiosk subscribes to nothing the broker would have to keep). On every new connection, after
//! an outage or a restart of the runtime, everything still in the spool is published again, with the same id,
//! boot and seq; a PUBACK lost with a connection therefore means a duplicate, never a loss. Subscribers
//! de-duplicate by (`board`, `boot`, `seq`) (or by (`board`, `id`) while the spool file lives): after that,
//! every verdict is seen exactly once and, per board, in order. "No duplicates" means exactly that: at least
//! once on the wire, once after de-duplication by id. A spool that is full drops its oldest verdict
//! (counted), as the TCP gate's does; `seq` then shows the gap.
//!
//! The broker acknowledges to the kiosk, not to the subscribers: a slow or absent subscriber is the broker's
//! business (its queue), never the kiosk's.
//!
//! # Security
//!
//! TLS 1.3 (rustls, ring) to the broker, trusting only `ca`, the broker's certificate naming the host of
//! `broker`; per-device credentials are a client certificate and key (mode 600) and/or a user name with a
//! password file (mode 600). Plaintext only with `insecure = true`, a lab's choice, as for the TCP gate.

mod section;
mod session;
mod tls;

pub use section::MqttSection;

use super::spool::Spool;
use super::tcp::{new_boot_id, Sealer, Stamper, DEFAULT_MAX_AGE};
use super::{Gate, Line, VerdictMessage};
use anyhow::{bail, ensure, Context, Result};
use section::{default_keep_alive_s, topic_level};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Verdicts published and not yet acknowledged by the broker, at most: enough to fill a link with a long
/// round trip, few enough that a reconnection sends little again.
pub const WINDOW: usize = 32;
/// The default of `[mqtt] topic_prefix`.
pub const DEFAULT_PREFIX: &str = "deepgate";
/// How long `Drop` waits for the thread to say `offline` and disconnect.
const EXIT_WAIT: Duration = Duration::from_secs(3);

pub use tls::TlsFiles;

/// Where and how an `MqttGate` publishes.
#[derive(Clone)]
pub struct MqttSettings {
    /// The broker's host name or address (with TLS, the name its certificate must carry) and port.
    pub host: String,
    pub port: u16,
    /// The topic levels: `<topic_prefix>/<site>/<board>/...`.
    pub topic_prefix: String,
    pub site: String,
    /// The board id, in topics, the client id and every verdict line.
    pub board: String,
    /// The spool file and its capacity.
    pub spool: PathBuf,
    pub capacity: usize,
    /// TLS with these files; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// MQTT user name and password.
    pub credentials: Option<(String, String)>,
    pub signing_key: Option<ed25519_dalek::SigningKey>,
    /// The classifier's sha256, carried by every verdict line.
    pub model_sha256: Option<String>,
    pub keep_alive: Duration,
    pub max_age: Duration,
}

impl MqttSettings {
    /// Plaintext, unsigned settings with the defaults; a test or the section fills in the rest.
    pub fn new(
        host: &str,
        port: u16,
        site: &str,
        board: &str,
        spool: &Path,
        capacity: usize,
    ) -> MqttSettings {
        MqttSettings {
            host: host.to_owned(),
            port,
            topic_prefix: DEFAULT_PREFIX.to_owned(),
            site: site.to_owned(),
            board: board.to_owned(),
            spool: spool.to_path_buf(),
            capacity,
            tls: None,
            credentials: None,
            signing_key: None,
            model_sha256: None,
            keep_alive: Duration::from_secs(default_keep_alive_s()),
            max_age: DEFAULT_MAX_AGE,
        }
    }

    /// The topic of `leaf` (`verdict`, `health`, `status`) for this kiosk.
    pub fn topic(&self, leaf: &str) -> String {
        format!("{}/{}/{}/{leaf}", self.topic_prefix, self.site, self.board)
    }
}

/// Counters of an `MqttGate`, read together: every verdict found in the spool at start or reported since is
/// exactly one of acked, dropped or queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MqttStats {
    /// Verdict publications handed to the connection, first and again.
    pub published: u64,
    /// Of `published`, verdicts published again: after a reconnection, or found in the spool at start.
    pub republished: u64,
    /// Verdicts the broker acknowledged (PUBACK), removed from the spool.
    pub acked: u64,
    /// Verdicts dropped because the spool was full.
    pub dropped: u64,
    /// Verdicts that could not be stored (the spool's disk), so never published.
    pub refused: u64,
    /// Connections accepted by the broker (CONNACK) since start.
    pub connects: u64,
    /// Connection attempts and connections that failed or ended.
    pub failures: u64,
    /// Health lines published.
    pub health: u64,
    /// Writes rumqttc reported that this output had not requested: never expected (the pairing of PUBACKs
    /// with verdicts would be off), so the connection is dropped and made again, and the spool sends again.
    pub unpaired: u64,
    /// Verdicts in the spool, waiting for a PUBACK.
    pub queued: usize,
}

/// A handle on an `MqttGate`'s counters for the metrics endpoint, which reads them at each scrape.
#[derive(Clone)]
pub struct MqttStatsSource(Arc<Shared>);

impl MqttStatsSource {
    /// The counters, read under one lock.
    pub fn stats(&self) -> MqttStats {
        let state = lock(&self.0.state);
        MqttStats { queued: state.spool.len(), ..state.stats }
    }

    /// Whether the broker connection is up now.
    pub fn connected(&self) -> bool {
        lock(&self.0.state).connected
    }
}

/// What the gate and its thread share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread's publisher: a verdict was stored or the health changed (or it must stop).
    wake: tokio::sync::Notify,
    /// Wakes the thread's connection task: it must stop.
    stop: tokio::sync::Notify,
    /// Wakes `flush` and `Drop`: a verdict was acknowledged, or the thread exited.
    progress: Condvar,
}

struct State {
    spool: Spool,
    stop: bool,
    exited: bool,
    connected: bool,
    stats: MqttStats,
    /// The current health line (empty until the first change) and a number that grows with each change.
    health: Line,
    health_version: u64,
}

/// Locks the shared state, taking over a poisoned lock: every change is made in one step (see `gate::tcp`).
fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Verdicts, health and liveness to an MQTT broker (module documentation). `report` stores in the spool; one
/// thread named "gate-mqtt" owns the connection, publishes and reconnects with back-off.
pub struct MqttGate {
    shared: Arc<Shared>,
    line: Line,
    stamper: Stamper,
    description: String,
    recovered: usize,
    thread: Option<JoinHandle<()>>,
}

impl MqttGate {
    /// Loads the TLS files, opens (or creates) the spool and starts the thread, which connects at once and
    /// first publishes whatever the spool still holds. An absent broker is not an error: verdicts wait.
    pub fn start(settings: MqttSettings) -> Result<MqttGate> {
        ensure!(
            topic_level(&settings.site)
                && topic_level(&settings.board)
                && topic_level(&settings.topic_prefix),
            "mqtt topic levels (prefix `{}`, site `{}`, board `{}`) must be letters, digits, '-' or '_'",
            settings.topic_prefix,
            settings.site,
            settings.board
        );
        ensure!(settings.port != 0, "mqtt broker port 0 cannot be connected to");
        let description = format!("mqtt {}:{} as {}", settings.host, settings.port, settings.topic(""));
        let transport = match &settings.tls {
            Some(files) => Some(tls::client_config(files).with_context(|| description.clone())?),
            None => {
                log::warn!(
                    "{description}: insecure = true: verdicts go in PLAINTEXT to an unauthenticated broker"
                );
                None
            }
        };
        let spool = Spool::open(&settings.spool, settings.capacity).with_context(|| description.clone())?;
        let recovery = spool.recovery();
        if recovery.records > 0 {
            log::info!(
                "{description}: {} verdict(s) waiting in {} since before the start; they are published again \
                 with their ids",
                spool.len(),
                spool.path().display()
            );
        }
        let boot = new_boot_id()?;
        let started = Instant::now();
        let stamper = Stamper::new(&settings.board, &boot, settings.model_sha256.as_deref(), started);
        let sealer = Sealer::new(&boot, started, settings.max_age, settings.signing_key.clone());
        // Every id below the next one may have been published before this start.
        let highest_given = spool.next_id() - 1;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                spool,
                stop: false,
                exited: false,
                connected: false,
                stats: MqttStats { dropped: recovery.dropped, ..MqttStats::default() },
                health: Line::new(),
                health_version: 0,
            }),
            wake: tokio::sync::Notify::new(),
            stop: tokio::sync::Notify::new(),
            progress: Condvar::new(),
        });
        let connection = session::Session::new(&settings, transport, sealer, highest_given);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("{description}: starting its runtime"))?;
        let thread = std::thread::Builder::new()
            .name("gate-mqtt".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    runtime.block_on(connection.run(&shared));
                    lock(&shared.state).exited = true;
                    shared.progress.notify_all();
                }
            })
            .with_context(|| format!("{description}: starting its thread"))?;
        log::info!("{description}: boot {boot}; spool {}", settings.spool.display());
        Ok(MqttGate {
            shared,
            line: Line::new(),
            stamper,
            description,
            recovered: recovery.records,
            thread: Some(thread),
        })
    }

    /// The counters, read under one lock.
    pub fn stats(&self) -> MqttStats {
        self.stats_source().stats()
    }

    /// A handle on the counters that the metrics endpoint keeps.
    pub fn stats_source(&self) -> MqttStatsSource {
        MqttStatsSource(Arc::clone(&self.shared))
    }

    /// Verdicts found waiting in the spool at start.
    pub fn recovered(&self) -> usize {
        self.recovered
    }
}

impl Gate for MqttGate {
    /// Stores the verdict in the spool, synced to disk, and wakes the publisher; never waits for the network.
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> Result<()> {
        self.stamper.stamp(verdict, &mut self.line).with_context(|| self.description.clone())?;
        let dropped = {
            let mut state = lock(&self.shared.state);
            let appended = match state.spool.append(&self.line) {
                Ok(appended) => appended,
                Err(error) => {
                    state.stats.refused += 1;
                    return Err(error.context(self.description.clone()));
                }
            };
            state.stats.dropped += u64::from(appended.dropped.is_some());
            appended.dropped
        };
        if let Some(id) = dropped {
            log::warn!("{}: spool full, dropped verdict {id} (the oldest)", self.description);
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Waits until the broker acknowledged every stored verdict, or `timeout` passed; what is not
    /// acknowledged stays in the spool for the next start.
    fn flush(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while !state.spool.is_empty() {
            let now = Instant::now();
            if now >= deadline || state.exited {
                bail!(
                    "{}: {} verdict(s) not acknowledged within {timeout:?}; they stay in {} for the next start",
                    self.description,
                    state.spool.len(),
                    state.spool.path().display()
                );
            }
            state = self
                .shared
                .progress
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    fn describe(&self) -> &str {
        &self.description
    }

    fn link_up(&self) -> Option<bool> {
        Some(lock(&self.shared.state).connected)
    }

    /// Publishes the health line, retained, now and on every later connection.
    fn set_health(&mut self, health: crate::health::Health) {
        if let Err(error) = super::encode_health(health, &mut self.line) {
            log::error!("{}: {error:#}", self.description);
            return;
        }
        {
            let mut state = lock(&self.shared.state);
            state.health.clone_from(&self.line);
            state.health_version += 1;
        }
        self.shared.wake.notify_one();
    }

    /// The connection thread is running, unless it ended (a panic) before the gate was dropped.
    fn worker_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|thread| !thread.is_finished())
    }
}

impl Drop for MqttGate {
    /// Stops the thread, which publishes `offline` and disconnects when it is connected; waits at most
    /// `EXIT_WAIT`. The spool keeps what is waiting.
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        self.shared.stop.notify_one();
        let deadline = Instant::now() + EXIT_WAIT;
        let mut state = lock(&self.shared.state);
        while !state.exited && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            state = self.shared.progress.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        let (exited, stats) = (state.exited, MqttStats { queued: state.spool.len(), ..state.stats });
        drop(state);
        log::info!("{}: {stats:?}", self.description);
        let Some(thread) = self.thread.take() else { return };
        if !exited {
            log::warn!(
                "{}: thread did not stop within {EXIT_WAIT:?}; leaving it to finish",
                self.description
            );
        } else if thread.join().is_err() {
            log::error!("{}: thread panicked", self.description);
        }
    }
}

/// The door's gate with the fleet output beside it, as one `Gate` for the supervisor: verdicts and health go
/// to both, the door's gate first. The door's gate alone decides the result of `report` and the link state
/// the health policy sees (`gate_link_down` is about the door's controller; a broker outage does not stop the
/// door); the fleet output's failures are logged and counted in its own stats.
pub struct WithFleet {
    gate: Box<dyn Gate>,
    fleet: MqttGate,
    description: String,
}

impl WithFleet {
    pub fn new(gate: Box<dyn Gate>, fleet: MqttGate) -> WithFleet {
        let description = format!("{} + {}", gate.describe(), fleet.describe());
        WithFleet { gate, fleet, description }
    }

    /// The fleet output's counters.
    pub fn fleet(&self) -> &MqttGate {
        &self.fleet
    }
}

impl Gate for WithFleet {
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> Result<()> {
        let result = self.gate.report(verdict);
        if let Err(error) = self.fleet.report(verdict) {
            log::error!("{error:#}");
        } else if !self.fleet.worker_alive() {
            log::error!(
                "{}: its thread ended; verdicts wait in its spool until a restart",
                self.fleet.describe()
            );
        }
        result
    }

    /// The door's gate first, with the whole `timeout`; the fleet output with what is left of it.
    fn flush(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let result = self.gate.flush(timeout);
        if let Err(error) = self.fleet.flush(deadline.saturating_duration_since(Instant::now())) {
            log::warn!("{error:#}");
        }
        result
    }

    fn describe(&self) -> &str {
        &self.description
    }

    fn link_up(&self) -> Option<bool> {
        self.gate.link_up()
    }

    fn set_health(&mut self, health: crate::health::Health) {
        self.gate.set_health(health);
        self.fleet.set_health(health);
    }

    /// The door's gate's threads only: the fleet output's thread ending (a bug) must not put the door in its
    /// fault state; `report` logs it instead, and its spool keeps the verdicts for the next start.
    fn worker_alive(&self) -> bool {
        self.gate.worker_alive()
    }

    fn fleet(&self) -> Option<MqttStatsSource> {
        Some(self.fleet.stats_source())
    }

    /// The door's controller only: the fleet topics carry verdicts, health and status.
    fn audit_head(&mut self, line: &Line) {
        self.gate.audit_head(line);
    }
}
