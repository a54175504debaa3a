//! The soak: `deepgate run` on a paced replay at camera rate (25 frames a second, the bundled photos over and
//! over: each photo is a session, so about as many verdicts a second) with the TCP gate and the audit log, for
//! the given time. Every few seconds (10 in an hour-long run) the runtime's resident memory, open descriptors and
//! threads are read from /proc, with the verdicts the controller has counted; at the end they are plotted
//! (`soak.svg`) and checked: flat after a warm-up, and every verdict delivered exactly once (ids and sequence
//! numbers without gaps or repeats, as many as the runtime says it made, each with its audit receipt).

use super::controller::{AckPolicy, Controller};
use super::plot::{svg, Panel};
use super::{fresh, summary_verdicts, verify_audit, write_board, Board, Runtime};
use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Frames per second: a camera's rate.
const CAMERA_RATE: f64 = 25.0;

/// One reading of the runtime's /proc entries.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub seconds: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub verdicts: u64,
}

/// Reads VmRSS and Threads from /proc/PID/status and counts /proc/PID/fd.
pub fn read_proc(pid: u32) -> Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let number = line.split_whitespace().next().unwrap_or_default();
        number.parse().with_context(|| format!("{name} `{number}` in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    Ok((field("VmRSS:")?, fds, field("Threads:")?))
}

pub fn soak(binary: &Path, directory: &Path, duration: Duration) -> Result<()> {
    fresh(directory)?;
    let state = directory.join("state");
    let controller = Controller::start(AckPolicy::All)?;
    let board =
        write_board(directory, &Board { frame_rate: CAMERA_RATE, ..Board::new(controller.port, &state) })?;
    // Ten seconds between samples in a long run; more often in a short one, so that it still has ~30.
    let interval = (duration / 30).clamp(Duration::from_secs(1), Duration::from_secs(10));
    eprintln!(
        "soak: {:.1} min at {CAMERA_RATE} frames/s, a sample every {:?}, in {}",
        duration.as_secs_f64() / 60.0,
        interval,
        directory.display()
    );
    let mut runtime = Runtime::start(binary, &board, &directory.join("deepgate.log"), &[])?;
    // Sampling starts with the first verdict: before it, /proc may still show `nice`, not yet the runtime.
    ensure!(
        controller.wait_for(Duration::from_secs(60), |ledger| !ledger.received.is_empty()),
        "no verdict within 60 s of the start; see {}",
        runtime.log.display()
    );
    let csv_path = directory.join("samples.csv");
    let mut csv =
        std::fs::File::create(&csv_path).with_context(|| format!("creating {}", csv_path.display()))?;
    writeln!(csv, "seconds,rss_kib,fds,threads,verdicts")?;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next = started;
    loop {
        if let Some(status) = runtime.exited()? {
            bail!("the runtime ended during the soak ({status}); see {}", runtime.log.display());
        }
        let (rss_kib, fds, threads) = read_proc(runtime.pid)?;
        let sample = Sample {
            seconds: started.elapsed().as_secs_f64(),
            rss_kib,
            fds,
            threads,
            verdicts: controller.ledger().received.len() as u64,
        };
        writeln!(csv, "{:.1},{},{},{},{}", sample.seconds, rss_kib, fds, threads, sample.verdicts)?;
        csv.flush()?;
        if samples.len() % 30 == 0 {
            eprintln!(
                "soak: {:>6.1} min  RSS {:.1} MiB  {fds} fds  {threads} threads  {} verdicts",
                sample.seconds / 60.0,
                rss_kib as f64 / 1024.0,
                sample.verdicts
            );
        }
        samples.push(sample);
        if started.elapsed() >= duration {
            break;
        }
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let status = runtime.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "the runtime ended with {status} after SIGTERM; see {}", runtime.log.display());
    // The runtime flushed its spool before exiting: every verdict acknowledged, nothing more to come.
    let report = check(binary, directory, &controller, &samples, &runtime.log)?;
    plot(directory, &samples)?;
    std::fs::write(directory.join("summary.txt"), &report)?;
    eprintln!("{report}");
    Ok(())
}

/// The median of some samples' values.
fn median(values: impl Iterator<Item = u64>) -> u64 {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// The checks; the summary text on success.
fn check(
    binary: &Path,
    directory: &Path,
    controller: &Controller,
    samples: &[Sample],
    log: &Path,
) -> Result<String> {
    let ledger = controller.ledger();
    let delivered = ledger.received.len() as u64;
    ensure!(ledger.violations.is_empty(), "controller saw: {}", ledger.violations.join("; "));
    ensure!(delivered > 0, "no verdict arrived");
    let gaps = ledger.gaps();
    ensure!(
        gaps.is_empty(),
        "ids never delivered: {} of them, first {:?}",
        gaps.len(),
        &gaps[..gaps.len().min(10)]
    );
    ensure!(ledger.repeats == 0, "{} verdict line(s) came twice without a restart", ledger.repeats);
    ensure!(ledger.boots.len() == 1, "verdicts of {} boots in one run", ledger.boots.len());
    let sequences: Vec<u64> = ledger.received.values().map(|received| received.seq).collect();
    ensure!(
        sequences.iter().enumerate().all(|(index, &seq)| seq == index as u64 + 1),
        "sequence numbers are not 1..{delivered} in id order"
    );
    ensure!(
        ledger.acked == ledger.highest(),
        "acknowledged up to {}, received up to {}",
        ledger.acked,
        ledger.highest()
    );
    let expired = ledger.received.values().filter(|received| received.expired).count();
    let made = summary_verdicts(log)?.context("no closing summary in the runtime's log")?;
    ensure!(made == delivered, "the runtime made {made} verdicts, the controller received {delivered}");
    let receipts = match verify_audit(binary, &directory.join("state/audit.jsonl"))? {
        Ok(entries) => entries,
        Err(problem) => bail!("audit log does not verify: {problem}"),
    };
    ensure!(receipts == delivered, "{receipts} audit receipts for {delivered} verdicts");
    // Flatness: after the first quarter (models, buffers and caches warmed up), compare the second quarter's
    // median with the last quarter's.
    let quarter = samples.len() / 4;
    ensure!(quarter >= 2, "too few samples ({}) to judge flatness", samples.len());
    let (second, last) = (&samples[quarter..2 * quarter], &samples[samples.len() - quarter..]);
    let rss_second = median(second.iter().map(|sample| sample.rss_kib));
    let rss_last = median(last.iter().map(|sample| sample.rss_kib));
    let steady = &samples[quarter..];
    let range = |value: fn(&Sample) -> u64| {
        (steady.iter().map(value).min().unwrap_or(0), steady.iter().map(value).max().unwrap_or(0))
    };
    let (rss_low, rss_high) = range(|sample| sample.rss_kib);
    let (fd_low, fd_high) = range(|sample| sample.fds);
    let (thread_low, thread_high) = range(|sample| sample.threads);
    let minutes = samples.last().map_or(0.0, |sample| sample.seconds / 60.0);
    let report = format!(
        "soak: {minutes:.1} min, {delivered} verdicts ({:.1}/s) delivered exactly once ({expired} marked expired), \
         {receipts} audit receipts, chain intact\n\
         after the first quarter: RSS {:.1}..{:.1} MiB (median {:.1} -> {:.1} MiB), fds {fd_low}..{fd_high}, \
         threads {thread_low}..{thread_high}; {} samples",
        delivered as f64 / (minutes * 60.0).max(1.0),
        rss_low as f64 / 1024.0,
        rss_high as f64 / 1024.0,
        rss_second as f64 / 1024.0,
        rss_last as f64 / 1024.0,
        samples.len()
    );
    // Growth allowed: allocator noise, 2 MiB and 5 %; a leak of a few hundred bytes a verdict over an hour
    // (~90 000 verdicts) exceeds it.
    ensure!(
        rss_last <= rss_second + 2048 + rss_second / 20,
        "resident memory grew from {} to {} KiB between the second and the last quarter\n{report}",
        rss_second,
        rss_last
    );
    ensure!(fd_high - fd_low <= 1, "open descriptors varied {fd_low}..{fd_high} after warm-up\n{report}");
    ensure!(thread_high == thread_low, "threads varied {thread_low}..{thread_high} after warm-up\n{report}");
    Ok(report)
}

/// `soak.svg`: RSS, descriptors, threads and verdicts a minute over the soak's minutes.
pub fn plot(directory: &Path, samples: &[Sample]) -> Result<()> {
    let series = |value: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|sample| (sample.seconds / 60.0, value(sample))).collect()
    };
    let rate: Vec<(f64, f64)> = samples
        .windows(2)
        .map(|pair| {
            let minutes = (pair[1].seconds - pair[0].seconds) / 60.0;
            (pair[1].seconds / 60.0, (pair[1].verdicts - pair[0].verdicts) as f64 / minutes.max(1e-9))
        })
        .collect();
    let panels = [
        Panel { title: "resident memory (MiB)", points: series(&|sample| sample.rss_kib as f64 / 1024.0) },
        Panel { title: "open file descriptors", points: series(&|sample| sample.fds as f64) },
        Panel { title: "threads", points: series(&|sample| sample.threads as f64) },
        Panel { title: "verdicts delivered per minute", points: rate },
    ];
    let path = directory.join("soak.svg");
    std::fs::write(
        &path,
        svg("deepgate run: soak at 25 frames/s (paced replay, TCP gate, audit log)", "minutes", &panels),
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// Draws `soak.svg` beside an earlier soak's `samples.csv`.
pub fn replot(csv: &Path) -> Result<()> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let parse = |index: usize| -> Result<u64> {
            fields
                .get(index)
                .and_then(|field| field.parse().ok())
                .with_context(|| format!("{} line {}: `{line}`", csv.display(), number + 1))
        };
        let seconds = fields.first().and_then(|field| field.parse().ok());
        let seconds = seconds.with_context(|| format!("{} line {}: `{line}`", csv.display(), number + 1))?;
        samples.push(Sample {
            seconds,
            rss_kib: parse(1)?,
            fds: parse(2)?,
            threads: parse(3)?,
            verdicts: parse(4)?,
        });
    }
    plot(csv.parent().unwrap_or(Path::new(".")), &samples)
}
