//! The enrolled camera: the full identity `deepgate enroll` records in the state directory (QUERYCAP's driver,
//! card and bus_info, and for a USB camera the vendor, product and serial number sysfs reports), read back at
//! every open so that only that camera is used, across restarts, until it is enrolled again. Written atomically
//! (temporary file, fsync, rename, fsync of the directory): a power cut leaves the old enrolment or the new one.
#![forbid(unsafe_code)]

use super::identity::Identity;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The format of the enrolment file; a file of another version is refused, not guessed at.
pub const VERSION: u32 = 1;

/// Largest enrolment file read: a few hundred bytes are expected.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// What sysfs says about the USB device a video node belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsbIdentity {
    /// `idVendor`, four hex digits as sysfs writes them.
    pub vendor: String,
    /// `idProduct`.
    pub product: String,
    /// `serial` (the iSerialNumber string); `None`: the device reports none, which is recorded as such.
    #[serde(deserialize_with = "Option::deserialize")]
    pub serial: Option<String>,
}

impl fmt::Display for UsbIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "USB {}:{}", self.vendor, self.product)?;
        match &self.serial {
            Some(serial) => write!(f, " serial `{serial}`"),
            None => write!(f, " without a serial number"),
        }
    }
}

/// The enrolled camera, as stored (`camera.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    pub version: u32,
    pub driver: String,
    pub card: String,
    pub bus_info: String,
    /// The USB device's ids; `None` (written as `null`, never left out): not a USB device (vivid, a CSI camera),
    /// and then a USB device is not this camera.
    #[serde(deserialize_with = "Option::deserialize")]
    pub usb: Option<UsbIdentity>,
    /// The node it was opened at when enrolled: for people reading the file; not compared (numbers change).
    pub device: String,
    /// When it was enrolled, seconds since 1970 (UTC).
    pub enrolled_unix_s: u64,
}

impl Enrolment {
    /// The enrolment of the camera found at `device` with these identities, now.
    pub fn new(device: &Path, identity: &Identity, usb: Option<UsbIdentity>) -> Enrolment {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Enrolment {
            version: VERSION,
            driver: identity.driver.clone(),
            card: identity.card.clone(),
            bus_info: identity.bus_info.clone(),
            usb,
            device: device.display().to_string(),
            enrolled_unix_s: now.as_secs(),
        }
    }

    pub fn identity(&self) -> Identity {
        Identity { driver: self.driver.clone(), card: self.card.clone(), bus_info: self.bus_info.clone() }
    }

    /// What differs between the enrolled camera and the one found, each part named with both values; `None`
    /// when it is the enrolled camera.
    pub fn mismatch(&self, identity: &Identity, usb: Option<&UsbIdentity>) -> Option<String> {
        let mut differences = Vec::new();
        for (part, enrolled, found) in [
            ("driver", &self.driver, &identity.driver),
            ("card", &self.card, &identity.card),
            ("bus_info", &self.bus_info, &identity.bus_info),
        ] {
            if enrolled != found {
                differences.push(format!("{part}: enrolled `{enrolled}`, found `{found}`"));
            }
        }
        match (&self.usb, usb) {
            (None, None) => {}
            (Some(enrolled), None) => {
                differences.push(format!("USB device: enrolled {enrolled}, found a device that is not USB"))
            }
            (None, Some(found)) => {
                differences.push(format!("USB device: enrolled a device that is not USB, found {found}"))
            }
            (Some(enrolled), Some(found)) => {
                let serial = |serial: &Option<String>| match serial {
                    Some(serial) => format!("`{serial}`"),
                    None => "none".to_string(),
                };
                for (part, enrolled, found) in [
                    ("USB vendor", format!("`{}`", enrolled.vendor), format!("`{}`", found.vendor)),
                    ("USB product", format!("`{}`", enrolled.product), format!("`{}`", found.product)),
                    ("USB serial", serial(&enrolled.serial), serial(&found.serial)),
                ] {
                    if enrolled != found {
                        differences.push(format!("{part}: enrolled {enrolled}, found {found}"));
                    }
                }
            }
        }
        (!differences.is_empty()).then(|| differences.join("; "))
    }

    /// Reads the enrolment file: `Ok(None)` when there is none; an error naming the file when it cannot be
    /// read or is not an enrolment of this version.
    pub fn load(path: &Path) -> Result<Option<Enrolment>> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("reading the enrolment {}", path.display()))
            }
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE_BYTES + 1), &mut text)
            .with_context(|| format!("reading the enrolment {}", path.display()))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            bail!("the enrolment {} is larger than {MAX_FILE_BYTES} bytes: not an enrolment", path.display());
        }
        let enrolment: Enrolment = serde_json::from_str(&text).with_context(|| {
            format!(
                "the enrolment {} is not a camera enrolment (`deepgate enroll --replace` rewrites it)",
                path.display()
            )
        })?;
        if enrolment.version != VERSION {
            bail!(
                "the enrolment {} has version {}, this deepgate reads version {VERSION}",
                path.display(),
                enrolment.version
            );
        }
        Ok(Some(enrolment))
    }

    /// Writes the enrolment to `path` atomically: a temporary file beside it, written and synced, renamed over
    /// `path`, then the directory synced so that the rename survives a power cut.
    pub fn store(&self, path: &Path) -> Result<()> {
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(name);
        temporary_name.push(format!(".{}.tmp", std::process::id()));
        let temporary = directory.join(temporary_name);
        let mut text = serde_json::to_string_pretty(self).context("encoding the enrolment")?;
        text.push('\n');
        let written = (|| -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)?;
            std::fs::File::open(&directory)?.sync_all()
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(error).with_context(|| format!("writing the enrolment {}", path.display()));
        }
        Ok(())
    }
}

/// The USB identity of the character device `major:minor` (a video node), from sysfs: `None` when the node
/// does not belong to a USB device.
pub fn usb_identity(major: u32, minor: u32) -> std::io::Result<Option<UsbIdentity>> {
    usb_identity_in(&PathBuf::from(format!("/sys/dev/char/{major}:{minor}")))
}

/// The USB identity of the device whose sysfs class directory is `node` (`/sys/dev/char/81:0`, a link to
/// `.../video4linux/video0`): its `device` is the bound device (a USB interface for a UVC camera), and the
/// first directory at or above that with an `idVendor` is the USB device. A platform or PCI device has none,
/// and a node without a `device` (v4l2loopback's, under /sys/devices/virtual) has no bus at all. A `node` that
/// is not there is an error: without sysfs a USB camera cannot be told from another device.
pub fn usb_identity_in(node: &Path) -> std::io::Result<Option<UsbIdentity>> {
    std::fs::metadata(node)?;
    let device = match std::fs::canonicalize(node.join("device")) {
        Ok(device) => device,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    for directory in device.ancestors() {
        if directory.file_name().is_none_or(|name| name == "devices") {
            break;
        }
        let read = |name: &str| -> std::io::Result<Option<String>> {
            match std::fs::read(directory.join(name)) {
                Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string())),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error),
            }
        };
        let Some(vendor) = read("idVendor")? else { continue };
        let product = read("idProduct")?.unwrap_or_default();
        let serial = read("serial")?.filter(|serial| !serial.is_empty());
        return Ok(Some(UsbIdentity { vendor, product, serial }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::test_support::{error_text, scratch_directory};

    fn webcam() -> (Identity, UsbIdentity) {
        (
            Identity {
                driver: "uvcvideo".into(),
                card: "HD Pro Webcam C920".into(),
                bus_info: "usb-1.2".into(),
            },
            UsbIdentity { vendor: "046d".into(), product: "082d".into(), serial: Some("A1B2C3D4".into()) },
        )
    }

    #[test]
    fn an_enrolment_round_trips_through_its_file_and_is_replaced_atomically() {
        let directory = scratch_directory("enrolment-round-trip");
        let path = directory.join("camera.json");
        assert_eq!(Enrolment::load(&path).unwrap(), None, "no file: not enrolled");
        let (identity, usb) = webcam();
        let enrolment = Enrolment::new(Path::new("/dev/video0"), &identity, Some(usb));
        enrolment.store(&path).unwrap();
        assert_eq!(Enrolment::load(&path).unwrap().as_ref(), Some(&enrolment));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"vendor\": \"046d\"") && text.contains("\"card\": \"HD Pro Webcam C920\""),
            "{text}"
        );
        // A device that is not USB: recorded as `null`, explicitly.
        let vivid =
            Identity { driver: "vivid".into(), card: "vivid".into(), bus_info: "platform:vivid-000".into() };
        let replaced = Enrolment::new(Path::new("/dev/video0"), &vivid, None);
        replaced.store(&path).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"usb\": null"));
        assert_eq!(Enrolment::load(&path).unwrap(), Some(replaced));
        let names: Vec<_> =
            std::fs::read_dir(&directory).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(names, ["camera.json"], "no temporary file is left behind");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_damaged_or_foreign_enrolment_file_is_refused_naming_it() {
        let directory = scratch_directory("enrolment-damaged");
        let path = directory.join("camera.json");
        let (identity, usb) = webcam();
        let good =
            serde_json::to_value(Enrolment::new(Path::new("/dev/video0"), &identity, Some(usb))).unwrap();
        let mut without_usb = good.clone();
        without_usb.as_object_mut().unwrap().remove("usb");
        let mut future = good.clone();
        future["version"] = 2.into();
        for (text, expected) in [
            ("{\"driver\": \"uvcvideo\"".to_string(), "is not a camera enrolment"),
            (without_usb.to_string(), "missing field `usb`"),
            (future.to_string(), "has version 2"),
            ("x".repeat(70_000), "larger than"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = error_text(Enrolment::load(&path));
            assert!(error.contains(&path.display().to_string()) && error.contains(expected), "{error}");
        }
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_mismatch_names_every_part_that_differs_with_both_values() {
        let (identity, usb) = webcam();
        let enrolment = Enrolment::new(Path::new("/dev/video0"), &identity, Some(usb.clone()));
        assert_eq!(enrolment.mismatch(&identity, Some(&usb)), None);
        // The same model in the same port, another unit: only the serial number tells them apart.
        let other_unit = UsbIdentity { serial: Some("99999999".into()), ..usb.clone() };
        assert_eq!(
            enrolment.mismatch(&identity, Some(&other_unit)).as_deref(),
            Some("USB serial: enrolled `A1B2C3D4`, found `99999999`")
        );
        // An HDMI-to-USB dongle in the camera's port, claiming the camera's card name.
        let dongle = UsbIdentity { vendor: "534d".into(), product: "2109".into(), serial: None };
        assert_eq!(
            enrolment.mismatch(&identity, Some(&dongle)).as_deref(),
            Some(
                "USB vendor: enrolled `046d`, found `534d`; USB product: enrolled `082d`, found `2109`; \
                 USB serial: enrolled `A1B2C3D4`, found none"
            )
        );
        let loopback = Identity {
            driver: "v4l2 loopback".into(),
            card: "Dummy video device (0x0000)".into(),
            bus_info: "platform:v4l2loopback-000".into(),
        };
        let message = enrolment.mismatch(&loopback, None).expect("another device");
        for part in [
            "driver: enrolled `uvcvideo`, found `v4l2 loopback`",
            "card: enrolled `HD Pro Webcam C920`",
            "bus_info: enrolled `usb-1.2`, found `platform:v4l2loopback-000`",
            "USB device: enrolled USB 046d:082d serial `A1B2C3D4`, found a device that is not USB",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let not_usb = Enrolment::new(Path::new("/dev/video0"), &identity, None);
        assert_eq!(
            not_usb.mismatch(&identity, Some(&usb)).as_deref(),
            Some("USB device: enrolled a device that is not USB, found USB 046d:082d serial `A1B2C3D4`")
        );
    }

    #[test]
    fn sysfs_gives_the_usb_ids_of_a_uvc_node_and_none_for_a_platform_device() {
        let root = scratch_directory("enrolment-sysfs");
        // A UVC camera: the node's `device` is the USB interface 1-1:1.0, under the USB device 1-1.
        let usb_device = root.join("devices/pci0000:00/0000:00:14.0/usb1/1-1");
        let interface = usb_device.join("1-1:1.0");
        let node = interface.join("video4linux/video0");
        std::fs::create_dir_all(&node).unwrap();
        std::os::unix::fs::symlink("../..", node.join("device")).unwrap();
        std::fs::write(usb_device.join("idVendor"), "046d\n").unwrap();
        std::fs::write(usb_device.join("idProduct"), "082d\n").unwrap();
        std::fs::write(usb_device.join("serial"), "A1B2C3D4\n").unwrap();
        // The hub above it has ids too: the nearest device is the camera.
        std::fs::write(root.join("devices/pci0000:00/0000:00:14.0/usb1/idVendor"), "1d6b\n").unwrap();
        std::fs::write(root.join("devices/pci0000:00/0000:00:14.0/usb1/idProduct"), "0002\n").unwrap();
        let (_, expected) = webcam();
        assert_eq!(usb_identity_in(&node).unwrap(), Some(expected));
        std::fs::remove_file(usb_device.join("serial")).unwrap();
        assert_eq!(usb_identity_in(&node).unwrap().and_then(|usb| usb.serial), None, "no serial: none");
        // vivid: a platform device, no USB ids at or above it.
        let platform = root.join("devices/platform/vivid.0");
        let vivid = platform.join("video4linux/video1");
        std::fs::create_dir_all(&vivid).unwrap();
        std::os::unix::fs::symlink("../..", vivid.join("device")).unwrap();
        assert_eq!(usb_identity_in(&vivid).unwrap(), None);
        // v4l2loopback: a virtual node with no `device` link.
        let loopback = root.join("devices/virtual/video4linux/video2");
        std::fs::create_dir_all(&loopback).unwrap();
        assert_eq!(usb_identity_in(&loopback).unwrap(), None);
        assert!(
            usb_identity_in(&root.join("devices/absent")).is_err(),
            "a node that is not there is an error"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
