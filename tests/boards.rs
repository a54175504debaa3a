//! Every shipped board config (`board/*.toml`) loads through the runtime's own strict parser: an unknown or
//! misspelt key, a value out of range or a broken `inherit` in a board that ships fails here, not on the board.
//! The models and alignment each names resolve (relative to the config, as in the installed bundle) to files
//! the manifest knows.

mod common;

use deepgate::align::Alignment;
use deepgate::config::BoardConfig;
use deepgate::manifest::{Manifest, Role};
use std::path::PathBuf;

fn board_configs() -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(common::root().join("board"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "toml"))
        .collect();
    configs.sort();
    configs
}

#[test]
fn every_board_config_loads_through_the_runtime_parser() {
    let configs = board_configs();
    // The development default and the two Jetson boards a bundle is made for, at least.
    for expected in ["host.toml", "jetson-orin-nano.toml", "jetson-agx-orin.toml"] {
        assert!(
            configs.iter().any(|path| path.ends_with(expected)),
            "board/{expected} is missing: {configs:?}"
        );
    }
    let mut failures = Vec::new();
    for path in &configs {
        if let Err(error) = check(path) {
            failures.push(format!("{}: {error:#}", path.display()));
        }
    }
    assert!(failures.is_empty(), "board configs that the runtime refuses:\n{}", failures.join("\n"));
}

/// Loads one config and what it names; the board id must be the file's name (the systemd instance name).
fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = BoardConfig::load(path)?;
    let stem = path.file_stem().unwrap().to_string_lossy();
    anyhow::ensure!(
        config.board.id == stem,
        "board.id `{}` differs from the file name `{stem}`",
        config.board.id
    );
    let manifest = Manifest::load(&config.resolve(&config.models.manifest))?;
    manifest.get(&config.models.detector, Role::Detector)?;
    if let Some(classifier) = &config.models.classifier {
        manifest.get(classifier, Role::Classifier)?;
    }
    Alignment::load(&config.resolve(&config.models.alignment))?;
    Ok(())
}

/// The check above is not vacuous: a misspelt key in a board that inherits is refused, naming the key.
#[test]
fn a_board_with_an_unknown_key_is_refused() {
    let directory = common::temp_dir("boards");
    std::fs::copy(common::root().join("board/host.toml"), directory.join("host.toml")).unwrap();
    std::fs::write(
        directory.join("door.toml"),
        "inherit = \"host.toml\"\n[runtime]\nbackend = \"cpu\"\nframe_budget = 1.0\n",
    )
    .unwrap();
    let error = format!("{:#}", BoardConfig::load(&directory.join("door.toml")).unwrap_err());
    assert!(error.contains("frame_budget"), "{error}");
    std::fs::remove_dir_all(&directory).unwrap();
}
