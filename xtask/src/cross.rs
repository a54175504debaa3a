//! The Jetson (aarch64) build: the release binary `dist` bundles, and `cargo xtask test-aarch64`, the tests
//! that matter on the board run on that same build under qemu-user with the pinned CPU of .cargo/config.toml.

use crate::ci::{cargo, run, target_dir};
use crate::setup::AARCH64;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Integration tests run on aarch64, and why each one that is left out is left out. Real inference runs
/// through tract's aarch64 (NEON) kernels in `faces`, `models` and `allocation` (which counts tract's
/// allocations on the aarch64 code path).
const TESTS: &[(&str, Option<&str>)] = &[
    ("faces", None),
    ("models", None),
    ("allocation", None),
    ("health", None),
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
    (
        "hostile",
        Some(
            "decodes thousands of corrupted files in portable Rust (no aarch64-specific code path): 2 minutes \
             under qemu-user for what the x86_64 run already shows",
        ),
    ),
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
    smoke_run()?;
    neon_check(&target_dir().join(AARCH64).join("release/deepgate"))
}

/// The CPU reference's warp (`preprocess::cpu::Warper::warp`, every letterbox and crop) in the aarch64 release
/// binary, whose unit tests just ran bit for bit under qemu-user.
const NEON_FUNCTION: &str = "deepgate::preprocess::cpu::Warper::warp";

/// Fewer instructions on NEON vector registers than this in `NEON_FUNCTION` means the compiler stopped
/// vectorising its loops (about 1 100 in December 2026).
const MIN_NEON_INSTRUCTIONS: usize = 400;

/// The aarch64 build's NEON path: the pixel loops are portable Rust that LLVM vectorises for Advanced SIMD
/// (which every aarch64 CPU has), so the path the parity tests above check under qemu is the NEON one only as
/// long as the compiler keeps vectorising them. Counts the instructions on vector registers (`v0.4s`, `v1.16b`,
/// ...) in the release binary's `NEON_FUNCTION` and fails below `MIN_NEON_INSTRUCTIONS`. Its speed on a board
/// cannot be measured here (qemu-user emulates it).
fn neon_check(binary: &std::path::Path) -> Result<()> {
    let symbols = output("aarch64-linux-gnu-nm", &["-C", "-S", &binary.to_string_lossy()])?;
    let (start, size) = symbols
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(4, ' ');
            let (start, size, _kind, name) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            let name = name.trim();
            // Rust symbols end in a hash when demangled without it: `...::warp` is the whole name here.
            (name == NEON_FUNCTION)
                .then(|| Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(size, 16).ok()?)))?
        })
        .with_context(|| {
            format!("{NEON_FUNCTION} is not in {} (renamed? update NEON_FUNCTION)", binary.display())
        })?;
    let disassembly = output(
        "aarch64-linux-gnu-objdump",
        &[
            "-d",
            "--no-show-raw-insn",
            &format!("--start-address={start:#x}"),
            &format!("--stop-address={:#x}", start + size),
            &binary.to_string_lossy(),
        ],
    )?;
    let (neon, all) = count_neon(&disassembly);
    eprintln!("test-aarch64: {NEON_FUNCTION}: {neon} of {all} instructions on NEON vector registers");
    if neon < MIN_NEON_INSTRUCTIONS {
        bail!(
            "{NEON_FUNCTION} has only {neon} NEON vector instructions (at least {MIN_NEON_INSTRUCTIONS} expected): \
             the compiler no longer vectorises the pixel loops for aarch64"
        );
    }
    Ok(())
}

/// Instructions (lines `address:<tab>mnemonic<tab>operands`) and those with an operand on a vector register
/// with an arrangement (`v3.4s`, `v0.16b`, `v2.2d`...), in objdump's output.
fn count_neon(disassembly: &str) -> (usize, usize) {
    let instructions: Vec<&str> = disassembly
        .lines()
        .filter_map(|line| {
            let (address, rest) = line.split_once(':')?;
            (!address.trim().is_empty() && address.trim().chars().all(|c| c.is_ascii_hexdigit()))
                .then_some(rest)
        })
        .collect();
    let vector = |operand: &str| {
        operand.trim().strip_prefix('v').is_some_and(|rest| {
            rest.split_once('.').is_some_and(|(register, lanes)| {
                register.parse::<u8>().is_ok()
                    && ["16b", "8b", "8h", "4h", "4s", "2s", "2d"]
                        .contains(&lanes.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
            })
        })
    };
    let neon = instructions
        .iter()
        .filter(|rest| rest.split('\t').nth(2).is_some_and(|operands| operands.split(',').any(vector)))
        .count();
    (neon, instructions.len())
}

/// A tool's standard output, failing with its standard error.
fn output(program: &str, arguments: &[&str]) -> Result<String> {
    let result = std::process::Command::new(program)
        .args(arguments)
        .output()
        .with_context(|| format!("starting {program} (Debian package binutils-aarch64-linux-gnu)"))?;
    if !result.status.success() {
        bail!("{program} failed ({}): {}", result.status, String::from_utf8_lossy(&result.stderr));
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
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

/// The newest glibc a Jetson has: JetPack 6 is Ubuntu 22.04, glibc 2.35. This machine's cross glibc (Debian
/// bookworm) is 2.36, so a dependency that starts using a newer symbol would link here and fail to start there.
const BOARD_GLIBC_MINOR: u32 = 35;

/// Checks that the binary needs no glibc symbol version newer than the board's. The versions a binary needs are
/// named in its dynamic string table (`GLIBC_2.34`, ...); a byte scan finds them without an ELF parser.
pub fn check_glibc(path: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let newest = glibc_versions(&bytes).max();
    if let Some(minor) = newest.filter(|minor| *minor > BOARD_GLIBC_MINOR) {
        bail!(
            "{} needs GLIBC_2.{minor}, newer than the board's glibc 2.{BOARD_GLIBC_MINOR} (JetPack 6, Ubuntu 22.04): \
             it would not start there; find the dependency that needs it (`aarch64-linux-gnu-objdump -T`)",
            path.display()
        );
    }
    Ok(())
}

/// The minor numbers of every `GLIBC_2.N` name in the bytes.
fn glibc_versions(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    const PREFIX: &[u8] = b"GLIBC_2.";
    bytes.windows(PREFIX.len()).enumerate().filter(|(_, window)| *window == PREFIX).filter_map(
        |(start, _)| {
            let digits: Vec<u8> = bytes[start + PREFIX.len()..]
                .iter()
                .copied()
                .take_while(u8::is_ascii_digit)
                .take(3)
                .collect();
            std::str::from_utf8(&digits).ok()?.parse().ok()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::{check_aarch64_elf, count_neon, glibc_versions};

    #[test]
    fn neon_instructions_are_those_on_arranged_vector_registers() {
        let disassembly = "\n0000000000353f78 <_ZN8deepgate4warp17h0E>:\n  353f78:\tstp\tx29, x30, [sp, #-96]!\n  \
            3569c8:\tfsub\tv1.4s, v1.4s, v2.4s\n  3569d0:\tfmul\tv1.4s, v1.4s, v0.s[0]\n  3569d4:\tldr\tq0, [x8]\n  \
            3569d8:\tuzp1\tv0.16b, v0.16b, v1.16b\n  3569dc:\tfadd\ts0, s0, s1\n";
        assert_eq!(count_neon(disassembly), (3, 6));
    }

    #[test]
    fn glibc_versions_are_read_from_the_names() {
        let bytes = b"\0GLIBC_2.17\0GLIBC_2.35\0GLIBC_2.3.4\0GLIBC_PRIVATE\0GLIBC_2.";
        assert_eq!(glibc_versions(bytes).collect::<Vec<_>>(), [17, 35, 3]);
    }

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
