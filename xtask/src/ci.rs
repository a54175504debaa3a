//! The CI job (`.ci/run` and the README's test command both call `cargo xtask ci`), and the helpers the other
//! tasks share: the workspace root, the target directory, running a command.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Where cargo puts build outputs: `CARGO_TARGET_DIR` when set (as cargo reads it), else `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(directory) if !directory.is_empty() => root().join(directory),
        _ => root().join("target"),
    }
}

/// Runs a command in the workspace root, echoing it, and fails if it fails.
pub fn run(program: &str, arguments: &[&str]) -> Result<()> {
    run_with(program, arguments, &[])
}

/// `run` with environment variables set for the command.
pub fn run_with(program: &str, arguments: &[&str], environment: &[(&str, &std::path::Path)]) -> Result<()> {
    let variables: Vec<String> =
        environment.iter().map(|(name, value)| format!("{name}={} ", value.display())).collect();
    eprintln!("\n$ {}{program} {}", variables.concat(), arguments.join(" "));
    let start = Instant::now();
    let status = Command::new(program)
        .args(arguments)
        .envs(environment.iter().copied())
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {program}"))?;
    eprintln!("({:.0} s)", start.elapsed().as_secs_f64());
    if !status.success() {
        bail!("`{program} {}` failed with {status}", arguments.join(" "));
    }
    Ok(())
}

/// An executable cargo built, as its JSON messages name it.
pub struct Built {
    /// The target's name (`deepgate`, a test file's stem) and first kind (`bin`, `lib`, `test`).
    pub name: String,
    pub kind: String,
    /// Built with the test harness (unit or integration tests) rather than as a program.
    pub test: bool,
    pub path: PathBuf,
}

/// Runs `cargo <arguments> --message-format=json-render-diagnostics` in the workspace root (diagnostics on
/// standard error) and returns the executables cargo names, parsed from its JSON messages rather than searched
/// for in the target directory.
pub fn cargo_executables(arguments: &[&str]) -> Result<Vec<Built>> {
    let arguments = [arguments, &["--message-format=json-render-diagnostics"]].concat();
    eprintln!("\n$ {} {}", cargo(), arguments.join(" "));
    let start = Instant::now();
    let output = Command::new(cargo())
        .args(&arguments)
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting cargo")?;
    eprintln!("({:.0} s)", start.elapsed().as_secs_f64());
    if !output.status.success() {
        bail!("`cargo {}` failed with {}", arguments.join(" "), output.status);
    }
    let mut built = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(executable) = message["executable"].as_str() else { continue };
        built.push(Built {
            name: message["target"]["name"].as_str().unwrap_or_default().to_string(),
            kind: message["target"]["kind"][0].as_str().unwrap_or_default().to_string(),
            test: message["profile"]["test"].as_bool().unwrap_or(false),
            path: PathBuf::from(executable),
        });
    }
    Ok(built)
}

/// Builds the `deepgate` binary (release, or the test profile's, whose dependencies are optimised too) and
/// returns its path: the training pipeline drives it.
pub fn deepgate_binary(release: bool) -> Result<PathBuf> {
    let mut arguments = vec!["build", "--locked", "--bin", "deepgate"];
    if release {
        arguments.push("--release");
    }
    run(&cargo(), &arguments)?;
    Ok(target_dir().join(if release { "release/deepgate" } else { "debug/deepgate" }))
}

/// The folder holding libnvrtc.so.12 from PyPI's NVRTC wheel, installed into tests/nvrtc/.venv (once).
fn nvrtc_library_directory() -> Result<PathBuf> {
    let python = crate::distill::python_environment(&root().join("tests/nvrtc"))?;
    let venv_lib = python.parent().and_then(|bin| bin.parent()).context("venv layout")?.join("lib");
    for entry in std::fs::read_dir(&venv_lib).with_context(|| format!("reading {}", venv_lib.display()))? {
        let directory = entry?.path().join("site-packages/nvidia/cuda_nvrtc/lib");
        if directory.join("libnvrtc.so.12").exists() {
            return Ok(directory);
        }
    }
    bail!("no libnvrtc.so.12 under {} after installing tests/nvrtc/requirements.txt", venv_lib.display())
}

/// The environments `ci` provides to `cargo test` (tests/common/skip.rs names them): a test that skips for
/// want of one of these fails CI. The VM guests are required inside the guest (`vm-test`), not here.
/// promtool comes with `cargo xtask setup` (the Debian package `prometheus`), and so does mosquitto.
const REQUIRED_HERE: &[&str] = &["osdp", "nvrtc", "promtool", "mosquitto"];

/// One `SKIPPED [<need>] <test>: <reason>` line of a test's output (tests/common/skip.rs writes them).
#[derive(Debug, PartialEq, Eq)]
pub struct Skip {
    pub need: String,
    pub line: String,
}

/// The skip lines in `output`.
pub fn skips(output: &str) -> Vec<Skip> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("SKIPPED [")?;
            let (need, _) = rest.split_once(']')?;
            Some(Skip { need: need.to_string(), line: line.trim().to_string() })
        })
        .collect()
}

/// Lists every skip in `output` and fails if one is for want of an environment in `required`.
pub fn check_skips(output: &str, required: &[&str]) -> Result<()> {
    let skips = skips(output);
    let (forbidden, allowed): (Vec<&Skip>, Vec<&Skip>) =
        skips.iter().partition(|skip| required.contains(&skip.need.as_str()));
    if !allowed.is_empty() {
        eprintln!(
            "\n{} test(s) skipped for want of an environment this machine does not have:",
            allowed.len()
        );
        for skip in &allowed {
            eprintln!("  {}", skip.line);
        }
    }
    if !forbidden.is_empty() {
        let lines: Vec<&str> = forbidden.iter().map(|skip| skip.line.as_str()).collect();
        bail!(
            "{} test(s) skipped although this job provides what they need ({}):\n  {}",
            forbidden.len(),
            required.join(", "),
            lines.join("\n  ")
        );
    }
    Ok(())
}

/// `run_with`, with the command's standard output and error copied through as they come and also returned
/// (both together, line by line) so that the caller can read what the tests said.
pub fn run_teed(program: &str, arguments: &[&str], environment: &[(&str, &OsStr)]) -> Result<String> {
    let variables: Vec<String> =
        environment.iter().map(|(name, value)| format!("{name}={} ", value.to_string_lossy())).collect();
    eprintln!("\n$ {}{program} {}", variables.concat(), arguments.join(" "));
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(arguments)
        .envs(environment.iter().copied())
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let collected = Arc::new(Mutex::new(String::new()));
    let copy = |stream: Box<dyn Read + Send>, to_stdout: bool| {
        let collected = Arc::clone(&collected);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if to_stdout {
                    println!("{line}");
                } else {
                    eprintln!("{line}");
                }
                let mut text = collected.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        })
    };
    let stdout = copy(Box::new(child.stdout.take().context("the command's standard output")?), true);
    let stderr = copy(Box::new(child.stderr.take().context("the command's standard error")?), false);
    let status = child.wait().with_context(|| format!("waiting for {program}"))?;
    stdout.join().map_err(|_| anyhow::anyhow!("copying standard output panicked"))?;
    stderr.join().map_err(|_| anyhow::anyhow!("copying standard error panicked"))?;
    eprintln!("({:.0} s)", start.elapsed().as_secs_f64());
    if !status.success() {
        bail!("`{program} {}` failed with {status}", arguments.join(" "));
    }
    let text = collected.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    Ok(text)
}

/// What `environments` provides to the tests.
struct Environments {
    /// The OSDP interoperability test talks to a real control panel: PyPI's libosdp, in its own environment.
    panel_python: PathBuf,
    /// The CUDA kernels are compiled by NVRTC in the tests (no GPU needed): PyPI's NVRTC wheel, found by the
    /// loader through LD_LIBRARY_PATH.
    nvrtc: PathBuf,
}

/// Every Python and npm environment `ci` uses, in the order its stages need them (each made once, pinned, and
/// re-made when its requirements change): the OSDP panel's, NVRTC's, the bench peer's, the training pipeline's,
/// and the pipeline's reference runtimes (dlib; TensorFlow.js).
fn environments() -> Result<Environments> {
    let panel_python = crate::distill::python_environment(&root().join("tests/osdp"))?;
    let nvrtc = nvrtc_library_directory()?;
    crate::bench_peer::peer_python()?;
    crate::distill::environment()?;
    crate::distill::reference_environments()?;
    Ok(Environments { panel_python, nvrtc })
}

/// A fresh run's outputs, measured on a fresh clone (2026-12-06: 17.5 GiB less free at the end than at the
/// start): the build directory 11 GiB (the tests', the fuzz targets', the aarch64 release build, the guests'
/// cache), the Python environments about 6.5 GiB (PyTorch's CUDA build is 5.8 GiB of it). A machine with less
/// free is told so at the start, not by a compiler that runs out of disk twenty minutes in.
const FRESH_RUN_BYTES: u64 = 19 << 30;

pub fn ci() -> Result<()> {
    // Set before any thread starts, for every command below (they inherit the environment):
    // - no incremental compilation: a CI run builds each workspace crate once, and incremental caches would
    //   take about 2 GB of disk for nothing (a CI machine once ran out of disk in the tests' build);
    // - a temporary directory of this run's own, removed when the run passes: the tests leave their scratch
    //   directories in place (child processes and paths outlive the call, src/testing.rs), some 200 MB a run,
    //   and nothing else would ever remove them. A failed run leaves it, to be looked at.
    std::env::set_var("CARGO_INCREMENTAL", "0");
    let scratch = std::env::temp_dir().join(format!("deepgate-ci-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    std::env::set_var("TMPDIR", &scratch);
    eprintln!("ci: temporary files under {}", scratch.display());
    report_disk("at the start", Some(FRESH_RUN_BYTES));
    crate::setup::setup()?;
    // The guests' Debian parts (kernels, busybox, v4l2loopback, the systemd root by debootstrap) are downloads
    // and unpacking more than compiling: on a fresh machine they are made on a second thread while the builds
    // and tests below take the cores, and waited for before the guests boot (each is cached, so a warm run
    // finds them at once). Each part is written under a temporary name, so a run that stops early leaves
    // nothing that looks complete.
    let guests = std::thread::Builder::new().name("prepare-guests".into()).spawn(|| -> Result<()> {
        crate::vm::vm_test(&["--arch".into(), "all".into(), "--prepare-only".into()])?;
        crate::systemd_test::systemd_test(&["--prepare-only".into()])
    })?;
    // The Python and npm environments the tests and stages below use are downloads too (PyTorch's alone is
    // about 5 GB): made on a third thread while clippy and the test build take the cores, and waited for before
    // the tests run. Nothing else touches them until then.
    let environments = std::thread::Builder::new().name("environments".into()).spawn(environments)?;
    let cargo = cargo();
    run(&cargo, &["fmt", "--all", "--check"])?;
    run(&cargo, &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    // Supply chain (deny.toml): licences, banned crates, sources; offline, so advisories are not checked here.
    // The builds above fetched only the host's packages; cargo deny reads every locked package's manifest,
    // other targets' included, so all of them are fetched first (a no-op once cached).
    run(&cargo, &["fetch", "--locked"])?;
    run(&cargo, &["deny", "--frozen", "check", "licenses", "bans", "sources"])?;
    // The tests' build, while the environments are still being made where they are new.
    run(&cargo, &["test", "--workspace", "--locked", "--no-run"])?;
    let Environments { panel_python, nvrtc } = environments
        .join()
        .map_err(|_| anyhow::anyhow!("making the environments panicked"))?
        .context("making the Python and npm environments")?;
    // Every environment provided above is required: DEEPGATE_REQUIRE turns a skip for want of it into a
    // failure (the library's own NVRTC tests read DEEPGATE_REQUIRE_NVRTC), and a skip line naming it fails
    // the job even if a test printed it without failing. The GPU tests may skip here (no GPU), visibly.
    let required = REQUIRED_HERE.join(",");
    let output = run_teed(
        &cargo,
        &["test", "--workspace", "--locked"],
        &[
            ("DEEPGATE_OSDP_PYTHON", panel_python.as_os_str()),
            ("LD_LIBRARY_PATH", nvrtc.as_os_str()),
            ("DEEPGATE_REQUIRE", required.as_ref()),
            ("DEEPGATE_REQUIRE_NVRTC", "1".as_ref()),
        ],
    )?;
    check_skips(&output, REQUIRED_HERE)?;
    // Every parser of outside input under libFuzzer for a bounded time, the machine's cores at once
    // (RELIABILITY.md, "Fuzzing", has a longer run's figures).
    crate::fuzz::fuzz(&["--seconds".into(), "20".into()])?;
    // The training pipeline: its unit tests, then the whole pipeline in miniature (fixtures, tiny models).
    // The debug binary is already built by the tests; the smoke run needs no release build.
    let binary = deepgate_binary(false)?;
    // Faults measured on that binary (RELIABILITY.md): 20 kills -9, the state directory full, wall-clock jumps,
    // a one-minute soak; the full run's figures (200 kills, an hour's soak) are in RELIABILITY.md.
    crate::reliability::ci(&binary)?;
    // The Python peer of `deepgate bench` (bench/peer.py, its own pinned environment) must run and agree with
    // deepgate on the same frames: one short round at both sizes in YUYV, NV12 and MJPEG (timings: bench-peer).
    crate::bench_peer::check(&binary)?;
    crate::distill::distill_with(&["test".into()], &binary)?;
    crate::distill::distill_with(&["all".into(), "configs/smoke.toml".into()], &binary)?;
    // The Jetson build: the bundle a board installs, then the tests that matter on the board run on that same
    // aarch64 release build under qemu-user (the dependencies compile once for both).
    // Signed with a throwaway key and verified by the runtime (`deepgate install --check`).
    crate::dist::signed_for_ci("jetson-orin-nano", &binary)?;
    crate::cross::test_aarch64()?;
    guests
        .join()
        .map_err(|_| anyhow::anyhow!("preparing the guests panicked"))?
        .context("preparing the guests (vm-test and systemd-test --prepare-only)")?;
    // Real V4L2 drivers: Debian's kernel under qemu, an x86_64 guest and an aarch64 guest (the Jetson build);
    // and the shipped systemd unit under a real systemd (PID 1 of a Debian guest on the same kernel): READY,
    // the watchdog killing a runtime whose camera stalls, the restart. A guest keeps about one core busy, so
    // the two vm-test guests run at once: the x86_64 guest (the longest, its x86-64-v3 build's FMA being slow
    // under TCG) beside the aarch64 guest.
    let (x86_64, aarch64) = std::thread::scope(|scope| {
        let x86_64 = scope.spawn(|| crate::vm::vm_test(&["--arch".into(), "x86_64".into()]));
        let aarch64 = crate::vm::vm_test(&["--arch".into(), "aarch64".into()]);
        let x86_64 =
            x86_64.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the x86_64 guest's thread panicked")));
        (x86_64, aarch64)
    });
    match (x86_64, aarch64) {
        (Ok(()), Ok(())) => {}
        (Err(error), Ok(())) | (Ok(()), Err(error)) => return Err(error),
        (Err(x86_64), Err(aarch64)) => bail!("{x86_64:#}\n{aarch64:#}"),
    }
    // The systemd guest runs alone, after them (about 1.5 minutes more: 92 and 98 s in two whole runs). It
    // holds the shipped unit to its 10 s watchdog, and under TCG a frame takes seconds: beside another guest
    // (each has two vCPUs, the machine two cores) one frame once took longer than the period and systemd
    // killed the runtime while frames flowed. Alone, its first frame comes about 5 s after the camera starts.
    crate::systemd_test::systemd_test(&[])?;
    report_disk("at the end", None);
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    eprintln!("\nci: all checks passed");
    Ok(())
}

/// Prints the free space on the build directory's disk and, at the start, warns when it is below what a fresh
/// run takes (a warm run needs less: its outputs are there already).
fn report_disk(when: &str, fresh_run: Option<u64>) {
    let directory = target_dir();
    let probe = if directory.exists() { directory } else { root() };
    let free = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(&probe)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout).lines().nth(1)?.trim().parse::<u64>().ok()
        });
    let Some(free) = free else {
        eprintln!("ci: could not read the free space on {}'s disk (df)", probe.display());
        return;
    };
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    eprintln!("ci: {:.1} GiB free on {}'s disk {when}", gib(free), probe.display());
    if let Some(needed) = fresh_run.filter(|&needed| free < needed) {
        eprintln!(
            "ci: warning: a fresh run's outputs take about {:.0} GiB; with {:.1} GiB free, only a warm run \
             (its build directory and Python environments already made) can finish",
            gib(needed),
            gib(free)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "running 3 tests\n\
        SKIPPED [gpu] a_cuda_fault_mid_stream_loses_no_frame_and_no_verdict: no usable GPU (no libcuda)\n\
        test a_cuda_fault_mid_stream_loses_no_frame_and_no_verdict ... ok\n\
        SKIPPED [osdp] a_panel_without_the_site_key_gets_no_verdicts: no Python with PyPI libosdp\n\
        SKIPPED: an old-style line without a need\n";

    #[test]
    fn skip_lines_are_read_with_their_need() {
        let found = skips(OUTPUT);
        let needs: Vec<&str> = found.iter().map(|skip| skip.need.as_str()).collect();
        assert_eq!(needs, ["gpu", "osdp"]);
        assert!(found[1].line.starts_with("SKIPPED [osdp] a_panel_without_the_site_key"), "{found:?}");
    }

    #[test]
    fn a_skip_for_want_of_what_the_job_provides_fails_it() {
        let error = check_skips(OUTPUT, &["osdp", "nvrtc"]).unwrap_err().to_string();
        assert!(
            error.contains("1 test(s) skipped") && error.contains("a_panel_without_the_site_key"),
            "{error}"
        );
        assert!(!error.contains("a_cuda_fault"), "a GPU skip is allowed where there is no GPU: {error}");
        check_skips(OUTPUT, &["nvrtc"]).unwrap();
        check_skips("test result: ok. 3 passed\n", &["osdp", "nvrtc"]).unwrap();
    }
}
