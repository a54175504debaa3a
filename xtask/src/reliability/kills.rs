//! The kill loop: `deepgate run` replaying the bundled photos as fast as it can (each photo a session, so a
//! verdict every few tens of milliseconds, each one written to the spool and the audit log and synced) with a
//! controller that acknowledges only some verdicts, killed with SIGKILL at a random moment after its first
//! verdict, and started again, N times. Then a last start with every verdict acknowledged drains the spool.
//!
//! Checked after every kill: the audit log verifies (`deepgate audit verify`), or holds only a torn last write
//! that the next start cuts; the next start succeeds (a verdict of a new boot arrives). Checked throughout and at
//! the end: no id carries two verdicts, and no verdict two ids (`controller::Ledger`); ids arrive without gaps
//! (nothing stored is lost: a verdict's id is given out only when it is written to the spool, and lines go out
//! only after that write is synced, so a kill can lose a verdict only before it was stored and reported, and
//! then its id is given again to the next one); everything is acknowledged in the end; every audit receipt
//! belongs to a delivered verdict.

use super::controller::{AckPolicy, Coin, Controller};
use super::{fresh, verify_audit, write_board, Board, Runtime};
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a start may take to deliver its first verdict (models loaded, spool and audit log recovered, on a
/// loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Audit keys: rotation at 64 KiB (every ~100 receipts), so that kills also land during rotations.
const ROTATION: &str = "max_bytes = 65536\nkeep = 1000\n";
/// Every this many kills, a torn write is added to the spool and the audit log (`tear`).
const TEAR_EVERY: usize = 4;
/// The kill comes up to this long after the first verdict of the start.
const KILL_WITHIN: Duration = Duration::from_millis(2000);

pub fn kills(binary: &Path, directory: &Path, rounds: usize) -> Result<()> {
    ensure!(rounds > 0, "--kills must be at least 1");
    fresh(directory)?;
    let state = directory.join("state");
    let audit = state.join("audit.jsonl");
    let controller = Controller::start(AckPolicy::Some(0.5))?;
    let board = write_board(
        directory,
        &Board { audit_keys: ROTATION, frame_rate: 0.0, ..Board::new(controller.port, &state) },
    )?;
    let log = directory.join("deepgate.log");
    let mut coin = Coin::new();
    let mut torn_audits = Vec::new();
    let mut torn_injected = 0;
    let mut start_times = Vec::new();
    let started = Instant::now();
    eprintln!("kills: {rounds} rounds in {}", directory.display());
    for round in 1..=rounds {
        let mut runtime = start(binary, &board, &log, &controller, round)?;
        start_times.push(runtime.1);
        let delay = KILL_WITHIN.mul_f64(coin.uniform());
        std::thread::sleep(delay);
        if let Some(status) = runtime.0.exited()? {
            bail!("round {round}: the runtime ended by itself ({status}); see {}", log.display());
        }
        runtime.0.kill()?;
        // SIGKILL cannot tear a write(2), and each record is one; a power loss can. Every TEAR_EVERY-th kill
        // stands for one: the start of a record is appended to the spool and the audit log.
        if round % TEAR_EVERY == 0 {
            tear(&state.join("gate.spool"), &audit, &mut coin)?;
            torn_injected += 1;
        }
        // The audit log as the kill left it: intact, or with a torn last write (the next start must cut it).
        if let Err(problem) = verify_audit(binary, &audit)? {
            torn_audits.push(format!("round {round}: {problem}"));
        }
        if round % 10 == 0 || round == rounds {
            let ledger = controller.ledger();
            eprintln!(
                "kills: {round}/{rounds} after {:.0} s: {} verdicts, acknowledged to {}, {} sent again",
                started.elapsed().as_secs_f64(),
                ledger.received.len(),
                ledger.acked,
                ledger.repeats
            );
        }
    }
    // The last start: everything acknowledged, so the spool drains; then a clean stop.
    controller.set_policy(AckPolicy::All);
    let (mut runtime, _) = start(binary, &board, &log, &controller, rounds + 1)?;
    std::thread::sleep(Duration::from_secs(2));
    let status = runtime.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "the last start ended with {status} after SIGTERM; see {}", log.display());
    let receipts = match verify_audit(binary, &audit)? {
        Ok(entries) => entries,
        Err(problem) => bail!("the audit log does not verify after a clean stop: {problem}"),
    };
    let text = std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let count = |needle: &str| text.matches(needle).count();
    let ledger = controller.ledger();
    ensure!(ledger.violations.is_empty(), "{}", ledger.violations.join("; "));
    let gaps = ledger.gaps();
    ensure!(gaps.is_empty(), "{} id(s) never delivered, first {:?}", gaps.len(), &gaps[..gaps.len().min(10)]);
    ensure!(
        ledger.acked == ledger.highest(),
        "the spool did not drain: acknowledged to {}, ids up to {}",
        ledger.acked,
        ledger.highest()
    );
    let delivered = ledger.received.len() as u64;
    // A verdict's receipt and its spool record are two writes: a kill between them leaves one without the
    // other, at most one per kill.
    ensure!(
        receipts.abs_diff(delivered) <= rounds as u64,
        "{receipts} audit receipts for {delivered} delivered verdicts after {rounds} kills"
    );
    ensure!(
        ledger.boots.len() == rounds + 1,
        "{} boots delivered verdicts in {} starts",
        ledger.boots.len(),
        rounds + 1
    );
    let (spool_cuts, audit_cuts) = (count("of a write torn by a crash"), count("cut a torn last write"));
    let torn_refused = torn_audits.iter().filter(|problem| !problem.contains("torn")).count();
    let mut times: Vec<f64> = start_times.iter().map(Duration::as_secs_f64).collect();
    times.sort_by(f64::total_cmp);
    let report = format!(
        "kills: {rounds} SIGKILLs in {:.0} s; every start succeeded (first verdict after {:.1} s median, {:.1} s \
         slowest); {delivered} verdicts, ids 1..{} without gaps, none reused, all acknowledged in the end; {} \
         lines sent again after a restart ({} of them already acknowledged: the kill came before the spool \
         dropped them); {receipts} audit receipts (rotated at 64 KiB), chain intact; torn writes added after \
         {torn_injected} kills; after kills the audit log held a torn last write {} time(s) ({torn_refused} not \
         recognised as torn); the runtime cut {spool_cuts} torn spool write(s) and {audit_cuts} torn audit \
         write(s), removed {} unfinished spool rewrite(s)",
        started.elapsed().as_secs_f64(),
        times[times.len() / 2],
        times[times.len() - 1],
        ledger.highest(),
        ledger.repeats,
        ledger.repeats_after_ack,
        torn_audits.len(),
        count("removed an unfinished rewrite"),
    );
    std::fs::write(directory.join("summary.txt"), format!("{report}\n{}\n", torn_audits.join("\n")))?;
    eprintln!("{report}");
    ensure!(
        torn_refused == 0,
        "the audit log was broken, not torn, after a kill: {}",
        torn_audits.join("; ")
    );
    ensure!(
        spool_cuts >= torn_injected && audit_cuts >= torn_injected,
        "{torn_injected} torn writes added, but the runtime cut {spool_cuts} in the spool, {audit_cuts} in the audit log"
    );
    Ok(())
}

/// Starts the runtime and waits for a verdict from its boot: the start succeeded. Returns it and how long that
/// took.
fn start(
    binary: &Path,
    board: &Path,
    log: &Path,
    controller: &Controller,
    round: usize,
) -> Result<(Runtime, Duration)> {
    let boots = controller.ledger().boots.len();
    let began = Instant::now();
    let mut runtime = Runtime::start(binary, board, log, &[])?;
    let deadline = began + START_TIMEOUT;
    while !controller.wait_for(Duration::from_millis(200), |ledger| ledger.boots.len() > boots) {
        if let Some(status) = runtime.exited()? {
            bail!("start {round} failed: the runtime ended with {status}; see {}", log.display());
        }
        if Instant::now() >= deadline {
            bail!("start {round}: no verdict within {START_TIMEOUT:?}; see {}", log.display());
        }
    }
    Ok((runtime, began.elapsed()))
}

/// Appends what a power loss in the middle of a write leaves: to the spool, the first bytes of a record (random
/// bytes: a header whose length or checksum cannot hold); to the audit log, the first part of a line (its last
/// line's beginning, without the newline).
fn tear(spool: &Path, audit: &Path, coin: &mut Coin) -> Result<()> {
    use std::io::Write;
    let append = |path: &Path, bytes: &[u8]| -> Result<()> {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(bytes))
            .with_context(|| format!("tearing {}", path.display()))
    };
    let length = 1 + (coin.uniform() * 40.0) as usize;
    let garbage: Vec<u8> = (0..length).map(|_| (coin.uniform() * 256.0) as u8).collect();
    append(spool, &garbage)?;
    let text = std::fs::read_to_string(audit).unwrap_or_default();
    let last = text.lines().next_back().filter(|line| line.len() > 2).unwrap_or("{\"entry\":{\"sequence\":");
    let cut = 1 + (coin.uniform() * (last.len() - 1) as f64) as usize;
    append(audit, &last.as_bytes()[..cut.min(last.len() - 1)])
}
