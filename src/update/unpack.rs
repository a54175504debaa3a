//! A verified bundle's archive into a slot directory. Every entry is read and checked in memory first (one top
//! directory, plain relative paths, only directories and regular files, no duplicates, a bound on the unpacked
//! size, the bundle's own `SHA256SUMS` matching every file and listing all of them); only then is anything
//! written, each file created new (never through an existing path) and synced.

use crate::hex::to_hex;
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path};

/// The most a bundle may unpack to: the binary and the models are tens of megabytes; a gzip bomb is refused.
pub const MAX_UNPACKED_BYTES: u64 = 2 << 30;

/// The name in a slot that holds the bundle's signature file: the archive may not carry it.
pub const SIGNATURE_IN_SLOT: &str = "bundle.sig";

/// The checksums every bundle carries at its top.
const SUMS: &str = "SHA256SUMS";

/// An archive's contents, checked and held in memory: paths relative to the bundle's top directory.
pub struct Contents {
    /// Directories, parents before children.
    directories: Vec<String>,
    /// Files: contents and whether they are executable.
    files: BTreeMap<String, (Vec<u8>, bool)>,
}

impl Contents {
    /// Whether the bundle has a file at `path` (relative to its top directory).
    pub fn has_file(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    /// The number of files.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The bytes of all files.
    pub fn size(&self) -> u64 {
        self.files.values().map(|(data, _)| data.len() as u64).sum()
    }
}

/// Reads and checks every entry of the gzipped tar `archive`; `what` names it in errors. Nothing is written.
pub fn read(archive: &[u8], what: &str) -> Result<Contents> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut top: Option<String> = None;
    let mut contents = Contents { directories: Vec::new(), files: BTreeMap::new() };
    let mut total: u64 = 0;
    for entry in tar.entries().with_context(|| format!("{what}: reading the archive"))? {
        let mut entry = entry.with_context(|| format!("{what}: reading the archive"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let (entry_top, relative) =
            split_path(&raw).with_context(|| format!("{what}: entry `{raw}` refused"))?;
        match &top {
            None => top = Some(entry_top),
            Some(first) => ensure!(
                *first == entry_top,
                "{what}: entry `{raw}` is outside the bundle's one top directory `{first}/`"
            ),
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if !relative.is_empty() {
                ensure!(
                    !contents.files.contains_key(&relative) && !contents.directories.contains(&relative),
                    "{what}: `{raw}` appears twice"
                );
                contents.directories.push(relative);
            }
            continue;
        }
        ensure!(kind.is_file(), "{what}: entry `{raw}` is a {kind:?}, not a file or directory: refused");
        ensure!(!relative.is_empty(), "{what}: entry `{raw}` is a file where the top directory belongs");
        ensure!(relative != SIGNATURE_IN_SLOT, "{what}: entry `{raw}` uses a name the installer reserves");
        ensure!(
            !contents.files.contains_key(&relative) && !contents.directories.contains(&relative),
            "{what}: `{raw}` appears twice"
        );
        let size = entry.header().size().with_context(|| format!("{what}: `{raw}`: size"))?;
        total = total.saturating_add(size);
        ensure!(
            total <= MAX_UNPACKED_BYTES,
            "{what}: unpacks to more than {MAX_UNPACKED_BYTES} bytes: refused"
        );
        let mut data = Vec::with_capacity(size as usize);
        entry
            .by_ref()
            .take(size)
            .read_to_end(&mut data)
            .with_context(|| format!("{what}: reading `{raw}`"))?;
        ensure!(data.len() as u64 == size, "{what}: `{raw}` is cut short");
        let executable = entry.header().mode().map(|mode| mode & 0o111 != 0).unwrap_or(false);
        contents.files.insert(relative, (data, executable));
    }
    ensure!(top.is_some(), "{what}: the archive is empty");
    // Every file's parent must be a directory entry of its own: a file cannot stand where a directory goes.
    for path in contents.files.keys() {
        for ancestor in Path::new(path).ancestors().skip(1) {
            let ancestor = ancestor.to_string_lossy();
            ensure!(
                !contents.files.contains_key(ancestor.as_ref()),
                "{what}: `{ancestor}` is both a file and a directory"
            );
        }
    }
    check_sums(&contents, what)?;
    Ok(contents)
}

/// The top directory and the path below it (empty for the top itself), refusing absolute paths, `..`, `.`,
/// empty components and anything but plain names.
fn split_path(raw: &str) -> Result<(String, String)> {
    ensure!(!raw.contains('\0') && !raw.contains('\\'), "unusual characters in the path");
    ensure!(!raw.starts_with('/'), "an absolute path");
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match Path::new(part).components().next() {
            _ if part.is_empty() => bail!("an empty path component"),
            Some(Component::Normal(_)) if part != "." && part != ".." => parts.push(part),
            _ => bail!("`{part}` in the path: only plain names may appear (no `..`, `.` or root)"),
        }
    }
    let (top, rest) = parts.split_first().context("an empty path")?;
    Ok((top.to_string(), rest.join("/")))
}

/// The bundle's `SHA256SUMS` must list every other file with its sha256, and nothing else.
fn check_sums(contents: &Contents, what: &str) -> Result<()> {
    let (sums, _) = contents.files.get(SUMS).with_context(|| format!("{what}: no {SUMS} at its top"))?;
    let sums = std::str::from_utf8(sums).with_context(|| format!("{what}: {SUMS} is not UTF-8"))?;
    let mut listed = BTreeMap::new();
    for line in sums.lines() {
        let (sum, path) =
            line.split_once("  ").with_context(|| format!("{what}: {SUMS}: bad line `{line}`"))?;
        ensure!(listed.insert(path, sum).is_none(), "{what}: {SUMS} lists `{path}` twice");
    }
    for (path, (data, _)) in &contents.files {
        if path == SUMS {
            continue;
        }
        let expected =
            listed.remove(path.as_str()).with_context(|| format!("{what}: `{path}` is not in {SUMS}"))?;
        let found = to_hex(&Sha256::digest(data));
        ensure!(found == expected, "{what}: `{path}` has sha256 {found}, {SUMS} says {expected}");
    }
    if let Some(path) = listed.keys().next() {
        bail!("{what}: {SUMS} lists `{path}`, which the archive does not hold");
    }
    Ok(())
}

/// Writes `contents` into `destination`, which must not exist yet: directories 755, files 644 or 755, each
/// file created new and synced, the directories synced after.
pub fn write(contents: &Contents, destination: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let create_directory = |path: &Path| {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(path)
            .with_context(|| format!("creating {}", path.display()))
    };
    create_directory(destination)?;
    let mut directories = contents.directories.clone();
    directories.sort();
    for directory in &directories {
        create_directory(&destination.join(directory))?;
    }
    for (path, (data, executable)) in &contents.files {
        let target = destination.join(path);
        if let Some(parent) = target.parent() {
            // A file whose directory the archive did not list: made like the others.
            std::fs::DirBuilder::new()
                .mode(0o755)
                .recursive(true)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if *executable { 0o755 } else { 0o644 })
            .open(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", target.display()))?;
    }
    for directory in
        directories.iter().rev().map(|directory| destination.join(directory)).chain([destination.into()])
    {
        sync_directory(&directory)?;
    }
    Ok(())
}

/// Makes a directory's entries (new files, a rename) durable.
pub fn sync_directory(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|directory| directory.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_under_one_top_pass() {
        assert_eq!(split_path("b/").unwrap(), ("b".into(), String::new()));
        assert_eq!(split_path("b/bin/deepgate").unwrap(), ("b".into(), "bin/deepgate".into()));
        for bad in ["/etc/passwd", "b/../../etc/passwd", "b/./x", "b//x", "..", "b/x\\y", ""] {
            assert!(split_path(bad).is_err(), "{bad:?} passed");
        }
    }
}
