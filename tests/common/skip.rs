//! Skipping a test that needs an environment this machine lacks, visibly: one line per skip,
//! `SKIPPED [<need>] <test>: <reason>`, written to the process's standard error directly, so that it shows in
//! `cargo test` output even though the test passes (libtest captures only `print!` and `eprint!`).
//!
//! `DEEPGATE_REQUIRE` (a comma-separated list of needs, e.g. `osdp,nvrtc`) turns those skips into failures:
//! `cargo xtask ci` sets it for every environment it provides, so nothing it can run is ever skipped silently.

use std::io::Write;

/// The prefix of every skip line; `cargo xtask ci` and `cargo xtask vm-test` look for it.
pub const SKIPPED: &str = "SKIPPED";

/// An environment a test may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A Python with PyPI's libosdp for the control panel (tests/osdp).
    Osdp,
    /// The guest of `cargo xtask vm-test` (real V4L2 drivers).
    Vm,
    /// libnvrtc, to compile the CUDA kernels (no GPU needed).
    Nvrtc,
    /// A usable GPU (driver, NVRTC, a device).
    Gpu,
    /// No usable GPU: the tests of what happens without one.
    NoGpu,
    /// Prometheus' `promtool` (Debian's `prometheus`), to check the metrics endpoint's output.
    Promtool,
    /// Debian's `mosquitto` broker, started by the test (tests/mqtt.rs).
    Mosquitto,
}

impl Need {
    /// The name `DEEPGATE_REQUIRE` and the skip line use.
    pub fn name(self) -> &'static str {
        match self {
            Need::Osdp => "osdp",
            Need::Vm => "vm",
            Need::Nvrtc => "nvrtc",
            Need::Gpu => "gpu",
            Need::NoGpu => "no-gpu",
            Need::Promtool => "promtool",
            Need::Mosquitto => "mosquitto",
        }
    }
}

/// Whether `requirements` (the value of `DEEPGATE_REQUIRE`) names `need`.
pub fn requires(requirements: &str, need: Need) -> bool {
    requirements.split(',').any(|name| name.trim() == need.name())
}

/// The running test's name: libtest runs each test on a thread named after it.
fn test_name() -> String {
    std::thread::current().name().unwrap_or("<unnamed test>").to_string()
}

/// The skip line for `test`.
pub fn line(need: Need, test: &str, reason: &str) -> String {
    format!("{SKIPPED} [{}] {test}: {reason}", need.name())
}

/// Says that the running test does not run here because `need` is missing (`reason`), and returns so that the
/// caller can `return`; panics instead when `DEEPGATE_REQUIRE` names `need`.
pub fn skip(need: Need, reason: &str) {
    let test = test_name();
    let requirements = std::env::var("DEEPGATE_REQUIRE").unwrap_or_default();
    assert!(
        !requires(&requirements, need),
        "{test} needs {} and DEEPGATE_REQUIRE={requirements} says this machine has it, but: {reason}",
        need.name()
    );
    // One write of a whole line, so that parallel tests do not interleave within it.
    let _ = std::io::stderr().lock().write_all(format!("{}\n", line(need, &test, reason)).as_bytes());
}
