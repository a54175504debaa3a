//! Whether a newly installed version comes up, within a bound. Two ways: under systemd, `systemctl restart UNIT`
//! (the unit is `Type=notify`, so the restart returns once the runtime sent `READY=1`, or fails), then the unit
//! must be active; without systemd (a bench, the tests), a trial run: the new binary's `deepgate run` started
//! with `NOTIFY_SOCKET` naming a datagram socket this module listens on, exactly as systemd would, and ready when
//! `READY=1` arrives (models loaded and the first frame processed, `src/notify.rs`). The trial run is stopped
//! with SIGTERM once ready: it proves the version starts, it is not the service.

use anyhow::{bail, Context, Result};
use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a readiness check ended.
#[derive(Debug)]
pub enum Outcome {
    /// Ready after this long; the last `STATUS=` the runtime sent, when there was one.
    Ready { after: Duration, status: Option<String> },
    /// Not ready: why, in words (the bound passed, the process ended, systemd said no).
    NotReady(String),
}

/// How long a stopped process gets between SIGTERM and SIGKILL (the unit's `TimeoutStopSec=`).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Log lines of the trial run kept for the report when it fails.
const KEPT_LOG_LINES: usize = 8;

/// Runs `binary run --board BOARD` with a notify socket of ours and waits up to `timeout` for `READY=1`. The
/// site override is `site` when given, none otherwise (never this machine's own when the root is not `/`).
pub fn trial_run(binary: &Path, board: &Path, site: Option<&Path>, timeout: Duration) -> Result<Outcome> {
    let socket_path = socket_path();
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path)
        .with_context(|| format!("binding the notify socket {}", socket_path.display()))?;
    let _remove = RemoveOnDrop(socket_path.clone());
    let mut child = Command::new(binary)
        .args(["run", "--board"])
        .arg(board)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("DEEPGATE_SITE", site.map_or(PathBuf::new(), Path::to_path_buf))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} run --board {}", binary.display(), board.display()))?;
    let log = keep_last_lines(&mut child);
    let started = Instant::now();
    let deadline = started + timeout;
    let mut status = None;
    let mut buffer = [0u8; 4096];
    let outcome = loop {
        // The socket before the process: a runtime that sent READY=1 and then ended is still ready.
        let left = deadline.saturating_duration_since(Instant::now());
        socket
            .set_read_timeout(Some(left.clamp(Duration::from_millis(1), Duration::from_millis(200))))
            .context("notify socket")?;
        if let Ok(length) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..length]);
            for line in message.lines() {
                if let Some(text) = line.strip_prefix("STATUS=") {
                    status = Some(text.to_string());
                }
            }
            if message.lines().any(|line| line == "READY=1") {
                break Outcome::Ready { after: started.elapsed(), status };
            }
            continue;
        }
        if let Some(exit) = child.try_wait().context("waiting for the trial run")? {
            break Outcome::NotReady(format!("it ended ({exit}) without READY=1{}", last_lines(&log)));
        }
        if Instant::now() >= deadline {
            break Outcome::NotReady(format!(
                "no READY=1 within {} s{}",
                timeout.as_secs_f64(),
                last_lines(&log)
            ));
        }
    };
    stop(&mut child);
    Ok(outcome)
}

/// `systemctl restart UNIT`, bounded by `timeout`, then `systemctl is-active UNIT`.
pub fn restart_unit(unit: &str, timeout: Duration) -> Result<Outcome> {
    let started = Instant::now();
    let mut child =
        Command::new("systemctl").args(["restart", unit]).stdin(Stdio::null()).spawn().context(
            "running systemctl (use a trial run, without --restart-unit, where there is no systemd)",
        )?;
    let deadline = started + timeout;
    let exit = loop {
        if let Some(exit) = child.try_wait().context("waiting for systemctl")? {
            break exit;
        }
        if Instant::now() >= deadline {
            stop(&mut child);
            return Ok(Outcome::NotReady(format!(
                "`systemctl restart {unit}` did not return within {} s",
                timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !exit.success() {
        return Ok(Outcome::NotReady(format!(
            "`systemctl restart {unit}` failed ({exit}): `journalctl -u {unit}` says why"
        )));
    }
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .context("running systemctl")?;
    if !active.success() {
        return Ok(Outcome::NotReady(format!("{unit} is not active after its restart")));
    }
    Ok(Outcome::Ready { after: started.elapsed(), status: None })
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`]; reaps the process.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with the pid of our own child, which has not been reaped yet (try_wait said so), so
        // the pid cannot belong to another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A socket name of this process, short enough for `sun_path` wherever the root is.
fn socket_path() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "deepgate-install-{}-{}.sock",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Drains the child's standard error on a thread (a full pipe would block it), keeping its last lines.
fn keep_last_lines(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let kept = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = child.stderr.take() {
        let lines = Arc::clone(&kept);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = lines.lock() {
                    if lines.len() == KEPT_LOG_LINES {
                        lines.remove(0);
                    }
                    lines.push(line);
                }
            }
        });
    }
    kept
}

fn last_lines(log: &Arc<Mutex<Vec<String>>>) -> String {
    // The reader thread may still be taking the last lines of a process that just ended.
    std::thread::sleep(Duration::from_millis(100));
    match log.lock() {
        Ok(lines) if !lines.is_empty() => format!("; its last log lines:\n  {}", lines.join("\n  ")),
        _ => String::new(),
    }
}

/// Refuses a unit name that is not one `systemctl` would take as a plain unit argument.
pub fn check_unit_name(unit: &str) -> Result<()> {
    if unit.is_empty()
        || unit.starts_with('-')
        || !unit.chars().all(|c| c.is_ascii_alphanumeric() || "@._-:\\".contains(c))
    {
        bail!("`{unit}` is not a systemd unit name");
    }
    Ok(())
}
