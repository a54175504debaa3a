//! Repository invariants, checked as ordinary tests so that `cargo test` enforces them.

#[cfg(test)]
mod tests {
    use crate::ci::root;
    use std::path::Path;

    fn rust_files(directory: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(directory).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn every_source_file_says_what_it_owns() {
        let mut files = Vec::new();
        rust_files(&root().join("src"), &mut files);
        rust_files(&root().join("xtask/src"), &mut files);
        assert!(files.len() > 10);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} must open with a `//!` line saying what it owns",
                file.display()
            );
        }
    }

    #[test]
    fn architecture_lists_every_module() {
        let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
        let mut files = Vec::new();
        rust_files(&root().join("src"), &mut files);
        for file in files {
            let relative = file.strip_prefix(root()).unwrap().display().to_string();
            assert!(architecture.contains(&relative), "ARCHITECTURE.md does not mention {relative}");
        }
    }

    #[test]
    fn every_shipped_model_is_in_the_manifest_with_its_licence() {
        let manifest = std::fs::read_to_string(root().join("models/manifest.toml")).unwrap();
        for entry in std::fs::read_dir(root().join("models")).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".onnx") {
                assert!(
                    manifest.contains(&format!("file = \"{name}\"")),
                    "models/{name} is not in the manifest"
                );
            }
        }
        for line in manifest.lines().filter(|line| line.starts_with("licence_file")) {
            let file = line.split('"').nth(1).unwrap();
            assert!(root().join("models").join(file).exists(), "licence file models/{file} is missing");
        }
    }

    /// The model card describes the classifier that ships: it quotes the manifest's checksum, so a re-trained
    /// model cannot ship under an old card.
    #[test]
    fn the_model_card_names_the_shipped_classifier_checksum() {
        let manifest = std::fs::read_to_string(root().join("models/manifest.toml")).unwrap();
        let card = std::fs::read_to_string(root().join("models/CARD.md")).unwrap();
        let block =
            manifest.split("[[model]]").find(|block| block.contains("role = \"classifier\"")).unwrap();
        let sha = block.lines().find(|line| line.starts_with("sha256")).unwrap().split('"').nth(1).unwrap();
        assert!(card.contains(sha), "models/CARD.md does not quote the shipped classifier's sha256 {sha}");
    }
}
