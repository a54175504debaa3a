//! The TCP gate: verdicts as JSON lines to a controller, kept in an on-disk spool (`spool.rs`) until the
//! controller acknowledges them and delivered by one background thread that owns the connection, so that a slow,
//! absent or flapping controller never blocks the capture loop, and neither a controller outage nor a restart of
//! the runtime loses a verdict that was reported.
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

use super::spool::{Spool, MAX_CAPACITY};
use super::{encode_line, Gate, Line, VerdictMessage, MAX_LINE};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one connection attempt may take before the next address or a back-off.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one line's write may stall before the connection is treated as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// First back-off after a failure; doubles up to `MAX_BACKOFF`, and starts over after a successful connection.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While idle, how often the thread checks whether the controller closed the connection. Noticing early means
/// the next verdict goes to a fresh connection instead of waiting for an acknowledgement from a dead one.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// While acknowledgements are owed, how often the thread reads them.
const ACK_POLL: Duration = Duration::from_millis(10);
/// How long the controller may leave sent lines unacknowledged (with none acknowledged meanwhile) before the
/// connection is dropped and the lines are sent again on a new one.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest acknowledgement line accepted: `{"ack":18446744073709551615}` with room for spaces.
const MAX_ACK_LINE: usize = 64;
/// How long `Drop` waits for the thread: one connection attempt and one write, with a margin. Past that (a name
/// resolution that hangs, say) the thread is left to finish on its own rather than hanging shutdown.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// A line on the wire: `{"id":N,` (at most 27 bytes), the verdict line without its `{`, and a newline, so that
/// each verdict goes out in one write (one segment with `TCP_NODELAY`).
type Frame = heapless::Vec<u8, { MAX_LINE + 32 }>;

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
}

impl TcpGateSettings {
    /// Settings with the default acknowledgement timeout.
    pub fn new(address: &str, spool: &Path, capacity: usize) -> TcpGateSettings {
        TcpGateSettings {
            address: address.to_owned(),
            spool: spool.to_path_buf(),
            capacity,
            ack_timeout: ACK_TIMEOUT,
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
        let spool =
            Spool::open(&settings.spool, settings.capacity).with_context(|| format!("gate tcp {address}"))?;
        let recovery = spool.recovery();
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
                move || run(&shared, &address, ack_timeout, highest_given)
            })
            .with_context(|| format!("starting the gate thread for {address}"))?;
        Ok(TcpGate {
            shared,
            line: Line::new(),
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
        encode_line(verdict, &mut self.line).with_context(|| format!("gate {}", self.description))?;
        let burst_started = {
            let mut state = lock(&self.shared.state);
            let appended =
                state.spool.append(&self.line).with_context(|| format!("gate {}", self.description))?;
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

/// The thread: connect, serve until an error or stop, back off, repeat. `highest_sent` is the highest id
/// that may have reached a controller (at start: every id the spool gave out, since those may have been sent
/// before the restart): a line at or below it is counted as sent again, and no acknowledgement may go above it.
fn run(shared: &Shared, address: &str, ack_timeout: Duration, mut highest_sent: u64) {
    let mut backoff = INITIAL_BACKOFF;
    // Whether the last connection ended because the controller broke the protocol: then the back-off keeps
    // growing across connections, so that a misbehaving controller is not reconnected to ten times a second.
    let mut misbehaved = false;
    // Whether the current outage was logged, so that a controller down for an hour is one warning, not thousands.
    // Every outage after the first starts with a logged loss of connection, so this is never reset.
    let mut outage_logged = false;
    loop {
        if lock(&shared.state).stop {
            break;
        }
        match connect(address) {
            Ok(mut stream) => {
                if !misbehaved {
                    backoff = INITIAL_BACKOFF;
                }
                {
                    let mut state = lock(&shared.state);
                    if state.stop {
                        break;
                    }
                    state.stats.connects += 1;
                    // Without the clone `Drop` could not end a stalled write early; it is only an optimisation.
                    state.connection = stream.try_clone().ok();
                }
                let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |peer| peer.to_string());
                log::info!("gate tcp {address}: connected to controller at {peer}");
                let outcome = serve(shared, &mut stream, ack_timeout, &mut highest_sent);
                lock(&shared.state).connection = None;
                match outcome {
                    Ok(()) => break,
                    Err(error) => {
                        misbehaved = error.downcast_ref::<Misbehaved>().is_some();
                        log::warn!(
                            "gate tcp {address}: connection to controller lost: {error:#}; reconnecting"
                        );
                        outage_logged = true;
                    }
                }
            }
            Err(error) if outage_logged => log::debug!("gate tcp {address}: {error:#}"),
            Err(error) => {
                log::warn!(
                    "gate tcp {address}: {error:#}; retrying, keeping verdicts in the spool meanwhile"
                );
                outage_logged = true;
            }
        }
        if sleep_unless_stopped(shared, backoff) {
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    lock(&shared.state).exited = true;
    shared.progress.notify_all();
}

/// Resolves `address` now (following DNS changes) and connects to the first of its addresses that answers.
fn connect(address: &str) -> Result<TcpStream> {
    let candidates = address.to_socket_addrs().with_context(|| format!("resolving {address}"))?;
    let mut last_error = None;
    for candidate in candidates {
        match TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true).with_context(|| format!("setting TCP_NODELAY on {candidate}"))?;
                stream
                    .set_write_timeout(Some(WRITE_TIMEOUT))
                    .with_context(|| format!("setting the write timeout on {candidate}"))?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(anyhow!(error).context(format!("connecting to {candidate}"))),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("{address} resolved to no address")))
}

/// Sends the spool's verdicts in order, from the oldest unacknowledged, and applies acknowledgements, until
/// `stop` (Ok) or a connection or protocol error (Err).
/// What `serve` writes next.
enum Next {
    Health(u64),
    Verdict(u64),
}

fn serve(
    shared: &Shared,
    stream: &mut TcpStream,
    ack_timeout: Duration,
    highest_sent: &mut u64,
) -> Result<()> {
    let mut frame = Frame::new();
    let mut acks = AckReader::default();
    // The highest id written on this connection: every stored verdict above it is still to be sent on it, so a
    // new connection starts by sending everything unacknowledged again.
    let mut written = 0u64;
    // Since when acknowledgements are owed without any arriving; None while none are owed.
    let mut owed_since: Option<Instant> = None;
    // The health version written on this connection (0: none yet, so the current one goes first).
    let mut health_written = 0u64;
    loop {
        // Acknowledgements first, and a closed connection found before the next line is written into it.
        let polled = acks.poll(stream, *highest_sent);
        if let Some(through) = polled.through {
            {
                let mut state = lock(&shared.state);
                let removed = state.spool.remove_through(through);
                state.stats.acked += removed as u64;
            }
            owed_since = Some(Instant::now());
            shared.progress.notify_all();
        }
        match polled.end {
            None => {}
            Some(End::Closed) => bail!("the controller closed the connection"),
            Some(End::Failed(error)) => return Err(anyhow!(error).context("reading from the controller")),
            Some(End::Refused(why)) => {
                lock(&shared.state).stats.bad_acks += 1;
                return Err(Misbehaved(format!("refused a line from the controller: {why}")).into());
            }
        }
        let next = {
            let state = lock(&shared.state);
            if state.stop {
                return Ok(());
            }
            // Nothing owed once the oldest waiting verdict has not been written on this connection.
            if state.spool.records().front().is_none_or(|record| record.id > written) {
                owed_since = None;
            }
            if owed_since.is_some_and(|since| since.elapsed() >= ack_timeout) {
                return Err(Misbehaved(format!("no acknowledgement within {ack_timeout:?}")).into());
            }
            if state.health_version != health_written && !state.health.is_empty() {
                frame.clear();
                // Cannot fail: both are frames of the same size.
                let _ = frame.extend_from_slice(&state.health);
                Some(Next::Health(state.health_version))
            } else {
                match state.spool.first_after(written) {
                    Some(record) => {
                        encode_frame(record.id, &record.line, &mut frame)?;
                        Some(Next::Verdict(record.id))
                    }
                    None => {
                        // Nothing to send: wait for a report, and read again soon while acknowledgements are
                        // owed, less often when idle, only to notice a closed connection.
                        let pause = if owed_since.is_some() { ACK_POLL } else { IDLE_CHECK };
                        let state = wait(&shared.work, state, pause);
                        if state.stop {
                            return Ok(());
                        }
                        None
                    }
                }
            }
        };
        let id = match next {
            None => continue,
            Some(Next::Health(version)) => {
                stream.write_all(&frame).context("writing a health line")?;
                health_written = version;
                continue;
            }
            Some(Next::Verdict(id)) => id,
        };
        stream.write_all(&frame).context("writing a verdict line")?;
        written = id;
        owed_since.get_or_insert_with(Instant::now);
        let burst_ended = {
            let mut state = lock(&shared.state);
            state.stats.sent += 1;
            if id <= *highest_sent {
                state.stats.resent += 1;
            }
            std::mem::take(&mut state.dropped_in_burst)
        };
        *highest_sent = (*highest_sent).max(id);
        if burst_ended > 0 {
            log::info!("gate tcp: delivering again after dropping {burst_ended} verdict(s)");
        }
    }
}

/// `{"id":<id>,` followed by `line` (a JSON object) without its opening brace, and a newline.
fn encode_frame(id: u64, line: &[u8], frame: &mut Frame) -> Result<()> {
    let full = || anyhow!("line longer than {MAX_LINE} bytes");
    let body = line.strip_prefix(b"{").context("a spooled verdict line is not a JSON object")?;
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = id;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    frame.clear();
    frame.extend_from_slice(b"{\"id\":").map_err(|()| full())?;
    frame.extend_from_slice(&digits[start..]).map_err(|()| full())?;
    if body != b"}" {
        frame.push(b',').map_err(|_| full())?;
    }
    frame.extend_from_slice(body).map_err(|()| full())?;
    frame.push(b'\n').map_err(|_| full())
}

/// A connection ended because the controller broke the protocol (as opposed to a network failure).
#[derive(Debug)]
struct Misbehaved(String);

impl std::fmt::Display for Misbehaved {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Misbehaved {}

/// Why reading from the controller ended the connection.
enum End {
    Closed,
    Failed(std::io::Error),
    /// A line that is not a valid acknowledgement, and why.
    Refused(String),
}

/// What one poll found: the highest valid acknowledgement, and an end if the connection must go.
struct Polled {
    through: Option<u64>,
    end: Option<End>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    ack: u64,
}

/// Collects acknowledgement lines from the controller, across reads.
#[derive(Default)]
struct AckReader {
    line: heapless::Vec<u8, MAX_ACK_LINE>,
}

impl AckReader {
    /// Reads what the controller sent so far, without waiting, and parses the complete lines; `highest_sent`
    /// bounds the ids that may be acknowledged. Acknowledgements before a bad line or the end of the stream count.
    fn poll(&mut self, stream: &mut TcpStream, highest_sent: u64) -> Polled {
        let mut polled = Polled { through: None, end: None };
        if let Err(error) = stream.set_nonblocking(true) {
            polled.end = Some(End::Failed(error));
            return polled;
        }
        let mut scratch = [0u8; 512];
        // Bounded, so that a controller that keeps talking cannot keep the thread here.
        for _ in 0..16 {
            match stream.read(&mut scratch) {
                Ok(0) => {
                    polled.end = Some(End::Closed);
                    break;
                }
                Ok(count) => {
                    if let Err(why) = self.take(&scratch[..count], highest_sent, &mut polled.through) {
                        polled.end = Some(End::Refused(why));
                        break;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => {
                    polled.end = Some(End::Failed(error));
                    break;
                }
            }
        }
        if let Err(error) = stream.set_nonblocking(false) {
            polled.end.get_or_insert(End::Failed(error));
        }
        polled
    }

    fn take(&mut self, bytes: &[u8], highest_sent: u64, through: &mut Option<u64>) -> Result<(), String> {
        for &byte in bytes {
            if byte != b'\n' {
                if self.line.push(byte).is_err() {
                    return Err(format!("a line longer than {MAX_ACK_LINE} bytes"));
                }
                continue;
            }
            let ack: Ack = serde_json::from_slice(&self.line).map_err(|error| {
                format!(
                    "`{}` is not {{\"ack\":ID}} ({error})",
                    String::from_utf8_lossy(&self.line).escape_debug()
                )
            })?;
            if ack.ack > highest_sent {
                return Err(format!(
                    "an acknowledgement of id {}, never sent (highest sent: {highest_sent})",
                    ack.ack
                ));
            }
            self.line.clear();
            *through = Some(through.map_or(ack.ack, |earlier| earlier.max(ack.ack)));
        }
        Ok(())
    }
}

/// Sleeps for `duration` unless told to stop first; returns whether to stop.
fn sleep_unless_stopped(shared: &Shared, duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    let mut state = lock(&shared.state);
    // `work` also wakes on every report, so keep waiting until the deadline unless it was a stop.
    while !state.stop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        state = wait(&shared.work, state, deadline - now);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(id: u64, line: &[u8]) -> String {
        let mut frame = Frame::new();
        encode_frame(id, line, &mut frame).unwrap();
        String::from_utf8(frame.to_vec()).unwrap()
    }

    #[test]
    fn the_id_goes_first_and_the_verdict_fields_follow() {
        assert_eq!(
            frame_of(17, br#"{"type":"verdict","frames":3}"#),
            "{\"id\":17,\"type\":\"verdict\",\"frames\":3}\n"
        );
        assert_eq!(frame_of(u64::MAX, b"{}"), format!("{{\"id\":{}}}\n", u64::MAX));
        assert_eq!(frame_of(0, b"{\"a\":1}"), "{\"id\":0,\"a\":1}\n");
        let longest = format!("{{\"reason\":\"{}\"}}", "x".repeat(MAX_LINE - 13));
        assert_eq!(longest.len(), MAX_LINE);
        assert!(frame_of(u64::MAX, longest.as_bytes()).ends_with("x\"}\n"));
    }

    #[test]
    fn acknowledgements_are_parsed_strictly() {
        let parse = |bytes: &[u8], highest_sent: u64| {
            let mut reader = AckReader::default();
            let mut through = None;
            reader.take(bytes, highest_sent, &mut through).map(|()| (through, reader.line.len()))
        };
        assert_eq!(parse(b"{\"ack\":3}\n", 5), Ok((Some(3), 0)));
        assert_eq!(
            parse(b"{\"ack\":3}\r\n{ \"ack\" : 5 }\n{\"ack\":4}\n", 5),
            Ok((Some(5), 0)),
            "cumulative"
        );
        assert_eq!(parse(b"{\"ack\":2}\n{\"ack\"", 5), Ok((Some(2), 6)), "a partial line waits for its end");
        let refusal = |bytes: &[u8]| parse(bytes, 5).unwrap_err();
        assert!(refusal(b"{\"ack\":6}\n").contains("never sent"));
        assert!(refusal(b"hello\n").contains("is not {\"ack\":ID}"));
        assert!(refusal(b"{\"ack\":-1}\n").contains("is not"));
        assert!(refusal(b"{\"ack\":1,\"extra\":2}\n").contains("is not"));
        assert!(refusal(b"\n").contains("is not"));
        assert!(refusal(&[b'7'; 65]).contains("longer than 64 bytes"));
    }
}
