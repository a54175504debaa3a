//! `cargo xtask fuzz [--seconds N] [--target NAME]... [--jobs N]`: the coverage-guided fuzz targets of `fuzz/`
//! (one per parser that reads outside input; RELIABILITY.md, "Fuzzing") built with cargo-fuzz on the stable
//! toolchain and each run for a bounded time; fails on any crash, timeout or memory blow-up, and prints per
//! target what libFuzzer reports at the end (executions, executions per second, coverage, corpus).
//!
//! Stable Rust is enough: with `--sanitizer none` cargo-fuzz passes only stable `-C` flags (`-Cpasses=
//! sancov-module` and `-Cllvm-args=-sanitizer-coverage-*`, `--cfg fuzzing`, `-Cdebug-assertions`), never a `-Z`
//! flag, so no nightly and no `RUSTC_BOOTSTRAP`. What that gives up is AddressSanitizer: a finding is a panic
//! (including overflow checks and debug assertions), an abort, a deadly signal, a timeout or too much memory.
//! The C inside libosdp is compiled by its build script without coverage instrumentation: the OSDP targets are
//! guided by the Rust code around it (channel, inspector, command callback) and catch crashes in the C code, but
//! do not steer into it.
//!
//! The seed corpora are in the repository (`fuzz/corpus/<target>`, read only here); what libFuzzer finds is
//! kept in `<target dir>/fuzz/corpus/<target>` across runs, and a crashing input is written to
//! `<target dir>/fuzz/artifacts/<target>/`, to be fixed and then kept with the seeds.

use crate::ci::{cargo, root, run, target_dir};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The cargo-fuzz release installed when missing (`setup::cargo_tool`: `cargo install --locked` into cargo's own
/// bin directory, so a cached `~/.cargo` keeps it between CI runs).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;
/// One input running longer than this is a finding (a hang on hostile input).
const TIMEOUT_S: u64 = 30;
/// Memory a target may use; the decoders may allocate up to 512 MiB for one legitimate image.
const RSS_LIMIT_MB: u64 = 2560;

/// What the command line asked for.
#[derive(Debug, PartialEq)]
struct Options {
    seconds: u64,
    targets: Vec<String>,
    jobs: usize,
}

fn parse(arguments: &[String]) -> Result<Options> {
    let mut options = Options {
        seconds: DEFAULT_SECONDS,
        targets: Vec::new(),
        jobs: std::thread::available_parallelism().map_or(1, |count| count.get()),
    };
    let mut arguments = arguments.iter();
    while let Some(argument) = arguments.next() {
        let mut value = |name: &str| arguments.next().with_context(|| format!("{name} needs a value"));
        match argument.as_str() {
            "--seconds" => {
                options.seconds = value("--seconds")?.parse().context("--seconds takes a whole number")?;
                ensure!(options.seconds > 0, "--seconds must be at least 1");
            }
            "--target" => options.targets.push(value("--target")?.clone()),
            "--jobs" => {
                options.jobs = value("--jobs")?.parse().context("--jobs takes a whole number")?;
                ensure!(options.jobs > 0, "--jobs must be at least 1");
            }
            other => bail!("unknown argument {other:?} (usage: {})", usage()),
        }
    }
    Ok(options)
}

fn usage() -> &'static str {
    "cargo xtask fuzz [--seconds N] [--target NAME]... [--jobs N]"
}

/// The targets `fuzz/Cargo.toml` declares (its `[[bin]]` names), in order.
fn declared_targets(manifest: &str) -> Result<Vec<String>> {
    let table: toml::Table = toml::from_str(manifest).context("parsing fuzz/Cargo.toml")?;
    let bins = table.get("bin").and_then(|bins| bins.as_array()).context("fuzz/Cargo.toml has no [[bin]]")?;
    bins.iter()
        .map(|bin| bin.get("name").and_then(|name| name.as_str()).map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .context("a [[bin]] of fuzz/Cargo.toml has no name")
}

/// libFuzzer's figures at the end of a run: the last status line (`#N DONE cov: C ft: F corp: U/S`) and the
/// `-print_final_stats` lines.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    executions: u64,
    per_second: u64,
    coverage: u64,
    features: u64,
    corpus_units: u64,
    corpus_bytes: String,
    new_units: u64,
    peak_rss_mb: u64,
}

fn figures(log: &str) -> Figures {
    let mut found = Figures::default();
    for line in log.lines() {
        let mut words = line.split_whitespace();
        if let Some(stat) = line.strip_prefix("stat::") {
            let (name, value) = stat.split_once(':').unwrap_or((stat, ""));
            let value = value.trim().parse().unwrap_or(0);
            match name {
                "number_of_executed_units" => found.executions = value,
                "average_exec_per_sec" => found.per_second = value,
                "new_units_added" => found.new_units = value,
                "peak_rss_mb" => found.peak_rss_mb = value,
                _ => {}
            }
        } else if words.next().is_some_and(|first| first.starts_with('#')) {
            // `#123 NEW cov: 456 ft: 789 corp: 12/3456b ...`: the last such line holds the final counts.
            let words: Vec<&str> = line.split_whitespace().collect();
            let after =
                |key: &str| words.iter().position(|word| *word == key).and_then(|at| words.get(at + 1));
            if let Some(coverage) = after("cov:").and_then(|value| value.parse().ok()) {
                found.coverage = coverage;
            }
            if let Some(features) = after("ft:").and_then(|value| value.parse().ok()) {
                found.features = features;
            }
            if let Some((units, bytes)) = after("corp:").and_then(|value| value.split_once('/')) {
                found.corpus_units = units.parse().unwrap_or(0);
                found.corpus_bytes = bytes.to_string();
            }
        }
    }
    found
}

/// The host's target triple, which cargo-fuzz builds for and names its output directory after.
fn host_triple() -> Result<String> {
    let output = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

/// One target's run in progress.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

fn start(binary: &Path, name: &str, seconds: u64, fuzz_target_dir: &Path) -> Result<Running> {
    let corpus = fuzz_target_dir.join("corpus").join(name);
    let artifacts = fuzz_target_dir.join("artifacts").join(name);
    let logs = fuzz_target_dir.join("logs");
    for directory in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    }
    let seeds = root().join("fuzz/corpus").join(name);
    ensure!(seeds.is_dir(), "target {name} has no seed corpus {}", seeds.display());
    let log = logs.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let arguments = [
        format!("-max_total_time={seconds}"),
        format!("-timeout={TIMEOUT_S}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".into(),
        // The targets' own standard output (libosdp's log lines) is noise here.
        "-close_fd_mask=1".into(),
        corpus.display().to_string(),
        seeds.display().to_string(),
    ];
    eprintln!("$ {} {}   (log: {})", binary.display(), arguments.join(" "), log.display());
    let child = Command::new(binary)
        .args(&arguments)
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Running { name: name.to_string(), child, log })
}

/// Builds the targets and runs each for the time asked, `jobs` at a time (libFuzzer uses one core per target).
pub fn fuzz(arguments: &[String]) -> Result<()> {
    let options = parse(arguments)?;
    let manifest =
        std::fs::read_to_string(root().join("fuzz/Cargo.toml")).context("reading fuzz/Cargo.toml")?;
    let declared = declared_targets(&manifest)?;
    let targets = if options.targets.is_empty() { declared.clone() } else { options.targets.clone() };
    if let Some(unknown) = targets.iter().find(|target| !declared.contains(target)) {
        bail!("no fuzz target {unknown}; fuzz/Cargo.toml declares {}", declared.join(", "));
    }
    crate::setup::cargo_tool("fuzz", CARGO_FUZZ_VERSION)?;
    let fuzz_target_dir = target_dir().join("fuzz");
    let fuzz_target_text = fuzz_target_dir.display().to_string();
    let mut build = vec!["fuzz", "build", "--sanitizer", "none", "--fuzz-dir", "fuzz", "--target-dir"];
    build.push(&fuzz_target_text);
    if targets.len() == 1 {
        build.push(&targets[0]);
    }
    run(&cargo(), &build)?;
    let binaries = fuzz_target_dir.join(host_triple()?).join("release");

    let mut waiting = targets.iter();
    let mut running: Vec<Running> = Vec::new();
    let mut results: Vec<(String, Figures, Option<String>)> = Vec::new();
    loop {
        while running.len() < options.jobs {
            let Some(name) = waiting.next() else { break };
            running.push(start(&binaries.join(name), name, options.seconds, &fuzz_target_dir)?);
        }
        let Some(mut done) = (!running.is_empty()).then(|| running.remove(0)) else { break };
        let status = done.child.wait().with_context(|| format!("waiting for fuzz target {}", done.name))?;
        // The target's scratch directory (fuzz/src/lib.rs names it after the target and the process).
        let scratch = format!("deepgate-fuzz-{}-{}", done.name, done.child.id());
        for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
            let _ = std::fs::remove_dir_all(base.join(&scratch));
        }
        let log =
            std::fs::read_to_string(&done.log).with_context(|| format!("reading {}", done.log.display()))?;
        let failure = (!status.success()).then(|| {
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            format!("{status}; log {}:\n{}", done.log.display(), tail.join("\n"))
        });
        results.push((done.name, figures(&log), failure));
    }

    eprintln!("\nfuzz: {} s per target on {}", options.seconds, std::env::consts::ARCH);
    eprintln!(
        "{:<14} {:>12} {:>9} {:>7} {:>8} {:>14} {:>6} {:>8}  result",
        "target", "executions", "exec/s", "cov", "ft", "corpus", "new", "rss MB"
    );
    for (name, found, failure) in &results {
        eprintln!(
            "{:<14} {:>12} {:>9} {:>7} {:>8} {:>14} {:>6} {:>8}  {}",
            name,
            found.executions,
            found.per_second,
            found.coverage,
            found.features,
            format!("{}/{}", found.corpus_units, found.corpus_bytes),
            found.new_units,
            found.peak_rss_mb,
            if failure.is_some() { "FAILED" } else { "ok" }
        );
    }
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(name, _, failure)| failure.as_ref().map(|failure| format!("{name}: {failure}")))
        .collect();
    if !failures.is_empty() {
        bail!(
            "{} fuzz target(s) failed (crashing inputs in {}):\n{}",
            failures.len(),
            fuzz_target_dir.join("artifacts").display(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "INFO: Seed: 1\n\
        #2\tINITED cov: 100 ft: 120 corp: 5/2048b exec/s: 0 rss: 40Mb\n\
        #4096\tpulse  cov: 150 ft: 200 corp: 9/3Kb lim: 40 exec/s: 2048 rss: 41Mb\n\
        #51234\tDONE   cov: 161 ft: 230 corp: 12/4321b lim: 64 exec/s: 5123 rss: 45Mb\n\
        Done 51234 runs in 10 second(s)\n\
        stat::number_of_executed_units: 51234\n\
        stat::average_exec_per_sec:     5123\n\
        stat::new_units_added:          7\n\
        stat::slowest_unit_time_sec:    0\n\
        stat::peak_rss_mb:              45\n";

    #[test]
    fn the_final_figures_are_read_from_libfuzzer_output() {
        assert_eq!(
            figures(LOG),
            Figures {
                executions: 51234,
                per_second: 5123,
                coverage: 161,
                features: 230,
                corpus_units: 12,
                corpus_bytes: "4321b".into(),
                new_units: 7,
                peak_rss_mb: 45,
            }
        );
        assert_eq!(figures("==1== ERROR: libFuzzer: deadly signal\n"), Figures::default());
    }

    #[test]
    fn options_are_checked() {
        let strings = |list: &[&str]| list.iter().map(|text| text.to_string()).collect::<Vec<_>>();
        let options = parse(&strings(&["--seconds", "20", "--target", "y4m", "--jobs", "2"])).unwrap();
        assert_eq!(options, Options { seconds: 20, targets: vec!["y4m".into()], jobs: 2 });
        assert!(parse(&strings(&["--seconds", "0"])).is_err());
        assert!(parse(&strings(&["--seconds"])).is_err());
        assert!(parse(&strings(&["--fast"])).unwrap_err().to_string().contains("unknown argument"));
    }

    #[test]
    fn every_declared_target_has_seeds_and_a_source() {
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        let targets = declared_targets(&manifest).unwrap();
        assert!(targets.len() >= 10, "{targets:?}");
        for target in targets {
            let seeds = root().join("fuzz/corpus").join(&target);
            let count = std::fs::read_dir(&seeds).map_or(0, |entries| entries.count());
            assert!(count > 0, "fuzz target {target} has no seeds in {}", seeds.display());
            assert!(root().join(format!("fuzz/fuzz_targets/{target}.rs")).is_file(), "{target}");
        }
    }
}
