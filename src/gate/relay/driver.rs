//! The relay thread behind `RelayGate`: pulses that end on time, the watchdog, faults and their priority, the
//! fault state on drop, and the process-wide panic hook. The semantics are in the parent module's
//! documentation.

use super::{
    check_timing, gpio, lock, Authority, DoorState, RelayConfig, RelayLine, RelaySettings, PULSE_MS,
};
use crate::decide::Decision;
use crate::gate::{Gate, VerdictMessage};
use crate::health::Health;
use anyhow::{anyhow, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// While the watchdog holds the fault state, how often the thread looks for a feed. `feed` is a single atomic
/// store, so that the capture loop never takes a lock; leaving the fault state may lag a feed by this much.
const FEED_POLL: Duration = Duration::from_millis(25);
/// After a failed write, how soon it is tried again.
const WRITE_RETRY: Duration = Duration::from_millis(100);
/// Longest the thread sleeps without a reason to wake: a bound on any missed notification.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How long the panic hook tries for a lock held by another thread before giving up on that relay.
const HOOK_PATIENCE: Duration = Duration::from_millis(100);
/// `last_feed` before the first feed.
const NEVER_FED: u64 = u64::MAX;

/// Counters of a `RelayGate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Genuine verdicts that opened the door (or restarted an open pulse): standalone authority only.
    pub pulses: u64,
    /// Genuine verdicts refused (standalone authority): a fault held, or the health was not normal.
    pub refused: u64,
    /// Genuine verdicts that opened nothing because the controller decides (`authority = "controller"`).
    pub evidence_only: u64,
    /// The controller's grants that opened the door.
    pub grants: u64,
    /// The controller's grants refused because a fault held.
    pub grants_refused: u64,
    /// Times the watchdog expired.
    pub watchdog_trips: u64,
    /// Writes to the line that failed (each retried).
    pub write_failures: u64,
}

/// A fault reason in fixed storage, so that `fault` allocates nothing; longer reasons are cut.
type Reason = heapless::String<96>;

/// The door relay as a `Gate`: see the module documentation for what it does.
pub struct RelayGate {
    shared: Arc<Shared>,
    description: String,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: a verdict, a fault, a cleared fault, or stop.
    wake: Condvar,
    output: Mutex<Output>,
    /// Nanoseconds from `epoch` to the last feed, or `NEVER_FED`: written by `feed` without a lock.
    last_feed: AtomicU64,
    epoch: Instant,
    settings: RelaySettings,
    description: String,
}

struct State {
    pulse_until: Option<Instant>,
    fault: Option<Reason>,
    /// Set by the panic hook (or the thread's own panic); never cleared.
    panicked: bool,
    /// Why a standalone genuine verdict is refused now: the health state's name while it is not normal (the
    /// controller link down included), `None` while normal.
    health_fault: Option<&'static str>,
    stop: bool,
    /// Bumped by every change the thread must look at, so that a notification sent while it was writing the
    /// line is not lost.
    generation: u64,
    stats: RelayStats,
}

/// The line and the value last written to it (`None` before the first write and after a failed one).
struct Output {
    line: Box<dyn RelayLine>,
    applied: Option<bool>,
}

impl Output {
    /// Writes `energised` unless the line already holds it.
    fn apply(&mut self, energised: bool) -> Result<()> {
        if self.applied == Some(energised) {
            return Ok(());
        }
        self.applied = None;
        self.line.set(energised)?;
        self.applied = Some(energised);
        Ok(())
    }
}

/// What the door is doing, as the thread sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Locked,
    Open,
    Fault(Cause),
}

/// Why the fault state holds, by priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Panic,
    Requested,
    NotYetFed,
    Watchdog,
}

/// Tries to lock `mutex` for up to `HOOK_PATIENCE`; `None` if another thread holds it that long (or the
/// current thread does: a panic inside a write).
fn lock_patiently<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + HOOK_PATIENCE;
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

impl Shared {
    /// The condition at `now`. A fault cancels the pulse, so that it does not resume when the fault clears.
    fn condition(&self, state: &mut State, now: Instant) -> Condition {
        let cause = if state.panicked {
            Some(Cause::Panic)
        } else if state.fault.is_some() {
            Some(Cause::Requested)
        } else {
            match self.feed_deadline() {
                None => Some(Cause::NotYetFed),
                Some(deadline) if now >= deadline => Some(Cause::Watchdog),
                Some(_) => None,
            }
        };
        if let Some(cause) = cause {
            state.pulse_until = None;
            return Condition::Fault(cause);
        }
        match state.pulse_until {
            Some(until) if now < until => Condition::Open,
            _ => {
                state.pulse_until = None;
                Condition::Locked
            }
        }
    }

    /// Unlocks the door for `duration` unless a fault holds (then `Err` with the fault's name, counted);
    /// `grant`: the controller's grant (counted apart from standalone verdicts). The caller wakes the thread.
    fn open_for(&self, state: &mut State, duration: Duration, grant: bool) -> Result<(), &'static str> {
        let now = Instant::now();
        if let Condition::Fault(cause) = self.condition(state, now) {
            match grant {
                true => state.stats.grants_refused += 1,
                false => state.stats.refused += 1,
            }
            return Err(cause_name(cause));
        }
        state.pulse_until = Some(now + duration);
        match grant {
            true => state.stats.grants += 1,
            false => state.stats.pulses += 1,
        }
        state.generation += 1;
        Ok(())
    }

    /// When the watchdog expires, given the last feed; `None` before the first.
    fn feed_deadline(&self) -> Option<Instant> {
        match self.last_feed.load(Ordering::Acquire) {
            NEVER_FED => None,
            nanoseconds => Some(self.epoch + Duration::from_nanos(nanoseconds) + self.settings.watchdog),
        }
    }

    fn door(&self, condition: Condition) -> DoorState {
        match condition {
            Condition::Locked => DoorState::Locked,
            Condition::Open => DoorState::Unlocked,
            Condition::Fault(_) => self.settings.fault_state,
        }
    }

    /// Latches the panic fault and writes the fault state, waiting a little for locks held by other threads.
    fn enter_panic_state(&self) {
        if let Some(mut state) = lock_patiently(&self.state) {
            state.panicked = true;
            state.pulse_until = None;
            state.generation += 1;
        }
        self.wake.notify_all();
        match lock_patiently(&self.output) {
            Some(mut output) => {
                if let Err(error) = output.apply(self.settings.fault_energised()) {
                    log::error!("{}: writing the fault state after a panic: {error:#}", self.description);
                }
            }
            None => {
                log::error!("{}: line busy during a panic; fault state not written", self.description)
            }
        }
    }
}

/// Every relay started in this process, for the panic hook.
static RELAYS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// Installs (once per process) a panic hook that puts every relay into its fault state, latched, before the
/// previous hook runs; except for a panic inside `crate::gpu::contain`, which the runtime recovers from. `RelayGate::open` calls it; tests that start relays on recording lines do not, so that
/// one failing test does not fault the relays of the others.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A GPU library's panic that the runtime catches and falls back from (`crate::gpu::contain`)
            // is an error like any other, not a broken process.
            if !crate::gpu::contained() {
                fault_every_relay_on_panic();
            }
            previous(info);
        }));
    });
}

fn fault_every_relay_on_panic() {
    let Some(relays) = lock_patiently(&RELAYS) else { return };
    for relay in relays.iter().filter_map(Weak::upgrade) {
        relay.enter_panic_state();
    }
}

impl RelayGate {
    /// Opens the configured GPIO line (requested as an output holding the fault state, consumer "deepgate"),
    /// installs the panic hook and starts the relay thread.
    pub fn open(config: &RelayConfig) -> Result<RelayGate> {
        config.validate()?;
        let line = gpio::GpioLine::open(config)?;
        install_panic_hook();
        RelayGate::start(Box::new(line), config.settings())
    }

    /// Starts driving `line`: writes the fault state at once (an error if that fails), then starts the
    /// thread. The door stays in the fault state until the first `feed`.
    pub fn start(line: Box<dyn RelayLine>, settings: RelaySettings) -> Result<RelayGate> {
        let millis = |duration: Duration| u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
        check_timing(millis(settings.pulse), millis(settings.watchdog))?;
        let description = format!(
            "relay {} ({}, pulse {} ms, watchdog {} ms, fault state {}, authority {})",
            line.describe(),
            settings.mode.name(),
            settings.pulse.as_millis(),
            settings.watchdog.as_millis(),
            settings.fault_state.name(),
            settings.authority.name()
        );
        let mut output = Output { line, applied: None };
        output
            .apply(settings.fault_energised())
            .map_err(|error| anyhow!("{description}: writing the fault state at start: {error:#}"))?;
        if settings.authority == Authority::Standalone {
            log::warn!(
                "{description}: standalone: a genuine verdict opens the door with no access controller; any live \
                 face, or anyone inside the kiosk's housing, can open it"
            );
        }
        if settings.fault_state != settings.mode.unpowered() {
            log::warn!(
                "{description}: the fault state differs from the door's unpowered state ({}): a crash, \
                 SIGKILL or power loss can leave the door {} while handled faults leave it {}",
                settings.mode.unpowered().name(),
                settings.mode.unpowered().name(),
                settings.fault_state.name()
            );
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pulse_until: None,
                fault: None,
                panicked: false,
                health_fault: None,
                stop: false,
                generation: 0,
                stats: RelayStats::default(),
            }),
            wake: Condvar::new(),
            output: Mutex::new(output),
            last_feed: AtomicU64::new(NEVER_FED),
            epoch: Instant::now(),
            settings,
            description: description.clone(),
        });
        {
            let mut relays = lock(&RELAYS);
            relays.retain(|relay| relay.strong_count() > 0);
            relays.push(Arc::downgrade(&shared));
        }
        let thread = std::thread::Builder::new()
            .name("gate-relay".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared)
            })
            .map_err(|error| anyhow!("{description}: starting the relay thread: {error}"))?;
        Ok(RelayGate { shared, description, thread: Some(thread) })
    }

    /// Tells the watchdog the pipeline is alive; call it for every processed frame. One atomic store: never
    /// blocks. Ends a watchdog fault (within a few tens of milliseconds), not a `fault`.
    pub fn feed(&self) {
        let nanoseconds = u64::try_from(self.shared.epoch.elapsed().as_nanos()).unwrap_or(NEVER_FED - 1);
        self.shared.last_feed.store(nanoseconds, Ordering::Release);
    }

    /// Puts the door into the fault state until `clear_fault`, ending a running pulse. `reason` is logged
    /// (cut to 96 bytes); a later call replaces it. Takes a short lock; never waits for the line.
    pub fn fault(&self, reason: &str) {
        let mut stored = Reason::new();
        for character in reason.chars() {
            if stored.push(character).is_err() {
                break;
            }
        }
        let mut state = lock(&self.shared.state);
        state.fault = Some(stored);
        state.pulse_until = None;
        state.generation += 1;
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Ends a `fault`. The door then locks (a pulse cut short by the fault does not resume); a watchdog fault
    /// or a panic, if one holds, still holds.
    pub fn clear_fault(&self) {
        let mut state = lock(&self.shared.state);
        state.fault = None;
        state.generation += 1;
        drop(state);
        self.shared.wake.notify_one();
    }

    /// The counters, read under one lock.
    pub fn stats(&self) -> RelayStats {
        lock(&self.shared.state).stats
    }

    /// The handle through which the access controller's gate (OSDP or TCP) opens and locks this door.
    pub fn control(&self) -> DoorControl {
        DoorControl { shared: Arc::clone(&self.shared) }
    }
}

/// The access controller's hold on the door: its gate (OSDP output command, TCP grant) calls `grant` and
/// `lock`. Cheap to clone; each call takes the relay's short lock and never waits for the line.
#[derive(Clone)]
pub struct DoorControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DoorControl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "DoorControl({})", self.shared.description)
    }
}

impl DoorControl {
    /// Unlocks the door for `duration`, cut to `pulse_ms` (`None`: `pulse_ms`), unless a fault holds: then
    /// `Err` naming it (counted, the door stays in its state). `what` names the grant in logs.
    pub fn grant(&self, duration: Option<Duration>, what: &str) -> Result<Duration> {
        let pulse = self.shared.settings.pulse;
        let shortest = Duration::from_millis(u64::from(*PULSE_MS.start()));
        let duration = duration.map_or(pulse, |asked| asked.clamp(shortest, pulse.max(shortest)));
        let opened = self.shared.open_for(&mut lock(&self.shared.state), duration, true);
        match opened {
            Ok(()) => {
                self.shared.wake.notify_one();
                log::info!(
                    "{}: {what}: door unlocked for {} ms",
                    self.shared.description,
                    duration.as_millis()
                );
                Ok(duration)
            }
            Err(why) => {
                log::warn!("{}: {what} refused: {why}", self.shared.description);
                Err(anyhow!("{}: {what} refused: {why}", self.shared.description))
            }
        }
    }

    /// Locks the door at once, ending a running pulse (a fault state, if one holds, stays).
    pub fn lock(&self, what: &str) {
        let mut state = lock(&self.shared.state);
        state.pulse_until = None;
        state.generation += 1;
        drop(state);
        self.shared.wake.notify_one();
        log::info!("{}: {what}: door locked", self.shared.description);
    }

    /// Who opens the door.
    pub fn authority(&self) -> Authority {
        self.shared.settings.authority
    }

    /// The relay's counters.
    pub fn stats(&self) -> RelayStats {
        lock(&self.shared.state).stats
    }
}

impl Gate for RelayGate {
    /// The door's side of the failure policy: its fault state while the runtime cannot decide (camera lost,
    /// model invalid), released again when it can. Any state but normal (the controller link down included)
    /// also refuses standalone verdicts.
    fn set_health(&mut self, health: Health) {
        let fault = (health.state() != crate::health::State::Normal).then(|| health.state().name());
        lock(&self.shared.state).health_fault = fault;
        if health.door_in_fault_state() {
            self.fault(health.state().name());
        } else {
            self.clear_fault();
        }
    }

    /// With `authority = "controller"` a verdict opens nothing (counted: the controller decides). Standalone,
    /// a genuine verdict opens the door for the pulse unless a fault or a health state other than normal
    /// holds (then it is refused and counted); other verdicts change nothing. Takes a short lock.
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> Result<()> {
        if verdict.decision != Decision::Genuine {
            return Ok(());
        }
        if self.shared.settings.authority == Authority::Controller {
            lock(&self.shared.state).stats.evidence_only += 1;
            log::debug!(
                "{}: genuine verdict for {}: the controller decides",
                self.description,
                verdict.source
            );
            return Ok(());
        }
        let refused = {
            let mut state = lock(&self.shared.state);
            match state.health_fault {
                Some(health) => {
                    state.stats.refused += 1;
                    Some(health)
                }
                None => self.shared.open_for(&mut state, self.shared.settings.pulse, false).err(),
            }
        };
        match refused {
            Some(why) => log::warn!(
                "{}: genuine verdict for {} refused (standalone): {why}; door stays locked",
                self.description,
                verdict.source,
            ),
            None => self.shared.wake.notify_one(),
        }
        Ok(())
    }

    /// Nothing is queued: the thread acts on each verdict at once.
    fn flush(&mut self, _timeout: Duration) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> &str {
        &self.description
    }
}

impl Drop for RelayGate {
    /// Stops the thread and writes the fault state before returning.
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("{}: the relay thread had panicked", self.description);
            }
        }
        let fault_state = self.shared.settings.fault_state.name();
        match lock(&self.shared.output).apply(self.shared.settings.fault_energised()) {
            Ok(()) => log::info!("{}: stopped; door {fault_state} (fault state)", self.description),
            Err(error) => {
                log::error!("{}: writing the fault state at stop: {error:#}", self.description)
            }
        }
    }
}

fn cause_name(cause: Cause) -> &'static str {
    match cause {
        Cause::Panic => "a thread panicked",
        Cause::Requested => "fault reported",
        Cause::NotYetFed => "pipeline not running yet",
        Cause::Watchdog => "watchdog expired",
    }
}

/// Writes the fault state if the relay thread unwinds, and latches the panic fault.
struct PanicGuard<'a>(&'a Shared);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.enter_panic_state();
        }
    }
}

/// The relay thread: evaluate the condition, write the line if it changed, sleep until the next deadline
/// (pulse end, watchdog expiry) or a notification; until stop.
fn run(shared: &Shared) {
    let _guard = PanicGuard(shared);
    let mut previous = Condition::Fault(Cause::NotYetFed);
    let mut logged_reason = Reason::new();
    let mut failing = false;
    loop {
        let now = Instant::now();
        let (condition, pulse_until, generation, reason) = {
            let mut state = lock(&shared.state);
            if state.stop {
                return;
            }
            let condition = shared.condition(&mut state, now);
            if condition == Condition::Fault(Cause::Watchdog) && previous != condition {
                state.stats.watchdog_trips += 1;
            }
            (condition, state.pulse_until, state.generation, state.fault.clone().unwrap_or_default())
        };
        log_change(shared, previous, condition, &reason, &mut logged_reason);
        previous = condition;
        let energised = shared.settings.mode.energised(shared.door(condition));
        let written = lock(&shared.output).apply(energised);
        let mut wake_at = match condition {
            Condition::Fault(Cause::NotYetFed | Cause::Watchdog) => now + FEED_POLL,
            Condition::Fault(Cause::Requested | Cause::Panic) => now + IDLE_WAKE,
            Condition::Open | Condition::Locked => {
                [pulse_until, shared.feed_deadline()].into_iter().flatten().min().unwrap_or(now + IDLE_WAKE)
            }
        };
        match written {
            Ok(()) if failing => {
                failing = false;
                log::info!("{}: the line accepts writes again", shared.description);
            }
            Ok(()) => {}
            Err(error) => {
                lock(&shared.state).stats.write_failures += 1;
                if !failing {
                    log::error!("{}: writing the line: {error:#}; retrying", shared.description);
                }
                failing = true;
                wake_at = wake_at.min(Instant::now() + WRITE_RETRY);
            }
        }
        let mut state = lock(&shared.state);
        while !state.stop && state.generation == generation {
            let now = Instant::now();
            if now >= wake_at {
                break;
            }
            state = shared.wake.wait_timeout(state, wake_at - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// Logs a change of condition (and a new fault reason), on the relay thread so the capture loop never
/// formats.
fn log_change(
    shared: &Shared,
    previous: Condition,
    condition: Condition,
    reason: &Reason,
    logged: &mut Reason,
) {
    let description = &shared.description;
    let fault_state = shared.settings.fault_state.name();
    match condition {
        Condition::Fault(Cause::Requested) if previous != condition || reason != logged => {
            log::warn!("{description}: fault: {reason}; door {fault_state} (fault state) until cleared");
            logged.clone_from(reason);
        }
        _ if previous == condition => {}
        Condition::Fault(Cause::Watchdog) => log::warn!(
            "{description}: watchdog: no frame processed for {} ms; door {fault_state} (fault state) until \
             the pipeline runs again",
            shared.settings.watchdog.as_millis()
        ),
        Condition::Fault(Cause::Panic) => {
            log::error!("{description}: a thread panicked; door {fault_state} (fault state) until restart")
        }
        Condition::Fault(Cause::NotYetFed) | Condition::Fault(Cause::Requested) => {}
        Condition::Open => {
            log::info!("{description}: door unlocked")
        }
        Condition::Locked => match previous {
            Condition::Fault(cause) => {
                log::info!("{description}: leaving the fault state ({}); door locked", cause_name(cause))
            }
            _ => log::info!("{description}: door locked"),
        },
    }
    if !matches!(condition, Condition::Fault(Cause::Requested)) {
        logged.clear();
    }
}
