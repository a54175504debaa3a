//! The door relay: one output line (GPIO character device on the board, `RecordingLine` on a host) driven by
//! its own thread, which opens the door for a pulse on a genuine verdict and holds a configured fault state
//! on any fault, guarded by a watchdog that the pipeline feeds with every processed frame.
//!
//! # What the relay does to the door
//!
//! `mode` says what the door's lock does without power, and so what energising the relay means:
//!
//! | `mode` | lock | door with relay de-energised | energised |
//! |---|---|---|---|
//! | `fail_secure` | electric strike | locked | unlocked |
//! | `fail_safe` | maglock (fire egress) | unlocked | locked |
//!
//! `active_low` only inverts the line's level (the kernel does it: "active" is "energised" either way).
//!
//! | condition | door |
//! |---|---|
//! | started, before the first feed | `fault_state` |
//! | fed, idle | locked |
//! | a grant from the access controller (`DoorControl::grant`), no fault | unlocked for the time granted (at most `pulse_ms`), then locked |
//! | the controller's "lock" (`DoorControl::lock`) | locked at once, a running pulse ended |
//! | `genuine` verdict, `authority = "controller"` (the default) | unchanged: a verdict is evidence for the controller, not an authorisation |
//! | `genuine` verdict, `authority = "standalone"`, health normal, no fault | unlocked for `pulse_ms`, then locked (a new `genuine` restarts it) |
//! | `genuine` verdict, `authority = "standalone"`, controller link down or any health fault | refused (counted): locked |
//! | `fake`, `uncertain`, `no_face` | unchanged: locked (a running pulse runs out on time) |
//! | not fed for `watchdog_ms` (pipeline stalled, camera gone) | `fault_state`, until the next feed |
//! | `fault(reason)` (the runtime's failure state machine) | `fault_state`, until `clear_fault()` |
//! | a panic on any thread (with the panic hook) | `fault_state`, until the process restarts |
//! | `Drop` (end of input, SIGINT/SIGTERM, unwinding) | `fault_state`, written before `drop` returns |
//! | SIGKILL, a second SIGTERM, segfault, abort, power loss | no software runs: see below |
//!
//! # Who opens the door
//!
//! The kiosk stands on the public side of the door: a live face in front of it, or an opened housing, must not
//! be enough to open it. So by default (`authority = "controller"`) only the access controller opens the door:
//! over OSDP its output command (osdp_OUT, output 0, accepted only within the Secure Channel), over TCP a
//! grant line naming the genuine verdict it answers (`gate::tcp`). The controller combines the kiosk's evidence
//! with its own (credential, schedule, anti-passback). `authority = "standalone"` lets a genuine verdict open the
//! door with no controller: then anyone with a live face, and anyone who can reach the relay's wiring or the
//! kiosk's inside, can open it; it is refused while the controller link is down or any health fault holds.
//!
//! Every fault ends a running pulse at once, and a `genuine` verdict that arrives while any fault holds is
//! refused (counted and logged), not deferred: the person was judged by a pipeline in an unknown state, and a
//! door that opens seconds later, when the fault clears, would open for whoever stands there then.
//!
//! # The fault state and the wiring
//!
//! `fault_state` is an explicit key because it is a safety decision: normally `locked` for a `fail_secure`
//! strike and `unlocked` for a `fail_safe` maglock on a fire-egress route, that is, the state the door takes
//! with the relay unpowered. The runtime can drive the fault state only while it runs. When the process dies
//! without unwinding (SIGKILL, the second-signal exit in `cli::run`, a segfault, `panic = "abort"` after the
//! hook) the kernel releases the line and promises no level: many drivers keep the last one, some return the
//! pin to its default, and with a power loss everything is unpowered. The wiring must therefore make the
//! relay's unpowered state, and the released line's level (a pull resistor to the de-energising level), equal
//! to the fault state. A `fault_state` other than the door's unpowered state is accepted but logged as a
//! warning at start, because then a crash and a handled fault leave the door in different states. Checking
//! this wiring needs the board: it is hardware-in-the-loop work.
//!
//! # Panics
//!
//! The release profile unwinds (no `panic = "abort"` in Cargo.toml), so a panic on the thread that owns the
//! `RelayGate` drops it and the fault state is written. A panic on any other thread does not unwind the
//! owner: `install_panic_hook` (called by `RelayGate::open`) adds a hook that puts every relay of the process
//! into the fault state before the previous hook prints the message; that fault is latched until the process
//! restarts (`clear_fault` does not clear it). The hook would also run before an abort. The one exception is a
//! panic inside `crate::gpu::contain`: a GPU library's panic that becomes an error and makes the runtime drop
//! that GPU path for the CPU (`src/panics.rs`).

mod driver;
pub mod gpio;

pub use driver::{install_panic_hook, DoorControl, RelayGate, RelayStats};

use anyhow::{ensure, Result};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Allowed `pulse_ms`: shorter does not release a strike reliably, longer is a door left open.
pub const PULSE_MS: std::ops::RangeInclusive<u32> = 100..=30_000;
/// Allowed `watchdog_ms`: it must exceed the longest frame (pacing included), and a minute without frames is
/// already an outage.
pub const WATCHDOG_MS: std::ops::RangeInclusive<u32> = 100..=60_000;
/// Longest line name the kernel stores (32 bytes with the terminating NUL).
const MAX_LINE_NAME: usize = 31;
/// Largest line offset: the kernel counts a chip's lines in 16 bits.
const MAX_LINE_OFFSET: u32 = 65_535;

/// What the door's lock does without power; decides what energising the relay means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorMode {
    /// Electric strike: locked unpowered, the relay is energised to unlock.
    FailSecure,
    /// Maglock: unlocked unpowered, the relay is energised to hold the door locked.
    FailSafe,
}

impl DoorMode {
    /// Whether the relay is energised when the door is in `door`.
    pub fn energised(self, door: DoorState) -> bool {
        matches!(
            (self, door),
            (DoorMode::FailSecure, DoorState::Unlocked) | (DoorMode::FailSafe, DoorState::Locked)
        )
    }

    /// The door's state with the relay unpowered: power loss, or a dead process whose line was released.
    pub fn unpowered(self) -> DoorState {
        match self {
            DoorMode::FailSecure => DoorState::Locked,
            DoorMode::FailSafe => DoorState::Unlocked,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DoorMode::FailSecure => "fail_secure",
            DoorMode::FailSafe => "fail_safe",
        }
    }
}

/// Who may open the door (module documentation, "Who opens the door").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    /// Only the access controller: osdp_OUT within the Secure Channel, or a TCP grant naming a genuine verdict.
    Controller,
    /// A genuine verdict opens the door by itself (never while the controller link or any fault is down).
    Standalone,
}

impl Authority {
    pub fn name(self) -> &'static str {
        match self {
            Authority::Controller => "controller",
            Authority::Standalone => "standalone",
        }
    }
}

/// What the door does; `DoorMode::energised` turns it into the relay's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorState {
    Locked,
    Unlocked,
}

impl DoorState {
    pub fn name(self) -> &'static str {
        match self {
            DoorState::Locked => "locked",
            DoorState::Unlocked => "unlocked",
        }
    }
}

/// Which line of the chip drives the relay: its offset, or its name (from the device tree or ACPI), which
/// survives a board revision that moves the line. A name must be unique on the chip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineSelector {
    Offset(u32),
    Name(String),
}

impl fmt::Display for LineSelector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineSelector::Offset(offset) => write!(formatter, "line {offset}"),
            LineSelector::Name(name) => write!(formatter, "line \"{name}\""),
        }
    }
}

/// `line = 17` or `line = "DOOR_RELAY"`.
impl<'de> Deserialize<'de> for LineSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<LineSelector, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = LineSelector;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter
                    .write_str("relay.line: a line offset on the chip (integer) or the line's name (string)")
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> std::result::Result<LineSelector, E> {
                u32::try_from(value)
                    .map(LineSelector::Offset)
                    .map_err(|_| E::custom(format!("relay.line = {value} is outside 0..={MAX_LINE_OFFSET}")))
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> std::result::Result<LineSelector, E> {
                u32::try_from(value)
                    .map(LineSelector::Offset)
                    .map_err(|_| E::custom(format!("relay.line = {value} is outside 0..={MAX_LINE_OFFSET}")))
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> std::result::Result<LineSelector, E> {
                Ok(LineSelector::Name(value.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The `[relay]` table of the board config. Every key is required: each one is a safety decision.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The GPIO character device, an absolute path such as `/dev/gpiochip0`.
    pub chip: PathBuf,
    /// The line on that chip: offset or unique name.
    pub line: LineSelector,
    /// The relay is energised by driving the line low.
    pub active_low: bool,
    pub mode: DoorMode,
    /// The door's state on shutdown, watchdog expiry or any fault.
    pub fault_state: DoorState,
    /// Who opens the door: "controller" (its grants only) or "standalone" (a genuine verdict too).
    pub authority: Authority,
    /// How long a genuine verdict (standalone) unlocks the door, and the longest a controller's grant may.
    pub pulse_ms: u32,
    /// How long without a feed before the fault state.
    pub watchdog_ms: u32,
}

impl RelayConfig {
    /// Checks every key, naming it in the message.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.chip.is_absolute(),
            "relay.chip `{}` must be the absolute path of a GPIO character device, such as /dev/gpiochip0",
            self.chip.display()
        );
        match &self.line {
            LineSelector::Offset(offset) => {
                ensure!(*offset <= MAX_LINE_OFFSET, "relay.line = {offset} is outside 0..={MAX_LINE_OFFSET}")
            }
            LineSelector::Name(name) => ensure!(
                !name.is_empty() && name.len() <= MAX_LINE_NAME && !name.chars().any(char::is_control),
                "relay.line `{name}` must be a line name of 1 to {MAX_LINE_NAME} bytes without control \
                 characters (or an offset)"
            ),
        }
        check_timing(self.pulse_ms, self.watchdog_ms)
    }

    /// The parts of the config that drive the door, apart from the line.
    pub fn settings(&self) -> RelaySettings {
        RelaySettings {
            mode: self.mode,
            fault_state: self.fault_state,
            authority: self.authority,
            pulse: Duration::from_millis(self.pulse_ms.into()),
            watchdog: Duration::from_millis(self.watchdog_ms.into()),
        }
    }
}

fn check_timing(pulse_ms: u32, watchdog_ms: u32) -> Result<()> {
    ensure!(
        PULSE_MS.contains(&pulse_ms),
        "relay.pulse_ms = {pulse_ms} is outside {}..={}",
        PULSE_MS.start(),
        PULSE_MS.end()
    );
    ensure!(
        WATCHDOG_MS.contains(&watchdog_ms),
        "relay.watchdog_ms = {watchdog_ms} is outside {}..={}",
        WATCHDOG_MS.start(),
        WATCHDOG_MS.end()
    );
    Ok(())
}

/// How a `RelayGate` drives its door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelaySettings {
    pub mode: DoorMode,
    pub fault_state: DoorState,
    pub authority: Authority,
    pub pulse: Duration,
    pub watchdog: Duration,
}

impl RelaySettings {
    /// Whether the relay is energised in the fault state: also the line's value when it is requested.
    pub fn fault_energised(&self) -> bool {
        self.mode.energised(self.fault_state)
    }
}

/// One relay output. The implementation owns the polarity of the line (`active_low`); callers speak of the
/// relay's coil only. Writes must be quick (a GPIO ioctl): they happen on the relay thread, never under a
/// lock that the capture loop takes.
pub trait RelayLine: Send {
    /// Energises (`true`) or releases (`false`) the relay.
    fn set(&mut self, energised: bool) -> Result<()>;

    /// A name for logs: "/dev/gpiochip0 line 17".
    fn describe(&self) -> &str;
}

/// The host implementation of `RelayLine`: records every write with its time, and fails on request. Clones
/// share the record, so a test keeps one while the relay owns the other.
#[derive(Clone)]
pub struct RecordingLine {
    record: Arc<Mutex<Recording>>,
}

struct Recording {
    writes: Vec<(Instant, bool)>,
    failing: bool,
}

impl Default for RecordingLine {
    fn default() -> RecordingLine {
        RecordingLine {
            record: Arc::new(Mutex::new(Recording { writes: Vec::with_capacity(64), failing: false })),
        }
    }
}

impl RecordingLine {
    /// Every successful write so far: (when, energised).
    pub fn writes(&self) -> Vec<(Instant, bool)> {
        lock(&self.record).writes.clone()
    }

    /// Whether the relay is energised now (`None` before the first write).
    pub fn energised(&self) -> Option<bool> {
        lock(&self.record).writes.last().map(|&(_, energised)| energised)
    }

    /// While `failing`, writes fail and are not recorded, like a line whose chip went away.
    pub fn set_failing(&self, failing: bool) {
        lock(&self.record).failing = failing;
    }
}

impl RelayLine for RecordingLine {
    fn set(&mut self, energised: bool) -> Result<()> {
        let mut record = lock(&self.record);
        ensure!(!record.failing, "recording line: simulated write failure");
        record.writes.push((Instant::now(), energised));
        Ok(())
    }

    fn describe(&self) -> &str {
        "recording line"
    }
}

/// Locks `mutex`, taking over a poisoned lock: every state here is updated in single steps, so a panic
/// elsewhere cannot leave it half-changed, and the door must still be driven.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BoardConfig;
    use crate::testing::BoardVariant;

    /// board/host.toml with its commented `[relay]` example switched on.
    fn host_with_relay() -> String {
        let text =
            std::fs::read_to_string("board/host.toml").expect("board/host.toml is read from the crate root");
        let start = text.find("# [relay]").expect("board/host.toml has a commented [relay] example");
        let (before, example) = text.split_at(start);
        let example: String = example
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| format!("{line}\n"))
            .collect();
        format!("{before}{example}")
    }

    /// The relay example with `relay.<key>` set to `value` (TOML; `testing::BoardVariant`).
    fn relay_with(key: &str, value: &str) -> String {
        BoardVariant::parse(&host_with_relay()).set(&format!("relay.{key}"), value).text()
    }

    fn error_of(text: &str) -> String {
        match BoardConfig::parse(text) {
            Ok(_) => panic!("config was accepted"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn the_host_example_parses_to_a_strike_on_a_named_line() {
        let config =
            BoardConfig::parse(&host_with_relay()).expect("the [relay] example in board/host.toml is valid");
        let relay = config.relay.expect("[relay] is present");
        assert_eq!(relay.chip, PathBuf::from("/dev/gpiochip0"));
        assert_eq!(relay.line, LineSelector::Name("DOOR_RELAY".into()));
        assert!(!relay.active_low);
        let settings = relay.settings();
        assert_eq!(settings.mode, DoorMode::FailSecure);
        assert_eq!(settings.fault_state, DoorState::Locked);
        assert_eq!((settings.pulse, settings.watchdog), (Duration::from_secs(3), Duration::from_secs(2)));
        assert!(!settings.fault_energised(), "a strike is locked with its relay released");
        assert_eq!(settings.authority, Authority::Controller, "the controller decides by default");
        assert!(BoardConfig::parse(&std::fs::read_to_string("board/host.toml").unwrap())
            .unwrap()
            .relay
            .is_none());
    }

    #[test]
    fn a_line_offset_is_accepted() {
        let config = BoardConfig::parse(&relay_with("line", "17")).unwrap();
        assert_eq!(config.relay.unwrap().line, LineSelector::Offset(17));
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let cases = [
            ("pulse_ms", "50", "relay.pulse_ms = 50 is outside 100..=30000"),
            ("pulse_ms", "30001", "relay.pulse_ms = 30001"),
            ("watchdog_ms", "0", "relay.watchdog_ms = 0 is outside 100..=60000"),
            ("watchdog_ms", "600000", "relay.watchdog_ms = 600000"),
            ("chip", "\"gpiochip0\"", "relay.chip `gpiochip0` must be the absolute path"),
            ("line", "\"\"", "relay.line `` must be a line name"),
            ("line", "\"A_NAME_LONGER_THAN_THE_KERNEL_KEEPS\"", "relay.line"),
            ("line", "70000", "relay.line = 70000 is outside 0..=65535"),
            ("line", "-1", "relay.line = -1 is outside"),
            ("line", "1.5", "relay.line: a line offset"),
            ("mode", "\"fail_open\"", "fail_open"),
            ("fault_state", "\"open\"", "open"),
            ("authority", "\"kiosk\"", "kiosk"),
            ("active_low", "\"no\"", "active_low"),
        ];
        for (key, value, expected) in cases {
            let message = error_of(&relay_with(key, value));
            assert!(
                message.contains(expected),
                "`{key} = {value}`: error does not contain `{expected}`: {message}"
            );
        }
    }

    #[test]
    fn every_key_is_required_and_no_other_is_known() {
        for key in
            ["chip", "line", "active_low", "mode", "fault_state", "authority", "pulse_ms", "watchdog_ms"]
        {
            let without = BoardVariant::parse(&host_with_relay()).remove(&format!("relay.{key}")).text();
            let message = error_of(&without);
            assert!(message.contains(key), "missing `{key}` is not named: {message}");
        }
        let message = error_of(&relay_with("hold_ms", "100"));
        assert!(message.contains("hold_ms"), "{message}");
    }

    #[test]
    fn energising_means_unlocked_for_a_strike_and_locked_for_a_maglock() {
        assert!(DoorMode::FailSecure.energised(DoorState::Unlocked));
        assert!(!DoorMode::FailSecure.energised(DoorState::Locked));
        assert!(DoorMode::FailSafe.energised(DoorState::Locked));
        assert!(!DoorMode::FailSafe.energised(DoorState::Unlocked));
        assert_eq!(DoorMode::FailSecure.unpowered(), DoorState::Locked);
        assert_eq!(DoorMode::FailSafe.unpowered(), DoorState::Unlocked);
    }

    #[test]
    fn start_refuses_timings_outside_the_config_ranges() {
        let settings = |pulse_ms, watchdog_ms| RelaySettings {
            mode: DoorMode::FailSecure,
            fault_state: DoorState::Locked,
            authority: Authority::Controller,
            pulse: Duration::from_millis(pulse_ms),
            watchdog: Duration::from_millis(watchdog_ms),
        };
        let message = |pulse_ms, watchdog_ms| match RelayGate::start(
            Box::new(RecordingLine::default()),
            settings(pulse_ms, watchdog_ms),
        ) {
            Ok(_) => panic!("pulse {pulse_ms} ms, watchdog {watchdog_ms} ms accepted"),
            Err(error) => format!("{error:#}"),
        };
        assert!(message(0, 1000).contains("relay.pulse_ms = 0"));
        assert!(message(1000, 10).contains("relay.watchdog_ms = 10"));
    }

    #[test]
    fn a_line_that_cannot_be_written_at_start_is_an_error() {
        let line = RecordingLine::default();
        line.set_failing(true);
        let settings = RelaySettings {
            mode: DoorMode::FailSafe,
            fault_state: DoorState::Unlocked,
            authority: Authority::Controller,
            pulse: Duration::from_secs(1),
            watchdog: Duration::from_secs(1),
        };
        let message = format!("{:#}", RelayGate::start(Box::new(line), settings).err().expect("refused"));
        assert!(message.contains("writing the fault state at start"), "{message}");
    }
}
