//! The licences a bundle carries (`cargo xtask dist`): the project's own `LICENSE` and `THIRD-PARTY-NOTICES`,
//! generated from the lock file. The notices list every crate compiled into the aarch64 binary (normal
//! dependencies of `deepgate` for that platform, as `cargo metadata --locked` resolves them with the default
//! features the bundle is built with; build scripts, proc-macros' hosts and dev-dependencies ship nothing),
//! each with its version, licence expression and repository, followed by the licence and notice files its
//! package carries, each distinct text once. The model licences are separate (`models/LICENSE.*`, bundled
//! beside the models).

use crate::ci::{cargo, root};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The platform the bundle's binary is built for.
const PLATFORM: &str = "aarch64-unknown-linux-gnu";

/// A crate in the binary, as the notices describe it.
#[derive(Debug, PartialEq)]
struct Package {
    name: String,
    version: String,
    license: String,
    repository: String,
    /// Licence, copyright and notice files in the package's source directory, sorted by file name.
    files: Vec<PathBuf>,
}

/// Whether a file in a package's root directory is a licence or notice text.
fn is_licence_file(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["LICENSE", "LICENCE", "COPYING", "COPYRIGHT", "NOTICE", "UNLICENSE"]
        .iter()
        .any(|prefix| upper.starts_with(prefix))
}

/// The packages `metadata` (cargo metadata's JSON) links into `root_name`: its normal dependencies, then
/// theirs, for the platform the metadata was filtered to. Sorted by name and version.
fn linked_packages(metadata: &Value, root_name: &str) -> Result<Vec<Package>> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
        .iter()
        .filter_map(|package| Some((package["id"].as_str()?, package)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata has no resolve graph")?
        .iter()
        .filter_map(|node| Some((node["id"].as_str()?, node)))
        .collect();
    let root_id = packages
        .iter()
        .find(|(_, package)| package["name"] == root_name)
        .map(|(id, _)| *id)
        .with_context(|| format!("cargo metadata has no package {root_name}"))?;
    let mut seen = BTreeSet::from([root_id]);
    let mut waiting = vec![root_id];
    while let Some(id) = waiting.pop() {
        let Some(node) = nodes.get(id) else { continue };
        for dependency in node["deps"].as_array().into_iter().flatten() {
            // A dependency reached only as a build or dev dependency is not in the binary.
            let normal =
                dependency["dep_kinds"].as_array().into_iter().flatten().any(|kind| kind["kind"].is_null());
            let Some(dependency_id) = dependency["pkg"].as_str() else { continue };
            if normal && seen.insert(dependency_id) {
                waiting.push(dependency_id);
            }
        }
    }
    seen.remove(root_id);
    let mut linked = Vec::new();
    for id in seen {
        let package = packages.get(id).with_context(|| format!("cargo metadata lacks package {id}"))?;
        let text = |key: &str| package[key].as_str().unwrap_or("").to_string();
        let manifest = PathBuf::from(text("manifest_path"));
        let directory = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
            .with_context(|| format!("reading the source of {} {}", text("name"), text("version")))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.is_file())
            .filter(|path| path.file_name().and_then(|name| name.to_str()).is_some_and(is_licence_file))
            .collect();
        if let Some(file) = package["license_file"].as_str() {
            let path = directory.join(file);
            if !files.contains(&path) {
                files.push(path);
            }
        }
        files.sort();
        let license = match (text("license"), package["license_file"].as_str()) {
            (license, _) if !license.is_empty() => license,
            (_, Some(file)) => format!("see {file}"),
            (_, None) => bail!("{} {} states no licence", text("name"), text("version")),
        };
        linked.push(Package {
            name: text("name"),
            version: text("version"),
            license,
            repository: text("repository"),
            files,
        });
    }
    linked.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(linked)
}

/// The notices text: the list, then each package's licence files, a text already given referred to by name.
fn render(packages: &[Package]) -> Result<String> {
    let mut text = String::from(
        "THIRD-PARTY NOTICES\n\n\
         The deepgate binary in this bundle contains the following crates (generated from Cargo.lock by\n\
         `cargo xtask dist`). deepgate itself is licensed under the Apache License 2.0 (LICENSE); the models\n\
         carry their own licences (models/LICENSE.*).\n\n",
    );
    for package in packages {
        let repository = if package.repository.is_empty() { "-" } else { &package.repository };
        writeln!(text, "{} {}  ({})  {}", package.name, package.version, package.license, repository)?;
    }
    let mut given: BTreeMap<[u8; 32], String> = BTreeMap::new();
    for package in packages {
        writeln!(text, "\n{}\n{} {}\n", "=".repeat(78), package.name, package.version)?;
        if package.files.is_empty() {
            writeln!(
                text,
                "The crate's package carries no licence file; its licence is {} (see {}).",
                package.license,
                if package.repository.is_empty() { "crates.io" } else { &package.repository }
            )?;
        }
        for file in &package.files {
            let content = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let content = String::from_utf8_lossy(&content);
            let name = file.file_name().and_then(|name| name.to_str()).unwrap_or("?");
            let digest: [u8; 32] = Sha256::digest(content.as_bytes()).into();
            let label = format!("{} {} {name}", package.name, package.version);
            match given.get(&digest) {
                Some(first) => writeln!(text, "--- {name}: the same text as {first} above")?,
                None => {
                    writeln!(text, "--- {name}\n{}", content.trim_end())?;
                    given.insert(digest, label);
                }
            }
        }
    }
    Ok(text)
}

/// Generates `THIRD-PARTY-NOTICES` into `directory` and returns the licence files a bundle carries, by their
/// path in the bundle: the project's `LICENSE` and the notices.
pub fn bundle_licences(directory: &Path) -> Result<Vec<(String, PathBuf)>> {
    let output = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", PLATFORM])
        .current_dir(root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata's output")?;
    let packages = linked_packages(&metadata, "deepgate")?;
    let notices = directory.join("THIRD-PARTY-NOTICES");
    std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    std::fs::write(&notices, render(&packages)?).with_context(|| format!("writing {}", notices.display()))?;
    let licence = root().join("LICENSE");
    if !licence.is_file() {
        bail!("{} is missing: the bundle must carry the project's licence", licence.display());
    }
    Ok(vec![("LICENSE".into(), licence), ("THIRD-PARTY-NOTICES".into(), notices)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_normal_dependencies_reach_the_notices() {
        let directory = std::env::temp_dir().join(format!("xtask-notices-{}", std::process::id()));
        std::fs::create_dir_all(directory.join("a")).unwrap();
        std::fs::write(directory.join("a/LICENSE-MIT"), "MIT text").unwrap();
        std::fs::write(directory.join("a/lib.rs"), "").unwrap();
        let manifest = |name: &str| directory.join(name).join("Cargo.toml").display().to_string();
        let metadata = serde_json::json!({
            "packages": [
                {"id": "root", "name": "deepgate", "version": "0.1.0", "license": "Apache-2.0",
                 "manifest_path": manifest("root")},
                {"id": "a", "name": "a", "version": "1.0.0", "license": "MIT", "repository": "https://a",
                 "manifest_path": manifest("a")},
                {"id": "b", "name": "b", "version": "2.0.0", "license": "MIT", "manifest_path": manifest("b")},
                {"id": "c", "name": "c", "version": "3.0.0", "license": "MIT", "manifest_path": manifest("c")}
            ],
            "resolve": {"nodes": [
                {"id": "root", "deps": [
                    {"pkg": "a", "dep_kinds": [{"kind": null}]},
                    {"pkg": "b", "dep_kinds": [{"kind": "build"}]}
                ]},
                {"id": "a", "deps": [{"pkg": "c", "dep_kinds": [{"kind": "dev"}, {"kind": null}]}]},
                {"id": "b", "deps": []},
                {"id": "c", "deps": []}
            ]}
        });
        std::fs::create_dir_all(directory.join("c")).unwrap();
        let packages = linked_packages(&metadata, "deepgate").unwrap();
        let names: Vec<&str> = packages.iter().map(|package| package.name.as_str()).collect();
        assert_eq!(names, ["a", "c"], "b is a build dependency only");
        assert_eq!(packages[0].files, [directory.join("a/LICENSE-MIT")]);
        let text = render(&packages).unwrap();
        assert!(text.contains("a 1.0.0  (MIT)  https://a"), "{text}");
        assert!(text.contains("--- LICENSE-MIT\nMIT text"), "{text}");
        assert!(text.contains("c 3.0.0\n\nThe crate's package carries no licence file"), "{text}");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_text_shared_by_crates_is_given_once() {
        let directory = std::env::temp_dir().join(format!("xtask-notices-shared-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join("LICENSE-APACHE"), "Apache text").unwrap();
        let package = |name: &str| Package {
            name: name.into(),
            version: "1.0.0".into(),
            license: "Apache-2.0".into(),
            repository: String::new(),
            files: vec![directory.join("LICENSE-APACHE")],
        };
        let text = render(&[package("x"), package("y")]).unwrap();
        assert_eq!(text.matches("Apache text").count(), 1, "{text}");
        assert!(text.contains("--- LICENSE-APACHE: the same text as x 1.0.0 LICENSE-APACHE above"), "{text}");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn the_bundle_notices_cover_what_the_binary_links() {
        let directory = std::env::temp_dir().join(format!("xtask-notices-real-{}", std::process::id()));
        let files = bundle_licences(&directory).unwrap();
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["LICENSE", "THIRD-PARTY-NOTICES"]);
        let text = std::fs::read_to_string(&files[1].1).unwrap();
        for linked in ["\ntract-onnx ", "\nlibosdp-sys ", "\nrustls ", "\nring ", "\nserialport "] {
            assert!(text.contains(linked), "{linked:?} missing from the notices");
        }
        for build_only in ["\nbindgen ", "\ncc ", "\nrcgen "] {
            assert!(!text.contains(build_only), "{build_only:?} is not in the binary");
        }
        assert!(text.contains("Apache License"), "no licence text");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn licence_files_are_recognised_by_name() {
        for name in
            ["LICENSE", "LICENSE-MIT", "license-apache", "COPYING", "NOTICE.txt", "UNLICENSE", "LICENCE"]
        {
            assert!(is_licence_file(name), "{name}");
        }
        for name in ["Cargo.toml", "README.md", "lib.rs"] {
            assert!(!is_licence_file(name), "{name}");
        }
    }
}
