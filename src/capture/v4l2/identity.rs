//! Which camera this is: the identity VIDIOC_QUERYCAP reports, the pins from the board config that it must
//! match, the choice among scanned devices, and the rule that tells a real camera driver from a virtual one.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

/// A capture device's identity as VIDIOC_QUERYCAP reports it. `bus_info` names where the device sits (a USB
/// port, a CSI port), so it survives a re-plug into the same port while the /dev/videoN number may not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub driver: String,
    pub card: String,
    pub bus_info: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "driver `{}`, card `{}`, bus_info `{}`", self.driver, self.card, self.bus_info)
    }
}

/// The identity the board config pins (`source.driver`, `source.card`, `source.bus_info`); an absent pin
/// matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    pub driver: Option<String>,
    pub card: Option<String>,
    pub bus_info: Option<String>,
}

impl Pins {
    /// Pins all three parts of `identity`: what `source.device` alone pins once it has been opened.
    pub fn exactly(identity: &Identity) -> Pins {
        Pins {
            driver: Some(identity.driver.clone()),
            card: Some(identity.card.clone()),
            bus_info: Some(identity.bus_info.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.driver.is_none() && self.card.is_none() && self.bus_info.is_none()
    }

    /// The pinned parts, as `(key, expected, found)`.
    fn parts<'a>(&'a self, identity: &'a Identity) -> [(&'static str, Option<&'a str>, &'a str); 3] {
        [
            ("driver", self.driver.as_deref(), identity.driver.as_str()),
            ("card", self.card.as_deref(), identity.card.as_str()),
            ("bus_info", self.bus_info.as_deref(), identity.bus_info.as_str()),
        ]
    }

    pub fn matches(&self, identity: &Identity) -> bool {
        self.mismatch(identity).is_none()
    }

    /// What differs, as "source.bus_info: expected `a`, found `b`; ...", or `None` when every pin matches.
    pub fn mismatch(&self, identity: &Identity) -> Option<String> {
        let differences: Vec<String> = self
            .parts(identity)
            .into_iter()
            .filter_map(|(key, expected, found)| {
                expected
                    .filter(|expected| *expected != found)
                    .map(|expected| format!("source.{key}: expected `{expected}`, found `{found}`"))
            })
            .collect();
        (!differences.is_empty()).then(|| differences.join("; "))
    }
}

impl fmt::Display for Pins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (key, value) in [("driver", &self.driver), ("card", &self.card), ("bus_info", &self.bus_info)] {
            if let Some(value) = value {
                write!(f, "{}{key} `{value}`", if first { "" } else { ", " })?;
                first = false;
            }
        }
        if first {
            write!(f, "(no pins)")?;
        }
        Ok(())
    }
}

/// Drivers of real camera hardware, as they name themselves in VIDIOC_QUERYCAP's `driver` field: USB Video
/// Class cameras, and the Jetson CSI/VI capture driver (upstream `drivers/staging/media/tegra-video` and
/// NVIDIA's L4T `vi` channel driver both say "tegra-video"; some older L4T trees say "tegra-vi").
/// `tegra-camrtc-capture-vi` is the name of the L4T platform device behind it, not what QUERYCAP reports.
/// Every other driver counts as virtual: vivid ("vivid"), v4l2loopback ("v4l2 loopback"), vimc ("vimc"),
/// vicodec, and anything unknown; an unknown real camera must be allowed explicitly (`allow_virtual`).
/// The name is what the kernel driver says about itself: this stops a user-space video injector
/// (v4l2loopback) and configuration mistakes, not an attacker who can load their own kernel module.
pub const REAL_DRIVERS: [&str; 3] = ["uvcvideo", "tegra-video", "tegra-vi"];

/// Whether a device whose driver calls itself `driver` is virtual (not a known camera driver).
pub fn is_virtual(driver: &str) -> bool {
    !REAL_DRIVERS.contains(&driver)
}

/// A capture device found by scanning /dev/video*.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub identity: Identity,
}

/// Why no single device was chosen.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    /// None matches the pins: the camera is absent (unplugged), which a later scan may change.
    NoneMatches(String),
    /// Several match: the pins do not say which camera is meant, a configuration error.
    Ambiguous(String),
}

/// The one scanned capture device whose identity matches every pin. The error lists what was found, so the
/// integrator can correct the pins.
pub fn select<'a>(found: &'a [Candidate], pins: &Pins) -> Result<&'a Candidate, Selection> {
    let matching: Vec<&Candidate> =
        found.iter().filter(|candidate| pins.matches(&candidate.identity)).collect();
    let listing = || {
        if found.is_empty() {
            "no V4L2 capture device found".to_string()
        } else {
            let devices: Vec<String> = found
                .iter()
                .map(|candidate| format!("{} ({})", candidate.path.display(), candidate.identity))
                .collect();
            format!("found: {}", devices.join("; "))
        }
    };
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(Selection::NoneMatches(format!("no capture device matches {pins}; {}", listing()))),
        several => Err(Selection::Ambiguous(format!(
            "{} capture devices match {pins}, one must: pin more of source.driver / source.card / \
             source.bus_info, or set source.device; {}",
            several.len(),
            listing()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(driver: &str, card: &str, bus_info: &str) -> Identity {
        Identity { driver: driver.into(), card: card.into(), bus_info: bus_info.into() }
    }

    fn candidate(path: &str, identity: Identity) -> Candidate {
        Candidate { path: PathBuf::from(path), identity }
    }

    #[test]
    fn pins_match_only_what_they_name_and_mismatches_name_expected_and_found() {
        let camera = identity("uvcvideo", "HD Webcam", "usb-0000:00:14.0-1");
        let pins = Pins { bus_info: Some("usb-0000:00:14.0-1".into()), ..Pins::default() };
        assert!(pins.matches(&camera));
        assert!(Pins::default().matches(&camera), "no pins match anything");
        let moved = identity("uvcvideo", "HD Webcam", "usb-0000:00:14.0-2");
        assert_eq!(
            pins.mismatch(&moved).as_deref(),
            Some("source.bus_info: expected `usb-0000:00:14.0-1`, found `usb-0000:00:14.0-2`")
        );
        let swapped = identity("v4l2 loopback", "Dummy video device (0x0000)", "platform:v4l2loopback-000");
        let all = Pins::exactly(&camera);
        let message = all.mismatch(&swapped).expect("a different device");
        for part in
            ["source.driver: expected `uvcvideo`, found `v4l2 loopback`", "source.card", "source.bus_info"]
        {
            assert!(message.contains(part), "{message}");
        }
        assert!(all.matches(&camera));
    }

    #[test]
    fn a_device_pinned_at_first_open_refuses_another_in_the_same_port() {
        // Same port, same driver, another camera model: a swap, which must not be accepted.
        let first = identity("uvcvideo", "Kiosk Cam A", "usb-3610000.xhci-2.1");
        let pins = Pins::exactly(&first);
        let other = identity("uvcvideo", "Cheap Cam", "usb-3610000.xhci-2.1");
        assert_eq!(
            pins.mismatch(&other).as_deref(),
            Some("source.card: expected `Kiosk Cam A`, found `Cheap Cam`")
        );
    }

    #[test]
    fn real_camera_drivers_are_real_and_everything_else_is_virtual() {
        for driver in ["uvcvideo", "tegra-video", "tegra-vi"] {
            assert!(!is_virtual(driver), "{driver}");
        }
        for driver in ["vivid", "v4l2 loopback", "vimc", "vicodec", "", "UVCVIDEO", "uvcvideo "] {
            assert!(is_virtual(driver), "{driver:?}");
        }
    }

    #[test]
    fn select_takes_the_one_match_and_lists_what_was_found_otherwise() {
        let found = [
            candidate("/dev/video0", identity("vivid", "vivid", "platform:vivid-000")),
            candidate("/dev/video2", identity("uvcvideo", "HD Webcam", "usb-1")),
            candidate("/dev/video4", identity("uvcvideo", "HD Webcam", "usb-2")),
        ];
        let by_port = Pins { bus_info: Some("usb-2".into()), ..Pins::default() };
        assert_eq!(select(&found, &by_port).map(|c| c.path.clone()), Ok(PathBuf::from("/dev/video4")));

        let by_driver = Pins { driver: Some("uvcvideo".into()), ..Pins::default() };
        let Err(Selection::Ambiguous(message)) = select(&found, &by_driver) else { panic!("two match") };
        assert!(message.starts_with("2 capture devices match driver `uvcvideo`"), "{message}");
        assert!(message.contains("/dev/video2 (driver `uvcvideo`, card `HD Webcam`, bus_info `usb-1`)"));

        let absent = Pins { bus_info: Some("usb-9".into()), ..Pins::default() };
        let Err(Selection::NoneMatches(message)) = select(&found, &absent) else { panic!("none match") };
        assert!(message.contains("bus_info `usb-9`") && message.contains("/dev/video0 (driver `vivid`"));

        let Err(Selection::NoneMatches(message)) = select(&[], &absent) else { panic!("none found") };
        assert!(message.contains("no V4L2 capture device found"), "{message}");
    }
}
