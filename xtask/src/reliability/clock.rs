//! Wall-clock jumps: `deepgate run` under libfaketime (Debian's `faketime`), whose offset file the harness
//! rewrites while the runtime runs: now, an hour ahead, an hour behind, now again. The monotonic clock is left
//! alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`), as a real NTP step or an RTC reset leaves it.
//!
//! Checked: the jumps took effect (the verdict lines' `wall_ms` follows them) while `mono_ms` never went back;
//! verdicts keep coming in every phase, and each photo gets the same decision and score in every phase (the
//! decisions do not read the wall clock); no verdict goes out expired (`max_age` is measured on the monotonic
//! clock); the acknowledgement time-out does not fire on a jump (one connection, except the one the harness
//! cuts an hour in the past, after which the gate reconnects within its back-off, not an hour later); the
//! audit log verifies though its receipts' `time_ms` went back, as the wall clock did.

use super::controller::{AckPolicy, Controller, Received};
use super::{fresh, verify_audit, write_board, Board, Runtime};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Debian's libfaketime (package `faketime`), the variant for multi-threaded programs, in this machine's
/// multiarch directory.
fn libfaketime() -> String {
    format!("/usr/lib/{}-linux-gnu/faketime/libfaketimeMT.so.1", std::env::consts::ARCH)
}
/// The phases: the offset written to the timestamp file, in seconds, and its name.
const PHASES: [(i64, &str); 4] =
    [(0, "now"), (3600, "an hour ahead"), (-3600, "an hour behind"), (0, "now again")];
const PHASE_LENGTH: Duration = Duration::from_secs(8);
/// libfaketime reads the offset file at most once a second; verdicts of a phase's first moments are not used.
const SETTLE: Duration = Duration::from_millis(2500);

pub fn clock(binary: &Path, directory: &Path) -> Result<()> {
    let library = libfaketime();
    ensure!(
        Path::new(&library).exists(),
        "{library} is missing: install Debian's `faketime` (cargo xtask setup does)"
    );
    fresh(directory)?;
    let state = directory.join("state");
    let offset_file = directory.join("faketime.rc");
    std::fs::write(&offset_file, "+0\n")?;
    let controller = Controller::start(AckPolicy::All)?;
    let board = write_board(directory, &Board::new(controller.port, &state))?;
    let offset_text = offset_file.to_string_lossy().into_owned();
    let environment = [
        ("LD_PRELOAD", library.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", offset_text.as_str()),
        ("FAKETIME_CACHE_DURATION", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let log = directory.join("deepgate.log");
    let mut runtime = Runtime::start(binary, &board, &log, &environment)?;
    ensure!(
        controller.wait_for(Duration::from_secs(60), |ledger| !ledger.received.is_empty()),
        "no verdict within 60 s of the start; see {}",
        log.display()
    );
    // Per phase: the ids that arrived after it settled, and the reconnection time when the harness cut the link.
    let mut phases = Vec::new();
    let mut reconnect = None;
    for (index, &(offset, name)) in PHASES.iter().enumerate() {
        std::fs::write(&offset_file, format!("{offset:+}\n"))?;
        std::thread::sleep(SETTLE);
        let first = controller.ledger().highest() + 1;
        if index == 2 {
            let connections = controller.ledger().connections;
            let cut = Instant::now();
            controller.disconnect();
            if !controller.wait_for(Duration::from_secs(30), |ledger| ledger.connections > connections) {
                bail!("the gate did not reconnect within 30 s of a cut with the wall clock an hour behind");
            }
            reconnect = Some(cut.elapsed());
        }
        std::thread::sleep(PHASE_LENGTH - SETTLE);
        if let Some(status) = runtime.exited()? {
            bail!("the runtime ended ({status}) with the clock {name}; see {}", log.display());
        }
        phases.push((offset, name, first..=controller.ledger().highest()));
    }
    let status = runtime.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "ended with {status} after SIGTERM; see {}", log.display());
    let receipts = verify_audit(binary, &state.join("audit.jsonl"))?
        .map_err(|problem| anyhow::anyhow!("the audit log does not verify: {problem}"))?;
    let receipts_back = receipts_going_back(&state.join("audit.jsonl"))?;

    let ledger = controller.ledger();
    ensure!(ledger.violations.is_empty(), "{}", ledger.violations.join("; "));
    ensure!(ledger.gaps().is_empty(), "ids never delivered: {:?}", ledger.gaps());
    ensure!(ledger.boots.len() == 1, "{} boots: the runtime restarted", ledger.boots.len());
    let verdicts: Vec<&Received> = ledger.received.values().collect();
    ensure!(
        verdicts.windows(2).all(|pair| pair[1].mono_ms >= pair[0].mono_ms),
        "mono_ms went back across the jumps"
    );
    let expired = verdicts.iter().filter(|verdict| verdict.expired).count();
    ensure!(expired == 0, "{expired} verdicts went out expired although acknowledged at once");
    // Two connections: the first, and the one after the harness's cut. A jump that fired the acknowledgement
    // time-out (or a back-off measured on the wall clock) would show as more, or as a late one.
    ensure!(
        ledger.connections == 2,
        "{} connections: the link was dropped besides the harness's cut",
        ledger.connections
    );
    let reconnect = reconnect.context("no cut")?;
    ensure!(
        reconnect < Duration::from_secs(5),
        "the gate took {reconnect:?} to reconnect with the clock behind"
    );
    let mut lines = Vec::new();
    let mut baseline = 0usize;
    for (offset, name, ids) in &phases {
        let phase: Vec<&Received> = ids.clone().filter_map(|id| ledger.received.get(&id)).collect();
        ensure!(!phase.is_empty(), "no verdict with the clock {name}");
        let mut skews: Vec<i64> =
            phase.iter().map(|verdict| verdict.wall_ms as i64 - verdict.arrived_ms as i64).collect();
        skews.sort_unstable();
        let skew_s = skews[skews.len() / 2] as f64 / 1000.0;
        ensure!(
            (skew_s - *offset as f64).abs() < 5.0,
            "with the clock {name}, verdict lines' wall_ms was {skew_s:+.1} s off: libfaketime did not take effect"
        );
        if baseline == 0 {
            baseline = phase.len();
        }
        ensure!(
            phase.len() * 3 >= baseline,
            "with the clock {name} only {} verdicts came, against {baseline} at first",
            phase.len()
        );
        lines.push(format!("{name}: {} verdicts, wall_ms {skew_s:+.1} s", phase.len()));
    }
    // Each photo's decision and score, the same in every phase.
    let mut by_source: HashMap<&str, (&str, Option<f64>)> = HashMap::new();
    for verdict in &verdicts {
        let seen = by_source.entry(&verdict.source).or_insert((&verdict.decision, verdict.fake_probability));
        ensure!(
            *seen == (verdict.decision.as_str(), verdict.fake_probability),
            "{}: decision {} {:?}, earlier {} {:?}",
            verdict.source,
            verdict.decision,
            verdict.fake_probability,
            seen.0,
            seen.1
        );
    }
    let report = format!(
        "clock: {}; {} verdicts, {} photos each with one decision and score throughout, none expired, mono_ms \
         never back; one connection besides the cut an hour behind, reconnected in {:.2} s; {receipts} audit \
         receipts, chain intact, time_ms going back {receipts_back} time(s)",
        lines.join("; "),
        verdicts.len(),
        by_source.len(),
        reconnect.as_secs_f64()
    );
    std::fs::write(directory.join("summary.txt"), format!("{report}\n"))?;
    eprintln!("{report}");
    Ok(())
}

/// How many receipts carry a `time_ms` below the one before.
fn receipts_going_back(path: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut previous = 0;
    let mut back = 0;
    for line in text.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("a line of {}", path.display()))?;
        let time = value["entry"]["time_ms"].as_u64().context("a receipt without entry.time_ms")?;
        if time < previous {
            back += 1;
        }
        previous = time;
    }
    Ok(back)
}
