//! `deepgate run`: the main job. The signal handlers, then the library's supervisor (`deepgate::supervisor`)
//! plays the board's source through the pipeline and delivers verdicts to the board's gates; SIGINT or
//! SIGTERM ends it cleanly between frames, and so does SIGHUP: there is no reload, the unit's `Restart=always`
//! starts it again with the configuration as it now is (README, "Site configuration").

use anyhow::{Context, Result};
use deepgate::supervisor::{Outputs, Supervisor};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The exit status of a process ended by a panic (as Rust's own for a panic on the main thread).
pub const PANIC_EXIT: i32 = 101;

pub fn run(board: &Path) -> Result<ExitCode> {
    exit_on_panic();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        // A second signal while the first is being handled ends the process at once (exit status 1), for
        // an operator whose clean stop is stuck; the first only sets the flag checked between frames.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    let config = super::config_check::load_board(board)?;
    log::info!("board `{}`: {}", config.board.id, config.board.description);
    let outputs = Outputs::open(&config)?;
    let Some(mut supervisor) = Supervisor::start(&config, outputs, &stop)? else {
        log::info!("stopping on signal before the models were valid");
        return Ok(ExitCode::from(2));
    };
    supervisor.run()?;
    let summary = supervisor.finish();
    Ok(if summary.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The panic policy of `run` (ARCHITECTURE.md, "Failure policy"): a panic on any thread, except inside the
/// contained GPU calls (`deepgate::gpu::contain`, which the runtime falls back from), first puts every door
/// relay in its fault state (the relay's hook, installed here so that it runs first even before a relay is
/// open), then is logged and ends the process with status 101, so that systemd's `Restart=always` starts a
/// fresh one. Nothing half-dead goes on: a gate thread that panicked would otherwise leave verdicts
/// undelivered, a worker that panicked a lock poisoned. The controller sees the link drop (TCP connection
/// closed, OSDP device silent) and then the new process's health.
fn exit_on_panic() {
    deepgate::gate::relay::install_panic_hook();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The relay's hook (the door to its fault state), then the standard message with the location.
        previous(info);
        if deepgate::gpu::contained() {
            return;
        }
        let thread = std::thread::current();
        // Straight to stderr (the journal), not through the logger: the panic may have come from inside it,
        // holding its lock. A failed write is ignored: the exit matters more than the line.
        let _ = writeln!(
            std::io::stderr(),
            "deepgate: thread `{}` panicked: ending the process (exit status {PANIC_EXIT}) for a restart; door \
             relay in its fault state",
            thread.name().unwrap_or("unnamed")
        );
        std::process::exit(PANIC_EXIT);
    }));
}
