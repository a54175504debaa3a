//! The board config's `[gate] kind = "osdp"` section: its keys and their checks, naming the key.

use super::{BAUD_RATES, MAX_INSTALL_WINDOW_S};
use crate::gate::from_hex;
use anyhow::{bail, ensure, Result};
use std::path::PathBuf;

/// Parses a vendor code as the config writes it: 6 hexadecimal digits.
pub fn parse_vendor_code(text: &str) -> Result<[u8; 3]> {
    from_hex::<3>(text, "gate.vendor_code")
}

/// The board config's `[gate] kind = "osdp"` keys.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsdpSection {
    /// The serial device (`/dev/ttyUSB0`); relative paths are relative to the config file.
    pub device: PathBuf,
    pub baud: u32,
    /// The PD address on the bus, 0 to 126.
    pub address: u8,
    /// The site key (SCBK) file: 32 hexadecimal digits, mode 600.
    pub key: PathBuf,
    /// Seconds install mode stays armed (the public default key accepted until the controller sets the site
    /// key), 0 to `MAX_INSTALL_WINDOW_S`; 0: never. Armed only while no site key exists, once per local reset.
    pub install_window_s: u32,
    /// IEEE OUI of manufacturer replies, 6 hexadecimal digits.
    pub vendor_code: String,
    /// How long the "genuine" and "attack" inputs stay active after a verdict.
    pub hold_ms: u32,
}

impl OsdpSection {
    /// Refuses OSDP settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        if !BAUD_RATES.contains(&self.baud) {
            bail!("gate.baud {} must be one of {BAUD_RATES:?}", self.baud);
        }
        ensure!(
            self.address <= 126,
            "gate.address {} must be 0 to 126 (127 is the broadcast address)",
            self.address
        );
        ensure!((100..=60_000).contains(&self.hold_ms), "gate.hold_ms {} must be 100 to 60000", self.hold_ms);
        ensure!(
            self.install_window_s <= MAX_INSTALL_WINDOW_S,
            "gate.install_window_s {} must be 0 to {MAX_INSTALL_WINDOW_S}: the public default key is accepted \
             that long",
            self.install_window_s
        );
        parse_vendor_code(&self.vendor_code)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section with these values (the paths do not matter to the checks).
    fn validate(baud: u32, address: u8, hold_ms: u32, vendor_code: &str) -> Result<()> {
        validate_window(baud, address, hold_ms, vendor_code, 600)
    }

    fn validate_window(baud: u32, address: u8, hold_ms: u32, vendor_code: &str, window: u32) -> Result<()> {
        let section = OsdpSection {
            device: "/dev/ttyUSB0".into(),
            baud,
            address,
            key: "site.key".into(),
            install_window_s: window,
            vendor_code: vendor_code.into(),
            hold_ms,
        };
        section.validate()
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        assert!(validate(115_200, 5, 1000, "0a1b2c").is_ok());
        let message = |result: Result<()>| format!("{:#}", result.unwrap_err());
        assert!(message(validate(12_345, 5, 1000, "0a1b2c")).contains("gate.baud"));
        assert!(message(validate(9600, 127, 1000, "0a1b2c")).contains("gate.address"));
        assert!(message(validate(9600, 5, 10, "0a1b2c")).contains("gate.hold_ms"));
        assert!(message(validate(9600, 5, 1000, "xyz")).contains("gate.vendor_code"));
        assert!(validate_window(9600, 5, 1000, "0a1b2c", 0).is_ok(), "0: never armed");
        assert!(message(validate_window(9600, 5, 1000, "0a1b2c", 3601)).contains("gate.install_window_s"));
    }
}
