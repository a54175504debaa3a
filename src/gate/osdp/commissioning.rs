//! OSDP commissioning state, kept in the state directory next to the site key file: whether install mode may be
//! armed (at most one bounded window per local reset), the local reset that re-arms it, and the PD's serial
//! number, generated once.
//!
//! Files beside the key (`osdp.key`): `osdp.install-opened` records that the install window was opened, so
//! that neither a restart nor a power cut re-arms it; `osdp.serial` holds the serial number. The site key
//! itself records that the device is commissioned: once it exists install mode is never armed again, whatever
//! the config says, until `deepgate osdp reset-key` removes it (local access to the state directory).
//!
//! The serial number is 4 random bytes generated at the first start and stored, not derived from
//! `/etc/machine-id`: kiosks are flashed from one image, and a cloned image carries the same machine-id, while a
//! value generated on the device differs between devices; it also tells nothing about the host. It is stable
//! for as long as the state directory lives, and never zero.

use super::keys::{read_key, store_key};
use anyhow::{Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest install window a board may configure: the public default key is accepted that long.
pub const MAX_INSTALL_WINDOW_S: u32 = 3600;

/// The key the PD starts with.
#[derive(Debug, PartialEq)]
pub(super) enum StartKey {
    /// The site key from the key file: commissioned.
    Site([u8; 16]),
    /// No site key yet and the install window opens now: the public default key, for `window`.
    Install(Duration),
    /// No site key and no install window (spent, or none configured): a random key no controller knows, so no
    /// secure channel comes up until a local reset and a new window.
    Unset([u8; 16]),
}

/// The file recording that the install window was opened.
fn opened_marker(key: &Path) -> PathBuf {
    key.with_extension("install-opened")
}

/// The file holding the serial number.
fn serial_file(key: &Path) -> PathBuf {
    key.with_extension("serial")
}

/// A key no controller knows: the PD's key while it has no site key and no install window.
pub(super) fn random_key() -> Result<[u8; 16]> {
    random()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes)
}

/// Decides the key the PD starts with, opening the install window (and recording it, before anything is
/// accepted) when no site key exists, `window` is not zero and no window was opened since the last reset.
pub(super) fn start_key(key: &Path, window: Duration) -> Result<StartKey> {
    if key.exists() {
        return Ok(StartKey::Site(read_key(key)?));
    }
    let marker = opened_marker(key);
    if window.is_zero() || marker.exists() {
        return Ok(StartKey::Unset(random_key()?));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    store_key(&marker, &now.to_be_bytes())
        .with_context(|| format!("recording the install window in {}", marker.display()))?;
    Ok(StartKey::Install(window))
}

/// This device's serial number: read from the state directory, or generated (random, never zero) and stored
/// there at the first start. A damaged file is refused rather than replaced, so the identity never changes
/// silently.
pub(super) fn serial_number(key: &Path) -> Result<[u8; 4]> {
    let path = serial_file(key);
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return crate::gate::from_hex::<4>(text.trim(), &format!("OSDP serial number {}", path.display()));
    }
    let serial = loop {
        let candidate = random::<4>()?;
        if candidate != [0; 4] {
            break candidate;
        }
    };
    store_key(&path, &serial)
        .with_context(|| format!("storing the OSDP serial number in {}", path.display()))?;
    Ok(serial)
}

/// The local reset: removes the site key and the install-window record, so that the next start opens a new
/// install window. Returns whether a site key was removed. The serial number stays.
pub fn reset_site_key(key: &Path) -> Result<bool> {
    let removed = remove(key)?;
    remove(&opened_marker(key))?;
    if let Some(directory) = key.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::File::open(directory)
            .and_then(|directory| directory.sync_all())
            .with_context(|| format!("syncing {}", directory.display()))?;
    }
    Ok(removed)
}

fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(name: &str) -> PathBuf {
        crate::testing::scratch_dir(&format!("osdp-{name}"))
    }

    #[test]
    fn the_install_window_opens_once_per_reset_and_never_once_a_site_key_exists() {
        let directory = directory("commissioning");
        let key = directory.join("osdp.key");
        let window = Duration::from_secs(60);
        assert_eq!(start_key(&key, window).unwrap(), StartKey::Install(window));
        assert!(matches!(start_key(&key, window).unwrap(), StartKey::Unset(_)), "a restart re-armed it");
        store_key(&key, &[0x11; 16]).unwrap();
        assert_eq!(start_key(&key, window).unwrap(), StartKey::Site([0x11; 16]));
        assert!(reset_site_key(&key).unwrap());
        assert!(!key.exists());
        assert_eq!(start_key(&key, window).unwrap(), StartKey::Install(window), "the reset re-arms it");
        assert!(!reset_site_key(&key).unwrap(), "no key to remove the second time");
        assert!(matches!(start_key(&key, Duration::ZERO).unwrap(), StartKey::Unset(_)), "none configured");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn the_serial_number_is_generated_once_not_zero_and_differs_between_state_directories() {
        let (first, second) = (directory("serial-1"), directory("serial-2"));
        let serial = serial_number(&first.join("osdp.key")).unwrap();
        assert_ne!(serial, [0; 4]);
        assert_eq!(serial_number(&first.join("osdp.key")).unwrap(), serial, "stable across starts");
        assert_ne!(serial_number(&second.join("osdp.key")).unwrap(), serial);
        std::fs::write(first.join("osdp.serial"), "xyz\n").unwrap();
        assert!(format!("{:#}", serial_number(&first.join("osdp.key")).unwrap_err()).contains("serial"));
        std::fs::remove_dir_all(&first).unwrap();
        std::fs::remove_dir_all(&second).unwrap();
    }
}
