//! `deepgate run`: the main job. Frames from the board's source go through the pipeline; verdicts go to the
//! board's gate; SIGINT or SIGTERM ends it cleanly between frames.

use super::output::verdict_message;
use super::replay::{play_input, play_source, Event, Played};
use anyhow::{Context, Result};
use deepgate::capture::v4l2::{OpenError, V4l2Settings, V4l2Source};
use deepgate::capture::FrameSource;
use deepgate::config::{BoardConfig, GateSection, SourceSection};
use deepgate::frame::Frame;
use deepgate::gate::audit::{AuditLog, ModelRecord, Thresholds};
use deepgate::gate::osdp::{OsdpGate, OsdpSettings};
use deepgate::gate::relay::RelayGate;
use deepgate::gate::stdout::StdoutGate;
use deepgate::gate::tcp::{TcpGate, TcpGateSettings};
use deepgate::gate::Gate;
use deepgate::health::{self, Event as HealthEvent, Monitor, OverloadPolicy};
use deepgate::manifest::{Manifest, Role};
use deepgate::pipeline::{Models, Pipeline};
use std::cell::Cell;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn run(board: &Path) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the first is being handled ends the process at once (exit status 1), for
        // an operator whose clean stop is stuck; the first only sets the flag checked between frames.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    let config = BoardConfig::load(board)?;
    log::info!("board `{}`: {}", config.board.id, config.board.description);
    let mut gate: Box<dyn Gate> = match &config.gate {
        GateSection::Stdout => Box::new(StdoutGate::default()),
        GateSection::Tcp { address, queue, spool } => {
            Box::new(TcpGate::start(TcpGateSettings::new(address, &config.resolve(spool), *queue))?)
        }
        GateSection::Osdp { .. } => Box::new(OsdpGate::start(&osdp_settings(&config)?)?),
    };
    log::info!("gate: {}; backend: {:?}", gate.describe(), config.runtime.backend);
    // The door relay gets every verdict too; it holds its fault state until the first frame feeds it, and
    // again when it is dropped at the end of this function (end of input, signal, unwinding).
    let mut relay = match &config.relay {
        Some(section) => Some(RelayGate::open(section)?),
        None => None,
    };
    if let Some(relay) = &relay {
        log::info!("{}", relay.describe());
    }
    let mut monitor = Monitor::new(OverloadPolicy {
        budget_ms: config.runtime.frame_budget_ms,
        window: config.runtime.overload_frames,
    });
    let Some(mut pipeline) = load_pipeline(&config, &stop, &mut monitor, gate.as_mut(), relay.as_ref())?
    else {
        log::info!("stopping on signal before the models were valid");
        return Ok(ExitCode::from(2));
    };
    let mut audit = match &config.audit {
        Some(section) => Some(open_audit(&config, &pipeline, &config.resolve(&section.path))?),
        None => None,
    };
    let (mut frames, mut verdicts, mut withheld, mut failures) = (0u64, 0u64, 0u64, 0u64);
    // When the frame being processed was taken from the source (after pacing): its time to a decision.
    let frame_start = Cell::new(Instant::now());
    let mut emit = |event: Event| match event {
        Event::Frame { .. } => {
            // Each processed frame feeds the relay's watchdog; failed frames do not.
            if let Some(relay) = &relay {
                relay.feed();
            }
            let ms = frame_start.get().elapsed().as_secs_f32() * 1000.0;
            let mut changed = monitor.observe(HealthEvent::FrameTime { ms });
            if let Some(up) = gate.link_up() {
                let event = if up { HealthEvent::GateLinkUp } else { HealthEvent::GateLinkDown };
                changed = monitor.observe(event).or(changed);
            }
            if let Some(health) = changed {
                health::apply(health, gate.as_mut(), relay.as_ref());
            }
        }
        Event::Verdict { source, verdict } => {
            if !monitor.health().can_decide() {
                // The failure policy: no verdicts while the runtime cannot decide (camera lost).
                withheld += 1;
                log::warn!("{source}: verdict withheld: {}", monitor.health().state().name());
                return;
            }
            verdicts += 1;
            let message = verdict_message(source, verdict);
            // The door first: the stdout gate writes synchronously and may wait on its reader.
            if let Some(relay) = relay.as_mut() {
                if let Err(error) = relay.report(&message) {
                    log::error!("{}: {error:#}", relay.describe());
                }
            }
            if let Err(error) = gate.report(&message) {
                log::error!("gate {}: {error:#}", gate.describe());
            }
            if let Some(audit) = audit.as_mut() {
                if let Err(error) = audit.append(source, verdict) {
                    log::error!("{error:#}");
                }
            }
        }
        Event::Error { source, error } => {
            log::error!("{source}: {error:#}");
            failures += 1;
        }
        Event::GpuLost { error } => {
            log::error!("{error:#}");
            if let Some(health) = monitor.observe(HealthEvent::GpuFailed) {
                health::apply(health, gate.as_mut(), relay.as_ref());
            }
        }
        Event::Camera { source, up } => {
            log::info!(
                "{source}: camera {}",
                if up { "streaming" } else { "lost: no verdicts until it is back" }
            );
            let event = if up { HealthEvent::CameraBack } else { HealthEvent::CameraLost };
            if let Some(health) = monitor.observe(event) {
                health::apply(health, gate.as_mut(), relay.as_ref());
            }
        }
    };
    let live = match &config.source {
        SourceSection::Replay { paths, repeat, frame_rate } => {
            let period = (*frame_rate > 0.0).then(|| Duration::from_secs_f32(1.0 / frame_rate));
            let mut next_due = Instant::now();
            'stream: loop {
                let frames_before_pass = frames;
                for path in paths {
                    let mut before_frame = |frame: Option<&Frame>| {
                        if stop.load(Ordering::Relaxed) {
                            return false;
                        }
                        if frame.is_none() {
                            return true;
                        }
                        if let Some(period) = period {
                            std::thread::sleep(next_due.saturating_duration_since(Instant::now()));
                            // Late frames do not build up a debt of frames to rush through.
                            next_due =
                                next_due.max(Instant::now().checked_sub(period).unwrap_or(next_due)) + period;
                        }
                        frames += 1;
                        frame_start.set(Instant::now());
                        true
                    };
                    if play_input(&mut pipeline, &config.resolve(path), &mut before_frame, &mut emit)
                        == Played::Stopped
                    {
                        break 'stream;
                    }
                }
                if !repeat {
                    break;
                }
                if frames == frames_before_pass {
                    // Repeating inputs that give no frame would spin forever: stop and say why.
                    log::error!("no input of source.paths gave a frame; not repeating");
                    failures += 1;
                    break;
                }
            }
            false
        }
        SourceSection::V4l2 { .. } => {
            // A refusal at the first open (a virtual device not allowed, a format or rate the driver cannot
            // give, another buffer count) is a configuration error: exit status 2. A camera that is absent or
            // not the pinned one is `camera_lost` (the controller told) and retried until it is back.
            let settings =
                V4l2Settings::from_config(&config.source).context("source: the v4l2 settings are invalid")?;
            let mut camera = V4l2Source::open(settings, false).map_err(OpenError::into_error)?;
            let name = camera.describe().to_string();
            let mut before_frame = |frame: Option<&Frame>| {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                if frame.is_some() {
                    frames += 1;
                    frame_start.set(Instant::now());
                }
                true
            };
            play_source(&mut pipeline, &mut camera, name, &mut before_frame, &mut emit);
            true
        }
    };
    if stop.load(Ordering::Relaxed) {
        log::info!("stopping on signal");
    }
    // The door goes to its fault state now, not after the gate's flush.
    drop(relay);
    if let Err(error) = gate.flush(Duration::from_secs(2)) {
        log::warn!("gate {}: {error:#}", gate.describe());
    }
    let frame_time = pipeline.times.summary().into_iter().find(|summary| summary.stage == "frame");
    log::info!(
        "{frames} frames, {verdicts} verdicts ({withheld} withheld), {failures} failures; median frame {:.1} ms",
        frame_time.map_or(0.0, |summary| summary.median_ms)
    );
    // A camera run ends only on a signal, which is its normal end: frame errors (time-outs, dropped frames)
    // are in the summary lines, not the status. An input that failed ends a replay run with status 1.
    Ok(if failures > 0 && !live { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The OSDP gate's settings from the board config: paths resolved, the configured classifier's identity (from
/// the manifest, so that it is known even when the model file itself fails its checks) for replies.
fn osdp_settings(config: &BoardConfig) -> Result<OsdpSettings> {
    let GateSection::Osdp { device, baud, address, key, install_mode, vendor_code, hold_ms } = &config.gate
    else {
        anyhow::bail!("the board's gate is not OSDP");
    };
    let mut model = [0u8; 8];
    if let Some(id) = &config.models.classifier {
        let manifest = Manifest::load(&config.resolve(&config.models.manifest))?;
        let entry = manifest.get(id, Role::Classifier)?;
        model = deepgate::gate::from_hex::<8>(&entry.sha256[..16], "the classifier's sha256")?;
    }
    Ok(OsdpSettings {
        device: config.resolve(device),
        baud: *baud,
        address: *address,
        key: config.resolve(key),
        install_mode: *install_mode,
        vendor_code: deepgate::gate::osdp::parse_vendor_code(vendor_code)?,
        hold: Duration::from_millis(u64::from(*hold_ms)),
        model,
    })
}

/// Loads the models and builds the pipeline. When a model fails its checks and `runtime.model_retry_s` is 0,
/// that is the error (exit status 2). Otherwise the runtime enters `model_invalid` (controller told, door in
/// its fault state) and tries again every `model_retry_s` seconds until the models are valid, or a signal
/// comes (`None`).
fn load_pipeline(
    config: &BoardConfig,
    stop: &AtomicBool,
    monitor: &mut Monitor,
    gate: &mut dyn Gate,
    relay: Option<&RelayGate>,
) -> Result<Option<Pipeline>> {
    loop {
        let error = match Models::load(config).and_then(|models| Pipeline::new(config, models)) {
            Ok(pipeline) => {
                if let Some(health) = monitor.observe(HealthEvent::ModelValid) {
                    health::apply(health, gate, relay);
                }
                return Ok(Some(pipeline));
            }
            Err(error) if config.runtime.model_retry_s == 0 => return Err(error),
            Err(error) => error,
        };
        log::error!("{error:#}; trying again in {} s", config.runtime.model_retry_s);
        if let Some(health) = monitor.observe(HealthEvent::ModelInvalid) {
            health::apply(health, gate, relay);
        }
        let again = Instant::now() + Duration::from_secs(u64::from(config.runtime.model_retry_s));
        while Instant::now() < again {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            // The relay's watchdog is fed while waiting: the door is held in its fault state by `fault`,
            // and the watchdog would only say the same thing again.
            if let Some(relay) = relay {
                relay.feed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Opens the audit log with the facts every receipt records: board, model checksums, thresholds.
fn open_audit(config: &BoardConfig, pipeline: &Pipeline, path: &Path) -> Result<AuditLog> {
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
        Some(key) => Some(deepgate::gate::audit::load_signing_key(&config.resolve(key))?),
        None => None,
    };
    let signer = key.as_ref().map(deepgate::gate::audit::public_key_hex);
    let audit = AuditLog::open(path, &config.board.id, records, thresholds, key)?;
    match signer {
        Some(public) => log::info!("decision receipts: {}, signed (public key {public})", path.display()),
        None => log::info!("decision receipts: {} (unsigned)", path.display()),
    }
    Ok(audit)
}
