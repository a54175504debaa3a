//! The fleet output against a real broker that no one here wrote: Debian's Mosquitto, started by each test on
//! its own ports with a generated configuration (persistence on) in a temporary directory. Subscribers are a
//! rumqttc client with a persistent session (the way a fleet's back office listens) and, for the retained
//! messages, Mosquitto's own `mosquitto_sub`. Network loss is a TCP relay between kiosk and broker that the
//! test cuts or silences; TLS certificates are made at test time with rcgen.

mod common;
#[path = "mqtt/harness.rs"]
mod harness;

use deepgate::decide::Decision;
use deepgate::gate::mqtt::{MqttGate, TlsFiles};
use deepgate::gate::{Gate, VerdictMessage};
use deepgate::health::{Event as HealthEvent, Monitor, OverloadPolicy};
use harness::*;
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[test]
fn verdicts_arrive_in_order_with_qos_1_signed_health_and_status_retained() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("order");
    let broker = Broker::start(&directory, None);
    let subscriber = Subscriber::start(broker.port, "back-office-order", "deepgate/order/+/#");
    let mut gate = MqttGate::start(settings(broker.port, "order", &directory.join("mqtt.spool"))).unwrap();
    let mut monitor = Monitor::new(OverloadPolicy { budget_ms: 100.0, window: 3 });
    gate.set_health(monitor.observe(HealthEvent::CameraLost).unwrap());
    for index in 1..=20 {
        report(&mut gate, index);
    }
    gate.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| verdicts(messages).len() >= 20);
    let verdicts = verdicts(&messages);
    let ids: Vec<u64> = verdicts.iter().map(|message| message.json()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>(), "in order, each once");
    for (index, message) in verdicts.iter().enumerate() {
        assert_eq!(message.topic, "deepgate/order/kiosk-7/verdict");
        assert_eq!((message.qos, message.retain), (QoS::AtLeastOnce, false));
        let value = message.json();
        assert_eq!(value["board"], "kiosk-7");
        assert_eq!(value["seq"].as_u64(), Some(index as u64 + 1));
        assert_eq!(value["reason"], format!("verdict {}", index + 1));
        assert!(signature_valid(&message.payload), "{}", String::from_utf8_lossy(&message.payload));
    }
    let stats = gate.stats();
    assert_eq!(
        (stats.published, stats.acked, stats.queued, stats.connects, stats.unpaired),
        (20, 20, 0, 1, 0),
        "{stats:?}"
    );
    // A back office that arrives now learns the kiosk's state from the retained messages.
    assert_eq!(retained(broker.port, "deepgate/order/kiosk-7/status").as_deref(), Some("online"));
    let health: Value = serde_json::from_str(
        &retained(broker.port, "deepgate/order/kiosk-7/health").expect("retained health"),
    )
    .unwrap();
    assert_eq!(
        (health["state"].as_str(), health["can_decide"].as_bool()),
        (Some("camera_lost"), Some(false))
    );
    // A clean stop says offline itself.
    drop(gate);
    assert_eq!(retained(broker.port, "deepgate/order/kiosk-7/status").as_deref(), Some("offline"));
}

#[test]
fn a_broker_restart_while_verdicts_flow_loses_none() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("restart");
    let mut broker = Broker::start(&directory, None);
    let subscriber = Subscriber::start(broker.port, "back-office-restart", "deepgate/restart/+/verdict");
    let mut gate = MqttGate::start(settings(broker.port, "restart", &directory.join("mqtt.spool"))).unwrap();
    let mut slowest = Duration::ZERO;
    for index in 1..=150 {
        if index == 50 {
            broker.stop();
        }
        if index == 100 {
            broker.run();
        }
        slowest = slowest.max(report(&mut gate, index));
        std::thread::sleep(Duration::from_millis(10));
    }
    gate.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| distinct_ids(messages).0.len() >= 150);
    let (ids, duplicates) = distinct_ids(&messages);
    assert_eq!(ids, (1..=150).collect::<BTreeSet<_>>(), "none lost");
    let stats = gate.stats();
    assert_eq!(stats.unpaired, 0, "{stats:?}");
    eprintln!("broker restart: {duplicates} duplicate(s) before de-duplication; slowest report {slowest:?}; {stats:?}");
    assert!(stats.connects >= 2 && stats.failures >= 1, "{stats:?}");
    assert_eq!((stats.acked, stats.queued, stats.dropped), (150, 0, 0));
    // Duplicates only from PUBACKs lost with the broker, at most a window's worth.
    assert!(duplicates <= deepgate::gate::mqtt::WINDOW, "{duplicates} duplicates");
    assert!(slowest < Duration::from_millis(500), "a report waited {slowest:?} for the network");
}

#[test]
fn a_lost_network_makes_the_broker_say_offline_and_loses_nothing() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("network");
    let broker = Broker::start(&directory, None);
    let relay = Relay::start(broker.port);
    let subscriber = Subscriber::start(broker.port, "back-office-network", "deepgate/network/+/#");
    let mut gate = MqttGate::start(settings(relay.port, "network", &directory.join("mqtt.spool"))).unwrap();
    wait_for("the kiosk's connection", || gate.link_up() == Some(true));
    for index in 1..=10 {
        report(&mut gate, index);
    }
    relay.refuse.store(true, Ordering::Relaxed);
    relay.cut();
    // The kiosk is cut off: verdicts wait in its spool; the broker publishes the last will.
    for index in 11..=20 {
        report(&mut gate, index);
    }
    let statuses = |messages: &[Message]| -> Vec<String> {
        messages
            .iter()
            .filter(|message| message.topic.ends_with("/status"))
            .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
            .collect()
    };
    let before = subscriber.collect_until(|messages| statuses(messages).contains(&"offline".to_owned()));
    wait_for("the kiosk to notice", || gate.link_up() == Some(false));
    relay.refuse.store(false, Ordering::Relaxed);
    gate.flush(PATIENCE).unwrap();
    let after = subscriber.collect_until(|messages| {
        distinct_ids(&[before.as_slice(), messages].concat()).0.len() >= 20
            && statuses(messages).contains(&"online".to_owned())
    });
    let all = [before.as_slice(), after.as_slice()].concat();
    let (ids, duplicates) = distinct_ids(&all);
    assert_eq!(ids, (1..=20).collect::<BTreeSet<_>>());
    let seen = statuses(&all);
    let offline = seen.iter().position(|status| status == "offline").unwrap();
    assert_eq!(seen[offline + 1..].first().map(String::as_str), Some("online"), "{seen:?}");
    let stats = gate.stats();
    eprintln!("network loss: {duplicates} duplicate(s), statuses {seen:?}, {stats:?}");
    assert_eq!((stats.unpaired, stats.acked, stats.queued), (0, 20, 0), "{stats:?}");
}

#[test]
fn a_silent_network_is_noticed_by_keep_alive_on_both_sides_and_loses_nothing() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("silent");
    let broker = Broker::start(&directory, None);
    let relay = Relay::start(broker.port);
    let subscriber = Subscriber::start(broker.port, "back-office-silent", "deepgate/silent/+/#");
    let mut settings = settings(relay.port, "silent", &directory.join("mqtt.spool"));
    // rumqttc's shortest: the broker gives up after 1.5 s of silence, the kiosk after two unanswered pings.
    settings.keep_alive = Duration::from_secs(1);
    let mut gate = MqttGate::start(settings).unwrap();
    wait_for("the kiosk's connection", || gate.link_up() == Some(true));
    report(&mut gate, 1);
    gate.flush(PATIENCE).unwrap();
    relay.silence();
    let silenced = Instant::now();
    for index in 2..=6 {
        report(&mut gate, index);
    }
    let messages = subscriber.collect_until(|messages| {
        messages.iter().any(|message| message.topic.ends_with("/status") && message.payload == b"offline")
    });
    let offline_after = silenced.elapsed();
    gate.flush(PATIENCE).unwrap();
    let earlier = distinct_ids(&messages).0;
    let rest = subscriber.collect_until(|more| earlier.union(&distinct_ids(more).0).count() >= 6);
    let all = [messages.as_slice(), rest.as_slice()].concat();
    assert_eq!(distinct_ids(&all).0, (1..=6).collect::<BTreeSet<_>>());
    let stats = gate.stats();
    eprintln!("silent network: offline after {offline_after:?}; {stats:?}");
    assert!(offline_after < Duration::from_secs(10), "{offline_after:?}");
    assert_eq!((stats.acked, stats.queued, stats.unpaired), (6, 0, 0), "{stats:?}");
    assert!(stats.connects >= 2, "{stats:?}");
}

#[test]
fn a_restarted_kiosk_publishes_what_its_spool_still_holds() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("kiosk-restart");
    let broker = Broker::start(&directory, None);
    let relay = Relay::start(broker.port);
    relay.refuse.store(true, Ordering::Relaxed);
    let subscriber = Subscriber::start(broker.port, "back-office-kiosk", "deepgate/kiosk/+/verdict");
    let spool = directory.join("mqtt.spool");
    // The first run cannot reach the broker; it stops with five verdicts in its spool.
    let mut first = MqttGate::start(settings(relay.port, "kiosk", &spool)).unwrap();
    for index in 1..=5 {
        report(&mut first, index);
    }
    assert!(first.flush(Duration::from_millis(300)).is_err());
    let boot = |message: &Message| message.json()["boot"].as_str().unwrap().to_owned();
    drop(first);
    relay.refuse.store(false, Ordering::Relaxed);
    let mut second = MqttGate::start(settings(relay.port, "kiosk", &spool)).unwrap();
    assert_eq!(second.recovered(), 5);
    report(&mut second, 6);
    second.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| distinct_ids(messages).0.len() >= 6);
    let verdicts = verdicts(&messages);
    let ids: Vec<u64> = verdicts.iter().map(|message| message.json()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    // The first five keep the first run's boot and seq, and go out expired: they were made by an earlier
    // start.
    assert!(verdicts[..5]
        .iter()
        .all(|message| boot(message) == boot(verdicts[0]) && message.json()["expired"] == true));
    assert_ne!(boot(verdicts[5]), boot(verdicts[0]));
    assert_eq!(verdicts[5].json()["seq"].as_u64(), Some(1));
    let stats = second.stats();
    assert_eq!((stats.published, stats.republished, stats.acked, stats.unpaired), (6, 5, 6, 0), "{stats:?}");
}

#[test]
fn a_slow_subscriber_does_not_stall_the_kiosk() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("slow");
    let broker = Broker::start(&directory, None);
    // A subscriber that stops reading once subscribed: it never acknowledges, so the broker's in-flight
    // window for it (20) and its queue (max_queued_messages 100) fill, and the broker drops the rest for it.
    let mut options = MqttOptions::new("slow", "127.0.0.1", broker.port);
    options.set_clean_session(false);
    let (slow, mut slow_connection) = Client::new(options, 8);
    slow.subscribe("deepgate/slow/+/verdict", QoS::AtLeastOnce).unwrap();
    for event in slow_connection.iter() {
        if let Ok(Event::Incoming(Incoming::SubAck(_))) = event {
            break;
        }
    }
    let subscriber = Subscriber::start(broker.port, "back-office-slow", "deepgate/slow/+/verdict");
    let mut gate = MqttGate::start(settings(broker.port, "slow", &directory.join("mqtt.spool"))).unwrap();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for index in 1..=300 {
        slowest = slowest.max(report(&mut gate, index));
    }
    gate.flush(PATIENCE).unwrap();
    let elapsed = started.elapsed();
    let messages = subscriber.collect_until(|messages| distinct_ids(messages).0.len() >= 300);
    assert_eq!(distinct_ids(&messages).0.len(), 300);
    // The slow subscriber, read again: it got far from everything, and the kiosk never waited for it.
    let mut slow_got = 0;
    while let Ok(event) = slow_connection.recv_timeout(Duration::from_millis(500)) {
        slow_got += usize::from(matches!(event, Ok(Event::Incoming(Incoming::Publish(_)))));
    }
    assert!(slow_got < 300, "the slow subscriber got {slow_got}");
    eprintln!("slow subscriber: 300 verdicts acknowledged in {elapsed:?}; slowest report {slowest:?}; the slow one got {slow_got}");
    assert!(slowest < Duration::from_millis(500), "a report waited {slowest:?}");
    assert!(elapsed < Duration::from_secs(15), "the kiosk took {elapsed:?}");
}

#[test]
fn tls_with_a_device_certificate_is_accepted_and_a_wrong_ca_or_no_certificate_refused() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("tls");
    let site_ca = authority("site CA");
    let other_ca = authority("another CA");
    let ca_path = directory.join("ca.crt");
    std::fs::write(&ca_path, site_ca.certificate.pem()).unwrap();
    let other_ca_path = directory.join("other-ca.crt");
    std::fs::write(&other_ca_path, other_ca.certificate.pem()).unwrap();
    let (broker_certificate, broker_key) = issue(&directory, "broker", &site_ca, "localhost");
    let device = issue(&directory, "kiosk-7", &site_ca, "kiosk-7");
    let tls_port = free_port();
    let tls_lines = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n",
        ca_path.display(),
        broker_certificate.display(),
        broker_key.display()
    );
    let broker = Broker::start(&directory, Some((tls_port, &tls_lines)));
    let subscriber = Subscriber::start(broker.port, "back-office-tls", "deepgate/tls/+/verdict");
    let tls_settings = |ca: &Path, identity: Option<(PathBuf, PathBuf)>, spool: &str| {
        let mut settings = settings(tls_port, "tls", &directory.join(spool));
        settings.host = "localhost".into();
        settings.tls = Some(TlsFiles { ca: ca.to_path_buf(), identity });
        settings
    };
    let mut good = MqttGate::start(tls_settings(&ca_path, Some(device.clone()), "good.spool")).unwrap();
    report(&mut good, 1);
    good.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| !messages.is_empty());
    assert_eq!(messages[0].json()["reason"], "verdict 1");
    // Another CA: the kiosk refuses the broker. No client certificate: the broker refuses the kiosk.
    let mut wrong_ca = MqttGate::start(tls_settings(&other_ca_path, Some(device), "wrong-ca.spool")).unwrap();
    let mut anonymous = MqttGate::start(tls_settings(&ca_path, None, "anonymous.spool")).unwrap();
    report(&mut wrong_ca, 2);
    report(&mut anonymous, 3);
    wait_for("failed attempts", || wrong_ca.stats().failures >= 2 && anonymous.stats().failures >= 2);
    for gate in [&wrong_ca, &anonymous] {
        let stats = gate.stats();
        assert_eq!((stats.connects, stats.acked, stats.queued), (0, 0, 1), "{stats:?}");
        assert_eq!(gate.link_up(), Some(false));
    }
    assert!(subscriber.messages.recv_timeout(Duration::from_millis(500)).is_err(), "nothing else arrived");
    assert_eq!(good.stats().acked, 1);
}

#[test]
fn a_board_with_an_mqtt_section_reports_to_the_broker_beside_its_door_gate() {
    if !mosquitto_present() {
        return;
    }
    let directory = scratch("board");
    let broker = Broker::start(&directory, None);
    let subscriber = Subscriber::start(broker.port, "back-office-board", "deepgate/board-site/+/#");
    let spool = directory.join("mqtt.spool");
    let section = format!(
        "{{ broker = \"127.0.0.1:{}\", site = \"board-site\", queue = 16, spool = \"{}\", insecure = true }}",
        broker.port,
        spool.display()
    );
    let board = common::board(None, &[], &[("mqtt", &section)]);
    let config = deepgate::config::BoardConfig::load(&board).unwrap();
    let mut outputs = deepgate::supervisor::Outputs::open(&config).unwrap();
    assert!(outputs.gate.describe().starts_with("stdout + mqtt 127.0.0.1:"), "{}", outputs.gate.describe());
    let (source, reason) = ("camera-0", "from the board");
    let message = VerdictMessage { reason, ..VerdictMessage::sample(source, Decision::Genuine) };
    outputs.gate.report(&message).unwrap();
    outputs.gate.flush(PATIENCE).unwrap();
    let messages = subscriber.collect_until(|messages| !verdicts(messages).is_empty());
    let verdict = verdicts(&messages)[0].json();
    assert_eq!(verdicts(&messages)[0].topic, format!("deepgate/board-site/{}/verdict", config.board.id));
    assert_eq!(
        (verdict["board"].as_str(), verdict["reason"].as_str()),
        (Some(config.board.id.as_str()), Some(reason))
    );
    assert!(verdict["model_sha256"].is_string() == config.models.classifier.is_some(), "{verdict}");
    // The metrics endpoint reads the fleet output's counters at each scrape.
    let metrics = deepgate::metrics::Metrics::new(&config.board.id).unwrap();
    metrics.watch_fleet(outputs.gate.fleet().expect("the fleet output beside the gate")).unwrap();
    let text = metrics.render().unwrap();
    for line in ["deepgate_mqtt_published_total 1", "deepgate_mqtt_acked_total 1", "deepgate_mqtt_queued 0"] {
        assert!(text.lines().any(|metric| metric == line), "{line} missing from\n{text}");
    }
    assert!(text.lines().any(|metric| metric == "deepgate_mqtt_link_up 1"), "{text}");
    // And Prometheus' own checker accepts them where it is installed (tests/metrics.rs requires it in CI).
    if let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = promtool.wait_with_output().unwrap();
        assert!(output.status.success(), "promtool: {}", String::from_utf8_lossy(&output.stdout));
    }
}
