//! `cargo xtask distill <step> [config]`: the training pipeline of `models/distill` (Python + PyTorch) in its own
//! virtual environment, created from the pinned `requirements.txt` on first use and re-created when that file
//! changes. The steps themselves are Python (`python -m distill --help`); this only sets up and dispatches.

use crate::ci::root;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

fn distill_dir() -> PathBuf {
    root().join("models/distill")
}

/// The training pipeline's python, installing its pinned requirements when they are missing or have changed.
pub fn environment() -> Result<PathBuf> {
    python_environment(&distill_dir())
}

/// The reference runtimes the pipeline's unit tests check its backbones against, installed when missing or
/// changed: dlib's python (a prebuilt wheel in its own environment) and TensorFlow.js's npm project directory
/// (pinned packages).
pub(crate) fn reference_environments() -> Result<(PathBuf, PathBuf)> {
    let dlib = python_environment(&distill_dir().join("reference"))?;
    let tfjs = distill_dir().join("reference/tfjs");
    node_environment(&tfjs)?;
    Ok((dlib, tfjs))
}

/// The python of the virtual environment `directory/.venv`, created from `directory/requirements.txt` (pinned)
/// when it is missing, and re-created when that file has changed since.
pub fn python_environment(directory: &std::path::Path) -> Result<PathBuf> {
    let venv = directory.join(".venv");
    let python = venv.join("bin/python");
    let requirements_path = directory.join("requirements.txt");
    let requirements = std::fs::read_to_string(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let stamp = venv.join("requirements.installed");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == requirements) {
        return Ok(python);
    }
    eprintln!("xtask: installing {} into {} (once)", requirements_path.display(), venv.display());
    let system_python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    check(Command::new(&system_python).args(["-m", "venv"]).arg(&venv), "creating the virtual environment")?;
    check(
        Command::new(&python)
            // No wheel cache: torch's wheels are ~3 GB that would stay on disk beside the installed copy.
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir", "-r"])
            .arg(&requirements_path),
        "installing the pinned requirements",
    )?;
    std::fs::write(&stamp, requirements)?;
    Ok(python)
}

/// The `node_modules` of the npm project in `directory`, installed from its committed `package-lock.json` with
/// `npm ci` when missing, and again when the lock file has changed since.
pub fn node_environment(directory: &std::path::Path) -> Result<PathBuf> {
    let modules = directory.join("node_modules");
    let lock_path = directory.join("package-lock.json");
    let lock =
        std::fs::read_to_string(&lock_path).with_context(|| format!("reading {}", lock_path.display()))?;
    let stamp = modules.join("package-lock.installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == lock) {
        return Ok(modules);
    }
    eprintln!("xtask: installing {} into {} (once)", lock_path.display(), modules.display());
    check(
        Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--silent"]).current_dir(directory),
        "installing the pinned npm packages (needs Node.js and npm)",
    )?;
    std::fs::write(&stamp, lock)?;
    Ok(modules)
}

fn check(command: &mut Command, what: &str) -> Result<()> {
    let status = command.status().with_context(|| format!("{what}: could not start {command:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs `python -m distill <step> --config <config>` (config relative to models/distill, default the shipped
/// recipe `configs/full.toml`); `test` runs the pipeline's unit tests.
pub fn distill(arguments: &[String]) -> Result<()> {
    let binary = match std::env::var_os("DEEPGATE") {
        Some(path) => PathBuf::from(path),
        // The unit tests do not run the runtime; every step does.
        None if arguments.first().is_some_and(|step| step == "test") => PathBuf::from("deepgate"),
        None => crate::ci::deepgate_binary(true)?,
    };
    distill_with(arguments, &binary)
}

/// As `distill`, driving the given `deepgate` binary.
pub fn distill_with(arguments: &[String], binary: &std::path::Path) -> Result<()> {
    let python = environment()?;
    let mut command = Command::new(&python);
    command.current_dir(distill_dir());
    match arguments {
        [step] if step == "test" => {
            // The face-recognition backbones are checked against their real runtimes (dlib), and the HSE FaceRes
            // conversion against TensorFlow.js's CPU backend, with their pinned weights fetched: these tests may
            // not skip here.
            let (dlib, tfjs) = reference_environments()?;
            command
                .env("DLIB_PYTHON", dlib)
                .env("DEEPGATE_REQUIRE_DLIB", "1")
                .env("TFJS_REFERENCE", &tfjs)
                .env("DEEPGATE_REQUIRE_TFJS", "1")
                .env("DEEPGATE_FETCH_WEIGHTS", "1");
            command.args(["-m", "unittest", "discover", "-s", "tests", "-t", "."]);
        }
        [step, rest @ ..] if rest.len() <= 1 => {
            let config = rest.first().map_or("configs/full.toml", String::as_str);
            command.args(["-m", "distill", step, "--config", config]);
        }
        _ => bail!("usage: cargo xtask distill <step|all|test> [config]"),
    }
    command.env("DEEPGATE", binary);
    check(&mut command, "the distill step")
}
