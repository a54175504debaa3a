//! `cargo xtask vm-test`: Debian's real kernel booted under qemu (TCG) for an x86_64 and an aarch64 guest,
//! with an initramfs holding the project's binaries; tests/vm_guest.rs runs inside against the kernel's vivid
//! driver and a v4l2loopback device fed with face photos. ARCHITECTURE.md, "Tests with real drivers".

pub(crate) mod cpio;
pub(crate) mod debian;
pub(crate) mod initramfs;

use anyhow::{bail, Context, Result};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A guest architecture and everything that differs between the two.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// This machine (the tooling runs on x86_64 Debian).
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's architecture name.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The kernel build's ARCH.
    fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Aarch64 => "arm64",
        }
    }

    fn cross_prefix(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu-",
            Arch::Aarch64 => "aarch64-linux-gnu-",
        }
    }

    fn strip(self) -> String {
        if self == Arch::host() {
            "strip".into()
        } else {
            format!("{}strip", self.cross_prefix())
        }
    }

    fn binutils_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "binutils",
            Arch::Aarch64 => "binutils-aarch64-linux-gnu",
        }
    }

    /// Where the host keeps this architecture's glibc (Debian's cross packages for a foreign one).
    fn library_directories(self) -> &'static [&'static str] {
        match (self, Arch::host() == self) {
            (Arch::X86_64, true) => &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"],
            (Arch::Aarch64, true) => &["/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"],
            (Arch::X86_64, false) => &["/usr/x86_64-linux-gnu/lib"],
            (Arch::Aarch64, false) => &["/usr/aarch64-linux-gnu/lib"],
        }
    }

    /// Where the guest's loader looks first (Debian's multiarch directory, built into its ld.so).
    fn guest_library_directory(self) -> &'static str {
        match self {
            Arch::X86_64 => "/lib/x86_64-linux-gnu",
            Arch::Aarch64 => "/lib/aarch64-linux-gnu",
        }
    }

    /// The host file that is the guest's dynamic loader `interpreter` (an absolute guest path).
    fn host_library_path(self, interpreter: &str) -> Result<PathBuf> {
        let path = if self == Arch::host() {
            PathBuf::from(interpreter)
        } else {
            let name = Path::new(interpreter).file_name().context("interpreter has a file name")?;
            Path::new(self.library_directories()[0]).join(name)
        };
        if !path.exists() {
            bail!(
                "the loader {} is missing (Debian package libc6-dev-{}-cross)",
                path.display(),
                self.debian()
            );
        }
        Ok(path)
    }

    fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    pub(crate) fn qemu(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Arch::Aarch64 => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }

    /// Machine-specific qemu arguments. aarch64: the `virt` board with a Cortex-A57 (Jetson Nano/TX2 class,
    /// NEON without SVE, so tract picks the kernels a Jetson runs); x86_64: isa-debug-exit carries the status.
    fn qemu_arguments(self) -> (&'static [&'static str], &'static str) {
        match self {
            Arch::X86_64 => (
                &["-accel", "tcg", "-cpu", "max", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"],
                "console=ttyS0",
            ),
            Arch::Aarch64 => (&["-M", "virt", "-accel", "tcg", "-cpu", "cortex-a57"], "console=ttyAMA0"),
        }
    }
}

struct Options {
    arches: Vec<Arch>,
    timeout: Duration,
    /// Passed to the guest test program (test name filters).
    test_arguments: Vec<String>,
    /// Only fill the cache (kernel, headers, modules, busybox): a set-up step can warm it.
    prepare_only: bool,
    /// Boot the guests one after the other instead of at once (a guest's own time, or a one-core machine).
    one_at_a_time: bool,
}

fn parse_options(arguments: &[String]) -> Result<Options> {
    let mut options = Options {
        arches: vec![Arch::X86_64, Arch::Aarch64],
        timeout: Duration::from_secs(900),
        test_arguments: vec![],
        prepare_only: false,
        one_at_a_time: false,
    };
    let mut arguments = arguments.iter();
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--arch" => {
                options.arches = match arguments.next().map(String::as_str) {
                    Some("x86_64") => vec![Arch::X86_64],
                    Some("aarch64") => vec![Arch::Aarch64],
                    Some("all") => vec![Arch::X86_64, Arch::Aarch64],
                    other => bail!("--arch takes x86_64, aarch64 or all, not {other:?}"),
                }
            }
            "--timeout" => {
                let seconds = arguments.next().and_then(|value| value.parse().ok());
                options.timeout = Duration::from_secs(seconds.context("--timeout takes seconds")?);
            }
            "--prepare-only" => options.prepare_only = true,
            "--one-at-a-time" => options.one_at_a_time = true,
            "--" => options.test_arguments = arguments.by_ref().cloned().collect(),
            other => bail!("vm-test: unknown argument {other}\n{}", crate::HELP),
        }
    }
    Ok(options)
}

pub(crate) fn target_directory() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::ci::root().join("target"))
}

/// A guest ready to boot: its kernel, its initramfs and where its console goes.
struct Ready {
    arch: Arch,
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    log: PathBuf,
}

pub fn vm_test(arguments: &[String]) -> Result<()> {
    let options = parse_options(arguments)?;
    let cache = target_directory().join("vm-cache");
    // Each guest's Debian parts and programs first, one guest after the other (cargo builds one thing at a
    // time, and a missing package fails in seconds, before a long boot)...
    let mut guests = Vec::new();
    for &arch in &options.arches {
        let (qemu, package) = arch.qemu();
        if Command::new(qemu).arg("--version").output().is_err() {
            bail!("{qemu} is missing: apt-get install --no-install-recommends {package}");
        }
        let prepare = Instant::now();
        debian::ensure_architecture(arch)?;
        let packages = debian::resolve(arch)?;
        let kernel = debian::kernel(arch, &packages, &cache)?;
        let busybox = debian::busybox(arch, &packages, &cache)?;
        let loopback = debian::v4l2loopback(arch, &packages, &kernel, &cache)?;
        let prepared = prepare.elapsed();
        if options.prepare_only {
            eprintln!(
                "vm-test {}: kernel {}, busybox and v4l2loopback ready ({:.1} s)",
                arch.name(),
                kernel.release,
                prepared.as_secs_f64()
            );
            continue;
        }
        let (deepgate, guest_tests) = build(arch)?;
        let prepare = Instant::now();
        let work = cache.join(arch.name());
        let contents = initramfs::Contents {
            arch,
            kernel: &kernel,
            busybox: &busybox,
            loopback: Some(&loopback),
            deepgate: &deepgate,
            guest_tests: &guest_tests,
            test_arguments: &options.test_arguments,
        };
        let initramfs = initramfs::build(&contents, &work)?;
        eprintln!(
            "vm-test {}: kernel {} ({}), initramfs {} MiB, prepared in {:.1} s",
            arch.name(),
            kernel.release,
            kernel.version,
            std::fs::metadata(&initramfs)?.len() >> 20,
            (prepared + prepare.elapsed()).as_secs_f64()
        );
        guests.push(Ready { arch, vmlinuz: kernel.vmlinuz, initramfs, log: work.join("console.log") });
    }
    // ...then all booted at once, unless --one-at-a-time. A guest keeps about one host core busy (deepgate
    // decides on one thread; the frame writers and drivers are light), so on a two-core machine both guests
    // together take about as long as the slower alone (ARCHITECTURE.md, "Tests with real drivers").
    let boot = |ready: &Ready| {
        let start = Instant::now();
        let guest = Guest { label: ready.arch.name(), init: "/init", memory_mib: 1024 };
        let status =
            boot_guest(ready.arch, &guest, &ready.vmlinuz, &ready.initramfs, &ready.log, options.timeout);
        let seconds = start.elapsed().as_secs_f64();
        eprintln!(
            "vm-test {}: guest ran {seconds:.1} s (boot to power-off); console log {}",
            ready.arch.name(),
            ready.log.display()
        );
        (ready.arch, seconds, status, ready.log.clone())
    };
    let results: Vec<_> = if options.one_at_a_time {
        guests.iter().map(boot).collect()
    } else {
        std::thread::scope(|scope| {
            let running: Vec<_> = guests.iter().map(|ready| scope.spawn(|| boot(ready))).collect();
            running
                .into_iter()
                .zip(&guests)
                .map(|(thread, ready)| {
                    thread.join().unwrap_or_else(|_| {
                        let error = anyhow::anyhow!("the thread that ran the guest panicked");
                        (ready.arch, 0.0, Err(error), ready.log.clone())
                    })
                })
                .collect()
        })
    };
    let mut failed = Vec::new();
    for (arch, seconds, status, log) in &results {
        match status {
            // Every guest test is meant to run there (its /init sets DEEPGATE_REQUIRE=vm): a skip fails too.
            Ok(0) => match guest_skips(log) {
                Ok(()) => eprintln!("vm-test {}: passed ({seconds:.0} s)", arch.name()),
                Err(error) => failed.push(format!("{}: {error:#}; see {}", arch.name(), log.display())),
            },
            Ok(rc) => failed.push(format!(
                "{}: the guest tests exited with {rc}; see {}",
                arch.name(),
                log.display()
            )),
            Err(error) => failed.push(format!("{}: {error:#}; see {}", arch.name(), log.display())),
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// Builds `deepgate` and the guest test program for `arch` and returns their paths. One `cargo test --no-run`
/// builds both (an integration test's build includes the package's binaries). x86_64: the dev profile (its
/// dependencies are optimised); aarch64: release, the build that ships to a Jetson.
pub(crate) fn build(arch: Arch) -> Result<(PathBuf, PathBuf)> {
    let mut arguments = vec!["test", "--locked", "--no-run", "--test", "vm_guest"];
    if arch != Arch::host() {
        arguments.extend(["--release", "--target", arch.rust_target()]);
    }
    let built = crate::ci::cargo_executables(&arguments)
        .with_context(|| format!("building the guest programs for {}", arch.name()))?;
    let find = |name: &str, kind: &str| {
        built
            .iter()
            .find(|executable| executable.name == name && executable.kind == kind)
            .map(|b| b.path.clone())
    };
    Ok((
        find("deepgate", "bin").context("cargo named no deepgate binary")?,
        find("vm_guest", "test").context("cargo named no vm_guest test executable")?,
    ))
}

/// What differs between the guests booted here: vm-test's busybox `/init`, systemd-test's systemd.
pub(crate) struct Guest {
    /// What its console lines are prefixed with on standard error (guests may run at once).
    pub label: &'static str,
    /// The initramfs program the kernel starts as PID 1 (`rdinit=`).
    pub init: &'static str,
    pub memory_mib: u32,
}

/// Boots the guest, copying its console into `log` (and onto standard error) line by line, and returns the
/// guest test program's exit status read from the console (the guest prints `initramfs::STATUS_MARKER` last).
pub(crate) fn boot_guest(
    arch: Arch,
    guest: &Guest,
    kernel: &Path,
    initramfs: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<i32> {
    let (qemu, _) = arch.qemu();
    let (machine, console) = arch.qemu_arguments();
    let append = format!("{console} panic=-1 quiet loglevel=4 rdinit={}", guest.init);
    let memory = guest.memory_mib.to_string();
    let mut command = Command::new(qemu);
    // Two vCPUs (qemu runs them on two host threads): the tests run deepgate beside a frame writer.
    command
        .args(machine)
        .args(["-smp", "2", "-m", &memory, "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("\n$ {command:?}");
    let mut child = command.spawn().with_context(|| format!("starting {qemu}"))?;
    let mut file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let stdout = child.stdout.take().context("qemu's console")?;
    let stderr = child.stderr.take().context("qemu's standard error")?;
    let prefix = format!("[{}] ", guest.label);
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let console = std::thread::spawn(move || -> Result<Option<i32>> {
        let mut status = None;
        // The serial console ends lines with "\r\n"; the log keeps plain lines. Bytes that are not UTF-8
        // (a garbled boot message) must not stop the copy.
        for line in std::io::BufReader::new(stdout).split(b'\n') {
            let line = line?;
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            writeln!(file, "{line}")?;
            eprintln!("{prefix}{line}");
            if let Some(value) = line.strip_prefix(initramfs::STATUS_MARKER) {
                status = value.trim().parse().ok();
            }
        }
        file.flush()?;
        Ok(status)
    });
    let deadline = Instant::now() + timeout;
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break Some(exit);
        }
        if Instant::now() > deadline {
            // Our own child: stopped by its handle, nothing else.
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = console.join().map_err(|_| anyhow::anyhow!("console reader panicked"))??;
    let qemu_errors = errors.join().unwrap_or_default();
    let Some(exit) = exit else {
        print_tail(log);
        bail!("the {} guest did not finish within {} s", arch.name(), timeout.as_secs());
    };
    let Some(status) = status else {
        print_tail(log);
        bail!("the {} guest printed no exit status ({qemu} {exit}): {}", arch.name(), qemu_errors.trim());
    };
    // On x86_64 isa-debug-exit makes qemu's own status (value << 1) | 1: it must agree with the console.
    if arch == Arch::X86_64 && exit.code() != Some(((status << 1) | 1) & 0xff) {
        print_tail(log);
        bail!("qemu exited with {exit}, but the console says the guest tests exited with {status}");
    }
    if status != 0 {
        print_tail(log);
    }
    Ok(status)
}

/// Fails if the guest's console `log` shows a test that skipped (tests/common/skip.rs's lines).
fn guest_skips(log: &Path) -> Result<()> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let skips = crate::ci::skips(&text);
    if !skips.is_empty() {
        let lines: Vec<&str> = skips.iter().map(|skip| skip.line.as_str()).collect();
        bail!("{} guest test(s) skipped inside the guest:\n    {}", skips.len(), lines.join("\n    "));
    }
    Ok(())
}

pub(crate) fn print_tail(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("--- last lines of {} ---", log.display());
    for line in &lines[lines.len().saturating_sub(40)..] {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_choose_guests_timeout_and_test_filters() {
        let parse =
            |text: &str| parse_options(&text.split_whitespace().map(String::from).collect::<Vec<_>>());
        assert_eq!(parse("").unwrap().arches, [Arch::X86_64, Arch::Aarch64]);
        assert!(!parse("").unwrap().one_at_a_time);
        let options = parse("--arch aarch64 --timeout 30 --one-at-a-time -- vivid --nocapture").unwrap();
        assert_eq!(options.arches, [Arch::Aarch64]);
        assert!(options.one_at_a_time);
        assert_eq!(options.timeout, Duration::from_secs(30));
        assert_eq!(options.test_arguments, ["vivid", "--nocapture"]);
        assert!(parse("--arch riscv64").is_err());
    }
}
