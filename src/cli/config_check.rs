//! The site override as the binary finds it (`DEEPGATE_SITE`, else `/etc/deepgate/site.toml`), the board
//! loading every board-driven command shares, and `deepgate config check`: the merged, validated configuration.

use anyhow::Result;
use deepgate::config::site::{self, SiteFile, DEFAULT_SITE};
use deepgate::config::BoardConfig;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The environment variable naming the site file; set but empty: no site override at all.
pub const SITE_VARIABLE: &str = "DEEPGATE_SITE";

/// The site override: `--site FILE` if given, else `DEEPGATE_SITE` (both must exist when named), else the
/// default file when it exists.
pub fn site_file(option: Option<&Path>) -> SiteFile {
    if let Some(path) = option {
        return SiteFile::Named(path.to_path_buf());
    }
    match std::env::var_os(SITE_VARIABLE) {
        Some(value) if value.is_empty() => SiteFile::None,
        Some(value) => SiteFile::Named(PathBuf::from(value)),
        None => SiteFile::Default(PathBuf::from(DEFAULT_SITE)),
    }
}

/// The board config at `board` with this machine's site override over it.
pub fn load_board(board: &Path) -> Result<BoardConfig> {
    let site = site_file(None);
    let config = BoardConfig::load_with_site(board, &site)?;
    if let SiteFile::Named(path) | SiteFile::Default(path) = &site {
        if path.exists() {
            log::info!("site override {} applied over {}", path.display(), board.display());
        }
    }
    Ok(config)
}

/// Prints the merged configuration (TOML, each key the site file set marked with that file) to stdout; an
/// invalid board or site file is an error (exit status 2) naming the file and key.
pub fn check(board: &Path, site_option: Option<&Path>) -> Result<ExitCode> {
    let site = site_file(site_option);
    let merged = site::merge(board, &site)?;
    println!("# deepgate config check: valid");
    println!("# board config: {}", board.display());
    match &merged.site {
        Some(path) => println!("# site override: {} (keys marked with it)", path.display()),
        None => println!("# site override: none"),
    }
    let directory = &merged.config.directory;
    let directory = if directory.as_os_str().is_empty() { Path::new(".") } else { directory.as_path() };
    println!("# relative paths are relative to {}", directory.display());
    print!("{}", site::to_toml(&merged)?);
    Ok(ExitCode::SUCCESS)
}
