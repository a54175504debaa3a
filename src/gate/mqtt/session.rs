//! The fleet output's connection, on the gate's own thread: rumqttc's event loop driven by a current-thread
//! tokio runtime, publishing the spool's verdicts with QoS 1 and retiring them on the broker's PUBACKs.
//!
//! # Which PUBACK acknowledges which verdict
//!
//! rumqttc gives a publication its packet id when it writes it and then reports `Outgoing::Publish(pkid)`, in
//! the order the publications were requested; a PUBACK names the packet id. So every publication this module
//! requests is remembered in `Flight::requested` in request order (the verdict's id, or `None` for status and
//! health), paired with its packet id when rumqttc reports it written, and retired when its PUBACK arrives.
//!
//! That pairing holds only if nothing from before a connection failed shows after it: with a clean session,
//! rumqttc forgets on reconnection the publications it held, including the requests still in its channel
//! (`EventLoop::clean` moves them to `pending`, which a CONNACK without a session clears); the events it had
//! queued and a publication held back for a packet-id collision this module clears itself
//! (`forget_connection`). Publications are
//! therefore requested only from this thread, only between two polls of the event loop and only while
//! connected: the two tasks below share one thread and `poll` hands back its error without yielding after
//! cleaning up, so no request can slip in between. After a failure, `Flight` is reset and the next CONNACK
//! starts over from the oldest verdict in the spool.
//!
//! # Tasks
//!
//! `connection` polls the event loop and reacts to its events (never cancelled while connected: a poll cut
//! short could lose a write); `publisher` waits for the gate's wake-up (a verdict stored, the health changed)
//! and tops up the window. Both request publications through the same `top_up`.

use super::{lock, MqttSettings, Shared, WINDOW};
use crate::gate::tcp::{Frame, Sealer};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, NetworkOptions,
    Outgoing, QoS, TlsConfiguration, Transport,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// First back-off after a failed connection; doubles up to `MAX_BACKOFF`, and starts over after a CONNACK.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one connection attempt (TCP, TLS, CONNECT/CONNACK) and one write may take.
const CONNECTION_TIMEOUT_S: u64 = 5;
/// The request channel: a full window of verdicts, status and health, and room to spare.
const REQUESTS: usize = 2 * WINDOW + 8;
/// How long a clean stop waits for `offline` to be acknowledged and the DISCONNECT written.
const GOODBYE: Duration = Duration::from_secs(2);
/// The status payloads.
const ONLINE: &str = "online";
const OFFLINE: &str = "offline";

/// What this connection has handed to rumqttc and not yet seen acknowledged.
#[derive(Default)]
struct Flight {
    connected: bool,
    /// Publications requested and not yet written, in request order: a verdict's id, or `None`.
    requested: VecDeque<Option<u64>>,
    /// Verdicts written and waiting for their PUBACK: (packet id, verdict id).
    awaiting: Vec<(u16, u64)>,
    /// The highest verdict id requested on this connection: the next one is the first above it.
    sent_through: u64,
    /// The health version published on this connection.
    health_sent: u64,
}

impl Flight {
    fn verdicts_in_flight(&self) -> usize {
        self.requested.iter().filter(|entry| entry.is_some()).count() + self.awaiting.len()
    }

    /// The lowest verdict id still waiting for its PUBACK, if any.
    fn lowest_unacknowledged(&self) -> Option<u64> {
        let requested = self.requested.iter().flatten().copied();
        requested.chain(self.awaiting.iter().map(|(_, id)| *id)).min()
    }
}

/// The connection's fixed parts; `run` consumes it on the gate's thread.
pub(super) struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    verdict_topic: String,
    health_topic: String,
    status_topic: String,
    sealer: Sealer,
    /// Every verdict id up to this one may have been published already (by an earlier start, or an earlier
    /// connection): publishing it again counts as `republished`.
    highest_published: u64,
    description: String,
}

impl Session {
    pub(super) fn new(
        settings: &MqttSettings,
        tls: Option<Arc<rustls::ClientConfig>>,
        sealer: Sealer,
        highest_given: u64,
    ) -> Session {
        let status_topic = settings.topic("status");
        let client_id = format!("deepgate-{}-{}", settings.site, settings.board);
        let mut options = MqttOptions::new(client_id, settings.host.clone(), settings.port);
        // Validated by the section (5 to 300 s); rumqttc refuses below 1 s.
        options.set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)));
        options.set_clean_session(true);
        options.set_inflight((WINDOW + 8) as u16);
        options.set_request_channel_capacity(REQUESTS);
        options.set_max_packet_size(16 * 1024, 16 * 1024);
        options.set_last_will(LastWill::new(&status_topic, OFFLINE, QoS::AtLeastOnce, true));
        if let Some((username, password)) = &settings.credentials {
            options.set_credentials(username.clone(), password.clone());
        }
        if let Some(config) = tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        let (client, mut eventloop) = AsyncClient::new(options, REQUESTS);
        let mut network = NetworkOptions::new();
        network.set_connection_timeout(CONNECTION_TIMEOUT_S);
        eventloop.set_network_options(network);
        Session {
            client,
            eventloop,
            verdict_topic: settings.topic("verdict"),
            health_topic: settings.topic("health"),
            status_topic,
            sealer,
            highest_published: highest_given,
            description: format!("mqtt {}:{}", settings.host, settings.port),
        }
    }

    /// Connects, publishes and reconnects until the gate says stop; then says `offline` and disconnects.
    pub(super) async fn run(self, shared: &Shared) {
        let Session {
            client,
            mut eventloop,
            verdict_topic,
            health_topic,
            status_topic,
            sealer,
            highest_published,
            description,
        } = self;
        let publisher = Publisher {
            shared,
            client: &client,
            verdict_topic: &verdict_topic,
            health_topic: &health_topic,
            sealer: &sealer,
            flight: RefCell::new(Flight::default()),
            highest_published: RefCell::new(highest_published),
            frame: RefCell::new(Frame::new()),
        };
        let connection = async {
            connection(&publisher, &mut eventloop, &status_topic, &description).await;
            goodbye(&publisher, &mut eventloop, &status_topic, &description).await;
        };
        let wakes = async {
            loop {
                shared.wake.notified().await;
                if lock(&shared.state).stop {
                    break;
                }
                publisher.top_up();
            }
        };
        tokio::join!(connection, wakes);
    }
}

/// Requests publications: the one place that does, so that `Flight::requested` stays in request order.
struct Publisher<'a> {
    shared: &'a Shared,
    client: &'a AsyncClient,
    verdict_topic: &'a str,
    health_topic: &'a str,
    sealer: &'a Sealer,
    flight: RefCell<Flight>,
    highest_published: RefCell<u64>,
    frame: RefCell<Frame>,
}

impl Publisher<'_> {
    /// One publication, remembered in request order. False when rumqttc's channel refused it (it cannot be
    /// full: the window keeps it below its capacity; logged if it happens anyway).
    fn request(
        &self,
        flight: &mut Flight,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
        id: Option<u64>,
    ) -> bool {
        match self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
            Ok(()) => {
                flight.requested.push_back(id);
                true
            }
            Err(error) => {
                log::warn!("mqtt: publishing on {topic} refused by the client: {error}");
                false
            }
        }
    }

    /// While connected: the current health if it was not published on this connection, then the verdicts
    /// after the last one requested, until the window is full.
    fn top_up(&self) {
        let mut flight = self.flight.borrow_mut();
        if !flight.connected {
            return;
        }
        let mut state = lock(&self.shared.state);
        if state.health_version != flight.health_sent && !state.health.is_empty() {
            let payload = state.health.to_vec();
            if self.request(&mut flight, self.health_topic, true, payload, None) {
                flight.health_sent = state.health_version;
                state.stats.health += 1;
            }
        }
        let mut frame = self.frame.borrow_mut();
        let mut highest_published = self.highest_published.borrow_mut();
        while flight.verdicts_in_flight() < WINDOW {
            let Some(record) = state.spool.first_after(flight.sent_through) else { break };
            let id = record.id;
            if let Err(error) = self.sealer.seal(id, &record.line, &mut frame) {
                // Cannot happen for a line the spool accepted; skipping it would lose it, so it waits.
                log::error!("mqtt: verdict {id}: {error:#}");
                break;
            }
            // The MQTT message is the line without its newline: MQTT frames messages itself.
            let payload = frame.strip_suffix(b"\n").unwrap_or(&frame).to_vec();
            if !self.request(&mut flight, self.verdict_topic, false, payload, Some(id)) {
                break;
            }
            flight.sent_through = id;
            state.stats.published += 1;
            if id <= *highest_published {
                state.stats.republished += 1;
            }
            *highest_published = (*highest_published).max(id);
        }
    }

    /// A new connection: the flight starts empty and from the oldest verdict in the spool.
    fn connected(&self, status_topic: &str) {
        {
            let mut flight = self.flight.borrow_mut();
            *flight = Flight { connected: true, ..Flight::default() };
            self.request(&mut flight, status_topic, true, ONLINE.into(), None);
            let mut state = lock(&self.shared.state);
            state.connected = true;
            state.stats.connects += 1;
        }
        self.top_up();
    }

    /// The connection is gone: rumqttc forgets what it held, and so does the flight.
    fn disconnected(&self) {
        *self.flight.borrow_mut() = Flight::default();
        let mut state = lock(&self.shared.state);
        state.connected = false;
        state.stats.failures += 1;
    }

    /// rumqttc wrote the oldest requested publication under `pkid`.
    fn written(&self, pkid: u16) -> Result<(), String> {
        let mut flight = self.flight.borrow_mut();
        match flight.requested.pop_front() {
            Some(Some(id)) => {
                flight.awaiting.push((pkid, id));
                Ok(())
            }
            Some(None) => Ok(()),
            None => Err(format!("rumqttc wrote packet {pkid}, which was never requested on this connection")),
        }
    }

    /// The broker acknowledged `pkid`: the verdicts below the lowest one still unacknowledged leave the
    /// spool.
    fn acknowledged(&self, pkid: u16) {
        {
            let mut flight = self.flight.borrow_mut();
            let Some(index) = flight.awaiting.iter().position(|(awaiting, _)| *awaiting == pkid) else {
                return; // Status or health.
            };
            flight.awaiting.swap_remove(index);
            // Every verdict up to `sent_through` was requested on this connection; those no longer in flight
            // were acknowledged.
            let through = match flight.lowest_unacknowledged() {
                Some(lowest) => lowest - 1,
                None => flight.sent_through,
            };
            let mut state = lock(&self.shared.state);
            let removed = state.spool.remove_through(through);
            state.stats.acked += removed as u64;
        }
        self.shared.progress.notify_all();
        self.top_up();
    }
}

/// Polls the event loop until the gate says stop: reacts to CONNACK, writes and PUBACKs; after a failure,
/// backs off (waking early for a stop).
async fn connection(
    publisher: &Publisher<'_>,
    eventloop: &mut EventLoop,
    status_topic: &str,
    description: &str,
) {
    let shared = publisher.shared;
    let mut backoff = INITIAL_BACKOFF;
    let mut failures_in_a_row = 0u32;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            () = shared.stop.notified() => return,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                if failures_in_a_row > 0 {
                    log::info!("{description}: connected again after {failures_in_a_row} failure(s)");
                } else {
                    log::info!("{description}: connected");
                }
                failures_in_a_row = 0;
                backoff = INITIAL_BACKOFF;
                publisher.connected(status_topic);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Err(error) = publisher.written(pkid) {
                    // A broken pairing would retire the wrong verdicts: drop the connection and start over.
                    log::error!("{description}: {error}; reconnecting");
                    eventloop.clean();
                    forget_connection(eventloop);
                    publisher.disconnected();
                    lock(&shared.state).stats.unpaired += 1;
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => publisher.acknowledged(ack.pkid),
            Ok(_) => {}
            Err(error) => {
                forget_connection(eventloop);
                publisher.disconnected();
                failures_in_a_row += 1;
                log_failure(description, &error, failures_in_a_row);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shared.stop.notified() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if lock(&shared.state).stop {
            return;
        }
    }
}

/// After a failure, what rumqttc still holds from the dead connection: events it queued and has not handed
/// out yet (PUBACKs read in a batch, writes), and a publication held back for a packet-id collision. Handed
/// out after the next CONNACK, they would be paired with that connection's publications and could retire a
/// verdict the broker never acknowledged; the spool sends everything again anyway.
fn forget_connection(eventloop: &mut EventLoop) {
    eventloop.state.events.clear();
    eventloop.state.collision = None;
}

/// The first failure of an outage at warning level, then one line every 20 (a broker down for an hour would
/// otherwise fill the journal).
fn log_failure(description: &str, error: &ConnectionError, failures_in_a_row: u32) {
    if failures_in_a_row == 1 {
        log::warn!("{description}: {error}; verdicts wait in the spool, reconnecting");
    } else if failures_in_a_row.is_multiple_of(20) {
        log::warn!("{description}: still unreachable after {failures_in_a_row} attempts: {error}");
    } else {
        log::debug!("{description}: {error}");
    }
}

/// A clean stop while connected: `offline` (retained) and DISCONNECT, so that subscribers learn at once and
/// the broker does not publish the last will as for a crash. At most `GOODBYE`.
async fn goodbye(
    publisher: &Publisher<'_>,
    eventloop: &mut EventLoop,
    status_topic: &str,
    description: &str,
) {
    {
        let mut flight = publisher.flight.borrow_mut();
        if !flight.connected {
            return;
        }
        // No more verdicts: those requested and not acknowledged stay in the spool for the next start.
        flight.connected = false;
        let offline = publisher.request(&mut flight, status_topic, true, OFFLINE.into(), None);
        if !offline || publisher.client.try_disconnect().is_err() {
            log::debug!("{description}: no clean goodbye");
            return;
        }
    }
    let ended = tokio::time::timeout(GOODBYE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let _ = publisher.written(pkid);
                }
                Ok(Event::Incoming(Incoming::PubAck(ack))) => publisher.acknowledged(ack.pkid),
                Ok(_) => {}
            }
        }
    })
    .await;
    if ended.is_err() {
        log::warn!("{description}: the broker did not take the goodbye within {GOODBYE:?}");
    }
}
