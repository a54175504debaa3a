//! `cargo xtask setup`: everything a fresh Debian machine with rustup needs for every task (build, ci, dist,
//! test-aarch64, vm-test): the Debian packages (one list, below), the aarch64 Rust target, the rustup
//! components the checks use and cargo-deny (pinned). Each piece is installed only when missing, so a second
//! run is quick and offline.

use crate::ci::run;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// Every Debian package the project needs, with who needs it. The one list: README and CI rely on it.
const PACKAGES: &[(&str, &str)] = &[
    // bindgen (libosdp-sys today, the v4l crate's v4l2-sys-mit next) loads libclang in its build script: every
    // build of the runtime, host or aarch64, fails without it.
    ("libclang-dev", "bindgen in libosdp-sys and v4l2-sys-mit: every build"),
    // The aarch64 linker and C compiler named in .cargo/config.toml (tract-linalg and libosdp have C parts).
    ("gcc-aarch64-linux-gnu", "cross linker and C compiler: dist, test-aarch64"),
    // aarch64 glibc to link against; also the sysroot qemu-aarch64 is given with `-L`.
    ("libc6-dev-arm64-cross", "aarch64 glibc and headers: dist, test-aarch64"),
    // qemu-aarch64, the runner of the aarch64 tests (.cargo/config.toml).
    ("qemu-user", "runs the aarch64 tests: test-aarch64"),
    // `cargo xtask vm-test` boots real kernels (vivid, the V4L2 test driver) in these guests.
    ("qemu-system-x86", "x86_64 guest: vm-test"),
    ("qemu-system-arm", "arm64 guest: vm-test"),
    ("busybox-static", "the guest's init and shell: vm-test"),
    ("kmod", "depmod for the guest kernel's modules: vm-test"),
    ("cpio", "the guest's initramfs: vm-test, systemd-test"),
    ("debootstrap", "the Debian root with systemd as PID 1: systemd-test"),
    // `cargo xtask ci` creates two virtual environments (the OSDP control panel, the training pipeline);
    // Debian's python3 cannot make one without this package.
    ("python3-venv", "virtual environments of tests/osdp and models/distill: ci"),
    // `promtool check metrics` on a scrape of the runtime's Prometheus endpoint (tests/metrics.rs).
    ("prometheus", "promtool, the metrics endpoint's check: ci"),
    // The broker the fleet output's tests start (tests/mqtt.rs); mosquitto_sub is their late subscriber.
    ("mosquitto", "the MQTT broker of the fleet output's tests: ci"),
    ("mosquitto-clients", "mosquitto_sub, a subscriber in the fleet output's tests: ci"),
    // libfaketime: `cargo xtask reliability` jumps the runtime's wall clock forward and back.
    ("faketime", "wall-clock jumps: reliability"),
];

/// The Jetson's Rust target.
pub const AARCH64: &str = "aarch64-unknown-linux-gnu";

pub fn setup() -> Result<()> {
    install_packages()?;
    rustup()?;
    // `cargo deny check` in ci (deny.toml); cargo-fuzz is installed by `cargo xtask fuzz` itself.
    cargo_tool("deny", CARGO_DENY_VERSION)
}

/// The cargo-deny release ci runs (its deny.toml schema is version 2).
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// Installs the cargo subcommand `cargo-<tool>` at exactly `version` (`cargo install --locked`, into cargo's
/// own bin directory, which a CI cache keeps), unless that version is already there.
pub fn cargo_tool(tool: &str, version: &str) -> Result<()> {
    let installed = Command::new(crate::ci::cargo()).args([tool, "--version"]).output();
    let text =
        installed.map(|output| String::from_utf8_lossy(&output.stdout).to_string()).unwrap_or_default();
    if text.split_whitespace().any(|word| word == version) {
        return Ok(());
    }
    let package = format!("cargo-{tool}");
    run(&crate::ci::cargo(), &["install", &package, "--version", version, "--locked"])
        .with_context(|| format!("installing {package} {version} (crates.io must be reachable once)"))
}

fn install_packages() -> Result<()> {
    let names: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).collect();
    if Command::new("dpkg-query").arg("--version").output().is_err() {
        bail!(
            "cargo xtask setup installs Debian packages with apt-get, and this machine has no dpkg-query: install \
             the equivalents of these by hand, then run it again: {}",
            names.join(" ")
        );
    }
    let missing: Vec<&str> = names.iter().copied().filter(|name| !installed(name)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing Debian packages {}", missing.join(" "));
    for (name, needed_by) in PACKAGES.iter().filter(|(name, _)| missing.contains(name)) {
        eprintln!("  {name}: {needed_by}");
    }
    // Root installs directly; anyone else goes through sudo (a CI runner or a developer machine).
    let sudo = !is_root();
    if sudo && Command::new("sudo").arg("--version").output().is_err() {
        bail!(
            "installing {} needs root, and sudo is not installed: run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    let apt = |arguments: &[&str]| -> Result<()> {
        let (program, arguments) = if sudo {
            ("sudo", [&["DEBIAN_FRONTEND=noninteractive", "apt-get"], arguments].concat())
        } else {
            ("env", [&["DEBIAN_FRONTEND=noninteractive", "apt-get"], arguments].concat())
        };
        run(program, &arguments).context("apt-get failed: check the network and /etc/apt/sources.list, or install the packages above by hand")
    };
    apt(&["update"])?;
    // Without --no-install-recommends qemu pulls in GTK and a desktop's worth of libraries.
    apt(&[&["install", "-y", "--no-install-recommends"], missing.as_slice()].concat())?;
    let still: Vec<&str> = missing.into_iter().filter(|name| !installed(name)).collect();
    if !still.is_empty() {
        bail!("apt-get reported success but {} are still not installed", still.join(" "));
    }
    Ok(())
}

/// Whether dpkg has the package fully installed (not merely known, removed or half-configured).
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|output| output.status.success() && output.stdout == b"install ok installed")
}

pub(crate) fn is_root() -> bool {
    // The real user id from the kernel, without a libc dependency for one call.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .is_some_and(|ids| ids.split_whitespace().next() == Some("0"))
    })
}

/// The aarch64 target and the rustfmt and clippy components, added only when missing.
fn rustup() -> Result<()> {
    let rustup_available = Command::new("rustup").arg("--version").output().is_ok();
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has_target = targets.as_ref().is_ok_and(|output| {
        String::from_utf8_lossy(&output.stdout).lines().any(|line| line.trim() == AARCH64)
    });
    if !has_target {
        if !rustup_available {
            bail!("the Rust target {AARCH64} is needed (dist, test-aarch64) and rustup is not installed to add it");
        }
        run("rustup", &["target", "add", AARCH64])?;
    }
    let has = |tool: &str| {
        Command::new(crate::ci::cargo())
            .args([tool, "--version"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !has("fmt") || !has("clippy") {
        run("rustup", &["component", "add", "rustfmt", "clippy"])?;
    }
    Ok(())
}
