//! The supervisor: `deepgate run` as a library call. It opens the board's outputs (the controller's gate, with
//! the fleet's MQTT broker beside it when the board has `[mqtt]`, and the door relay), loads the models
//! (waiting in `model_invalid` when the board allows it), opens the audit log, plays the board's source
//! through the person-session loop (`session`) with pacing, feeds the failure policy (`health`) and tells every
//! gate about its changes, withholds verdicts while the runtime cannot decide, and at the end puts the door
//! in its fault state before flushing the gate. The binary installs the signal handlers and turns the
//! `Summary` into an exit status; tests drive the same calls with their own gates and sources.

use crate::capture::v4l2::{OpenError, V4l2Source};
use crate::capture::{FrameSource, SourceSection};
use crate::config::BoardConfig;
use crate::frame::Frame;
use crate::gate::audit::{AuditLog, ModelRecord, OnFailure, Thresholds};
use crate::gate::mqtt::{MqttGate, WithFleet};
use crate::gate::osdp::{OsdpGate, OsdpSection, OsdpSettings};
use crate::gate::relay::RelayGate;
use crate::gate::stdout::StdoutGate;
use crate::gate::tcp::{TcpGate, TcpGateSettings, TcpSection};
use crate::gate::{Gate, GateSection, VerdictMessage};
use crate::health::{Event as HealthEvent, Health, Monitor, State};
use crate::manifest::{Manifest, Role};
use crate::pipeline::{Models, Pipeline};
use crate::session::{play_input, play_source, Event, Played};
use anyhow::{Context, Result};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a change of health does, in one place: it is logged once and told to every gate, the door relay
/// first (it goes to its fault state while the runtime cannot decide), then the controller's gate.
pub fn apply_health(health: Health, gates: &mut [&mut dyn Gate]) {
    if health.state() == State::Normal {
        log::info!("health: normal");
    } else {
        let active: heapless::Vec<&str, 16> = health.active().map(State::name).collect();
        log::warn!(
            "health: {} (active: {}); {}",
            health.state().name(),
            active.join(", "),
            if health.can_decide() { "verdicts go on" } else { "no verdicts; door in its fault state" }
        );
    }
    for gate in gates.iter_mut() {
        gate.set_health(health);
    }
}

/// Where verdicts and health go: the controller's gate and, optionally, the door relay.
pub struct Outputs {
    pub gate: Box<dyn Gate>,
    /// The door relay gets every verdict too; it holds its fault state until the first frame feeds it, and
    /// again when it is dropped (end of input, signal, unwinding).
    pub relay: Option<RelayGate>,
}

impl Outputs {
    /// The board's `[relay]` and `[gate]`, opened: the relay first, so that the controller's gate (OSDP output
    /// commands, TCP grants) gets its hold on the door.
    pub fn open(config: &BoardConfig) -> Result<Outputs> {
        let relay = match &config.relay {
            Some(section) => Some(RelayGate::open(section)?),
            None => None,
        };
        let door = relay.as_ref().map(RelayGate::control);
        let gate: Box<dyn Gate> = match &config.gate {
            GateSection::Stdout => Box::new(StdoutGate::default()),
            GateSection::Tcp(tcp) => {
                let mut settings = TcpGateSettings::new(&tcp.address, &config.resolve(&tcp.spool), tcp.queue);
                settings.door = door.clone();
                settings.tls = tcp.tls(|path| config.resolve(path));
                tcp_envelope(config, tcp, &mut settings)?;
                Box::new(TcpGate::start(settings)?)
            }
            GateSection::Osdp(osdp) => {
                let mut settings = osdp_settings(config, osdp)?;
                settings.door = door.clone();
                Box::new(OsdpGate::start(&settings)?)
            }
        };
        // The site's broker beside the door's gate, as one gate for the loop (`gate::mqtt::WithFleet`).
        let gate: Box<dyn Gate> = match &config.mqtt {
            Some(section) => {
                let mut settings = section.settings(&config.board.id, |path| config.resolve(path))?;
                if let Some(id) = &config.models.classifier {
                    let manifest = Manifest::load(&config.resolve(&config.models.manifest))?;
                    settings.model_sha256 = Some(manifest.get(id, Role::Classifier)?.sha256.clone());
                }
                Box::new(WithFleet::new(gate, MqttGate::start(settings)?))
            }
            None => gate,
        };
        log::info!("gate: {}; backend: {:?}", gate.describe(), config.runtime.backend);
        if let Some(relay) = &relay {
            log::info!("{}", relay.describe());
            if matches!(config.gate, GateSection::Stdout)
                && door
                    .as_ref()
                    .is_some_and(|door| door.authority() == crate::gate::relay::Authority::Controller)
            {
                log::warn!(
                    "{}: authority \"controller\" with the stdout gate: no controller can open this door",
                    relay.describe()
                );
            }
        }
        Ok(Outputs { gate, relay })
    }

    /// Tells the relay (first) and the gate about a change of health.
    fn tell(&mut self, health: Health) {
        match self.relay.as_mut() {
            Some(relay) => apply_health(health, &mut [relay, self.gate.as_mut()]),
            None => apply_health(health, &mut [self.gate.as_mut()]),
        }
    }

    /// Feeds the relay's watchdog, if there is a relay.
    fn feed(&self) {
        if let Some(relay) = &self.relay {
            relay.feed();
        }
    }
}

/// What a run did, for the last log line and the exit status.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Frames taken from the source (processed or failed).
    pub frames: u64,
    /// Verdicts delivered, and verdicts withheld because the runtime could not decide (camera lost).
    pub verdicts: u64,
    pub withheld: u64,
    /// Inputs or frames that failed.
    pub failures: u64,
    /// Whether the source was live (a camera): its run ends only on a signal, which is its normal end.
    pub live: bool,
    pub median_frame_ms: f64,
}

impl Summary {
    /// Whether the run failed: an input that failed ends a replay run with status 1. A camera run's frame errors
    /// (time-outs, dropped frames) are in the summary line, not the status.
    pub fn failed(&self) -> bool {
        self.failures > 0 && !self.live
    }
}

/// What reacts to the session loop's events: the outputs, the audit log, the health monitor, the counts.
struct Reactor {
    outputs: Outputs,
    audit: Option<AuditLog>,
    monitor: Monitor,
    /// The Prometheus metrics, and their endpoint when `[metrics]` asks for one.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    metrics_server: Option<crate::metrics::Server>,
    /// systemd's notify socket (a no-op without one); shared with the live loop's idle path.
    notifier: std::sync::Arc<crate::notify::Notifier>,
    verdicts: u64,
    withheld: u64,
    failures: u64,
    /// `[audit] on_failure`, and when the chain head goes to the controller next (`[audit] head_interval_s`).
    audit_policy: OnFailure,
    head_every: Option<Duration>,
    head_due: Instant,
}

impl Reactor {
    /// Sends the audit chain head to the gate when it is due (or `now`), and schedules the next.
    fn report_head(&mut self, now: bool) {
        let (Some(audit), Some(every)) = (self.audit.as_ref(), self.head_every) else { return };
        if !now && Instant::now() < self.head_due {
            return;
        }
        self.head_due = Instant::now() + every;
        let mut line = crate::gate::Line::new();
        match audit.head_line(&mut line) {
            Ok(()) => self.outputs.gate.audit_head(&line),
            Err(error) => log::error!("audit head: {error:#}"),
        }
    }

    /// The receipt of a verdict, before it goes anywhere: whether it may go (`[audit] on_failure`).
    fn record(&mut self, source: &str, verdict: &crate::decide::Verdict) -> bool {
        let Some(audit) = self.audit.as_mut() else { return true };
        let result = audit.append(source, verdict);
        self.metrics.delivered("audit", result.is_ok());
        match result {
            Ok(()) => {
                self.observe(HealthEvent::AuditWritten);
                true
            }
            Err(error) => {
                let blocking = self.audit_policy == OnFailure::Fault;
                log::error!(
                    "{error:#}; {}",
                    if blocking {
                        "verdict withheld (audit.on_failure = \"fault\")"
                    } else {
                        "verdict goes on"
                    }
                );
                self.observe(HealthEvent::AuditWriteFailed { blocking });
                // The controller learns at once that the head it holds is the last one written.
                self.report_head(true);
                !blocking
            }
        }
    }

    fn observe(&mut self, event: HealthEvent) {
        if let Some(health) = self.monitor.observe(event) {
            self.outputs.tell(health);
            self.metrics.health(health);
            self.notifier.status(&status_line(health));
        }
    }

    /// One event of the session loop; `frame_started`: when the frame it reports was taken from the
    /// source (after pacing), so that its time to a decision is measured.
    fn on_event(&mut self, event: Event, frame_started: Instant) {
        self.metrics.observe(&event);
        match event {
            Event::Frame { .. } => {
                // Each processed frame feeds the relay's watchdog; failed frames do not.
                self.outputs.feed();
                // systemd: ready once the first frame went through the models; alive while frames flow.
                self.notifier.ready(&status_line(self.monitor.health()));
                self.notifier.watchdog();
                let ms = frame_started.elapsed().as_secs_f32() * 1000.0;
                let mut changed = self.monitor.observe(HealthEvent::FrameTime { ms });
                if let Some(up) = self.outputs.gate.link_up() {
                    self.metrics.gate_link(up);
                    let event = if up { HealthEvent::GateLinkUp } else { HealthEvent::GateLinkDown };
                    changed = self.monitor.observe(event).or(changed);
                }
                if !self.outputs.gate.worker_alive() {
                    if !self.monitor.health().is_active(State::WorkerDead) {
                        log::error!("gate {}: its thread has ended", self.outputs.gate.describe());
                    }
                    changed = self.monitor.observe(HealthEvent::WorkerDied).or(changed);
                }
                if let Some(health) = changed {
                    self.outputs.tell(health);
                    self.metrics.health(health);
                    self.notifier.status(&status_line(health));
                }
                self.report_head(false);
            }
            Event::Verdict { source, verdict } => {
                let health = self.monitor.health();
                // The failure policy: no verdicts while the runtime cannot decide (camera lost...); with only
                // `audit_failed` in the way, the verdict's receipt is tried again and, written, lets it go.
                let allowed = health.can_decide() || health.blocked_only_by(State::AuditFailed);
                if !allowed || !self.record(source, verdict) {
                    self.withheld += 1;
                    self.metrics.withheld();
                    log::warn!("{source}: verdict withheld: {}", self.monitor.health().state().name());
                    return;
                }
                self.verdicts += 1;
                let message = VerdictMessage::new(source, verdict);
                // The door first: the stdout gate writes synchronously and may wait on its reader.
                if let Some(relay) = self.outputs.relay.as_mut() {
                    let result = relay.report(&message);
                    self.metrics.delivered("relay", result.is_ok());
                    if let Err(error) = result {
                        log::error!("{}: {error:#}", relay.describe());
                    }
                }
                let gate = &mut self.outputs.gate;
                let result = gate.report(&message);
                self.metrics.delivered("gate", result.is_ok());
                if let Err(error) = &result {
                    log::error!("gate {}: {error:#}", gate.describe());
                }
                self.observe(if result.is_ok() {
                    HealthEvent::Delivered
                } else {
                    HealthEvent::DeliveryFailed
                });
            }
            Event::Error { source, error } => {
                log::error!("{source}: {error:#}");
                self.failures += 1;
                self.observe(HealthEvent::FrameFailed);
            }
            Event::GpuLost { error } => {
                log::error!("{error:#}");
                self.observe(HealthEvent::GpuFailed);
            }
            Event::Camera { source, up } => {
                log::info!(
                    "{source}: camera {}",
                    if up { "streaming" } else { "lost: no verdicts until it is back" }
                );
                self.observe(if up { HealthEvent::CameraBack } else { HealthEvent::CameraLost });
            }
        }
    }
}

/// When each frame handed to the pipeline was taken from the source, until its results come (with two threads,
/// one frame later: `[runtime] threads`), so that each frame's time to a decision is its own.
#[derive(Default)]
struct FrameStarts(std::cell::RefCell<heapless::Deque<(u64, Instant), 4>>);

impl FrameStarts {
    /// The frame `sequence` was taken now.
    fn taken(&self, sequence: u64) {
        let mut starts = self.0.borrow_mut();
        if starts.is_full() {
            starts.pop_front();
        }
        let _ = starts.push_back((sequence, Instant::now()));
    }

    /// When the frame `event` reports was taken (frames come back in order; a failed frame's time is passed
    /// over); for any other event, now.
    fn of(&self, event: &Event) -> Instant {
        let Event::Frame { frame, .. } = event else { return Instant::now() };
        let mut starts = self.0.borrow_mut();
        while let Some((sequence, started)) = starts.pop_front() {
            if sequence == frame.sequence {
                return started;
            }
        }
        Instant::now()
    }
}

/// The running runtime: the pipeline, and what reacts to its frames and verdicts.
pub struct Supervisor<'a> {
    config: &'a BoardConfig,
    /// Set by a signal (or a test): checked between frames, and while waiting for valid models.
    stop: &'a AtomicBool,
    /// Boxed: a pipeline owns every buffer of a frame (about 180 kB inline), too much to move around on the
    /// stack of a test thread.
    pipeline: Box<Pipeline>,
    reactor: Reactor,
    frames: Cell<u64>,
    frame_started: FrameStarts,
    live: bool,
}

impl<'a> Supervisor<'a> {
    /// Loads the models and builds the pipeline, then opens the audit log. When a model fails its checks and
    /// `runtime.model_retry_s` is 0, that is the error (exit status 2). Otherwise the runtime enters
    /// `model_invalid` (controller told, door in its fault state) and tries again every `model_retry_s` seconds
    /// until the models are valid (`Some`), or `stop` is set (`None`).
    pub fn start(
        config: &'a BoardConfig,
        outputs: Outputs,
        stop: &'a AtomicBool,
    ) -> Result<Option<Supervisor<'a>>> {
        let monitor = Monitor::new(config.runtime.overload_policy());
        // The endpoint first, so that a wait in model_invalid shows in it.
        let (metrics, metrics_server) = crate::metrics::start(config)?;
        if let Some(fleet) = outputs.gate.fleet() {
            metrics.watch_fleet(fleet)?;
        }
        let notifier = std::sync::Arc::new(crate::notify::Notifier::from_environment());
        notifier.status("loading models");
        let mut reactor = Reactor {
            outputs,
            audit: None,
            monitor,
            metrics,
            metrics_server,
            notifier,
            verdicts: 0,
            withheld: 0,
            failures: 0,
            audit_policy: config.audit.as_ref().map(|audit| audit.on_failure).unwrap_or_default(),
            head_every: config
                .audit
                .as_ref()
                .filter(|audit| audit.head_interval_s > 0)
                .map(|audit| Duration::from_secs(u64::from(audit.head_interval_s))),
            head_due: Instant::now(),
        };
        let Some(mut pipeline) = load_pipeline(config, stop, &mut reactor)? else {
            return Ok(None);
        };
        pipeline.times.observe(reactor.metrics.stage_observer());
        log::info!("{}", startup_line(config, &pipeline));
        if let Some(section) = &config.audit {
            let audit = open_audit(config, &pipeline, &config.resolve(&section.path))?;
            reactor.audit = Some(audit.rotate_at(section.rotation()));
            // The head at start: the controller compares it with the last it holds (a cut tail shows).
            reactor.report_head(true);
        }
        Ok(Some(Supervisor {
            config,
            stop,
            pipeline,
            reactor,
            frames: Cell::new(0),
            frame_started: FrameStarts::default(),
            live: false,
        }))
    }

    /// The runtime's health now.
    pub fn health(&self) -> Health {
        self.reactor.monitor.health()
    }

    /// Where the metrics endpoint listens, when `[metrics]` configured one.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.reactor.metrics_server.as_ref().map(crate::metrics::Server::address)
    }

    /// Plays the board's source until it ends (replay without `repeat`) or `stop` is set: replay inputs paced
    /// at `source.frame_rate`, or the V4L2 camera. A refusal at the camera's first open (a virtual device not
    /// allowed, a format or rate the driver cannot give, another buffer count) is a configuration error; a
    /// camera that is absent or not the pinned one is `camera_lost` (the controller told), retried until back.
    pub fn run(&mut self) -> Result<()> {
        match &self.config.source {
            SourceSection::Replay { paths, repeat, frame_rate } => {
                self.run_replay(paths, *repeat, *frame_rate);
                Ok(())
            }
            SourceSection::V4l2(section) => {
                let settings = section.settings().context("source: the v4l2 settings are invalid")?;
                let mut camera = V4l2Source::open(settings, false).map_err(OpenError::into_error)?;
                let name = camera.describe().to_string();
                self.run_live(&mut camera, name);
                Ok(())
            }
        }
    }

    /// Plays a live source (a camera, or a test's scripted one) until `stop` is set.
    ///
    /// systemd's watchdog is pinged for each processed frame (`Reactor::on_event`) and, while the camera is
    /// lost, on each pass of the loop without a frame: the source is then re-opening it with back-off (each
    /// call returns within a fraction of a second), health is `camera_lost`, the door is in its fault state and
    /// the controller knows, so a restart would only repeat that. A camera that says it is up but delivers
    /// nothing, or a loop stuck in the source or the pipeline, sends no ping, and the watchdog restarts the unit.
    pub fn run_live(&mut self, source: &mut dyn FrameSource, name: String) {
        self.live = true;
        let (stop, frames, frame_started) = (self.stop, &self.frames, &self.frame_started);
        let notifier = std::sync::Arc::clone(&self.reactor.notifier);
        let camera_lost = Cell::new(false);
        let mut before_frame = |frame: Option<&Frame>| {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if let Some(frame) = frame {
                frames.set(frames.get() + 1);
                frame_started.taken(frame.sequence);
            } else if camera_lost.get() {
                notifier.watchdog();
            }
            true
        };
        let reactor = &mut self.reactor;
        let mut emit = |event: Event| {
            if let Event::Camera { up, .. } = event {
                camera_lost.set(!up);
            }
            let started = frame_started.of(&event);
            reactor.on_event(event, started)
        };
        play_source(&mut self.pipeline, source, name, &mut before_frame, &mut emit);
    }

    /// Plays the replay inputs in order (again from the first with `repeat`), paced at `frame_rate` when it is
    /// above 0, until they end or `stop` is set.
    fn run_replay(&mut self, paths: &[std::path::PathBuf], repeat: bool, frame_rate: f32) {
        let period = (frame_rate > 0.0).then(|| Duration::from_secs_f32(1.0 / frame_rate));
        let mut next_due = Instant::now();
        let (stop, frames, frame_started) = (self.stop, &self.frames, &self.frame_started);
        let config = self.config;
        'stream: loop {
            let frames_before_pass = frames.get();
            for path in paths {
                let mut before_frame = |frame: Option<&Frame>| {
                    if stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    let Some(frame) = frame else { return true };
                    if let Some(period) = period {
                        std::thread::sleep(next_due.saturating_duration_since(Instant::now()));
                        // Late frames do not build up a debt of frames to rush through.
                        next_due =
                            next_due.max(Instant::now().checked_sub(period).unwrap_or(next_due)) + period;
                    }
                    frames.set(frames.get() + 1);
                    frame_started.taken(frame.sequence);
                    true
                };
                let reactor = &mut self.reactor;
                let mut emit = |event: Event| {
                    let started = frame_started.of(&event);
                    reactor.on_event(event, started)
                };
                let played =
                    play_input(&mut self.pipeline, &config.resolve(path), &mut before_frame, &mut emit);
                if played == Played::Stopped {
                    break 'stream;
                }
            }
            if !repeat {
                break;
            }
            if frames.get() == frames_before_pass {
                // Repeating inputs that give no frame would spin forever: stop and say why.
                log::error!("no input of source.paths gave a frame; not repeating");
                self.reactor.failures += 1;
                break;
            }
        }
    }

    /// Ends the run: the door goes to its fault state first (the relay is dropped), then the gate delivers
    /// what it holds (at most 2 s). Returns what the run did, also logged.
    pub fn finish(self) -> Summary {
        if self.stop.load(Ordering::Relaxed) {
            log::info!("stopping on signal");
        }
        self.reactor.notifier.stopping();
        let Reactor { outputs, verdicts, withheld, failures, .. } = self.reactor;
        let Outputs { mut gate, relay } = outputs;
        drop(relay);
        if let Err(error) = gate.flush(Duration::from_secs(2)) {
            log::warn!("gate {}: {error:#}", gate.describe());
        }
        let frame_time = self.pipeline.times.summary().into_iter().find(|summary| summary.stage == "frame");
        let summary = Summary {
            frames: self.frames.get(),
            verdicts,
            withheld,
            failures,
            live: self.live,
            median_frame_ms: frame_time.map_or(0.0, |summary| summary.median_ms),
        };
        log::info!(
            "{} frames, {} verdicts ({} withheld), {} failures; median frame {:.1} ms",
            summary.frames,
            summary.verdicts,
            summary.withheld,
            summary.failures,
            summary.median_frame_ms
        );
        summary
    }
}

/// The health state as systemd's `STATUS=` line: the state, what else is active, and whether verdicts go on.
fn status_line(health: Health) -> String {
    if health.state() == State::Normal {
        return "health: normal".to_string();
    }
    let active: heapless::Vec<&str, 16> = health.active().map(State::name).collect();
    format!(
        "health: {} (active: {}); {}",
        health.state().name(),
        active.join(", "),
        if health.can_decide() { "verdicts go on" } else { "no verdicts, door in its fault state" }
    )
}

/// The pipeline, or `None` when `stop` was set while waiting for valid models (see `Supervisor::start`).
fn load_pipeline(
    config: &BoardConfig,
    stop: &AtomicBool,
    reactor: &mut Reactor,
) -> Result<Option<Box<Pipeline>>> {
    loop {
        let error = match Models::load(config).and_then(|models| Pipeline::new(config, models).map(Box::new))
        {
            Ok(pipeline) => {
                reactor.observe(HealthEvent::ModelValid);
                return Ok(Some(pipeline));
            }
            Err(error) if config.runtime.model_retry_s == 0 => return Err(error),
            Err(error) => error,
        };
        log::error!("{error:#}; trying again in {} s", config.runtime.model_retry_s);
        reactor.observe(HealthEvent::ModelInvalid);
        let again = Instant::now() + Duration::from_secs(u64::from(config.runtime.model_retry_s));
        while Instant::now() < again {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            // The relay's watchdog is fed while waiting: the door is held in its fault state by `fault`, and
            // the watchdog would only say the same thing again.
            reactor.outputs.feed();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The start-up log line (`logs::startup_line`): build, board, and the loaded models' checksums.
pub fn startup_line(config: &BoardConfig, pipeline: &Pipeline) -> String {
    let models = pipeline.models();
    let mut checksums = vec![(models.detector.entry.id.as_str(), models.detector.entry.sha256.as_str())];
    if let Some(classifier) = &models.classifier {
        checksums.push((classifier.entry().id.as_str(), classifier.entry().sha256.as_str()));
    }
    crate::logs::startup_line(&config.board.id, &checksums)
}

/// The OSDP gate's settings from its section of the board config: paths resolved, the configured classifier's identity (from
/// the manifest, so that it is known even when the model file itself fails its checks) for replies.
fn osdp_settings(config: &BoardConfig, section: &OsdpSection) -> Result<OsdpSettings> {
    let OsdpSection { device, baud, address, key, install_window_s, vendor_code, hold_ms } = section;
    let mut model = [0u8; 8];
    if let Some(id) = &config.models.classifier {
        let manifest = Manifest::load(&config.resolve(&config.models.manifest))?;
        let entry = manifest.get(id, Role::Classifier)?;
        model = crate::gate::from_hex::<8>(&entry.sha256[..16], "the classifier's sha256")?;
    }
    Ok(OsdpSettings {
        device: config.resolve(device),
        baud: *baud,
        address: *address,
        key: config.resolve(key),
        install_window: Duration::from_secs(u64::from(*install_window_s)),
        vendor_code: crate::gate::osdp::parse_vendor_code(vendor_code)?,
        hold: Duration::from_millis(u64::from(*hold_ms)),
        model,
        door: None,
    })
}

/// What every TCP verdict line carries and how it is signed: the board id, the configured classifier's sha256
/// (from the manifest, as for OSDP), the device key, the maximum age.
fn tcp_envelope(config: &BoardConfig, section: &TcpSection, settings: &mut TcpGateSettings) -> Result<()> {
    settings.board = config.board.id.clone();
    if let Some(id) = &config.models.classifier {
        let manifest = Manifest::load(&config.resolve(&config.models.manifest))?;
        settings.model_sha256 = Some(manifest.get(id, Role::Classifier)?.sha256.clone());
    }
    if let Some(key) = &section.signing_key {
        settings.signing_key =
            Some(crate::gate::audit::load_device_key(&config.resolve(key), "gate.signing_key")?);
    }
    settings.max_age = Duration::from_millis(section.max_age_ms);
    Ok(())
}

/// Opens the audit log with the facts every receipt records: board, model checksums, thresholds.
fn open_audit(config: &BoardConfig, pipeline: &Pipeline, path: &std::path::Path) -> Result<AuditLog> {
    let models = pipeline.models();
    let mut records = vec![ModelRecord {
        id: models.detector.entry.id.clone(),
        sha256: models.detector.entry.sha256.clone(),
    }];
    if let Some(classifier) = &models.classifier {
        records.push(ModelRecord {
            id: classifier.entry().id.clone(),
            sha256: classifier.entry().sha256.clone(),
        });
    }
    let (genuine_at, fake_at) = config.decision.thresholds();
    let thresholds = Thresholds { frame_threshold: config.decision.frame_threshold, genuine_at, fake_at };
    let key = match config.audit.as_ref().and_then(|audit| audit.key.as_ref()) {
        Some(key) => Some(crate::gate::audit::load_signing_key(&config.resolve(key))?),
        None => None,
    };
    let signer = key.as_ref().map(crate::gate::audit::public_key_hex);
    let audit = AuditLog::open(path, &config.board.id, records, thresholds, key)?;
    match signer {
        Some(public) => log::info!("decision receipts: {}, signed (public key {public})", path.display()),
        None => log::info!("decision receipts: {} (unsigned)", path.display()),
    }
    Ok(audit)
}
