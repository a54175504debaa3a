//! The initramfs archive: a "newc" cpio writer (the only format the kernel's initramfs unpacker reads).
//!
//! Written here rather than taken from a crate: newc is a 110-byte ASCII header, the name and the data, each
//! padded to 4 bytes, and a trailer, so the writer is shorter than the glue a crate would need; the crates
//! that exist (`cpio`, `newc`) are small single-maintainer projects with little recent upkeep. The round trip
//! through the system's `cpio -t` and through a reader in the tests keeps the writer honest.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What one archive path holds.
enum Entry {
    Directory,
    /// Contents in memory (generated files such as `/init`) and the permission bits.
    Bytes(Vec<u8>, u32),
    /// A file copied from the host at write time, and the permission bits.
    File(PathBuf, u32),
    Symlink(String),
}

/// An archive being assembled: paths are relative to the guest's `/` (no leading slash), parents are added
/// as directories, and entries are written sorted so that every directory precedes what it holds.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn directory(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return;
        }
        self.parents(path);
        self.entries.entry(path.to_string()).or_insert(Entry::Directory);
    }

    /// A file from the host, keeping its executable bit.
    pub fn file(&mut self, path: &str, source: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let metadata = std::fs::metadata(source).with_context(|| format!("reading {}", source.display()))?;
        if !metadata.is_file() {
            bail!("{} is not a regular file", source.display());
        }
        let mode = if metadata.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        self.insert(path, Entry::File(source.to_path_buf(), mode));
        Ok(())
    }

    pub fn bytes(&mut self, path: &str, contents: Vec<u8>, mode: u32) {
        self.insert(path, Entry::Bytes(contents, mode));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Entry::Symlink(target.to_string()));
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_matches('/'))
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        let path = path.trim_matches('/');
        self.parents(path);
        self.entries.insert(path.to_string(), entry);
    }

    fn parents(&mut self, path: &str) {
        let mut parent = Path::new(path).parent();
        while let Some(directory) = parent.filter(|directory| !directory.as_os_str().is_empty()) {
            self.entries.entry(directory.to_string_lossy().into_owned()).or_insert(Entry::Directory);
            parent = directory.parent();
        }
    }

    /// Writes the archive (uncompressed) and returns the number of entries.
    pub fn write(&self, out: &mut impl Write) -> Result<usize> {
        let mut written = 0u64;
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let inode = index as u32 + 1;
            match entry {
                Entry::Directory => header(out, &mut written, path, inode, 0o040755, 2, 0)?,
                Entry::Bytes(contents, mode) => {
                    header(out, &mut written, path, inode, 0o100000 | mode, 1, contents.len() as u64)?;
                    out.write_all(contents)?;
                    written += contents.len() as u64;
                }
                Entry::File(source, mode) => {
                    let mut file = std::fs::File::open(source)
                        .with_context(|| format!("opening {}", source.display()))?;
                    let size = file.metadata()?.len();
                    header(out, &mut written, path, inode, 0o100000 | mode, 1, size)?;
                    let copied = std::io::copy(&mut file, out)?;
                    if copied != size {
                        bail!("{} changed size while it was archived", source.display());
                    }
                    written += size;
                }
                Entry::Symlink(target) => {
                    header(out, &mut written, path, inode, 0o120777, 1, target.len() as u64)?;
                    out.write_all(target.as_bytes())?;
                    written += target.len() as u64;
                }
            }
            pad(out, &mut written)?;
        }
        header(out, &mut written, "TRAILER!!!", 0, 0, 1, 0)?;
        Ok(self.entries.len())
    }
}

/// One newc header and the name, padded; the caller writes the data and pads it.
fn header(
    out: &mut impl Write,
    written: &mut u64,
    name: &str,
    inode: u32,
    mode: u32,
    links: u32,
    size: u64,
) -> Result<()> {
    if size > u64::from(u32::MAX) {
        bail!("{name}: {size} bytes is more than a newc archive can hold");
    }
    // Fields: inode, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
    // namesize (with the NUL), check. Owner root and mtime 0 keep the archive reproducible.
    let fields = [inode, mode, 0, 0, links, 0, size as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    let mut text = String::from("070701");
    for field in fields {
        text.push_str(&format!("{field:08X}"));
    }
    out.write_all(text.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    *written += text.len() as u64 + name.len() as u64 + 1;
    pad(out, written)
}

fn pad(out: &mut impl Write, written: &mut u64) -> Result<()> {
    let padding = (4 - (*written % 4) as usize) % 4;
    out.write_all(&[0; 3][..padding])?;
    *written += padding as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newc reader for the round trip: (name, mode, data) per entry, trailer excluded.
    fn read(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&archive[at..at + 6], b"070701", "magic at {at}");
            let field = |index: usize| {
                let start = at + 6 + index * 8;
                u32::from_str_radix(std::str::from_utf8(&archive[start..start + 8]).unwrap(), 16).unwrap()
            };
            let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
            let name_start = at + 110;
            let name =
                std::str::from_utf8(&archive[name_start..name_start + name_size - 1]).unwrap().to_string();
            assert_eq!(archive[name_start + name_size - 1], 0);
            let data_start = (name_start + name_size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                return entries;
            }
            entries.push((name, mode, archive[data_start..data_start + size].to_vec()));
            at = (data_start + size).next_multiple_of(4);
        }
    }

    fn sample() -> Vec<u8> {
        let mut archive = Archive::default();
        archive.bytes("init", b"#!/bin/sh\n".to_vec(), 0o755);
        archive.symlink("bin/sh", "busybox");
        archive.bytes("bin/busybox", vec![7; 5], 0o755);
        archive.directory("proc");
        archive.bytes("deepgate/models/a.onnx", vec![1, 2, 3], 0o644);
        let mut out = Vec::new();
        assert_eq!(archive.write(&mut out).unwrap(), 8);
        out
    }

    #[test]
    fn entries_come_back_with_their_modes_and_contents_parents_first() {
        let entries = read(&sample());
        let names: Vec<&str> = entries.iter().map(|(name, _, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "deepgate",
                "deepgate/models",
                "deepgate/models/a.onnx",
                "init",
                "proc"
            ]
        );
        let find = |name: &str| entries.iter().find(|entry| entry.0 == name).unwrap();
        assert_eq!(find("bin/sh").1, 0o120777);
        assert_eq!(find("bin/sh").2, b"busybox");
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("deepgate/models/a.onnx").2, [1, 2, 3]);
        assert_eq!(find("proc").1, 0o040755);
    }

    #[test]
    fn the_system_cpio_lists_the_archive() {
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cpio (Debian package `cpio`) lists the archive");
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        let listing = String::from_utf8(output.stdout).unwrap();
        assert_eq!(listing.lines().count(), 8, "{listing}");
        assert!(listing.lines().any(|line| line == "deepgate/models/a.onnx"), "{listing}");
    }
}
