//! `deepgate run`: the main job. The signal handlers, then the library's supervisor (`deepgate::supervisor`)
//! plays the board's source through the pipeline and delivers verdicts to the board's gates; SIGINT or
//! SIGTERM ends it cleanly between frames, and so does SIGHUP: there is no reload, the unit's `Restart=always`
//! starts it again with the configuration as it now is (README, "Site configuration").

use anyhow::{Context, Result};
use deepgate::supervisor::{Outputs, Supervisor};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub fn run(board: &Path) -> Result<ExitCode> {
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
