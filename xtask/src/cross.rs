//! The Jetson (aarch64) build: the release binary `dist` bundles, and `cargo xtask test-aarch64`, the tests
//! that matter on the board run on that same build under qemu-user with the pinned CPU of .cargo/config.toml.

use crate::ci::{cargo, run, target_dir};
use crate::setup::AARCH64;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Integration tests run on aarch64, and why each one that is left out is left out. Real inference runs
/// through tract's aarch64 (NEON) kernels in `faces`, `models`, `allocation` and `hostile`.
const TESTS: &[(&str, Option<&str>)] = &[
    ("faces", None),
    ("models", None),
    ("allocation", None),
    ("health", None),
    ("hostile", None),
    ("relay", None),
    ("relay_panic", None),
    ("tcp_gate", None),
    (
        "cli",
        Some(
            "spawns the deepgate binary, an aarch64 program that the emulated test cannot start without the host \
             registering qemu with binfmt_misc (CI machines do not)",
        ),
    ),
    ("osdp", Some("drives a control panel written in Python (PyPI libosdp), a host-only program")),
];

/// The build settings shared by `dist` and `test-aarch64`: the same profile and target, so that the
/// dependencies (tract above all) compile once for both. The linker, C compiler and runner come from
/// .cargo/config.toml.
const PROFILE: [&str; 4] = ["--release", "--locked", "--target", AARCH64];

/// Builds the release `deepgate` binary for the Jetson and returns its path.
pub fn build_binary() -> Result<PathBuf> {
    let arguments = [&["build"], PROFILE.as_slice(), &["--bin", "deepgate"]].concat();
    run(&cargo(), &arguments).context(cross_hint())?;
    Ok(target_dir().join(AARCH64).join("release/deepgate"))
}

/// `cargo xtask test-aarch64`: the library's unit tests and the integration tests that matter on the board.
pub fn test_aarch64() -> Result<()> {
    for (test, reason) in TESTS {
        if let Some(reason) = reason {
            eprintln!("test-aarch64: skipping tests/{test}.rs: it {reason}");
        }
    }
    let mut arguments = [&["test"], PROFILE.as_slice(), &["--lib"]].concat();
    for (test, _) in TESTS.iter().filter(|(_, reason)| reason.is_none()) {
        arguments.extend(["--test", test]);
    }
    run(&cargo(), &arguments).context(cross_hint())?;
    smoke_run()
}

/// Runs the release binary (the one `dist` bundles) on a sample photo under the same runner, and checks from
/// tract's own start-up log that it chose NEON kernels: tract logs its CPU detection at info level, and an
/// "SVE" line would mean the runner's CPU pin is gone and the tests above measured kernels no Orin has.
fn smoke_run() -> Result<()> {
    let photo = "tests/fixtures/faces/astronaut.png";
    let arguments =
        [&["run", "--quiet"], PROFILE.as_slice(), &["--bin", "deepgate", "--", "replay", photo]].concat();
    eprintln!("\n$ RUST_LOG=tract_linalg=info,warn cargo {}", arguments.join(" "));
    let output = std::process::Command::new(cargo())
        .args(&arguments)
        .env("RUST_LOG", "tract_linalg=info,warn")
        .current_dir(crate::ci::root())
        .output()
        .context("starting cargo run")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("the aarch64 binary failed on {photo} ({}):\n{stderr}", output.status);
    }
    // A verdict with a fake probability: the detector found the face and the classifier judged it.
    let judged =
        |line: &str| line.contains("\"type\":\"verdict\"") && !line.contains("\"fake_probability\":null");
    if !stdout.lines().any(judged) {
        bail!("the aarch64 binary judged no face on {photo}:\n{stdout}\n{stderr}");
    }
    let tract: Vec<&str> = stderr.lines().filter(|line| line.contains("tract_linalg")).collect();
    if tract.iter().any(|line| line.contains("SVE")) {
        bail!(
            "tract chose SVE kernels under qemu-user, which no Jetson has: is the runner's `-cpu neoverse-n1` in \
             .cargo/config.toml?\n{}",
            tract.join("\n")
        );
    }
    eprintln!(
        "test-aarch64: the release binary gave its verdict on {photo}; tract's CPU detection (no SVE):"
    );
    for line in tract {
        eprintln!("  {line}");
    }
    Ok(())
}

fn cross_hint() -> String {
    format!(
        "the {AARCH64} build or its tests failed; if the cross linker, the target or qemu-aarch64 is missing, run \
         `cargo xtask setup`"
    )
}

/// Checks that a file is an aarch64 ELF executable (e_machine 183, EM_AARCH64): a host binary or a stale
/// artefact in the bundle would only fail on the board.
pub fn check_aarch64_elf(path: &std::path::Path) -> Result<()> {
    let mut header = [0u8; 20];
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::Read::read_exact(&mut file, &mut header)
        .with_context(|| format!("{} is too short to be an ELF executable", path.display()))?;
    if header[..4] != *b"\x7fELF" {
        bail!("{} is not an ELF file", path.display());
    }
    // EI_CLASS 2 (64-bit) and EI_DATA 1 (little-endian), then e_machine at offset 18 in that byte order.
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if header[4] != 2 || header[5] != 1 || machine != 183 {
        bail!(
            "{} is not a 64-bit little-endian aarch64 executable (class {}, data {}, e_machine {machine}; \
             aarch64 is 183, x86_64 62)",
            path.display(),
            header[4],
            header[5]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_aarch64_elf;

    #[test]
    fn the_elf_check_refuses_anything_but_aarch64() {
        let directory = std::env::temp_dir().join(format!("xtask-elf-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let elf = |machine: u16| {
            let mut header = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0".to_vec();
            header.extend(machine.to_le_bytes());
            header.extend([0u8; 44]);
            header
        };
        let cases: [(&str, Vec<u8>, bool); 4] = [
            ("aarch64", elf(183), true),
            ("x86_64", elf(62), false),
            ("script", b"#!/bin/sh\necho not an executable at all\n".to_vec(), false),
            ("short", b"\x7fELF".to_vec(), false),
        ];
        for (name, bytes, accepted) in cases {
            let path = directory.join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(check_aarch64_elf(&path).is_ok(), accepted, "{name}");
        }
        // The x86_64 executable that runs this test is refused too.
        assert!(check_aarch64_elf(&std::env::current_exe().unwrap()).is_err());
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
