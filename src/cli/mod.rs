//! One module per subcommand; each returns the process exit code (0 success, 1 some input failed, 2 fatal).

pub mod audit;
pub mod bench;
pub mod bench_gpu;
pub mod calibrate;
pub mod capture;
pub mod config_check;
pub mod crops;
pub mod enroll;
pub mod eval;
pub mod explain;
pub mod install;
pub mod logging;
pub mod osdp;
pub mod output;
pub mod probe;
pub mod replay;
pub mod run;

use anyhow::Result;
use deepgate::config::BoardConfig;
use deepgate::pipeline::{Models, Pipeline};
use std::path::Path;

/// Loads the board config and builds its pipeline (models verified, optimised and warmed up).
pub fn start(board: &Path) -> Result<(BoardConfig, Pipeline)> {
    let config = config_check::load_board(board)?;
    log::info!("board `{}`: {}", config.board.id, config.board.description);
    let models = Models::load(&config)?;
    let pipeline = Pipeline::new(&config, models)?;
    log::info!("{}", deepgate::supervisor::startup_line(&config, &pipeline));
    Ok((config, pipeline))
}
