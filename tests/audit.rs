//! The audit log as `deepgate run` keeps it (issue 17, point 3): a torn last write cut and counted at the next
//! start, a disk that refuses writes handled by `[audit] on_failure` and shown to the controller as health,
//! rotation with the chain carried across files and `deepgate audit verify` following it, the chain head
//! reported to the controller (stdout and TCP gates). The binary runs as a subprocess on a replay board.

mod common;

use deepgate::gate::tcp::{TcpGate, TcpGateSettings};
use deepgate::gate::{Gate, Line};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A replay board with the stdout gate and `[audit]` as `audit` (an inline table, `path` added), playing
/// `inputs` replay images (a face and a scene, in turn): one verdict each.
fn board(directory: &Path, audit: &str, inputs: usize) -> PathBuf {
    let images = [common::fixture("faces/obama.jpg"), common::fixture("scenes/coffee.png")];
    let paths: Vec<&Path> = (0..inputs).map(|index| images[index % 2].as_path()).collect();
    let log = directory.join("audit.jsonl");
    let section = format!("{{ path = {:?}, {audit} }}", common::text(&log));
    common::board(None, &paths, &[("audit", &section)])
}

/// `deepgate run --board BOARD`; with `file_size_limit`, under that RLIMIT_FSIZE (SIGXFSZ ignored, so that a
/// write beyond it fails with EFBIG as a full disk fails with ENOSPC).
fn run(board: &Path, file_size_limit: Option<u64>) -> Output {
    let mut command = Command::new(common::exe());
    command.args(["run", "--board", common::text(board)]).current_dir(common::root()).env("RUST_LOG", "warn");
    if let Some(limit) = file_size_limit {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command.output().expect("the deepgate binary runs")
}

/// The JSON lines on stdout.
fn stdout_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}")))
        .collect()
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["type"] == kind).collect()
}

/// `deepgate audit verify FILE`: exit status and stderr.
fn verify(log: &Path) -> (i32, String) {
    let output = common::deepgate(&["audit", "verify", common::text(log)]);
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_torn_last_write_is_cut_at_the_next_start_counted_and_reported_in_the_chain_head() {
    let directory = common::temp_dir("audit-torn");
    let board = board(&directory, "head_interval_s = 60", 2);
    let log = directory.join("audit.jsonl");
    let first = run(&board, None);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let heads = stdout_lines(&first);
    let head = of_type(&heads, "audit_head");
    assert_eq!(head.len(), 1, "one head at start (the interval is a minute): {heads:#?}");
    assert_eq!((head[0]["sequence"].clone(), head[0]["torn_bytes"].as_u64()), (Value::Null, Some(0)));
    let intact = std::fs::read(&log).unwrap();
    assert_eq!(intact.iter().filter(|&&byte| byte == b'\n').count(), 2, "one receipt per verdict");

    // Power lost in the middle of a third receipt: every later start used to refuse the log.
    let torn = br#"{"entry":{"sequence":2,"previous":"ab"#;
    std::fs::write(&log, [&intact[..], &torn[..]].concat()).unwrap();
    let (status, stderr) = verify(&log);
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("torn last write"), "{stderr}");

    let second = run(&board, None);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("cut a torn last write"), "{stderr}");
    let lines = stdout_lines(&second);
    let head = of_type(&lines, "audit_head");
    assert_eq!(head[0]["torn_bytes"].as_u64(), Some(torn.len() as u64), "{lines:#?}");
    assert_eq!(head[0]["sequence"].as_u64(), Some(1), "the head at start: the last whole entry");
    let (status, stderr) = verify(&log);
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains("4 entries"), "{stderr}");
}

#[test]
fn a_disk_that_refuses_receipts_stops_verdicts_under_fault_and_not_under_continue() {
    let directory = common::temp_dir("audit-full");
    let log = directory.join("audit.jsonl");
    // One run fills the log with two receipts; then the file may not grow (RLIMIT_FSIZE at its size).
    for (policy, verdicts, state, can_decide) in
        [("fault", 0, "audit_failed", false), ("continue", 2, "audit_degraded", true)]
    {
        let _ = std::fs::remove_file(&log);
        let board = board(&directory, &format!("on_failure = {policy:?}"), 2);
        assert!(run(&board, None).status.success());
        let before = std::fs::read(&log).unwrap();
        let output = run(&board, Some(before.len() as u64));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines = stdout_lines(&output);
        assert_eq!(of_type(&lines, "verdict").len(), verdicts, "{policy}: {lines:#?}\n{stderr}");
        let health = of_type(&lines, "health");
        assert!(!health.is_empty(), "{policy}: the controller is told: {lines:#?}");
        assert_eq!(health[0]["state"], state, "{policy}: {lines:#?}");
        assert_eq!(health[0]["can_decide"].as_bool(), Some(can_decide), "{policy}: {lines:#?}");
        assert!(stderr.contains("File too large"), "{policy}: the write error is logged: {stderr}");
        if policy == "fault" {
            assert!(stderr.contains("verdict withheld"), "{stderr}");
        }
        // The head the controller got after the failure says so, and names the last entry written.
        let heads = of_type(&lines, "audit_head");
        let last = heads.last().expect("a head after the failure");
        assert_eq!(
            (last["failing"].as_bool(), last["sequence"].as_u64()),
            (Some(true), Some(1)),
            "{heads:#?}"
        );
        assert_eq!(std::fs::read(&log).unwrap(), before, "{policy}: nothing half-written is left in the log");
        // Room again: the next start goes on from the same chain.
        let output = run(&board, None);
        assert!(output.status.success());
        assert_eq!(of_type(&stdout_lines(&output), "verdict").len(), 2);
        let (status, stderr) = verify(&log);
        assert_eq!(status, 0, "{policy}: {stderr}");
        assert!(stderr.contains("4 entries"), "{policy}: {stderr}");
    }
}

#[test]
fn rotation_carries_the_chain_across_files_and_verify_follows_it_and_finds_a_tampered_one() {
    let directory = common::temp_dir("audit-rotation");
    let board = board(&directory, "max_bytes = 4096, keep = 2", 12);
    let output = run(&board, None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let log = directory.join("audit.jsonl");
    let rotated = |n: u32| directory.join(format!("audit.jsonl.{n}"));
    assert!(rotated(1).exists() && rotated(2).exists(), "rotated twice at least");
    assert!(!rotated(3).exists(), "keep = 2");
    let (status, stderr) = verify(&log);
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains("in 3 file(s)"), "{stderr}");

    let text = std::fs::read_to_string(rotated(1)).unwrap();
    std::fs::write(rotated(1), text.replacen("\"time_ms\":", "\"time_ms\":1", 1)).unwrap();
    let (status, stderr) = verify(&log);
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("audit.jsonl.1 line 1") && stderr.contains("hash mismatch"), "{stderr}");
    // The runtime refuses to append to a chain that does not verify.
    let output = run(&board, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not verify"), "{stderr}");
    assert!(output.stdout.is_empty(), "no verdict without its receipt");
}

#[test]
fn the_tcp_gate_sends_the_chain_head_to_the_controller() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let spool = common::temp_dir("audit-head-tcp").join("gate.spool");
    let mut gate = TcpGate::start(TcpGateSettings::new(&address, &spool, 16)).unwrap();
    let mut line = Line::new();
    line.extend_from_slice(br#"{"type":"audit_head","board":"kiosk-1","sequence":41,"hash":"ab"}"#).unwrap();
    gate.audit_head(&line);
    let (connection, _) = listener.accept().unwrap();
    connection.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(connection);
    let mut received = String::new();
    reader.read_line(&mut received).unwrap();
    let head: Value = serde_json::from_str(&received).unwrap();
    assert_eq!((head["type"].as_str(), head["sequence"].as_u64()), (Some("audit_head"), Some(41)));
    // A newer head replaces it and goes out on the same connection.
    line.clear();
    line.extend_from_slice(br#"{"type":"audit_head","board":"kiosk-1","sequence":42,"hash":"cd"}"#).unwrap();
    gate.audit_head(&line);
    received.clear();
    reader.read_line(&mut received).unwrap();
    let head: Value = serde_json::from_str(&received).unwrap();
    assert_eq!(head["sequence"].as_u64(), Some(42));
    assert!(gate.worker_alive(), "the connection thread runs");
}
