//! The runtime's failure policy: ONE state machine for the whole runtime, fed by every part that can fail
//! (capture, models, GPU, gates, the frame loop's timing), read by every part that acts on it (the gates, the
//! relay, the run loop). The table in ARCHITECTURE.md ("Failure policy") says what the door and the controller
//! see in each state; `Health` is the single place that answers those questions in code. A leaf: it knows no
//! other module; gates consume it (`Gate::set_health`), the supervisor feeds it.
//!
//! Several faults can be active at once (the camera lost while the controller link is down). Each is a flag;
//! the reported state is the most severe active one, in the order of `State` (last is most severe).

/// One kind of failure, in increasing order of severity. The numeric codes are what the controller reads
/// (OSDP manufacturer health reply, TCP health lines); they never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
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
}

impl State {
    pub const ALL: [State; 6] = [
        State::Normal,
        State::GpuLost,
        State::GateLinkDown,
        State::Overloaded,
        State::ModelInvalid,
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
        }
    }

    fn bit(self) -> u8 {
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
    /// One frame took `ms` milliseconds from capture to decision.
    FrameTime {
        ms: f32,
    },
}

/// The runtime's health at one moment: the active faults; the state they add up to is derived from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Bit `State::code()` set for every active fault.
    faults: u8,
}

impl Health {
    /// The most severe active fault, or `Normal`.
    pub fn state(&self) -> State {
        self.active().last().unwrap_or(State::Normal)
    }

    pub fn is_active(&self, state: State) -> bool {
        self.faults & state.bit() != 0
    }

    /// Whether the runtime may issue verdicts: not without a camera or a valid model.
    pub fn can_decide(&self) -> bool {
        !self.is_active(State::CameraLost) && !self.is_active(State::ModelInvalid)
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
}

impl Monitor {
    pub fn new(overload: OverloadPolicy) -> Monitor {
        Monitor { health: Health::default(), overload, streak: 0 }
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
            Event::FrameTime { ms } => {
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
