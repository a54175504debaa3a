//! What the fuzz targets share: a scratch directory per target and process, for the parsers that read files
//! (Y4M videos, board configs, the manifest, the spool, the audit log).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A directory of this process's own, created once and reused by every run of the target (libFuzzer runs one
/// input at a time in one process): in `/dev/shm` where there is one, since the spool syncs every write and a
/// RAM file system makes that free, else under the system's temporary directory.
pub fn scratch(target: &str) -> &'static Path {
    static DIRECTORY: OnceLock<PathBuf> = OnceLock::new();
    DIRECTORY.get_or_init(|| {
        let shared_memory = Path::new("/dev/shm");
        let base = if shared_memory.is_dir() { shared_memory.to_path_buf() } else { std::env::temp_dir() };
        let directory = base.join(format!("deepgate-fuzz-{target}-{}", std::process::id()));
        if let Err(error) = std::fs::create_dir_all(&directory) {
            panic!("creating the scratch directory {}: {error}", directory.display());
        }
        directory
    })
}

/// Writes `bytes` to `path`, replacing what was there; a failure is the fuzzing machine's, not a finding.
pub fn write(path: &Path, bytes: &[u8]) {
    if let Err(error) = std::fs::write(path, bytes) {
        panic!("writing {}: {error}", path.display());
    }
}

/// Removes `path` if it exists.
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => panic!("removing {}: {error}", path.display()),
    }
}

/// The first byte as a read size of 1 to 256 bytes, and the rest: how a serial port or a socket might split
/// the same stream.
pub fn chunked(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (usize::from(first) + 1, rest),
        None => (1, data),
    }
}
