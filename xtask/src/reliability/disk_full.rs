//! The state directory full: `deepgate run` with its audit log (and, in the first case, its spool) on a small
//! tmpfs that the harness fills to the last byte while the runtime writes verdicts, then empties again.
//!
//! The policies the runtime states (`[audit] on_failure` in `config.rs`, `health::State`, the TCP gate's
//! "a verdict that cannot be stored is not sent either"):
//! - `on_failure = "fault"` (the default), spool and audit log on the full disk: no verdict goes out without
//!   its receipt, health `audit_failed`; the process keeps running (no crash loop), a start with the disk still
//!   full succeeds; when space returns verdicts go on and health returns to `normal`.
//! - `on_failure = "continue"`, only the audit log on the full disk: verdicts keep being delivered, health
//!   `audit_degraded`, until space returns.
//! - only the spool on the full disk: a verdict that cannot be stored is not sent (and gets no id), health
//!   `delivery_failed`; receipts go on; delivery resumes when space returns.
//!
//! Either way nothing already stored is lost: ids arrive without gaps, none is reused, and the audit log
//! verifies at the end (receipts missing for the full period, the chain unbroken).

use super::controller::{AckPolicy, Controller, Ledger};
use super::{fresh, verify_audit, write_board, Board, Runtime};
use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The tmpfs: room for a few hundred receipts, so that it fills fast and a full one is cheap to make.
const SIZE: &str = "1m";
/// How long the disk stays full in each phase.
const FULL_FOR: Duration = Duration::from_secs(6);
/// How long the runtime may take to notice that space returned (its next verdict).
const RECOVER_WITHIN: Duration = Duration::from_secs(30);

/// A tmpfs mounted at a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path) -> Result<Tmpfs> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SIZE},mode=0755"), "tmpfs"])
            .arg(path)
            .output()
            .context("running mount")?;
        if !output.status.success() {
            bail!(
                "mounting a {SIZE} tmpfs at {} failed (this part needs root, as CI has): {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(error) = Command::new("umount").arg(&self.0).status() {
            eprintln!("disk-full: umount {}: {error}", self.0.display());
        }
    }
}

/// Fills the file system holding `path` with a file of zeros until it refuses a single byte more.
fn fill(path: &Path) -> Result<u64> {
    let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut written = 0u64;
    for size in [65536usize, 4096, 512, 1] {
        let chunk = vec![0u8; size];
        while file.write_all(&chunk).is_ok() {
            written += size as u64;
        }
    }
    Ok(written)
}

/// Waits `duration`, failing if the runtime ends meanwhile.
fn stay_alive(runtime: &mut Runtime, duration: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if let Some(status) = runtime.exited()? {
            bail!("{what}: the runtime ended ({status}); see {}", runtime.log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits for a verdict of the newest boot and the health `normal`.
fn wait_recovered(controller: &Controller, runtime: &mut Runtime, what: &str) -> Result<Duration> {
    let began = Instant::now();
    let highest = controller.ledger().highest();
    while !controller.wait_for(Duration::from_millis(200), |ledger| {
        ledger.highest() > highest && ledger.health.as_deref() == Some("normal")
    }) {
        if let Some(status) = runtime.exited()? {
            bail!("{what}: the runtime ended ({status}); see {}", runtime.log.display());
        }
        if began.elapsed() > RECOVER_WITHIN {
            let ledger = controller.ledger();
            bail!(
                "{what}: no new verdict with health normal within {RECOVER_WITHIN:?} (health {:?}); see {}",
                ledger.health,
                runtime.log.display()
            );
        }
    }
    Ok(began.elapsed())
}

/// The case's outcome, one line for the report.
/// What is on the full disk, and with which `[audit] on_failure`.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    /// Spool and audit log, `on_failure = "fault"`.
    Fault,
    /// The audit log, `on_failure = "continue"`.
    Continue,
    /// The spool (the audit log on the roomy disk).
    Spool,
}

fn case(binary: &Path, directory: &Path, case: Case) -> Result<String> {
    let (name, policy, expected) = match case {
        Case::Fault => ("fault", "fault", "audit_failed"),
        Case::Continue => ("continue", "continue", "audit_degraded"),
        Case::Spool => ("spool", "fault", "delivery_failed"),
    };
    let directory = directory.join(name);
    fresh(&directory)?;
    let full = directory.join("full");
    std::fs::create_dir_all(&full)?;
    let tmpfs = Tmpfs::mount(&full)?;
    let roomy = directory.join("state");
    let (spool, audit) = match case {
        Case::Fault => (&full, &full),
        Case::Continue => (&roomy, &full),
        Case::Spool => (&full, &roomy),
    };
    let controller = Controller::start(AckPolicy::All)?;
    let board = write_board(
        &directory,
        &Board {
            audit,
            audit_keys: &format!("on_failure = \"{policy}\"\n"),
            ..Board::new(controller.port, spool)
        },
    )?;
    let log = directory.join("deepgate.log");
    let mut runtime = Runtime::start(binary, &board, &log, &[])?;
    ensure!(
        controller.wait_for(Duration::from_secs(60), |ledger| !ledger.received.is_empty()),
        "{name}: no verdict within 60 s of the start; see {}",
        log.display()
    );
    let filled = fill(&full.join("filler"))?;
    // Verdicts already stored may still be on their way; after a second, only the policy speaks.
    stay_alive(&mut runtime, Duration::from_secs(1), "disk full")?;
    let before = controller.ledger().received.len();
    stay_alive(&mut runtime, FULL_FOR, "disk full")?;
    let during = controller.ledger().received.len() - before;
    let health_full = controller.ledger().health.clone().unwrap_or_default();
    ensure!(
        controller.ledger().health_states.iter().any(|state| state == expected),
        "{name}: the controller never heard health {expected} while the disk was full (heard {:?})",
        controller.ledger().health_states
    );
    if case != Case::Continue {
        ensure!(during == 0, "{name}: {during} verdicts went out while they could not be recorded");
    } else {
        ensure!(during > 0, "{name}: no verdict went out while only the audit log's disk was full");
    }
    // A restart with the disk still full (systemd's Restart=always after a crash): it must come up and stay.
    runtime.kill()?;
    // What the controller hears from here on is the new start's health.
    controller.ledger().health = None;
    let mut runtime = Runtime::start(binary, &board, &log, &[])?;
    stay_alive(&mut runtime, FULL_FOR, "a start on a full disk")?;
    let health_restart = controller.ledger().health.clone().unwrap_or_default();
    ensure!(
        health_restart == expected,
        "{name}: after a start on the full disk the controller heard health {health_restart:?}, not {expected}"
    );
    std::fs::remove_file(full.join("filler"))?;
    let recovered = wait_recovered(&controller, &mut runtime, "after space returned")?;
    stay_alive(&mut runtime, Duration::from_secs(2), "after space returned")?;
    let status = runtime.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "{name}: ended with {status} after SIGTERM; see {}", log.display());
    let receipts = verify_audit(binary, &audit.join("audit.jsonl"))?
        .map_err(|problem| anyhow::anyhow!("{name}: the audit log does not verify: {problem}"))?;
    drop(runtime);
    drop(tmpfs);
    let ledger = controller.ledger();
    check_ledger(&ledger, name)?;
    Ok(format!(
        "{name}: {SIZE} tmpfs filled ({filled} bytes of filler): health {health_full}, {during} verdicts delivered \
         in the {FULL_FOR:?} full; a start on the full disk stayed up (health {health_restart}); verdicts and \
         health normal {:.2} s after space returned; {} verdicts in all, ids without gaps or reuse; {receipts} \
         audit receipts, chain intact",
        recovered.as_secs_f64(),
        ledger.received.len()
    ))
}

fn check_ledger(ledger: &Ledger, name: &str) -> Result<()> {
    ensure!(ledger.violations.is_empty(), "{name}: {}", ledger.violations.join("; "));
    let gaps = ledger.gaps();
    ensure!(
        gaps.is_empty(),
        "{name}: {} id(s) never delivered, first {:?}",
        gaps.len(),
        &gaps[..gaps.len().min(10)]
    );
    Ok(())
}

pub fn disk_full(binary: &Path, directory: &Path) -> Result<()> {
    let mut report = Vec::new();
    for which in [Case::Fault, Case::Continue, Case::Spool] {
        report.push(case(binary, directory, which)?);
        eprintln!("disk-full {}", report.last().map_or("", String::as_str));
    }
    std::fs::write(directory.join("summary.txt"), report.join("\n") + "\n")?;
    Ok(())
}
