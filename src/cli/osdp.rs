//! `deepgate osdp reset-key --board FILE`: the local reset of the OSDP site key. It removes the key file and the
//! record of the install window, so that the next start of `deepgate run` arms install mode again for
//! `install_window_s`. It needs write access to the state directory on the device itself; the controller cannot
//! do it over the line, and a restart alone never re-arms install mode.

use anyhow::{bail, Result};
use deepgate::config::BoardConfig;
use deepgate::gate::GateSection;
use std::path::Path;
use std::process::ExitCode;

pub fn reset_key(board: &Path) -> Result<ExitCode> {
    let config = BoardConfig::load(board)?;
    let GateSection::Osdp(section) = &config.gate else {
        bail!("{}: `[gate] kind` is not \"osdp\"; there is no OSDP site key to reset", board.display());
    };
    if section.install_window_s == 0 {
        bail!(
            "{}: gate.install_window_s is 0, so after a reset no controller could set a site key again; set it \
             (at most {} s) first",
            board.display(),
            deepgate::gate::osdp::MAX_INSTALL_WINDOW_S
        );
    }
    let key = config.resolve(&section.key);
    let removed = deepgate::gate::osdp::reset_site_key(&key)?;
    log::warn!(
        "OSDP site key {} by a local reset ({}); the next start arms install mode for {} s: the public default \
         key is then accepted until a controller sets a new site key",
        if removed { "REMOVED" } else { "reset (there was none)" },
        key.display(),
        section.install_window_s
    );
    Ok(ExitCode::SUCCESS)
}
