//! A board config with `inherit` and a site override, as `deepgate run` and `config check` load them. The
//! input is up to three files separated by NUL bytes (never valid in TOML text): `board.toml`, `host.toml`
//! (what a board usually inherits) and `site.toml` (absent when the input has fewer parts).
#![no_main]

use deepgate::config::site::{merge, to_toml};
use deepgate::config::{BoardConfig, SiteFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let directory = deepgate_fuzz::scratch("board_toml");
    let mut parts = data.splitn(3, |&byte| byte == 0);
    let board = directory.join("board.toml");
    let site = directory.join("site.toml");
    deepgate_fuzz::write(&board, parts.next().unwrap_or_default());
    match parts.next() {
        Some(parent) => deepgate_fuzz::write(&directory.join("host.toml"), parent),
        None => deepgate_fuzz::remove(&directory.join("host.toml")),
    }
    let site_file = match parts.next() {
        Some(text) => {
            deepgate_fuzz::write(&site, text);
            SiteFile::Named(site)
        }
        None => SiteFile::None,
    };
    let alone = BoardConfig::load(&board);
    if let Ok(merged) = merge(&board, &site_file) {
        // What `config check` prints must itself be a config that loads.
        let text = to_toml(&merged).expect("a merged config prints");
        BoardConfig::parse(&text).expect("the printed config parses");
    }
    if site_file == SiteFile::None {
        assert_eq!(alone.is_ok(), merge(&board, &SiteFile::None).is_ok(), "load and merge disagree");
    }
});
