//! The board config's `[source] kind = "v4l2"` section: its keys, read once here, checked with messages that
//! name the key, and turned into the source's `V4l2Settings`.

use super::identity::Pins;
use super::negotiate::Requested;
use super::V4l2Settings;
use crate::frame::{PixelFormat, MAX_DIMENSION};
use crate::settings::in_range;
use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use std::path::PathBuf;

/// The `[source] kind = "v4l2"` keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Section {
    /// The device node (`/dev/video0`). Absent: the one capture device matching the pins below is found
    /// among /dev/video* (then `bus_info` is required). Whatever is given, the identity of the camera
    /// first opened is kept for the run: a different device is never accepted.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// Identity pins, as VIDIOC_QUERYCAP reports them (`deepgate probe` lists them).
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub card: Option<String>,
    #[serde(default)]
    pub bus_info: Option<String>,
    /// YUYV, UYVY, NV12, MJPEG, GREY, RGB24 or BGR24.
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// Frames per second asked of the driver.
    pub frame_rate: f32,
    /// The lowest rate accepted from the driver; absent: any rate is accepted (and logged).
    #[serde(default)]
    pub min_frame_rate: Option<f32>,
    /// mmap buffers, 2 to 32; the driver must give exactly this many.
    pub buffers: u32,
    /// true: accept virtual devices (vivid, v4l2loopback): tests and demos only.
    pub allow_virtual: bool,
    /// The enrolment file `deepgate enroll` writes (an absolute path in the state directory, e.g.
    /// /var/lib/deepgate/camera.json). When it is named, a camera is used only if it is the enrolled one in every
    /// part (driver, card, bus_info, USB vendor, product and serial), across restarts, until `deepgate enroll
    /// --replace`; while the file does not exist every camera is refused (`camera_lost`, tamper: a door does not
    /// run on a camera nobody enrolled). Required for a real camera (`allow_virtual = false`); a test or demo
    /// board may leave it out, and then the camera first opened is kept for the run only.
    #[serde(default)]
    pub enrolment: Option<PathBuf>,
    /// This many frames in a row repeating the frame before them byte for byte make the camera frozen: a fault
    /// (`camera_lost`, tamper) until the picture changes. A live sensor's noise changes every frame; a frozen
    /// picture is a stuck camera or an injected still. Each repeat is withheld from the pipeline before that
    /// (no new evidence): a still gives it two frames, fewer than a camera board's `decision.min_frames`.
    /// 0 turns the check off (repeats are then delivered); default 30.
    #[serde(default = "default_frozen_frames")]
    pub frozen_frames: u32,
}

fn default_frozen_frames() -> u32 {
    super::integrity::DEFAULT_FROZEN_FRAMES
}

impl V4l2Section {
    /// The source's settings, every key checked (the board config refuses a section for which this fails).
    pub fn settings(&self) -> Result<V4l2Settings> {
        let format = PixelFormat::from_name(&self.format).with_context(|| {
            format!(
                "source.format `{}` must be one of YUYV, UYVY, NV12, MJPEG, GREY, RGB24, BGR24",
                self.format
            )
        })?;
        let settings = V4l2Settings {
            device: self.device.clone(),
            pins: Pins {
                driver: self.driver.clone(),
                card: self.card.clone(),
                bus_info: self.bus_info.clone(),
            },
            requested: Requested { format, width: self.width, height: self.height },
            frame_rate: self.frame_rate,
            min_frame_rate: self.min_frame_rate,
            buffers: self.buffers,
            allow_virtual: self.allow_virtual,
            enrolment: self.enrolment.clone(),
            frozen_frames: self.frozen_frames,
        };
        validate(&settings)?;
        Ok(settings)
    }
}

/// The settings, each value checked, the key named.
fn validate(settings: &V4l2Settings) -> Result<()> {
    let (device, pins) = (&settings.device, &settings.pins);
    let (bus_info, width, height) = (&pins.bus_info, &settings.requested.width, &settings.requested.height);
    let (frame_rate, min_frame_rate, buffers) =
        (&settings.frame_rate, &settings.min_frame_rate, &settings.buffers);
    ensure!(
        device.is_some() || bus_info.is_some(),
        "source: a v4l2 source needs source.device or source.bus_info (or both) to know which camera is meant"
    );
    if let Some(device) = device {
        ensure!(
            device.is_absolute() && device.file_name().is_some(),
            "source.device `{}` must be an absolute device path such as /dev/video0",
            device.display()
        );
    }
    // QUERYCAP's fields are 16, 32 and 32 bytes with a terminating NUL: a longer pin could never match.
    for (key, value, longest) in
        [("driver", &pins.driver, 15), ("card", &pins.card, 31), ("bus_info", bus_info, 31)]
    {
        if let Some(value) = value {
            ensure!(
                !value.is_empty() && value.len() <= longest,
                "source.{key} `{value}` must be 1 to {longest} bytes (as VIDIOC_QUERYCAP reports it; omit the key \
                 to match any)"
            );
        }
    }
    let most = MAX_DIMENSION;
    ensure!((1..=most).contains(width), "source.width {width} must be 1 to {most}");
    ensure!((1..=most).contains(height), "source.height {height} must be 1 to {most}");
    in_range("source.frame_rate", *frame_rate, 1.0, 1000.0)?;
    if let Some(minimum) = min_frame_rate {
        in_range("source.min_frame_rate", *minimum, 0.1, *frame_rate)?;
    }
    ensure!((2..=32).contains(buffers), "source.buffers {buffers} must be 2 to 32");
    match &settings.enrolment {
        Some(file) => ensure!(
            file.is_absolute() && file.file_name().is_some(),
            "source.enrolment `{}` must be an absolute file path in the state directory, such as \
             /var/lib/deepgate/camera.json",
            file.display()
        ),
        None => ensure!(
            settings.allow_virtual,
            "source.enrolment is required for a real camera (allow_virtual = false): name the file `deepgate \
             enroll` records the camera in, e.g. enrolment = \"/var/lib/deepgate/camera.json\""
        ),
    }
    let frozen_frames = settings.frozen_frames;
    ensure!(
        frozen_frames == 0 || (2..=10_000).contains(&frozen_frames),
        "source.frozen_frames {frozen_frames} must be 0 (off) or 2 to 10000"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "device = \"/dev/video0\"\nformat = \"YUYV\"\nwidth = 640\nheight = 480\n\
                        frame_rate = 30.0\nbuffers = 4\n";

    fn settings(extra: &str) -> Result<V4l2Settings> {
        let section: V4l2Section = toml::from_str(&format!("{KEYS}{extra}")).context("parsing")?;
        section.settings()
    }

    fn refused(extra: &str) -> String {
        format!("{:#}", settings(extra).expect_err(extra))
    }

    #[test]
    fn a_real_camera_needs_an_enrolment_file_and_a_test_camera_may_go_without() {
        let real = settings("allow_virtual = false\nenrolment = \"/var/lib/deepgate/camera.json\"").unwrap();
        assert_eq!(real.enrolment.as_deref(), Some(std::path::Path::new("/var/lib/deepgate/camera.json")));
        assert_eq!(real.frozen_frames, 30, "the default");
        let message = refused("allow_virtual = false");
        assert!(message.starts_with("source.enrolment is required for a real camera"), "{message}");
        assert_eq!(settings("allow_virtual = true").unwrap().enrolment, None);
        for relative in ["camera.json", "/"] {
            let message = refused(&format!("allow_virtual = true\nenrolment = \"{relative}\""));
            assert!(
                message.starts_with(&format!("source.enrolment `{relative}` must be an absolute")),
                "{message}"
            );
        }
    }

    #[test]
    fn frozen_frames_is_off_or_at_least_two() {
        for (value, accepted) in [(0, true), (1, false), (2, true), (10_000, true), (10_001, false)] {
            let result = settings(&format!("allow_virtual = true\nfrozen_frames = {value}"));
            assert_eq!(result.is_ok(), accepted, "{value}");
            if let Err(error) = result {
                assert!(
                    format!("{error:#}").starts_with(&format!("source.frozen_frames {value}")),
                    "{error:#}"
                );
            }
        }
    }
}
