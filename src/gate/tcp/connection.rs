//! The TCP gate's connection thread: connect (with a time-out per address), send what the spool holds in id
//! order, read acknowledgements and retire what they cover, and back off after a failure or a misbehaving
//! controller, until told to stop.

use super::envelope::Sealer;
use super::link::{Link, Tls, TlsRefused};
use super::protocol::{AckReader, End, Frame, Misbehaved};
use super::{lock, wait, Shared};
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long one connection attempt may take before the next address or a back-off.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one line's write may stall before the connection is treated as dead.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// First back-off after a failure; doubles up to `MAX_BACKOFF`, and starts over after a successful connection.
pub(super) const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While idle, how often the thread checks whether the controller closed the connection. Noticing early means
/// the next verdict goes to a fresh connection instead of waiting for an acknowledgement from a dead one.
pub(super) const IDLE_CHECK: Duration = Duration::from_millis(250);
/// While acknowledgements are owed, how often the thread reads them.
pub(super) const ACK_POLL: Duration = Duration::from_millis(10);

/// The thread: connect, serve until an error or stop, back off, repeat. `highest_sent` is the highest id
/// that may have reached a controller (at start: every id the spool gave out, since those may have been sent
/// before the restart): a line at or below it is counted as sent again, and no acknowledgement may go above it.
pub(super) fn run(
    shared: &Shared,
    address: &str,
    tls: Option<&Tls>,
    sealer: &Sealer,
    ack_timeout: Duration,
    mut highest_sent: u64,
) {
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
        let linked = connect(address).and_then(|stream| {
            let clone = stream.try_clone().ok();
            Link::open(stream, tls).map(|link| (link, clone))
        });
        match linked {
            Ok((mut stream, clone)) => {
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
                    state.connection = clone;
                }
                let peer =
                    stream.socket().peer_addr().map_or_else(|_| "?".to_owned(), |peer| peer.to_string());
                let secured =
                    if tls.is_some() { "TLS 1.3, controller authenticated" } else { "PLAINTEXT (insecure)" };
                log::info!("gate tcp {address}: connected to controller at {peer} ({secured})");
                let outcome = serve(shared, &mut stream, sealer, ack_timeout, &mut highest_sent);
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
            Err(error) if error.downcast_ref::<TlsRefused>().is_some() => {
                // Not an outage: something answers that is not the pinned controller. Every time, loudly.
                lock(&shared.state).stats.tls_refused += 1;
                log::error!("gate tcp {address}: {error:#}; no verdict is sent to it");
                misbehaved = true;
                outage_logged = true;
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
pub(super) fn connect(address: &str) -> Result<TcpStream> {
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

/// What `serve` writes next.
pub(super) enum Next {
    Health(u64),
    /// The audit head line of this version.
    AuditHead(u64),
    /// The id, and whether it goes out expired.
    Verdict(u64, bool),
}

/// Sends the spool's verdicts in order, from the oldest unacknowledged, and applies acknowledgements, until
/// `stop` (Ok) or a connection or protocol error (Err).
pub(super) fn serve(
    shared: &Shared,
    stream: &mut Link,
    sealer: &Sealer,
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
    // The same for the audit head line.
    let mut head_written = 0u64;
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
        for &id in &polled.grants {
            let mut answer = Frame::new();
            grant(shared, id, &mut answer);
            stream.write_all(&answer).and_then(|()| stream.flush()).context("answering a grant")?;
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
            } else if state.audit_head_version != head_written && !state.audit_head.is_empty() {
                frame.clear();
                // Cannot fail: both are frames of the same size.
                let _ = frame.extend_from_slice(&state.audit_head);
                Some(Next::AuditHead(state.audit_head_version))
            } else {
                match state.spool.first_after(written) {
                    Some(record) => {
                        let expired = sealer.seal(record.id, &record.line, &mut frame)?;
                        Some(Next::Verdict(record.id, expired))
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
        let (id, expired) = match next {
            None => continue,
            Some(Next::Health(version)) => {
                stream.write_all(&frame).and_then(|()| stream.flush()).context("writing a health line")?;
                health_written = version;
                continue;
            }
            Some(Next::AuditHead(version)) => {
                stream.write_all(&frame).and_then(|()| stream.flush()).context("writing the audit head")?;
                head_written = version;
                continue;
            }
            Some(Next::Verdict(id, expired)) => (id, expired),
        };
        stream.write_all(&frame).and_then(|()| stream.flush()).context("writing a verdict line")?;
        written = id;
        owed_since.get_or_insert_with(Instant::now);
        let burst_ended = {
            let mut state = lock(&shared.state);
            state.stats.sent += 1;
            state.stats.expired += u64::from(expired);
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

/// The controller granted verdict `id`: opens the door if it may (module documentation, "Grants") and writes
/// the answer line into `answer`.
fn grant(shared: &Shared, id: u64, answer: &mut Frame) {
    let refusal = {
        let mut state = lock(&shared.state);
        let found = state.grantable.iter().any(|&(granted, _)| granted == id);
        let outcome = match found {
            false => Err("not a genuine verdict of this run, or granted before".to_owned()),
            true => {
                // One opening per verdict: the entry goes whatever happens next.
                let mut reported = None;
                for _ in 0..state.grantable.len() {
                    if let Some(entry) = state.grantable.pop_front() {
                        if entry.0 == id {
                            reported = Some(entry.1);
                        } else {
                            let _ = state.grantable.push_back(entry);
                        }
                    }
                }
                let window = super::GRANT_WINDOW.min(state.max_age);
                match (reported, &state.door) {
                    (Some(at), _) if at.elapsed() > window => Err(format!(
                        "verdict {id} is older than {} ms: the person has gone",
                        window.as_millis()
                    )),
                    (_, None) => Err("this kiosk has no door relay".to_owned()),
                    (_, Some(door)) => door
                        .grant(None, &format!("TCP grant for verdict {id}"))
                        .map(|_| ())
                        .map_err(|error| format!("{error:#}")),
                }
            }
        };
        match &outcome {
            Ok(()) => state.stats.grants += 1,
            Err(_) => state.stats.grants_refused += 1,
        }
        outcome.err()
    };
    if let Some(why) = &refusal {
        log::warn!("gate tcp: grant for verdict {id} refused: {why}");
    }
    let line = match refusal {
        None => serde_json::json!({"type": "grant", "id": id, "opened": true}),
        Some(why) => serde_json::json!({"type": "grant", "id": id, "opened": false, "reason": why}),
    };
    answer.clear();
    let mut text = line.to_string();
    if text.len() > crate::gate::MAX_LINE {
        text = format!("{{\"type\":\"grant\",\"id\":{id},\"opened\":false}}");
    }
    text.push('\n');
    // Cannot fail: the frame holds MAX_LINE + 32 bytes.
    let _ = answer.extend_from_slice(text.as_bytes());
}

/// Sleeps for `duration` unless told to stop first; returns whether to stop.
pub(super) fn sleep_unless_stopped(shared: &Shared, duration: Duration) -> bool {
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
