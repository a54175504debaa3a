//! `cargo xtask <task>`: the project's own tooling (set-up, CI). Only dispatch lives here; one file per task.

mod bench_peer;
mod ci;
mod cross;
mod dist;
mod distill;
mod fuzz;
mod gpu_check;
mod notices;
mod reliability;
mod setup;
mod systemd_test;
mod tidy;
mod vm;

use std::process::ExitCode;

pub(crate) const HELP: &str = "\
cargo xtask <task>

tasks:
  ci      the whole test suite as CI runs it: set-up, rustfmt check, clippy -D warnings, cargo deny
          (licences, bans, sources), every test (the CUDA kernels compiled by NVRTC from PyPI), fuzz (20 s
          per target), the training pipeline's unit tests and its miniature end-to-end run, the Jetson
          build (dist --board jetson-orin-nano) and its tests under qemu-user (test-aarch64), then vm-test
          for both guests and systemd-test
  setup   install what every task needs on a fresh Debian machine, only what is missing: Debian packages
          (libclang, the aarch64 cross toolchain, qemu), the aarch64 Rust target, rustfmt and clippy,
          cargo-deny (pinned)
  dist --board <name> (--signing-key FILE | --unsigned)
          the Jetson bundle: target/dist/deepgate-<version>-<name>-aarch64.tar.gz (aarch64 release binary,
          board config, models, systemd unit, LICENSE, THIRD-PARTY-NOTICES from Cargo.lock, SHA256SUMS);
          <name> is a board/<name>.toml; with its Ed25519 signature (.sig) for `deepgate install`
  test-aarch64
          the library's unit tests and the board's integration tests on the aarch64 release build, under
          qemu-user with the CPU pinned to a Neoverse-N1 (NEON, no SVE, like Orin's Cortex-A78AE)
  distill <step|all|test> [config]
          the classifier's training pipeline (models/distill): faces, separability, teacher, student,
          export, evaluate; config defaults to configs/full.toml (the shipped student's recipe)
  bench-peer [--rounds N] [--frames N] [--sizes 640x480,1280x720] [--formats YUYV,NV12,MJPEG] [--json]
          deepgate bench against its Python peer (bench/peer.py: OpenCV, onnxruntime, numpy, pinned in
          bench/requirements.txt, in bench/.venv) on the same frames, alternately, one thread each: per-stage
          medians and ratios per size and format; fails unless the peer's faces agree with deepgate's
          (--check: one short round, agreement only, as ci runs it)
  gpu-check [--cuda cuda-13000|cuda-12020]
          build deepgate and the tests whose GPU checks skip without a GPU (x86_64, that CUDA API version,
          default cuda-13000), pack them into <target>/gpu-check with run.sh, which runs them on a GPU machine
          that has no Rust (kernel parity, fault injection, GPU inference, allocations, bench-gpu)
  fuzz [--seconds N] [--target NAME]... [--jobs N]
          the coverage-guided fuzz targets of fuzz/ (every parser of outside input), built with cargo-fuzz
          on stable (--sanitizer none), each run N seconds (default 60), --jobs at a time (default: the
          cores); fails on a crash, hang or memory blow-up; prints executions, exec/s, cov, ft, corpus
  vm-test [--arch x86_64|aarch64|all] [--timeout SECONDS] [--one-at-a-time] [--prepare-only] [-- TEST FILTERS]
          boot Debian's kernel under qemu (x86_64 and aarch64 guests, default all, booted at once unless
          --one-at-a-time) and run tests/vm_guest.rs inside against the vivid and v4l2loopback drivers, each
          guest within --timeout (default 900 s); kernel, headers and modules are cached in <target>/vm-cache
          (--prepare-only fills the cache and stops)
  reliability [--kills N] [--soak-minutes M | --soak-seconds S] [--only kills|disk-full|clock|soak]
          faults measured on `deepgate run` with a TCP gate to an in-harness controller and an audit log:
          SIGKILL N times during spool and audit writes (default 200), the state directory full (a 1 MiB
          tmpfs, needs root), wall-clock jumps (libfaketime), and a soak at 25 frames/s for M minutes
          (default 60) with RSS, descriptors and threads sampled and plotted (<target>/reliability);
          --binary FILE tests that deepgate instead of building one; --plot SAMPLES.csv redraws a soak's plot
";

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("ci") => ci::ci(),
        Some("setup") => setup::setup(),
        Some("dist") => dist::dist(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("test-aarch64") => cross::test_aarch64(),
        Some("vm-test") => vm::vm_test(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("systemd-test") => systemd_test::systemd_test(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("distill") => distill::distill(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("bench-peer") => bench_peer::bench_peer(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("gpu-check") => gpu_check::gpu_check(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("fuzz") => fuzz::fuzz(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("reliability") => reliability::reliability(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprint!("{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}
