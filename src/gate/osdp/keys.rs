//! The OSDP site key (SCBK) on disk: read from a private file, and a key the controller sets stored atomically.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Reads the site key file: 32 hexadecimal digits, private.
pub(super) fn read_key(path: &Path) -> Result<[u8; 16]> {
    let text = crate::gate::read_private_file(path, "OSDP site key")?;
    crate::gate::from_hex::<16>(&text, &format!("OSDP site key {}", path.display()))
}

/// Writes a site key set by the controller: a temporary file (mode 600) renamed over the old one, then the
/// directory synced, so a power cut leaves the old key or the new one, never half of one.
pub(super) fn store_key(path: &Path, key: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    writeln!(file, "{}", crate::gate::to_hex(key)).and_then(|()| file.sync_all())?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(directory) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::File::open(directory).and_then(|directory| directory.sync_all())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_site_key_replaces_the_old_one_privately() {
        use std::os::unix::fs::PermissionsExt;
        let directory = crate::testing::scratch_dir("osdp-key");
        let path = directory.join("site.key");
        store_key(&path, &[0x11; 16]).unwrap();
        store_key(&path, &[0x22; 16]).unwrap();
        assert_eq!(read_key(&path).unwrap(), [0x22; 16]);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(format!("{:#}", read_key(&path).unwrap_err()).contains("chmod 600"));
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
