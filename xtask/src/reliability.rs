//! `cargo xtask reliability`: faults measured on the real `deepgate run` binary (issue 17, point 8). Each part
//! starts the runtime with a TCP gate to an in-harness controller (`controller`) and an audit log, and checks
//! what the runtime promises:
//!
//! - `kills`: SIGKILL at random moments while verdicts are being spooled and audited, many times: every start
//!   succeeds, no id is reused, nothing stored is lost (ids arrive without gaps), the audit log verifies;
//! - `disk_full`: the state directory on a small tmpfs, filled: the spool and audit policies hold, the runtime
//!   keeps running and says so, and recovers when space returns;
//! - `clock`: the wall clock jumped forward and back under libfaketime: decisions, expiry and time-outs go on;
//! - `soak`: a paced replay at camera rate for minutes (an hour in the full run), RSS, descriptors and threads
//!   sampled and plotted, every verdict delivered exactly once.
//!
//! Results go to `<target>/reliability/` (logs, samples, the plot); RELIABILITY.md reports a full run.

mod clock;
mod controller;
mod disk_full;
mod kills;
mod plot;
mod soak;

use crate::ci::{root, target_dir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to run, from the command line.
struct Options {
    kills: usize,
    soak: Duration,
    only: Option<String>,
    binary: Option<PathBuf>,
    /// Only draw the plot of an earlier soak's samples.
    plot: Option<PathBuf>,
}

fn parse(arguments: &[String]) -> Result<Options> {
    let mut options =
        Options { kills: 200, soak: Duration::from_secs(3600), only: None, binary: None, plot: None };
    let mut arguments = arguments.iter();
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().with_context(|| format!("{argument} needs a value"));
        match argument.as_str() {
            "--kills" => options.kills = value()?.parse().context("--kills N")?,
            "--soak-minutes" => {
                options.soak =
                    Duration::from_secs_f64(value()?.parse::<f64>().context("--soak-minutes M")? * 60.0)
            }
            "--soak-seconds" => {
                options.soak = Duration::from_secs(value()?.parse().context("--soak-seconds S")?)
            }
            "--only" => options.only = Some(value()?.clone()),
            "--binary" => options.binary = Some(PathBuf::from(value()?)),
            "--plot" => options.plot = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument `{other}`\n\n{}", crate::HELP),
        }
    }
    if let Some(only) = &options.only {
        if !["kills", "disk-full", "clock", "soak"].contains(&only.as_str()) {
            bail!("--only takes kills, disk-full, clock or soak, not `{only}`");
        }
    }
    Ok(options)
}

pub fn reliability(arguments: &[String]) -> Result<()> {
    let options = parse(arguments)?;
    if let Some(csv) = &options.plot {
        return soak::replot(csv);
    }
    let binary = match &options.binary {
        Some(binary) => binary.clone(),
        None => crate::ci::deepgate_binary(false)?,
    };
    run_parts(&binary, &options)
}

/// The short version CI runs: 20 kills, both disk-full cases, the clock jumps, a one-minute soak.
pub fn ci(binary: &Path) -> Result<()> {
    let options = Options { kills: 20, soak: Duration::from_secs(60), only: None, binary: None, plot: None };
    run_parts(binary, &options)
}

fn run_parts(binary: &Path, options: &Options) -> Result<()> {
    let out = target_dir().join("reliability");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // A copy, so that a build during a long run does not change the program under test.
    // Copied beside and renamed into place: a run still using the previous copy keeps its file.
    let copy = out.join("deepgate");
    let partial = out.join("deepgate.partial");
    std::fs::copy(binary, &partial)
        .and_then(|_| std::fs::rename(&partial, &copy))
        .with_context(|| format!("copying {} to {}", binary.display(), copy.display()))?;
    let run = |part: &str| options.only.as_deref().is_none_or(|only| only == part);
    let mut failures = Vec::new();
    let mut part = |name: &str, result: Result<()>| match result {
        Ok(()) => eprintln!("reliability {name}: PASSED"),
        Err(error) => {
            eprintln!("reliability {name}: FAILED: {error:#}");
            failures.push(name.to_owned());
        }
    };
    if run("kills") {
        part("kills", kills::kills(&copy, &out.join("kills"), options.kills));
    }
    if run("disk-full") {
        part("disk-full", disk_full::disk_full(&copy, &out.join("disk-full")));
    }
    if run("clock") {
        part("clock", clock::clock(&copy, &out.join("clock")));
    }
    if run("soak") {
        part("soak", soak::soak(&copy, &out.join("soak"), options.soak));
    }
    if !failures.is_empty() {
        bail!("reliability: {} failed (logs in {})", failures.join(", "), out.display());
    }
    Ok(())
}

/// A fresh working directory for one part: `state/` inside it holds the spool and the audit log.
pub(crate) fn fresh(directory: &Path) -> Result<()> {
    if directory.exists() {
        std::fs::remove_dir_all(directory).with_context(|| format!("removing {}", directory.display()))?;
    }
    std::fs::create_dir_all(directory.join("state"))
        .with_context(|| format!("creating {}", directory.display()))
}

/// The keys a part states over `board/host.toml`.
pub(crate) struct Board<'a> {
    pub port: u16,
    /// The spool's directory.
    pub state: &'a Path,
    /// The audit log's directory, and keys added to `[audit]` (lines ending in a newline).
    pub audit: &'a Path,
    pub audit_keys: &'a str,
    /// Frames per second; 0: as fast as possible (many verdicts a second: the kill loop).
    pub frame_rate: f64,
    /// `[gate] max_age_ms`.
    pub max_age_ms: u64,
}

impl<'a> Board<'a> {
    /// The spool and the audit log in `state`, no extra audit keys, 25 frames per second, `max_age_ms` 5000.
    pub fn new(port: u16, state: &'a Path) -> Board<'a> {
        Board { port, state, audit: state, audit_keys: "", frame_rate: 25.0, max_age_ms: 5000 }
    }
}

/// Writes `<directory>/board.toml`: `board/host.toml` (the replay of the bundled photos, copied beside it with
/// its relative paths made absolute) inherited, with the replay repeated and paced, a plaintext TCP gate to the
/// harness's controller, and an audit log, both in `state`.
pub(crate) fn write_board(directory: &Path, board: &Board) -> Result<PathBuf> {
    let host = root().join("board/host.toml");
    let text = std::fs::read_to_string(&host).with_context(|| format!("reading {}", host.display()))?;
    let root = root();
    let absolute = text.replace("\"../", &format!("\"{}/", root.display()));
    std::fs::write(directory.join("host.toml"), absolute)?;
    let (state, audit) = (board.state.display(), board.audit.display());
    let config = format!(
        "inherit = \"host.toml\"\n\n\
         [source]\nrepeat = true\nframe_rate = {:.1}\n\n\
         [gate]\nkind = \"tcp\"\naddress = \"127.0.0.1:{}\"\nqueue = 1024\nspool = \"{state}/gate.spool\"\n\
         insecure = true\nmax_age_ms = {}\n\n\
         [audit]\npath = \"{audit}/audit.jsonl\"\n{}",
        board.frame_rate, board.port, board.max_age_ms, board.audit_keys
    );
    let path = directory.join("board.toml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A running `deepgate run`, its log in a file.
pub(crate) struct Runtime {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Runtime {
    /// Starts `binary run --board board`, logging to `log` (appended: one file across restarts), at nice 10
    /// (the harness measures correctness and flatness, not speed, on a shared machine). `environment`: variables
    /// set for it (libfaketime).
    pub fn start(binary: &Path, board: &Path, log: &Path, environment: &[(&str, &str)]) -> Result<Runtime> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        // `nice` execs the program: the child's pid is the runtime's.
        let child = Command::new("nice")
            .args(["-n", "10"])
            .arg(binary)
            .args(["run", "--board"])
            .arg(board)
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Runtime { pid: child.id(), child, log: log.to_path_buf() })
    }

    /// Whether it is still running; its exit status if not.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping the killed runtime")?;
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for the clean end (SIGKILL after it, reported as an error).
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill()?;
                bail!("the runtime did not stop within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `deepgate audit verify FILE`: the number of entries when the chain is intact, else the problem.
pub(crate) fn verify_audit(binary: &Path, log: &Path) -> Result<std::result::Result<u64, String>> {
    let output = Command::new(binary)
        .args(["audit", "verify"])
        .arg(log)
        .output()
        .with_context(|| format!("running {} audit verify", binary.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let entries = report["entries"].as_u64().unwrap_or(0);
    if output.status.success() {
        Ok(Ok(entries))
    } else {
        Ok(Err(format!(
            "{} {}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The runtime's closing summary line in its log, e.g. "263 frames, 263 verdicts (0 withheld), ...": the
/// verdict count of the last one.
pub(crate) fn summary_verdicts(log: &Path) -> Result<Option<u64>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once(" frames, ")?;
        rest.split_once(" verdicts (")?.0.parse().ok()
    }))
}
