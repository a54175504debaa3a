//! The TCP gate: verdicts as JSON lines to a controller, through a bounded queue drained by one background thread
//! that owns the connection, so that a slow, absent or flapping controller never blocks the capture loop.
//!
//! Delivery is at least once per connection attempt: a line leaves the queue only after it was written completely,
//! so a line whose write failed is sent again on the next connection (the controller may then see a truncated
//! copy at the end of the old connection, which it discards because it has no newline). When the queue is full
//! the oldest waiting line is dropped and counted.

use super::{encode_line, Gate, Line, VerdictMessage, MAX_LINE};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The largest queue `start` accepts: 4096 lines of up to 2 KiB is 8 MiB, allocated once.
const MAX_QUEUE: usize = 4096;
/// How long one connection attempt may take before the next address or a back-off.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one line's write may stall before the connection is treated as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// First back-off after a failure; doubles up to `MAX_BACKOFF`, and starts over after a successful connection.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While idle, how often the thread checks whether the controller closed the connection. Noticing early means
/// the next verdict goes to a fresh connection instead of being written into a dead one and lost.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// How long `Drop` waits for the thread: one connection attempt and one write, with a margin. Past that (a name
/// resolution that hangs, say) the thread is left to finish on its own rather than hanging shutdown.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// A line with its newline, so that each verdict goes out in one write (one segment with `TCP_NODELAY`).
type Frame = heapless::Vec<u8, { MAX_LINE + 1 }>;

/// Counters of a `TcpGate`, read together so that they are consistent: every line reported and accepted is
/// exactly one of sent, dropped or queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpGateStats {
    /// Lines written completely to a controller.
    pub sent: u64,
    /// Lines dropped because the queue was full.
    pub dropped: u64,
    /// Successful connections since start.
    pub connects: u64,
    /// Lines waiting, including the one being written.
    pub queued: usize,
}

/// Verdicts as JSON lines over TCP to a controller at a `host:port` address, resolved again on every connection
/// attempt so that a DNS change is followed. `report` only queues; one thread named "gate-tcp" connects, writes
/// and reconnects with exponential back-off.
pub struct TcpGate {
    shared: Arc<Shared>,
    /// Encoding happens here, outside the lock, so the thread is held up only for a copy.
    line: Line,
    description: String,
    thread: Option<JoinHandle<()>>,
}

/// What `TcpGate` and its thread share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: a line was queued, or it must stop.
    work: Condvar,
    /// Wakes `flush` and `Drop`: a line was sent, or the thread exited.
    progress: Condvar,
    capacity: usize,
}

struct State {
    /// Allocated once with `capacity` and never grown past it, so pushing allocates nothing.
    queue: VecDeque<Line>,
    /// The front line is being written: it must not be dropped, or the thread would pop the wrong line after.
    in_flight: bool,
    stop: bool,
    exited: bool,
    /// A clone of the thread's connection, so that `Drop` can shut it down and end a write stalled on the peer.
    connection: Option<TcpStream>,
    sent: u64,
    dropped: u64,
    connects: u64,
    /// Lines dropped since the last one sent: the drop warning is logged once per burst, when this leaves zero.
    dropped_in_burst: u64,
}

/// Locks the shared state. A poisoned lock is taken over rather than propagated: the state is a queue and
/// counters, each updated in one step, so a panic elsewhere cannot have left it half-changed, and the gate should
/// keep delivering.
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
    /// Validates the address and queue capacity (1 to 4096 lines), allocates the queue and starts the thread,
    /// which connects at once. An absent controller is not an error: lines wait in the queue until it appears.
    pub fn start(address: &str, queue_capacity: usize) -> Result<TcpGate> {
        validate_address(address)?;
        ensure!(
            (1..=MAX_QUEUE).contains(&queue_capacity),
            "gate queue capacity {queue_capacity} must be 1 to {MAX_QUEUE} lines"
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(queue_capacity),
                in_flight: false,
                stop: false,
                exited: false,
                connection: None,
                sent: 0,
                dropped: 0,
                connects: 0,
                dropped_in_burst: 0,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            capacity: queue_capacity,
        });
        let thread = std::thread::Builder::new()
            .name("gate-tcp".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let address = address.to_owned();
                move || run(&shared, &address)
            })
            .with_context(|| format!("starting the gate thread for {address}"))?;
        Ok(TcpGate { shared, line: Line::new(), description: format!("tcp {address}"), thread: Some(thread) })
    }

    /// The counters, read under one lock.
    pub fn stats(&self) -> TcpGateStats {
        let state = lock(&self.shared.state);
        TcpGateStats {
            sent: state.sent,
            dropped: state.dropped,
            connects: state.connects,
            queued: state.queue.len(),
        }
    }
}

impl Gate for TcpGate {
    /// Queues the verdict and returns at once; never waits for the network.
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> Result<()> {
        encode_line(verdict, &mut self.line).with_context(|| format!("gate {}", self.description))?;
        let burst_started = {
            let mut state = lock(&self.shared.state);
            let mut burst_started = false;
            if state.queue.len() >= self.shared.capacity {
                // The line being written stays: it may already be partly on the wire.
                let oldest_waiting = usize::from(state.in_flight);
                burst_started = state.dropped_in_burst == 0;
                state.dropped += 1;
                state.dropped_in_burst += 1;
                if state.queue.remove(oldest_waiting).is_none() {
                    // Capacity 1 with its line in flight: the new line is the oldest waiting one.
                    drop(state);
                    self.warn_drops(burst_started);
                    return Ok(());
                }
            }
            // Cloning a `Line` copies bytes in place; the queue never exceeds the capacity it was allocated with.
            state.queue.push_back(self.line.clone());
            burst_started
        };
        self.shared.work.notify_one();
        self.warn_drops(burst_started);
        Ok(())
    }

    /// Waits until every queued line was written, or `timeout` passed.
    fn flush(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while !state.queue.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "gate {}: {} verdict line(s) not delivered within {timeout:?}",
                    self.description,
                    state.queue.len()
                );
            }
            state = wait(&self.shared.progress, state, deadline - now);
        }
        Ok(())
    }

    fn describe(&self) -> &str {
        &self.description
    }
}

impl TcpGate {
    /// Logs the start of a burst of drops; the thread logs its end when a line goes out again.
    fn warn_drops(&self, burst_started: bool) {
        if burst_started {
            log::warn!(
                "gate {}: queue of {} lines full, dropping the oldest until the controller catches up",
                self.description,
                self.shared.capacity
            );
        }
    }
}

impl Drop for TcpGate {
    /// Stops the thread and waits for it, at most `EXIT_WAIT`: a write stalled on the peer is ended by shutting
    /// the connection down; a connection attempt ends within its own timeout.
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
        let exited = state.exited;
        drop(state);
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

/// The thread: connect, serve the queue until an error or stop, back off, repeat.
fn run(shared: &Shared, address: &str) {
    let mut backoff = INITIAL_BACKOFF;
    // Whether the current outage was logged, so that a controller down for an hour is one warning, not thousands.
    // Every outage after the first starts with a logged loss of connection, so this is never reset.
    let mut outage_logged = false;
    loop {
        if lock(&shared.state).stop {
            break;
        }
        match connect(address) {
            Ok(mut stream) => {
                backoff = INITIAL_BACKOFF;
                {
                    let mut state = lock(&shared.state);
                    if state.stop {
                        break;
                    }
                    state.connects += 1;
                    // Without the clone `Drop` could not end a stalled write early; it is only an optimisation.
                    state.connection = stream.try_clone().ok();
                }
                let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |peer| peer.to_string());
                log::info!("gate tcp {address}: connected to controller at {peer}");
                let outcome = serve(shared, &mut stream);
                {
                    let mut state = lock(&shared.state);
                    state.connection = None;
                    state.in_flight = false;
                }
                match outcome {
                    Ok(()) => break,
                    Err(error) => {
                        log::warn!(
                            "gate tcp {address}: connection to controller lost: {error:#}; reconnecting"
                        );
                        outage_logged = true;
                    }
                }
            }
            Err(error) if outage_logged => log::debug!("gate tcp {address}: {error:#}"),
            Err(error) => {
                log::warn!("gate tcp {address}: {error:#}; retrying, queueing verdicts meanwhile");
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

/// Writes queued lines in order until `stop` (Ok) or a connection error (Err).
fn serve(shared: &Shared, stream: &mut TcpStream) -> Result<()> {
    let mut frame = Frame::new();
    loop {
        let mut waited = false;
        {
            let mut state = lock(&shared.state);
            loop {
                if state.stop {
                    return Ok(());
                }
                if let Some(line) = state.queue.front() {
                    frame.clear();
                    // A `Line` holds at most MAX_LINE bytes and `Frame` one more, so neither can fail.
                    frame
                        .extend_from_slice(line)
                        .map_err(|()| anyhow!("line longer than {MAX_LINE} bytes"))?;
                    frame.push(b'\n').map_err(|_| anyhow!("line longer than {MAX_LINE} bytes"))?;
                    state.in_flight = true;
                    break;
                }
                state = wait(&shared.work, state, IDLE_CHECK);
                waited = true;
                if state.queue.is_empty() && !state.stop {
                    drop(state);
                    check_peer(stream)?;
                    state = lock(&shared.state);
                }
            }
        }
        // After a quiet spell the controller may have gone: find out before writing into a dead connection.
        if waited {
            check_peer(stream)?;
        }
        stream.write_all(&frame).context("writing a verdict line")?;
        let burst_ended = {
            let mut state = lock(&shared.state);
            // `report` never removes the line in flight, so the front is the line just written.
            state.queue.pop_front();
            state.in_flight = false;
            state.sent += 1;
            std::mem::take(&mut state.dropped_in_burst)
        };
        shared.progress.notify_all();
        if burst_ended > 0 {
            log::info!("gate tcp: delivering again after dropping {burst_ended} line(s)");
        }
    }
}

/// Fails if the controller closed the connection or it broke. The protocol is one-way: anything the controller
/// sends is read and discarded, so that it cannot fill our receive buffer.
fn check_peer(stream: &mut TcpStream) -> Result<()> {
    stream.set_nonblocking(true).context("checking the connection")?;
    let mut scratch = [0u8; 512];
    let mut outcome = Ok(());
    // Bounded, so that a controller that keeps talking cannot keep the thread here.
    for _ in 0..16 {
        match stream.read(&mut scratch) {
            Ok(0) => {
                outcome = Err(anyhow!("the controller closed the connection"));
                break;
            }
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => {
                outcome = Err(anyhow!(error).context("checking the connection"));
                break;
            }
        }
    }
    stream.set_nonblocking(false).context("checking the connection")?;
    outcome
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
    use crate::gate::Decision;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// Generous: these tests must survive a loaded two-core machine.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn verdict(source: &str, index: u64) -> VerdictMessage<'_> {
        VerdictMessage {
            kind: "verdict",
            source,
            decision: decision(index),
            fake_probability: Some(0.25),
            frames: 3,
            frames_seen: 4,
            first_frame: index,
            last_frame: index + 3,
            reason: "test",
        }
    }

    fn decision(index: u64) -> Decision {
        [Decision::Genuine, Decision::Fake, Decision::Uncertain, Decision::NoFace][(index % 4) as usize]
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn accept_within(listener: &TcpListener, patience: Duration) -> BufReader<TcpStream> {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + patience;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(PATIENCE)).unwrap();
                    return BufReader::new(stream);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => panic!("no connection from the gate: {error}"),
            }
        }
    }

    /// Reads `count` lines and checks that they are the verdicts with these indices, in order.
    fn expect_lines(reader: &mut BufReader<TcpStream>, indices: impl IntoIterator<Item = u64>) {
        for index in indices {
            let mut text = String::new();
            reader.read_line(&mut text).unwrap();
            let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
            assert_eq!(value["type"], "verdict", "{text}");
            assert_eq!(value["decision"], decision(index).name(), "{text}");
            assert_eq!(value["first_frame"], index, "{text}");
        }
    }

    fn wait_for(gate: &TcpGate, what: &str, condition: impl Fn(TcpGateStats) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !condition(gate.stats()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", gate.stats());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_arrive_in_order_as_json() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut gate = TcpGate::start(&listener.local_addr().unwrap().to_string(), 64).unwrap();
        let mut reader = accept_within(&listener, PATIENCE);
        for index in 0..20 {
            gate.report(&verdict("camera", index)).unwrap();
        }
        gate.flush(PATIENCE).unwrap();
        expect_lines(&mut reader, 0..20);
        assert_eq!(gate.stats(), TcpGateStats { sent: 20, dropped: 0, connects: 1, queued: 0 });
        assert_eq!(gate.describe(), format!("tcp {}", listener.local_addr().unwrap()));
    }

    #[test]
    fn verdicts_wait_for_an_absent_controller() {
        let port = free_port();
        let mut gate = TcpGate::start(&format!("127.0.0.1:{port}"), 16).unwrap();
        for index in 0..5 {
            gate.report(&verdict("camera", index)).unwrap();
        }
        assert_eq!(gate.stats().queued, 5);
        std::thread::sleep(Duration::from_millis(300));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut reader = accept_within(&listener, PATIENCE);
        expect_lines(&mut reader, 0..5);
        gate.flush(PATIENCE).unwrap();
        assert_eq!(gate.stats(), TcpGateStats { sent: 5, dropped: 0, connects: 1, queued: 0 });
    }

    #[test]
    fn reconnects_after_the_controller_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut gate = TcpGate::start(&listener.local_addr().unwrap().to_string(), 16).unwrap();
        let mut first = accept_within(&listener, PATIENCE);
        for index in 0..3 {
            gate.report(&verdict("camera", index)).unwrap();
        }
        expect_lines(&mut first, 0..3);
        drop(first);
        wait_for(&gate, "a second connection", |stats| stats.connects == 2);
        for index in 3..6 {
            gate.report(&verdict("camera", index)).unwrap();
        }
        let mut second = accept_within(&listener, PATIENCE);
        expect_lines(&mut second, 3..6);
        gate.flush(PATIENCE).unwrap();
        assert_eq!(gate.stats(), TcpGateStats { sent: 6, dropped: 0, connects: 2, queued: 0 });
    }

    #[test]
    fn overflow_drops_the_oldest() {
        let port = free_port();
        let mut gate = TcpGate::start(&format!("127.0.0.1:{port}"), 3).unwrap();
        for index in 0..5 {
            gate.report(&verdict("camera", index)).unwrap();
        }
        assert_eq!(gate.stats(), TcpGateStats { sent: 0, dropped: 2, connects: 0, queued: 3 });
        let error = gate.flush(Duration::from_millis(50)).unwrap_err();
        assert!(format!("{error:#}").contains("3 verdict line(s) not delivered"), "{error:#}");

        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut reader = accept_within(&listener, PATIENCE);
        expect_lines(&mut reader, 2..5);
        gate.flush(PATIENCE).unwrap();
        assert_eq!(gate.stats(), TcpGateStats { sent: 3, dropped: 2, connects: 1, queued: 0 });
        drop(gate);
        // Exactly three: the gate closed the connection and nothing followed them.
        let mut rest = String::new();
        assert_eq!(reader.read_line(&mut rest).unwrap(), 0, "unexpected line {rest}");
    }

    #[test]
    fn a_stalled_controller_never_blocks_reporting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut gate = TcpGate::start(&listener.local_addr().unwrap().to_string(), 8).unwrap();
        // Accepted and held open, never read: the socket buffers fill and writes stall.
        let _stalled = accept_within(&listener, PATIENCE);
        wait_for(&gate, "the connection", |stats| stats.connects == 1);
        // Long lines, so that 10 000 of them (about 15 MB) overflow what the kernel buffers on loopback.
        let source = "x".repeat(1500);
        let started = Instant::now();
        for index in 0..10_000 {
            gate.report(&verdict(&source, index)).unwrap();
        }
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(3), "reporting took {elapsed:?}");
        let stats = gate.stats();
        assert!(stats.dropped > 0, "{stats:?}");
        assert_eq!(stats.sent + stats.dropped + stats.queued as u64, 10_000, "{stats:?}");

        let started = Instant::now();
        drop(gate);
        assert!(started.elapsed() < Duration::from_secs(4), "drop took {:?}", started.elapsed());
    }

    #[test]
    fn bad_settings_are_refused_clearly() {
        let message = |address: &str, capacity: usize| match TcpGate::start(address, capacity) {
            Ok(_) => panic!("{address} with capacity {capacity} was accepted"),
            Err(error) => format!("{error:#}"),
        };
        assert!(message("controller", 16).contains("must be host:port"));
        assert!(message(":4000", 16).contains("host is missing"));
        assert!(message("controller:http", 16).contains("not a port number"));
        assert!(message("controller:70000", 16).contains("not a port number"));
        assert!(message("controller:0", 16).contains("port 0"));
        assert!(message("::1:4000", 16).contains("IPv6"));
        assert!(message("127.0.0.1:4000", 0).contains("capacity 0 must be 1 to 4096"));
        assert!(message("127.0.0.1:4000", 4097).contains("capacity 4097 must be 1 to 4096"));
    }
}
