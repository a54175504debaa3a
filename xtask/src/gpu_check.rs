//! `cargo xtask gpu-check`: the checks of the CUDA path that need a GPU, packed to run on a GPU machine that has
//! the CUDA driver and NVRTC but no Rust (the H100 test machine). It builds, for x86_64 with the CUDA API version
//! given (default `cuda-13000`), the `deepgate` binary and the test programs whose GPU tests skip elsewhere,
//! strips them, packs them into one xz archive (they share most of their code, which xz finds across files),
//! and writes `run.sh` beside it. On the GPU machine, in a copy of this source tree:
//!
//! ```sh
//! target/gpu-check/run.sh        # results and logs in $OUT, else ./gpu-check-results
//! ```
//!
//! `run.sh` runs `deepgate probe --gpu`, the kernel parity tests (copy and zero-copy), the binary-level tests
//! (fallback, fault injection mid-stream, models on tract's CUDA runtime), the GPU allocation test and
//! `deepgate bench-gpu --torch python3`; any failure or any test that still skips makes it exit 1.

use crate::ci::target_dir;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The test programs carried, by the name cargo gives their target (`deepgate` is the library's unit tests).
const TESTS: &[&str] = &["gpu", "models", "allocation"];

const RUN_SH: &str = include_str!("gpu_check_run.sh");

pub fn gpu_check(arguments: &[String]) -> Result<()> {
    let feature = match arguments {
        [] => "cuda-13000".to_string(),
        [flag, value] if flag == "--cuda" => value.clone(),
        _ => bail!("usage: cargo xtask gpu-check [--cuda cuda-13000|cuda-12020]"),
    };
    let built = build(&feature)?;
    let out = target_dir().join("gpu-check");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin)?;
    for (name, executable) in &built {
        let copy = bin.join(name);
        std::fs::copy(executable, &copy).with_context(|| format!("copying {}", executable.display()))?;
        // Debug sections are most of a test binary; the GPU machine needs none of them.
        crate::ci::run("strip", &["--strip-debug", &copy.to_string_lossy()])?;
    }
    let archive = out.join("bin.tar.xz");
    eprintln!("\n$ tar -C {} -cf - bin | xz -9 > {}", out.display(), archive.display());
    let tar = Command::new("tar")
        .args(["-C"])
        .arg(&out)
        .args(["-cf", "-", "bin"])
        .stdout(Stdio::piped())
        .spawn()?;
    let status = Command::new("xz")
        .args(["-9", "-T1"])
        .stdin(tar.stdout.context("tar's output")?)
        .stdout(std::fs::File::create(&archive)?)
        .status()
        .context("starting xz (Debian: xz-utils)")?;
    if !status.success() {
        bail!("xz failed");
    }
    std::fs::remove_dir_all(&bin)?;
    let script = out.join("run.sh");
    std::fs::write(&script, RUN_SH)?;
    make_executable(&script)?;
    let size = std::fs::metadata(&archive)?.len();
    eprintln!(
        "\ngpu-check: {} ({:.1} MiB, {} programs) and {}; on the GPU machine, in a copy of this tree: \
         target/gpu-check/run.sh",
        archive.display(),
        size as f64 / (1 << 20) as f64,
        built.len(),
        script.display()
    );
    Ok(())
}

/// Builds `deepgate` and the test programs with `feature` and returns (name, executable) for each.
fn build(feature: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut arguments =
        vec!["test", "--locked", "--no-run", "--no-default-features", "--features", feature, "--lib"];
    for test in TESTS {
        arguments.extend(["--test", test]);
    }
    let mut built = Vec::new();
    for executable in crate::ci::cargo_executables(&arguments).context("building the GPU checks")? {
        let carried = match (executable.kind.as_str(), executable.test) {
            ("bin", false) if executable.name == "deepgate" => "deepgate".to_string(),
            ("lib", true) => "lib-tests".to_string(),
            ("test", true) if TESTS.contains(&executable.name.as_str()) => executable.name,
            _ => continue,
        };
        if !built.iter().any(|(known, _)| *known == carried) {
            built.push((carried, executable.path));
        }
    }
    if built.len() != TESTS.len() + 2 {
        bail!("cargo named {:?}; expected deepgate, lib-tests and {TESTS:?}", built);
    }
    Ok(built)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
