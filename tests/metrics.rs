//! The Prometheus endpoint of a running supervisor, scraped over HTTP and checked by Prometheus' own
//! `promtool check metrics` (Debian's `prometheus` package; `cargo xtask setup` installs it, and CI requires
//! it): the counts match what was played, every stage has its histogram, and `[metrics]` is strict.

mod common;

use common::{skip, Need};
use deepgate::config::BoardConfig;
use deepgate::supervisor::{Outputs, Supervisor};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

/// A board derived from host.toml with `metrics` as its `[metrics]` section.
fn board_with_metrics(metrics: &str) -> std::path::PathBuf {
    let photo = common::fixture("faces/obama.jpg");
    let scene = common::fixture("scenes/coffee.png");
    common::board(None, &[&photo, &scene], &[("metrics", &format!("{{ {metrics} }}"))])
}

/// `GET target` on `address`: the status line and the body.
fn get(address: SocketAddr, target: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("the endpoint accepts");
    write!(stream, "GET {target} HTTP/1.1\r\nHost: kiosk\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The value of the sample named exactly `sample` (with its labels).
fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_running_supervisor_serves_metrics_that_promtool_accepts_and_that_count_what_was_played() {
    let config = BoardConfig::load(&board_with_metrics("listen = \"127.0.0.1:0\"")).expect("board loads");
    let stop = AtomicBool::new(false);
    let outputs = Outputs::open(&config).expect("outputs");
    let mut supervisor = Supervisor::start(&config, outputs, &stop).expect("starts").expect("models valid");
    let address = supervisor.metrics_address().expect("[metrics] configured");
    assert!(address.ip().is_loopback() && address.port() != 0, "{address}");
    supervisor.run().expect("plays");

    let (status, text) = get(address, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    assert_eq!(value(&text, "deepgate_frames_total"), 2.0);
    assert!(value(&text, "deepgate_faces_total") >= 1.0, "the photo has a face");
    let verdicts: f64 = ["genuine", "fake", "uncertain", "no_face"]
        .iter()
        .map(|decision| value(&text, &format!("deepgate_verdicts_total{{decision=\"{decision}\"}}")))
        .sum();
    assert_eq!(verdicts, 2.0, "one verdict per still");
    assert_eq!(value(&text, "deepgate_verdicts_total{decision=\"no_face\"}"), 1.0, "the scene has no face");
    assert_eq!(value(&text, "deepgate_deliveries_total{output=\"gate\",result=\"ok\"}"), 2.0);
    assert_eq!(value(&text, "deepgate_stage_seconds_count{stage=\"frame\"}"), 2.0);
    assert!(value(&text, "deepgate_stage_seconds_count{stage=\"classifier\"}") >= 1.0);
    assert_eq!(value(&text, "deepgate_health_state{state=\"normal\"}"), 1.0);
    assert_eq!(value(&text, "deepgate_camera_up"), 1.0);
    assert!(text.contains("deepgate_build_info{board=\"host\",commit=\""), "{text}");

    let (status, _) = get(address, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    supervisor.finish();

    let promtool = match Command::new("promtool").arg("--version").output() {
        Ok(output) if output.status.success() => "promtool",
        _ => {
            return skip(
                Need::Promtool,
                "no promtool (Debian package `prometheus`; `cargo xtask setup` installs it)",
            )
        }
    };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = check.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

#[test]
fn the_metrics_section_is_strict() {
    let unknown = board_with_metrics("listen = \"127.0.0.1:9464\", port = 9464");
    let error = format!("{:#}", BoardConfig::load(&unknown).unwrap_err());
    assert!(error.contains("unknown field `port`"), "{error}");
    let bad = board_with_metrics("listen = \"localhost\"");
    let error = format!("{:#}", BoardConfig::load(&bad).unwrap_err());
    assert!(error.contains("metrics.listen `localhost`"), "{error}");
    let absent = BoardConfig::load(&common::board(None, &[], &[])).expect("host.toml loads");
    assert!(absent.metrics.is_none(), "no endpoint unless configured");
}
