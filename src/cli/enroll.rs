//! `deepgate enroll --board FILE [--device /dev/videoN] [--replace]`: records the camera the board selects (its
//! QUERYCAP identity and, for a USB camera, vendor, product and serial from sysfs) in the board's enrolment file,
//! so that `run`, `capture` and `calibrate` accept that camera alone, across restarts, until it is enrolled again.
//! Needs no streaming: it works while `deepgate run` waits for an enrolment.

use anyhow::{bail, Context, Result};
use deepgate::capture::v4l2::enrolment::Enrolment;
use deepgate::capture::v4l2::{identify, OpenError};
use std::path::Path;
use std::process::ExitCode;

/// Enrols the camera; exit status 0 with one JSON line saying what was recorded, an error (status 2) when the
/// board names no enrolment file, the camera cannot be found or is refused, or one is enrolled and `replace`
/// is not given.
pub fn enroll(board: &Path, device: Option<&Path>, replace: bool) -> Result<ExitCode> {
    let config = super::config_check::load_board(board)?;
    let Some(section) = config.source.v4l2() else {
        bail!("board config {}: `deepgate enroll` needs [source] kind = \"v4l2\"", board.display());
    };
    let mut settings = section.settings()?;
    let Some(file) = settings.enrolment.clone() else {
        bail!(
            "board config {}: source.enrolment names no enrolment file; add e.g. enrolment = \
             \"/var/lib/deepgate/camera.json\" to [source]",
            board.display()
        );
    };
    if let Some(device) = device {
        if !device.is_absolute() {
            bail!("--device `{}` must be an absolute device path such as /dev/video0", device.display());
        }
        settings.device = Some(device.to_path_buf());
    }
    let previous = match Enrolment::load(&file) {
        Ok(previous) => previous,
        Err(error) if replace => {
            log::warn!("{error:#}; replacing it");
            None
        }
        Err(error) => return Err(error.context("pass --replace to enrol the camera anew")),
    };
    if let (Some(previous), false) = (&previous, replace) {
        bail!(
            "a camera is already enrolled in {} ({}, enrolled as {}): pass --replace to enrol another in its place",
            file.display(),
            previous.identity(),
            previous.device
        );
    }
    let camera = identify(&settings).map_err(OpenError::into_error).context("finding the camera to enrol")?;
    let enrolment = Enrolment::new(Path::new(&camera.path), &camera.identity, camera.usb.clone());
    enrolment.store(&file)?;
    let usb = match &camera.usb {
        Some(usb) => usb.to_string(),
        None => "not a USB device (recorded as such)".to_string(),
    };
    match &previous {
        Some(previous) => log::warn!(
            "camera enrolment REPLACED in {}: was {}, now {} at {} ({usb})",
            file.display(),
            previous.identity(),
            camera.identity,
            camera.path
        ),
        None => log::info!(
            "camera enrolled in {}: {} at {} ({usb})",
            file.display(),
            camera.identity,
            camera.path
        ),
    }
    let line = serde_json::json!({
        "type": "enrolment",
        "file": file.display().to_string(),
        "device": camera.path,
        "driver": camera.identity.driver,
        "card": camera.identity.card,
        "bus_info": camera.identity.bus_info,
        "usb": camera.usb,
        "virtual": camera.is_virtual,
        "replaced": previous.map(|previous| {
            serde_json::json!({
                "driver": previous.driver,
                "card": previous.card,
                "bus_info": previous.bus_info,
                "usb": previous.usb,
            })
        }),
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
