//! The runtime's metrics in the Prometheus text format, served on `[metrics] listen` (`GET /metrics`):
//! frames, faces, verdicts by decision, per-stage latency histograms (every sample, for as long as it runs),
//! camera, gate, relay and fleet (MQTT) counters, the health state and the build. The supervisor feeds it
//! from the session loop's events; the counters are atomics, so the frame loop never waits on a scrape.
//!
//! The HTTP side is std's `TcpListener` on one thread, not an HTTP crate: one read-only resource, requests read
//! with a size limit and time-outs, answered and closed. A server crate would bring a parser, keep-alive and
//! thread pools that this needs none of, and more code to audit on a door kiosk.

use crate::config::BoardConfig;
use crate::decide::Decision;
use crate::gate::mqtt::MqttStatsSource;
use crate::health::{Health, State};
use crate::session::Event;
use crate::timing::{Stage, StageObserver, STAGES};
use anyhow::{Context, Result};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Stage latency buckets in seconds: 0.25 ms to about 4 s, doubling (a Jetson's frame is 20-200 ms).
const STAGE_BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096,
];

/// Every metric, registered once; clones of the labelled children are kept so that the hot path does not look
/// them up.
pub struct Metrics {
    registry: Registry,
    frames: IntCounter,
    frame_errors: IntCounter,
    faces: IntCounter,
    verdicts: IntCounterVec,
    withheld: IntCounter,
    gpu_lost: IntCounter,
    camera_up: IntGauge,
    camera_changes: IntCounterVec,
    deliveries: IntCounterVec,
    gate_link_up: IntGauge,
    health: IntGaugeVec,
    health_active: IntGaugeVec,
    stages: HistogramVec,
    /// The fleet output's counters, when the board has one (`watch_fleet`).
    fleet: std::sync::OnceLock<Fleet>,
}

/// The fleet output's counters (`gate::mqtt`), copied from its gate at each scrape: nothing on the frame path.
struct Fleet {
    source: MqttStatsSource,
    published: IntCounter,
    republished: IntCounter,
    acked: IntCounter,
    dropped: IntCounter,
    connects: IntCounter,
    failures: IntCounter,
    queued: IntGauge,
    link_up: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let metric = IntCounter::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let metric = IntGauge::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    /// Every metric at zero (each label value present from the start, so that rates work from the first
    /// scrape), and the build info for `board`.
    pub fn new(board: &str) -> Result<Metrics> {
        let registry = Registry::new_custom(Some("deepgate".into()), None).context("metrics registry")?;
        let build = gauges(
            &registry,
            "build_info",
            "The running build (always 1).",
            &["version", "commit", "board"],
        )?;
        build.with_label_values(&[crate::logs::VERSION, crate::logs::GIT_COMMIT, board]).set(1);
        let metrics = Metrics {
            frames: counter(&registry, "frames_total", "Frames processed by the pipeline.")?,
            frame_errors: counter(&registry, "frame_errors_total", "Frames or inputs that failed.")?,
            faces: counter(&registry, "faces_total", "Faces detected, over all frames.")?,
            verdicts: counters(&registry, "verdicts_total", "Verdicts made, by decision.", &["decision"])?,
            withheld: counter(
                &registry,
                "verdicts_withheld_total",
                "Verdicts withheld: the runtime could not decide.",
            )?,
            gpu_lost: counter(
                &registry,
                "gpu_lost_total",
                "Times the GPU path failed and the CPU took over.",
            )?,
            camera_up: gauge(
                &registry,
                "camera_up",
                "1 while the source gives frames, 0 while the camera is lost.",
            )?,
            camera_changes: counters(&registry, "camera_changes_total", "Camera lost or back.", &["change"])?,
            deliveries: counters(
                &registry,
                "deliveries_total",
                "Verdicts handed to an output, by output and result.",
                &["output", "result"],
            )?,
            gate_link_up: gauge(
                &registry,
                "gate_link_up",
                "1 while the controller link is up (1 for gates without one).",
            )?,
            health: gauges(
                &registry,
                "health_state",
                "1 for the runtime's health state now, else 0.",
                &["state"],
            )?,
            health_active: gauges(&registry, "health_active", "1 for each fault active now.", &["state"])?,
            stages: {
                let options = HistogramOpts::new(
                    "stage_seconds",
                    "Time of one pipeline stage (per face for per-face stages).",
                )
                .buckets(STAGE_BUCKETS.to_vec());
                let metric = HistogramVec::new(options, &["stage"])?;
                registry.register(Box::new(metric.clone()))?;
                metric
            },
            fleet: std::sync::OnceLock::new(),
            registry,
        };
        for decision in [Decision::Genuine, Decision::Fake, Decision::Uncertain, Decision::NoFace] {
            metrics.verdicts.with_label_values(&[decision.name()]);
        }
        for change in ["lost", "back"] {
            metrics.camera_changes.with_label_values(&[change]);
        }
        for output in ["gate", "relay"] {
            for result in ["ok", "error"] {
                metrics.deliveries.with_label_values(&[output, result]);
            }
        }
        for stage in STAGES {
            metrics.stages.with_label_values(&[stage.name()]);
        }
        metrics.camera_up.set(1);
        metrics.gate_link_up.set(1);
        metrics.health(Health::default());
        Ok(metrics)
    }

    /// What a session event counts.
    pub fn observe(&self, event: &Event) {
        match event {
            Event::Frame { faces, .. } => {
                self.frames.inc();
                self.faces.inc_by(faces.len() as u64);
            }
            Event::Verdict { verdict, .. } => {
                self.verdicts.with_label_values(&[verdict.decision.name()]).inc()
            }
            Event::Error { .. } => self.frame_errors.inc(),
            Event::Camera { up, .. } => {
                self.camera_up.set(i64::from(*up));
                self.camera_changes.with_label_values(&[if *up { "back" } else { "lost" }]).inc();
            }
            Event::GpuLost { .. } => self.gpu_lost.inc(),
        }
    }

    /// A verdict withheld by the failure policy.
    pub fn withheld(&self) {
        self.withheld.inc();
    }

    /// A verdict handed to `output` ("gate" or "relay"), and whether it took it.
    pub fn delivered(&self, output: &str, ok: bool) {
        self.deliveries.with_label_values(&[output, if ok { "ok" } else { "error" }]).inc();
    }

    /// The controller link's state, for gates that have one.
    pub fn gate_link(&self, up: bool) {
        self.gate_link_up.set(i64::from(up));
    }

    /// The health now.
    pub fn health(&self, health: Health) {
        for state in State::ALL {
            self.health.with_label_values(&[state.name()]).set(i64::from(health.state() == state));
            self.health_active.with_label_values(&[state.name()]).set(i64::from(health.is_active(state)));
        }
    }

    /// What records each stage time into its histogram (`StageTimes::observe`): the children are looked up
    /// once here, so observing is an atomic update.
    pub fn stage_observer(&self) -> StageObserver {
        let histograms: Vec<prometheus::Histogram> =
            STAGES.iter().map(|stage| self.stages.with_label_values(&[stage.name()])).collect();
        Box::new(move |stage: Stage, elapsed: Duration| {
            if let Some(histogram) = histograms.get(stage as usize) {
                histogram.observe(elapsed.as_secs_f64());
            }
        })
    }

    /// Reports the fleet output's counters from now on (`deepgate_mqtt_*`), read at each scrape.
    pub fn watch_fleet(&self, source: MqttStatsSource) -> Result<()> {
        let registry = &self.registry;
        let fleet = Fleet {
            published: counter(registry, "mqtt_published_total", "Verdicts published, again too.")?,
            republished: counter(
                registry,
                "mqtt_republished_total",
                "Verdicts published again: after a reconnection, or found in the spool at start.",
            )?,
            acked: counter(registry, "mqtt_acked_total", "Verdicts the broker acknowledged.")?,
            dropped: counter(registry, "mqtt_dropped_total", "Verdicts dropped: spool full.")?,
            connects: counter(registry, "mqtt_connects_total", "Connections the broker accepted.")?,
            failures: counter(registry, "mqtt_failures_total", "Broker connections failed.")?,
            queued: gauge(registry, "mqtt_queued", "Verdicts waiting for the broker.")?,
            link_up: gauge(registry, "mqtt_link_up", "1 while connected to the broker.")?,
            source,
        };
        self.fleet.set(fleet).map_err(|_| anyhow::anyhow!("metrics: the fleet output is watched already"))
    }

    /// Copies the fleet output's counters into the registry's (they only grow, so the difference is added;
    /// the endpoint answers one scrape at a time, so two copies never race).
    fn refresh_fleet(&self) {
        let Some(fleet) = self.fleet.get() else { return };
        let stats = fleet.source.stats();
        for (counter, value) in [
            (&fleet.published, stats.published),
            (&fleet.republished, stats.republished),
            (&fleet.acked, stats.acked),
            (&fleet.dropped, stats.dropped),
            (&fleet.connects, stats.connects),
            (&fleet.failures, stats.failures),
        ] {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        fleet.queued.set(stats.queued as i64);
        fleet.link_up.set(i64::from(fleet.source.connected()));
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Result<String> {
        self.refresh_fleet();
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .context("encoding the metrics")
    }

    /// Serves `GET /metrics` on `address` from a thread until the returned `Server` is dropped.
    pub fn serve(self: &Arc<Self>, address: SocketAddr) -> Result<Server> {
        let listener =
            TcpListener::bind(address).with_context(|| format!("metrics: listening on {address}"))?;
        let address = listener.local_addr().context("metrics: the bound address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (metrics, stopping) = (Arc::clone(self), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for connection in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = connection {
                        if let Err(error) = answer(&metrics, stream) {
                            log::debug!("metrics: {error:#}");
                        }
                    }
                }
            })
            .context("metrics: starting the thread")?;
        log::info!("metrics: http://{address}/metrics");
        Ok(Server { address, stop, thread: Some(thread) })
    }
}

/// The board's metrics, with the endpoint its `[metrics]` section asks for (none when absent).
pub fn start(config: &BoardConfig) -> Result<(Arc<Metrics>, Option<Server>)> {
    let metrics = Arc::new(Metrics::new(&config.board.id)?);
    let server = match &config.metrics {
        Some(section) => Some(metrics.serve(section.address()?)?),
        None => None,
    };
    Ok((metrics, server))
}

/// The longest request read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8192;

/// Reads one request (its head only) and answers it: the metrics for `GET /metrics`, else 404 or 405.
fn answer(metrics: &Metrics, mut stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let read = stream.read(&mut buffer).context("reading the request")?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = head.split(|&byte| byte == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&byte| byte == b' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let (status, content_type, body) = match (method, target) {
        (b"GET", b"/metrics") => ("200 OK", prometheus::TEXT_FORMAT, metrics.render()?),
        (b"GET", _) => ("404 Not Found", "text/plain", "only /metrics is here\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .context("writing the answer")
}

/// The endpoint's thread; dropping it stops the thread.
pub struct Server {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Where it listens (the port chosen when `listen` said port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The thread waits in accept: one connection wakes it to see the flag.
        let woken = TcpStream::connect_timeout(&self.address, Duration::from_millis(500)).is_ok();
        if let Some(thread) = self.thread.take().filter(|_| woken) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_there_from_the_start_and_stage_times_never_stop() {
        let metrics = Metrics::new("host").expect("metrics");
        let mut observer = metrics.stage_observer();
        for _ in 0..10_000 {
            observer(Stage::Frame, Duration::from_millis(3));
        }
        let text = metrics.render().expect("renders");
        assert!(text.contains("deepgate_stage_seconds_count{stage=\"frame\"} 10000"), "{text}");
        assert!(text.contains("deepgate_verdicts_total{decision=\"no_face\"} 0"), "{text}");
        assert!(text.contains("deepgate_health_state{state=\"normal\"} 1"), "{text}");
        assert!(text.contains(&format!("commit=\"{}\"", crate::logs::GIT_COMMIT)), "{text}");
    }
}
