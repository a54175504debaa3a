//! The OSDP gate: deepgate as an OSDP peripheral device (PD) on an RS-485 line, polled by the access controller
//! (the control panel, CP). The protocol and its Secure Channel are libosdp's (the `libosdp` crate); this module
//! owns the policy (secure channel or nothing), what the controller is told, the counts and the device loop; the
//! serial port is `serial`, the wire inspection `wire`, the site key on disk `keys`, the install window and
//! serial number `commissioning`, the status and commands the controller sends `commands`.
//!
//! What the controller sees (documented for integrators in ARCHITECTURE.md, "OSDP mapping"):
//!
//! | OSDP item | meaning |
//! |---|---|
//! | input 0 (osdp_ISTATR) | active for `hold_ms` after a `genuine` verdict: a genuine face is present |
//! | input 1 | active for `hold_ms` after a `fake` verdict: a presentation or injection attack was detected |
//! | input 2 | active while the kiosk cannot decide (camera lost, model invalid, overloaded): treat as not ready |
//! | tamper (osdp_LSTATR) | active while the camera is lost or a refused (virtual or changed) camera is offered |
//! | osdp_MFGREP, kind 1 | every verdict in detail (layout below) |
//! | osdp_MFGREP, kind 2 | every change of the runtime's health state |
//! | osdp_OUT, output 0 (from the controller) | the door relay (`[relay]`): control code 5 unlocks for the timer (at most `relay.pulse_ms`), 0 does nothing, 1, 3 and 6 lock at once; 2 and 4 (permanently on) and other outputs are refused (NAK); without a `[relay]`, every osdp_OUT is refused |
//!
//! The controller decides: a `genuine` verdict is evidence it combines with its own (credential, schedule), and
//! it opens the door with osdp_OUT. libosdp accepts osdp_OUT only within the Secure Channel (EnforceSecure);
//! in install mode it is also refused until the controller has set the site key, since the default key is
//! public.
//!
//! Verdict reply (`vendor_code` from the config, little-endian): `[1, decision, p_lo, p_hi, frames_lo,
//! frames_hi, seen_lo, seen_hi, first_frame (8 bytes), model (8 bytes)]` where decision is 0 genuine, 1 fake,
//! 2 uncertain, 3 no face; p is the mean fake probability × 10000 (0xFFFF: none classified); model is the first
//! 8 bytes of the classifier's sha256. Health reply: `[2, state, tamper, not_ready, install]` (state codes:
//! `health::State::code`; install is 1 while install mode is armed, and a reply goes out when it ends). A CP may
//! also ask: manufacturer command `[2]` is answered with the health reply. osdp_PDID carries this device's
//! serial number, generated once and kept in the state directory (`commissioning`).
//!
//! Security: the PD enforces Secure Channel (AES-128, the site key SCBK from a private key file). The public
//! default key SCBK-D is accepted only in install mode: armed for `install_window_s` at a start while no site
//! key exists and no window was opened since the last local reset (`deepgate osdp reset-key`), ended by the
//! window's expiry or by the controller setting the site key (osdp_KEYSET), which is written to the key file
//! (mode 600, atomically) and used from then on; a restart never re-arms it (`commissioning`). A
//! verdict produced while no secure channel is up is not sent, later or ever (it is about a person who has
//! gone): it is counted as `undelivered`. Bad checksums, bad MACs, replays and oversized frames are refused by
//! libosdp; the wire is also inspected here so that each kind of refusal is counted (see `WireStats`).

mod commands;
mod commissioning;
mod door;
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod section;
mod serial;
mod wire;

pub use commissioning::{reset_site_key, MAX_INSTALL_WINDOW_S};
pub use section::{parse_vendor_code, OsdpSection};
pub use wire::WireStats;

use super::{encode_line, Gate, Line, VerdictMessage};
use crate::decide::Decision;
use crate::health::Health;
use anyhow::{ensure, Context, Result};
use commands::{command_handler, identity, PanelState};
use commissioning::{serial_number, start_key, StartKey};
use libosdp::{
    OsdpEvent, OsdpEventMfgReply, OsdpFlag, PdCapEntity, PdCapability, PdInfoBuilder, PeripheralDevice,
};
use serial::{open_port, SerialChannel};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wire::Inspector;

/// libosdp must be refreshed at least every 50 ms; the thread wakes this often when idle.
const REFRESH: Duration = Duration::from_millis(5);
/// Verdicts and health changes waiting for the OSDP thread; beyond this `report` drops and counts.
const QUEUE: usize = 64;
/// The largest frame either side may send: libosdp's packet buffer. Longer frames are refused and counted.
pub const MAX_FRAME: usize = 256;
/// Baud rates OSDP defines.
pub const BAUD_RATES: [u32; 6] = [9600, 19200, 38400, 57600, 115200, 230400];
/// Events libosdp's PD holds (its event slab); more are refused with an error.
const LIBOSDP_EVENTS: u64 = 4;
/// Events waiting for the controller to collect them, here.
const PENDING: usize = 32;
/// Reply codes that carry an event: osdp_LSTATR, osdp_ISTATR, osdp_MFGREP.
const EVENT_REPLIES: [u8; 3] = [0x48, 0x49, 0x90];
/// The secure channel's public default key (SIA OSDP 2.2, 0x30 to 0x3F): only ever used in install mode.
const SCBK_D: [u8; 16] =
    [0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F];
/// A controller polls at least every 200 ms; this long without a good frame from it is a link down.
const LINK_SILENCE: Duration = Duration::from_secs(2);
/// Number of inputs the PD reports (see the table above).
const INPUTS: usize = 3;
const MFG_VERDICT: u8 = 1;
const MFG_HEALTH: u8 = 2;
/// osdp_NAK reply code and the reasons it carries (SIA OSDP 2.2, table "NAK error codes").
const REPLY_NAK: u8 = 0x41;
const NAK_REASONS: usize = 10;

/// The OSDP settings from the board config, paths resolved.
#[derive(Clone, Debug)]
pub struct OsdpSettings {
    /// The serial device of the RS-485 adapter (`/dev/ttyUSB0`, `/dev/ttyTHS1`).
    pub device: PathBuf,
    pub baud: u32,
    /// The PD address on the bus, 0 to 126.
    pub address: u8,
    /// The site key file (32 hexadecimal digits, mode 600).
    pub key: PathBuf,
    /// How long install mode (the public default key SCBK-D accepted until the controller sets the site key)
    /// stays armed; zero: never. Armed only while no site key exists and no window was opened since the last
    /// local reset (`commissioning`).
    pub install_window: Duration,
    /// IEEE OUI for manufacturer replies and the PD identity.
    pub vendor_code: [u8; 3],
    /// How long inputs 0 and 1 stay active after a verdict.
    pub hold: Duration,
    /// The first 8 bytes of the classifier's sha256 (zeros without a classifier).
    pub model: [u8; 8],
    /// The door relay the controller drives with osdp_OUT output 0; `None`: no relay, osdp_OUT refused.
    pub door: Option<crate::gate::relay::DoorControl>,
}

/// What the gate did; all counters only grow.
#[derive(Debug, Default)]
pub struct GateStats {
    /// Verdicts given to the controller over the secure channel.
    pub delivered: AtomicU64,
    /// Verdicts not sent because no secure channel was up.
    pub undelivered: AtomicU64,
    /// Verdicts dropped because the OSDP thread's queue was full.
    pub dropped: AtomicU64,
    /// Secure channel sessions established.
    pub secure_sessions: AtomicU64,
    /// Site keys set by the controller (osdp_KEYSET).
    pub keys_set: AtomicU64,
    /// Commands refused by the application (unsupported COMSET, unknown manufacturer command, key not stored,
    /// an output command the door cannot or may not follow).
    pub refused_commands: AtomicU64,
    /// Output commands (osdp_OUT) followed: the door unlocked or locked by the controller.
    pub outputs: AtomicU64,
}

/// All counters of one OSDP gate.
#[derive(Debug)]
pub struct OsdpStats {
    /// The time `last_frame_ms` counts from.
    pub epoch: Instant,
    /// Bytes from the controller.
    pub received: WireStats,
    /// Bytes to the controller.
    pub sent: WireStats,
    pub gate: GateStats,
    /// Whether a secure channel is up now.
    pub secure: AtomicBool,
    /// Times the serial port failed and was closed to be opened again.
    pub port_failures: AtomicU64,
}

impl Default for OsdpStats {
    fn default() -> Self {
        OsdpStats {
            epoch: Instant::now(),
            received: WireStats::default(),
            sent: WireStats::default(),
            gate: GateStats::default(),
            secure: AtomicBool::default(),
            port_failures: AtomicU64::default(),
        }
    }
}

impl OsdpStats {
    /// One line for logs.
    pub fn summary(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let naks: Vec<String> = self
            .sent
            .naks
            .iter()
            .enumerate()
            .filter(|(_, count)| load(count) > 0)
            .map(|(reason, count)| format!("{reason}:{}", load(count)))
            .collect();
        format!(
            "{} verdicts delivered, {} undelivered (no secure channel), {} dropped; {} secure sessions, {} keys \
             set, {} output commands followed; from the controller: {} frames, {} bad checks, {} oversized, {} garbage bytes; NAKs sent by \
             reason [{}]; {} commands refused; {} serial port failures",
            load(&self.gate.delivered),
            load(&self.gate.undelivered),
            load(&self.gate.dropped),
            load(&self.gate.secure_sessions),
            load(&self.gate.keys_set),
            load(&self.gate.outputs),
            load(&self.received.frames),
            load(&self.received.bad_check),
            load(&self.received.oversized),
            load(&self.received.garbage),
            naks.join(" "),
            load(&self.gate.refused_commands),
            load(&self.port_failures),
        )
    }
}

/// A verdict as the OSDP thread needs it: fixed size, so queuing allocates nothing.
#[derive(Clone, Copy, Debug)]
struct Report {
    decision: Decision,
    fake_probability: Option<f32>,
    frames: u32,
    frames_seen: u32,
    first_frame: u64,
}

enum Message {
    Verdict(Report),
    Health(Health),
}

/// The OSDP gate. `report` and `set_health` only queue; the thread named "gate-osdp" owns the PD and the port.
pub struct OsdpGate {
    sender: Option<SyncSender<Message>>,
    stats: Arc<OsdpStats>,
    thread: Option<JoinHandle<()>>,
    description: String,
    /// Kept for the JSON line size check every gate applies, so a verdict refused elsewhere is refused here.
    line: Line,
}

impl OsdpGate {
    /// Opens the serial port and starts the PD. Fails when the port cannot be opened or configured, the key
    /// file is unreadable, readable by others or malformed, or the state beside it (install window record,
    /// serial number) cannot be read or written. Without a site key the PD starts in install mode for
    /// `install_window` if that window was not yet opened since the last local reset, else on a random key no
    /// controller knows.
    pub fn start(settings: &OsdpSettings) -> Result<OsdpGate> {
        ensure!(
            BAUD_RATES.contains(&settings.baud),
            "OSDP baud rate {} is not one of {BAUD_RATES:?}",
            settings.baud
        );
        ensure!(settings.address <= 126, "OSDP address {} must be 0 to 126", settings.address);
        let serial = serial_number(&settings.key)?;
        let start = start_key(&settings.key, settings.install_window)?;
        let state = Arc::new(PanelState::default());
        let install_until = match start {
            StartKey::Site(_) => {
                state.site_key.store(true, Ordering::Relaxed);
                None
            }
            StartKey::Install(window) => {
                state.install.store(true, Ordering::Relaxed);
                log::warn!(
                    "OSDP install mode ARMED for {} s: the public default key is accepted until the controller \
                     sets the site key (written to {}); it is never armed again unless `deepgate osdp reset-key` \
                     removes that key",
                    window.as_secs(),
                    settings.key.display()
                );
                Some(Instant::now() + window)
            }
            StartKey::Unset(_) => {
                log::error!(
                    "OSDP: no site key in {} and the install window is spent or not configured: no controller \
                     can connect; `deepgate osdp reset-key` and a restart open a new install window",
                    settings.key.display()
                );
                None
            }
        };
        let port = open_port(&settings.device, settings.baud)?;
        let stats = Arc::new(OsdpStats::default());
        let pd = open_device(settings, Some(port), &start, serial, &state, &stats)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
        let description = format!(
            "osdp {} at {} baud, address {}, serial number {}",
            settings.device.display(),
            settings.baud,
            settings.address,
            crate::gate::to_hex(&serial)
        );
        let thread = std::thread::Builder::new()
            .name("gate-osdp".into())
            .spawn({
                let stats = Arc::clone(&stats);
                let settings = settings.clone();
                move || {
                    crate::health::debug_panic_point("gate-osdp");
                    serve(pd, &receiver, &settings, install_until, serial, &state, &stats)
                }
            })
            .context("starting the OSDP thread")?;
        Ok(OsdpGate { sender: Some(sender), stats, thread: Some(thread), description, line: Line::new() })
    }

    pub fn stats(&self) -> &OsdpStats {
        &self.stats
    }

    fn send(&mut self, message: Message) {
        let Some(sender) = &self.sender else { return };
        match sender.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.gate.dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!("{}: queue full, a message to the controller was dropped", self.description);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.gate.dropped.fetch_add(1, Ordering::Relaxed);
                log::error!("{}: the OSDP thread has stopped", self.description);
            }
        }
    }
}

impl Gate for OsdpGate {
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> Result<()> {
        encode_line(verdict, &mut self.line)?;
        self.send(Message::Verdict(Report {
            decision: verdict.decision,
            fake_probability: verdict.fake_probability,
            frames: verdict.frames,
            frames_seen: verdict.frames_seen,
            first_frame: verdict.first_frame,
        }));
        Ok(())
    }

    fn flush(&mut self, timeout: Duration) -> Result<()> {
        // Events wait in libosdp for the controller's next poll (at most 200 ms apart on a live bus).
        let end = Instant::now() + timeout.min(Duration::from_millis(500));
        while Instant::now() < end && self.thread.as_ref().is_some_and(|thread| !thread.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn describe(&self) -> &str {
        &self.description
    }

    /// Up while a secure channel is established and the controller was heard from within `LINK_SILENCE`: a
    /// cut line leaves libosdp's secure channel nominally up until its own timeout.
    fn link_up(&self) -> Option<bool> {
        let heard = self.stats.received.last_frame_ms.load(Ordering::Relaxed);
        let silent = (self.stats.epoch.elapsed().as_millis() as u64).saturating_sub(heard);
        Some(self.stats.secure.load(Ordering::Relaxed) && silent < LINK_SILENCE.as_millis() as u64)
    }

    /// Tells the controller about a change of the runtime's health (inputs, tamper, a health reply).
    fn set_health(&mut self, health: Health) {
        self.send(Message::Health(health));
    }

    /// The OSDP thread is running: it ends on its own only when it cannot go on (no key to leave install
    /// mode with, the PD not restartable) or on a panic, and then no controller hears from this device.
    fn worker_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|thread| !thread.is_finished())
    }
}

impl Drop for OsdpGate {
    fn drop(&mut self) {
        // Closing the queue ends the thread after it has handled what is queued.
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("{}: the OSDP thread panicked", self.description);
            }
        }
        log::info!("{}: {}", self.description, self.stats.summary());
    }
}

/// The PD on the serial port (`None`: opened by the channel when it first reads), on the key `start` says,
/// with the identity and capabilities this PD reports and its command callback.
fn open_device(
    settings: &OsdpSettings,
    port: Option<serialport::TTYPort>,
    start: &StartKey,
    serial: [u8; 4],
    state: &Arc<PanelState>,
    stats: &Arc<OsdpStats>,
) -> Result<PeripheralDevice> {
    let channel = SerialChannel {
        port,
        device: settings.device.clone(),
        baud: settings.baud,
        reopen_at: Instant::now(),
        stats: Arc::clone(stats),
        incoming: wire::Guard::default(),
        released: VecDeque::with_capacity(2 * MAX_FRAME),
        outgoing: Inspector::default(),
    };
    device_on(settings, Box::new(channel), start, serial, state, stats)
}

/// The PD on any channel (the serial port; an in-memory one in `fuzzing`), configured as `open_device` says.
fn device_on(
    settings: &OsdpSettings,
    channel: Box<dyn libosdp::Channel>,
    start: &StartKey,
    serial: [u8; 4],
    state: &Arc<PanelState>,
    stats: &Arc<OsdpStats>,
) -> Result<PeripheralDevice> {
    let mut flags = OsdpFlag::EnforceSecure;
    // libosdp needs a key whenever the secure channel is enforced; in install mode it is SCBK-D, the public
    // default key the standard defines for commissioning.
    let key = match start {
        StartKey::Site(key) | StartKey::Unset(key) => *key,
        StartKey::Install(_) => {
            flags |= OsdpFlag::InstallMode;
            SCBK_D
        }
    };
    let info = PdInfoBuilder::new()
        .name("deepgate")
        .and_then(|info| info.address(i32::from(settings.address)))
        .and_then(|info| info.baud_rate(settings.baud as i32))
        .map_err(|error| anyhow::anyhow!("OSDP settings: {error}"))?
        .flag(flags)
        .id(&identity(settings.vendor_code, serial))
        .capabilities(&[
            PdCapability::ContactStatusMonitoring(PdCapEntity::new(1, INPUTS as u8)),
            PdCapability::OutputControl(PdCapEntity::new(1, u8::from(settings.door.is_some()))),
            PdCapability::CommunicationSecurity(PdCapEntity::new(1, 1)),
        ])
        .secure_channel_key(key);
    let mut pd = PeripheralDevice::new(info, channel)
        .map_err(|error| anyhow::anyhow!("starting the OSDP peripheral device: {error}"))?;
    pd.set_command_callback(command_handler(settings, Arc::clone(state), Arc::clone(stats)));
    Ok(pd)
}

/// The OSDP thread: refreshes libosdp, turns verdicts and health changes into events, releases held inputs.
///
/// libosdp holds only `LIBOSDP_EVENTS` events (each leaves with one poll reply), so events wait in `pending`
/// (bounded, oldest dropped and counted) and are handed over as the controller collects them: the outgoing
/// inspector counts event replies on the wire.
///
/// Install mode ends when the controller has set the site key (libosdp then drops the default key itself), or
/// at `install_until`: the PD is then started again on a random key, so the default key is refused from then on.
fn serve(
    mut pd: PeripheralDevice,
    receiver: &Receiver<Message>,
    settings: &OsdpSettings,
    install_until: Option<Instant>,
    serial: [u8; 4],
    state: &Arc<PanelState>,
    stats: &Arc<OsdpStats>,
) {
    let mut pending: VecDeque<OsdpEvent> = VecDeque::with_capacity(PENDING);
    let push = |pending: &mut VecDeque<OsdpEvent>, event: OsdpEvent| {
        if pending.len() == PENDING {
            pending.pop_front();
            stats.gate.dropped.fetch_add(1, Ordering::Relaxed);
            log::warn!("OSDP: the controller collects events too slowly; the oldest waiting one was dropped");
        }
        pending.push_back(event);
    };
    let replies = || stats.sent.event_replies.load(Ordering::Relaxed);
    let mfg = |data: Vec<u8>| {
        let [a, b, c] = settings.vendor_code;
        OsdpEvent::MfgReply(OsdpEventMfgReply { vendor_code: (a, b, c), data })
    };
    // Events handed to libosdp, and the event replies counted on the wire when that count started.
    let (mut handed, mut replies_before) = (0u64, replies());
    // The event replies counted last, and when that count last moved.
    let (mut last_seen, mut last_progress) = (replies(), Instant::now());
    // When inputs 0 and 1 are released again.
    let mut release: Option<Instant> = None;
    let mut secure = false;
    loop {
        pd.refresh();
        if state.install.load(Ordering::Relaxed) {
            if state.site_key.load(Ordering::Relaxed) {
                state.install.store(false, Ordering::Relaxed);
                log::info!("OSDP install mode ended: the controller set the site key");
                push(&mut pending, mfg(state.health_reply()));
            } else if install_until.is_some_and(|until| Instant::now() >= until) {
                state.install.store(false, Ordering::Relaxed);
                log::warn!(
                    "OSDP install window expired without a site key: the default key is refused from now on; \
                     `deepgate osdp reset-key` and a restart open a new window"
                );
                let unset = match commissioning::random_key() {
                    Ok(key) => StartKey::Unset(key),
                    Err(error) => {
                        log::error!("OSDP: stopping, no key to leave install mode with: {error:#}");
                        return;
                    }
                };
                pd = match open_device(settings, None, &unset, serial, state, stats) {
                    Ok(pd) => pd,
                    Err(error) => {
                        log::error!("OSDP: stopping, the PD could not leave install mode: {error:#}");
                        return;
                    }
                };
                push(&mut pending, mfg(state.health_reply()));
                continue;
            }
        }
        let now_secure = pd.is_sc_active();
        if now_secure != secure {
            secure = now_secure;
            stats.secure.store(secure, Ordering::Relaxed);
            if secure {
                stats.gate.secure_sessions.fetch_add(1, Ordering::Relaxed);
                log::info!("OSDP: secure channel established with the controller");
                // The controller may have missed changes while the channel was down: tell it the present.
                push(&mut pending, OsdpEvent::Status(state.input_report()));
                push(&mut pending, OsdpEvent::Status(state.local_report()));
            } else {
                // Events queued for a channel that is gone are stale by the time another is up.
                pending.clear();
                pd.flush_events();
                (handed, replies_before) = (0, replies());
                log::warn!(
                    "OSDP: secure channel lost; verdicts are withheld until the controller re-establishes it"
                );
            }
        }
        match receiver.recv_timeout(REFRESH) {
            Ok(Message::Verdict(report)) if !secure => {
                stats.gate.undelivered.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "OSDP: no secure channel with the controller; a {} verdict was not sent",
                    report.decision.name()
                );
            }
            Ok(Message::Verdict(report)) => {
                let bits = match report.decision {
                    Decision::Genuine => 0b01,
                    Decision::Fake => 0b10,
                    Decision::Uncertain | Decision::NoFace => 0,
                };
                let before = state.inputs.load(Ordering::Relaxed);
                state.inputs.store(before & !0b11 | bits, Ordering::Relaxed);
                if bits != 0 {
                    release = Some(Instant::now() + settings.hold);
                }
                if state.inputs.load(Ordering::Relaxed) != before {
                    push(&mut pending, OsdpEvent::Status(state.input_report()));
                }
                push(&mut pending, mfg(verdict_reply(&report, &settings.model).to_vec()));
                stats.gate.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Message::Health(health)) => {
                let inputs =
                    state.inputs.load(Ordering::Relaxed) & 0b11 | u8::from(!health.can_decide()) << 2;
                if inputs != state.inputs.swap(inputs, Ordering::Relaxed) {
                    push(&mut pending, OsdpEvent::Status(state.input_report()));
                }
                if health.tamper() != state.tamper.swap(health.tamper(), Ordering::Relaxed) {
                    push(&mut pending, OsdpEvent::Status(state.local_report()));
                }
                state.health.store(health.state().code(), Ordering::Relaxed);
                // Kept while no channel is up: it is the present state, unlike a verdict about someone gone.
                push(&mut pending, mfg(state.health_reply()));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if release.is_some_and(|at| Instant::now() >= at) {
            release = None;
            state.inputs.fetch_and(!0b11, Ordering::Relaxed);
            push(&mut pending, OsdpEvent::Status(state.input_report()));
        }
        // Should the count ever be wrong (libosdp dropping events itself, say), a second without any event
        // reply ends the wait: at worst one refused hand-over a second, never a queue stuck for good.
        let seen = replies();
        if seen != last_seen {
            (last_seen, last_progress) = (seen, Instant::now());
        } else if handed > seen.saturating_sub(replies_before)
            && last_progress.elapsed() > Duration::from_secs(1)
        {
            (handed, replies_before, last_progress) = (0, seen, Instant::now());
        }
        if secure {
            hand_over(&mut pd, &mut pending, &mut handed, replies() - replies_before);
        }
    }
    // A last refresh round so that the controller's next polls can still collect what was just queued.
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        pd.refresh();
        // No retries now: a refusal would only repeat libosdp's error every few milliseconds.
        if secure && !hand_over(&mut pd, &mut pending, &mut handed, replies() - replies_before) {
            pending.clear();
        }
        std::thread::sleep(REFRESH);
    }
}

/// Hands waiting events to libosdp while it has room: `handed` events given, `collected` of them seen leaving
/// in event replies on the wire. Returns false when libosdp refused one, which then stays first in `pending`.
fn hand_over(
    pd: &mut PeripheralDevice,
    pending: &mut VecDeque<OsdpEvent>,
    handed: &mut u64,
    collected: u64,
) -> bool {
    while handed.saturating_sub(collected) < LIBOSDP_EVENTS {
        let Some(event) = pending.pop_front() else { break };
        if pd.notify_event(event.clone()).is_err() {
            pending.push_front(event);
            return false;
        }
        *handed += 1;
    }
    true
}

/// The manufacturer reply for a verdict (layout in the module documentation).
fn verdict_reply(report: &Report, model: &[u8; 8]) -> [u8; 24] {
    let mut data = [0u8; 24];
    data[0] = MFG_VERDICT;
    data[1] = match report.decision {
        Decision::Genuine => 0,
        Decision::Fake => 1,
        Decision::Uncertain => 2,
        Decision::NoFace => 3,
    };
    let probability = report
        .fake_probability
        .filter(|p| p.is_finite())
        .map_or(0xFFFF, |p| (p.clamp(0.0, 1.0) * 10000.0).round() as u16);
    data[2..4].copy_from_slice(&probability.to_le_bytes());
    data[4..6].copy_from_slice(&(report.frames.min(0xFFFF) as u16).to_le_bytes());
    data[6..8].copy_from_slice(&(report.frames_seen.min(0xFFFF) as u16).to_le_bytes());
    data[8..16].copy_from_slice(&report.first_frame.to_le_bytes());
    data[16..24].copy_from_slice(model);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_replies_have_the_documented_layout() {
        let report = Report {
            decision: Decision::Fake,
            fake_probability: Some(0.8731),
            frames: 7,
            frames_seen: 70_000,
            first_frame: 0x0102_0304_0506_0708,
        };
        let data = verdict_reply(&report, &[0xAA; 8]);
        assert_eq!(data[0..2], [MFG_VERDICT, 1]);
        assert_eq!(u16::from_le_bytes([data[2], data[3]]), 8731);
        assert_eq!(u16::from_le_bytes([data[4], data[5]]), 7);
        assert_eq!(u16::from_le_bytes([data[6], data[7]]), 0xFFFF, "saturates, never wraps");
        assert_eq!(u64::from_le_bytes(data[8..16].try_into().unwrap()), 0x0102_0304_0506_0708);
        assert_eq!(data[16..24], [0xAA; 8]);
        let none = verdict_reply(&Report { fake_probability: None, ..report }, &[0; 8]);
        assert_eq!(u16::from_le_bytes([none[2], none[3]]), 0xFFFF);
    }
}
