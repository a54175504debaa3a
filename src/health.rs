//! The runtime's failure policy: ONE state machine for the whole runtime, fed by every part that can fail
//! (capture, models, GPU, gates, the frame loop's timing), read by every part that acts on it (the gates, the
//! relay, the run loop). The table in ARCHITECTURE.md ("Failure policy") says what the door and the controller
//! see in each state; `Health` is the single place that answers those questions in code. A leaf: it knows no
//! other module; gates consume it (`Gate::set_health`), the supervisor feeds it.
//!
//! Several faults can be active at once (the camera lost while the controller link is down). Each is a flag;
//! the reported state is the most severe active one, in the order of `State` (last is most severe).

/// One kind of failure. The numeric codes are what the controller reads (OSDP manufacturer health reply, TCP
/// health lines); they never change meaning, and new kinds get new codes. Severity is the order of
/// `State::ALL`, not the code: a later kind with a higher code can be less severe than an older one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Everything works.
    Normal = 0,
    /// The GPU path failed; preprocessing and inference run on the CPU. Decisions go on, slower.
    GpuLost = 1,
    /// The controller link (OSDP secure channel, TCP connection) is down. Decisions go on; the relay still
    /// works; verdicts are spooled (TCP) or withheld (OSDP: a verdict about a person who has gone is stale).
    GateLinkDown = 2,
    /// Frames take longer than the budget: decisions go on but people wait; the controller is told.
    Overloaded = 3,
    /// A model failed its checksum, could not be loaded, or gives invalid outputs: no decisions.
    ModelInvalid = 4,
    /// The camera is gone or was refused (unplugged, replaced by a virtual device): no decisions; treated
    /// like tamper.
    CameraLost = 5,
    /// Receipts cannot be written (disk full, I/O error) and `[audit] on_failure = "continue"`: decisions go
    /// on without receipts; each verdict tries again, and the first receipt written ends it.
    AuditDegraded = 6,
    /// The gate could not take a verdict for delivery (the TCP gate's spool write failed: disk full, I/O
    /// error; the stdout gate's write failed): decisions go on, that verdict is lost; the next one tries
    /// again, and the first one taken ends it.
    DeliveryFailed = 7,
    /// `runtime.overload_frames` frames in a row failed (the source could not deliver a whole frame:
    /// corrupt MJPEG, short or error-flagged buffers; or the pipeline failed on it): no decisions come out
    /// of such frames; as many good frames in a row end it.
    FrameErrors = 8,
    /// Receipts cannot be written and `[audit] on_failure = "fault"` (the default): no verdict goes out
    /// without its receipt. Each verdict tries again; the first receipt written ends it.
    AuditFailed = 9,
    /// A thread the runtime needs (a gate's connection thread) has ended: nothing it carried is delivered.
    /// Until restart (in `deepgate run` a panic ends the process anyway; this catches a thread that ended
    /// without one, and library users).
    WorkerDead = 10,
}

impl State {
    /// Every state, least severe first: `Health::state` is the last active one in this order.
    pub const ALL: [State; 11] = [
        State::Normal,
        State::GpuLost,
        State::GateLinkDown,
        State::AuditDegraded,
        State::DeliveryFailed,
        State::Overloaded,
        State::FrameErrors,
        State::AuditFailed,
        State::ModelInvalid,
        State::WorkerDead,
        State::CameraLost,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Normal => "normal",
            State::GpuLost => "gpu_lost",
            State::GateLinkDown => "gate_link_down",
            State::Overloaded => "overloaded",
            State::ModelInvalid => "model_invalid",
            State::CameraLost => "camera_lost",
            State::AuditDegraded => "audit_degraded",
            State::DeliveryFailed => "delivery_failed",
            State::FrameErrors => "frame_errors",
            State::AuditFailed => "audit_failed",
            State::WorkerDead => "worker_dead",
        }
    }

    /// Whether the runtime may not decide while this fault is active.
    pub fn blocks_decisions(self) -> bool {
        matches!(
            self,
            State::ModelInvalid
                | State::CameraLost
                | State::FrameErrors
                | State::AuditFailed
                | State::WorkerDead
        )
    }

    fn bit(self) -> u16 {
        1 << self.code()
    }
}

/// What happened; `Monitor::observe` turns events into state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    GpuFailed,
    CameraLost,
    CameraBack,
    ModelInvalid,
    ModelValid,
    GateLinkDown,
    GateLinkUp,
    /// A receipt could not be written; `blocking`: `[audit] on_failure = "fault"`.
    AuditWriteFailed {
        blocking: bool,
    },
    /// A receipt was written: ends `audit_degraded` and `audit_failed`.
    AuditWritten,
    /// The gate refused a verdict (its spool write failed), or took one again.
    DeliveryFailed,
    Delivered,
    /// A frame failed (the source's error or the pipeline's); a processed frame is `FrameTime`.
    FrameFailed,
    /// A thread the runtime needs has ended.
    WorkerDied,
    /// One frame took `ms` milliseconds from capture to decision.
    FrameTime {
        ms: f32,
    },
}

/// The runtime's health at one moment: the active faults; the state they add up to is derived from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Bit `State::code()` set for every active fault.
    faults: u16,
}

impl Health {
    /// The most severe active fault, or `Normal`.
    pub fn state(&self) -> State {
        self.active().last().unwrap_or(State::Normal)
    }

    /// Whether `state` is the only fault that keeps the runtime from deciding: `audit_failed` alone lets the
    /// next verdict try its receipt again (and be delivered if that works).
    pub fn blocked_only_by(&self, state: State) -> bool {
        self.is_active(state) && self.active().all(|active| active == state || !active.blocks_decisions())
    }

    pub fn is_active(&self, state: State) -> bool {
        self.faults & state.bit() != 0
    }

    /// Whether the runtime may issue verdicts: not while a fault that `State::blocks_decisions` is active
    /// (no camera, no valid model, frames failing, receipts required but not written, a dead worker).
    pub fn can_decide(&self) -> bool {
        !self.active().any(State::blocks_decisions)
    }

    /// Whether the controller should see tamper: the camera path is broken, which is what an attacker who
    /// swaps the camera for a video injector causes.
    pub fn tamper(&self) -> bool {
        self.is_active(State::CameraLost)
    }

    /// Whether a door relay must be in its configured fault state (not merely locked between verdicts).
    pub fn door_in_fault_state(&self) -> bool {
        !self.can_decide()
    }

    /// The active faults, least severe first.
    pub fn active(&self) -> impl Iterator<Item = State> + '_ {
        State::ALL.into_iter().filter(|state| *state != State::Normal && self.is_active(*state))
    }
}

/// Debug switch (`DEEPGATE_DEBUG_PANIC=NAME`): the runtime thread of that name ("gate-tcp", "gate-osdp")
/// panics as it starts, so that the tests can check the panic policy on a real thread of the real binary
/// (`deepgate run` ends, status 101, door relay in its fault state) as `DEEPGATE_CUDA_FAULT_AT` makes a real
/// CUDA fault. Unset, as on a kiosk, it does nothing.
pub fn debug_panic_point(thread: &str) {
    if std::env::var_os("DEEPGATE_DEBUG_PANIC").is_some_and(|name| name == thread) {
        panic!("{thread}: DEEPGATE_DEBUG_PANIC asked this thread to panic");
    }
}

/// Overload detection: the frame loop is overloaded when `window` consecutive frames exceed the budget, and
/// recovers when `window` consecutive frames are within it (hysteresis, so one slow frame is not a state).
#[derive(Clone, Copy, Debug)]
pub struct OverloadPolicy {
    pub budget_ms: f32,
    pub window: u32,
}

/// The state machine. `observe` returns the new health when it changed, so the caller reports changes only.
#[derive(Debug)]
pub struct Monitor {
    health: Health,
    overload: OverloadPolicy,
    /// Consecutive frames over (positive) or within (negative) the budget.
    streak: i64,
    /// Consecutive failed (positive) or processed (negative) frames; `overload.window` of either changes
    /// `frame_errors`, with the same hysteresis as overload.
    errors: i64,
}

impl Monitor {
    pub fn new(overload: OverloadPolicy) -> Monitor {
        Monitor { health: Health::default(), overload, streak: 0, errors: 0 }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Applies one event. Returns the new health if it changed.
    pub fn observe(&mut self, event: Event) -> Option<Health> {
        let before = self.health;
        match event {
            Event::GpuFailed => self.set(State::GpuLost, true),
            Event::CameraLost => self.set(State::CameraLost, true),
            Event::CameraBack => self.set(State::CameraLost, false),
            Event::ModelInvalid => self.set(State::ModelInvalid, true),
            Event::ModelValid => self.set(State::ModelInvalid, false),
            Event::GateLinkDown => self.set(State::GateLinkDown, true),
            Event::GateLinkUp => self.set(State::GateLinkDown, false),
            Event::AuditWriteFailed { blocking } => {
                self.set(State::AuditFailed, blocking);
                self.set(State::AuditDegraded, !blocking);
            }
            Event::AuditWritten => {
                self.set(State::AuditFailed, false);
                self.set(State::AuditDegraded, false);
            }
            Event::DeliveryFailed => self.set(State::DeliveryFailed, true),
            Event::Delivered => self.set(State::DeliveryFailed, false),
            Event::WorkerDied => self.set(State::WorkerDead, true),
            Event::FrameFailed => {
                self.errors = if self.errors > 0 { self.errors + 1 } else { 1 };
                if self.errors >= i64::from(self.overload.window) {
                    self.set(State::FrameErrors, true);
                }
            }
            Event::FrameTime { ms } => {
                self.errors = if self.errors < 0 { self.errors - 1 } else { -1 };
                if self.errors <= -i64::from(self.overload.window) {
                    self.set(State::FrameErrors, false);
                }
                let over = ms.is_nan() || ms > self.overload.budget_ms;
                self.streak = match (over, self.streak) {
                    (true, streak) if streak > 0 => streak + 1,
                    (true, _) => 1,
                    (false, streak) if streak < 0 => streak - 1,
                    (false, _) => -1,
                };
                let window = i64::from(self.overload.window);
                if self.streak >= window {
                    self.set(State::Overloaded, true);
                } else if self.streak <= -window {
                    self.set(State::Overloaded, false);
                }
            }
        }
        (self.health != before).then_some(self.health)
    }

    fn set(&mut self, state: State, active: bool) {
        if active {
            self.health.faults |= state.bit();
        } else {
            self.health.faults &= !state.bit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor() -> Monitor {
        Monitor::new(OverloadPolicy { budget_ms: 100.0, window: 3 })
    }

    #[test]
    fn each_state_says_what_the_door_and_the_controller_see() {
        // (event that enters the state, may decide, tamper, door in fault state)
        let table = [
            (Event::GpuFailed, State::GpuLost, true, false, false),
            (Event::GateLinkDown, State::GateLinkDown, true, false, false),
            (Event::ModelInvalid, State::ModelInvalid, false, false, true),
            (Event::CameraLost, State::CameraLost, false, true, true),
        ];
        for (event, state, decides, tamper, fault) in table {
            let mut monitor = monitor();
            let health = monitor.observe(event).expect("a change");
            assert_eq!(health.state(), state, "{event:?}");
            assert_eq!(
                (health.can_decide(), health.tamper(), health.door_in_fault_state()),
                (decides, tamper, fault),
                "{state:?}"
            );
            assert_eq!(monitor.observe(event), None, "{event:?} twice is no change");
        }
        let normal = Health::default();
        assert!(normal.can_decide() && !normal.tamper() && !normal.door_in_fault_state());
    }

    #[test]
    fn the_most_severe_active_fault_is_the_state_and_recovery_returns_to_the_next() {
        let mut monitor = monitor();
        monitor.observe(Event::GateLinkDown);
        monitor.observe(Event::CameraLost);
        monitor.observe(Event::GpuFailed);
        assert_eq!(monitor.health().state(), State::CameraLost);
        assert_eq!(
            monitor.health().active().collect::<Vec<_>>(),
            [State::GpuLost, State::GateLinkDown, State::CameraLost]
        );
        assert_eq!(
            monitor.observe(Event::CameraBack).map(|health| health.state()),
            Some(State::GateLinkDown)
        );
        assert_eq!(monitor.observe(Event::GateLinkUp).map(|health| health.state()), Some(State::GpuLost));
        // The GPU is not given back during a run: the CPU path stays until restart.
        assert_eq!(monitor.health().state(), State::GpuLost);
    }

    #[test]
    fn overload_needs_a_run_of_slow_frames_and_a_run_of_fast_ones_to_clear() {
        let mut monitor = monitor();
        for ms in [150.0, 150.0, 50.0, 150.0, 150.0] {
            assert_eq!(monitor.observe(Event::FrameTime { ms }), None, "no three slow frames in a row yet");
        }
        let health = monitor.observe(Event::FrameTime { ms: 150.0 }).expect("overloaded");
        assert_eq!(health.state(), State::Overloaded);
        assert!(health.can_decide(), "an overloaded kiosk still decides");
        assert_eq!(monitor.observe(Event::FrameTime { ms: f32::NAN }), None, "a NaN time counts as slow");
        for _ in 0..2 {
            assert_eq!(monitor.observe(Event::FrameTime { ms: 10.0 }), None);
        }
        assert_eq!(
            monitor.observe(Event::FrameTime { ms: 10.0 }).map(|health| health.state()),
            Some(State::Normal)
        );
    }

    #[test]
    fn every_state_has_its_own_code_and_name_and_a_place_in_the_severity_order() {
        let mut codes: Vec<u8> = State::ALL.iter().map(|state| state.code()).collect();
        codes.sort_unstable();
        assert_eq!(codes, (0..State::ALL.len() as u8).collect::<Vec<_>>(), "codes are 0..N, each once");
        let mut names: Vec<&str> = State::ALL.iter().map(|state| state.name()).collect();
        names.dedup();
        assert_eq!(names.len(), State::ALL.len());
        // Every fault at once: the most severe is camera_lost (tamper), and the health line can list them all.
        let mut health = Health::default();
        for state in State::ALL {
            health.faults |= state.bit();
        }
        assert_eq!(health.state(), State::CameraLost);
        assert_eq!(health.active().count(), State::ALL.len() - 1);
    }

    #[test]
    fn the_new_failures_each_say_whether_decisions_go_on() {
        // (events, state, may decide)
        let cases: [(&[Event], State, bool); 5] = [
            (&[Event::AuditWriteFailed { blocking: false }], State::AuditDegraded, true),
            (&[Event::AuditWriteFailed { blocking: true }], State::AuditFailed, false),
            (&[Event::DeliveryFailed], State::DeliveryFailed, true),
            (&[Event::FrameFailed, Event::FrameFailed, Event::FrameFailed], State::FrameErrors, false),
            (&[Event::WorkerDied], State::WorkerDead, false),
        ];
        for (events, state, decides) in cases {
            let mut monitor = monitor();
            let mut health = None;
            for event in events {
                health = monitor.observe(*event).or(health);
            }
            let health = health.expect("a change");
            assert_eq!((health.state(), health.can_decide()), (state, decides), "{events:?}");
            assert_eq!(health.door_in_fault_state(), !decides);
            assert!(!health.tamper());
        }
    }

    #[test]
    fn audit_and_delivery_faults_end_with_the_next_success_and_a_frame_error_streak_with_good_frames() {
        let mut monitor = monitor();
        monitor.observe(Event::AuditWriteFailed { blocking: true });
        assert!(monitor.health().blocked_only_by(State::AuditFailed));
        monitor.observe(Event::DeliveryFailed);
        assert!(monitor.health().blocked_only_by(State::AuditFailed), "a non-blocking fault beside it");
        monitor.observe(Event::CameraLost);
        assert!(!monitor.health().blocked_only_by(State::AuditFailed), "the camera blocks too");
        monitor.observe(Event::CameraBack);
        assert_eq!(monitor.observe(Event::AuditWritten).map(|h| h.state()), Some(State::DeliveryFailed));
        assert_eq!(monitor.observe(Event::Delivered).map(|h| h.state()), Some(State::Normal));

        // Two failed frames, one good one, two failed: no streak of three yet.
        for event in
            [Event::FrameFailed, Event::FrameFailed, Event::FrameTime { ms: 10.0 }, Event::FrameFailed]
        {
            assert_eq!(monitor.observe(event), None);
        }
        assert_eq!(monitor.observe(Event::FrameFailed), None);
        assert_eq!(monitor.observe(Event::FrameFailed).map(|h| h.state()), Some(State::FrameErrors));
        for _ in 0..2 {
            assert_eq!(monitor.observe(Event::FrameTime { ms: 10.0 }), None);
        }
        assert_eq!(monitor.observe(Event::FrameTime { ms: 10.0 }).map(|h| h.state()), Some(State::Normal));
        // A dead worker stays dead.
        monitor.observe(Event::WorkerDied);
        for event in [Event::AuditWritten, Event::Delivered, Event::FrameTime { ms: 1.0 }] {
            monitor.observe(event);
        }
        assert_eq!(monitor.health().state(), State::WorkerDead);
    }

    #[test]
    fn model_invalid_outranks_overload_and_clears_when_a_valid_model_is_back() {
        let mut monitor = monitor();
        for _ in 0..3 {
            monitor.observe(Event::FrameTime { ms: 500.0 });
        }
        assert_eq!(
            monitor.observe(Event::ModelInvalid).map(|health| health.state()),
            Some(State::ModelInvalid)
        );
        assert_eq!(monitor.observe(Event::ModelValid).map(|health| health.state()), Some(State::Overloaded));
    }
}
