//! The relay line on a Linux GPIO character device (`gpiocdev`, uAPI v2): finding the configured line,
//! requesting it as an output that holds the fault state from the first instant, and writing it.
//!
//! The kernel applies `active_low`, so the request's logical value is the relay's: active means energised,
//! and `gpioinfo` shows the line as "deepgate", output, active-low or not. When the request is dropped (or
//! the process dies) the kernel releases the line; what level it then keeps is the driver's business (see the
//! wiring rule in the relay module's documentation).

use super::{LineSelector, RelayConfig, RelayLine};
use anyhow::{bail, ensure, Context, Result};
use gpiocdev::chip::Chip;
use gpiocdev::line::{Info, Value};
use gpiocdev::request::Config;
use gpiocdev::Request;

/// The consumer label the kernel shows for the requested line.
pub const CONSUMER: &str = "deepgate";

/// A requested GPIO output line.
pub struct GpioLine {
    request: Request,
    description: String,
}

impl GpioLine {
    /// Finds the configured line on the configured chip, checks that nobody holds it, and requests it as an
    /// output whose initial value is the fault state.
    pub fn open(config: &RelayConfig) -> Result<GpioLine> {
        let chip_path = config.chip.display();
        let chip = Chip::from_path(&config.chip)
            .with_context(|| format!("relay.chip {chip_path}: opening the GPIO character device"))?;
        let lines = chip
            .info()
            .with_context(|| format!("relay.chip {chip_path}: reading the chip's info"))?
            .num_lines;
        let offset = match &config.line {
            LineSelector::Offset(offset) => {
                ensure!(
                    *offset < lines,
                    "relay.line = {offset}: {chip_path} has {lines} lines (offsets 0..={})",
                    lines.saturating_sub(1)
                );
                *offset
            }
            LineSelector::Name(name) => {
                let infos = chip
                    .line_info_iter()
                    .with_context(|| format!("relay.line: reading the lines of {chip_path}"))?
                    .collect::<Result<Vec<Info>, _>>()
                    .with_context(|| format!("relay.line: reading the lines of {chip_path}"))?;
                find_named(&infos, name, &chip_path.to_string())?
            }
        };
        let info = chip
            .line_info(offset)
            .with_context(|| format!("relay.line: reading {chip_path} line {offset}"))?;
        check_free(&info, &chip_path.to_string())?;
        let request = Request::from_config(request_config(config, offset))
            .with_consumer(CONSUMER)
            .request()
            .with_context(|| format!("relay: requesting {chip_path} line {offset} as an output"))?;
        let description = match &config.line {
            LineSelector::Offset(_) => format!("{chip_path} line {offset}"),
            LineSelector::Name(name) => format!("{chip_path} line {offset} \"{name}\""),
        };
        log::info!(
            "relay: {description} requested as \"{CONSUMER}\", active-{}, holding the fault state",
            if config.active_low { "low" } else { "high" }
        );
        Ok(GpioLine { request, description })
    }
}

impl RelayLine for GpioLine {
    fn set(&mut self, energised: bool) -> Result<()> {
        self.request.set_lone_value(value(energised)).with_context(|| format!("writing {}", self.description))
    }

    fn describe(&self) -> &str {
        &self.description
    }
}

/// The line's logical value for a relay state: the kernel turns it into a level using the active-low flag.
pub fn value(energised: bool) -> Value {
    if energised {
        Value::Active
    } else {
        Value::Inactive
    }
}

/// The request for `offset` on the configured chip: an output, active-low as configured, starting at the
/// fault state, so that the line never shows another value between the request and the first write.
pub fn request_config(config: &RelayConfig, offset: u32) -> Config {
    let mut request = Config::default();
    request.on_chip(&config.chip).with_line(offset).as_output(value(config.settings().fault_energised()));
    if config.active_low {
        request.as_active_low();
    } else {
        request.as_active_high();
    }
    request
}

/// The offset of the line called `name` among a chip's lines; it must be there exactly once, or a board whose
/// names repeat could drive the wrong relay.
pub fn find_named(lines: &[Info], name: &str, chip: &str) -> Result<u32> {
    let mut found = lines.iter().filter(|info| info.name == name).map(|info| info.offset);
    let Some(offset) = found.next() else {
        bail!("relay.line \"{name}\": no line of {chip} has that name (`gpioinfo` lists them)");
    };
    if let Some(other) = found.next() {
        bail!("relay.line \"{name}\": {chip} has lines {offset} and {other} of that name; give an offset");
    }
    Ok(offset)
}

/// Refuses a line that the kernel or another program holds, naming the holder.
pub fn check_free(info: &Info, chip: &str) -> Result<()> {
    if info.used {
        let holder = if info.consumer.is_empty() { "the kernel or another program" } else { &info.consumer };
        bail!("relay.line: {chip} line {} is already in use by {holder}", info.offset);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::relay::{DoorMode, DoorState};
    use gpiocdev::line::Direction;

    fn config(mode: DoorMode, fault_state: DoorState, active_low: bool) -> RelayConfig {
        RelayConfig {
            chip: "/dev/gpiochip3".into(),
            line: LineSelector::Offset(17),
            active_low,
            mode,
            fault_state,
            authority: crate::gate::relay::Authority::Controller,
            pulse_ms: 3000,
            watchdog_ms: 2000,
        }
    }

    fn line(offset: u32, name: &str) -> Info {
        Info { offset, name: name.into(), ..Info::default() }
    }

    #[test]
    fn the_request_is_an_output_holding_the_fault_state_with_the_configured_polarity() {
        use DoorMode::{FailSafe, FailSecure};
        use DoorState::{Locked, Unlocked};
        // (mode, fault state, initial logical value): energised means unlocked for a strike, locked for a
        // maglock.
        let cases = [
            (FailSecure, Locked, Value::Inactive),
            (FailSecure, Unlocked, Value::Active),
            (FailSafe, Unlocked, Value::Inactive),
            (FailSafe, Locked, Value::Active),
        ];
        for (mode, fault_state, initial) in cases {
            for active_low in [false, true] {
                let request = request_config(&config(mode, fault_state, active_low), 17);
                assert_eq!(request.chip(), std::path::Path::new("/dev/gpiochip3"));
                assert_eq!(request.lines(), &vec![17]);
                let line = request.line_config(17).expect("line 17 is requested");
                let case = format!("{mode:?}, fault {fault_state:?}, active_low {active_low}");
                assert_eq!(line.direction, Some(Direction::Output), "{case}");
                assert_eq!(line.value, Some(initial), "{case}");
                assert_eq!(line.active_low, active_low, "{case}");
            }
        }
    }

    #[test]
    fn energised_is_the_active_value() {
        assert_eq!(value(true), Value::Active);
        assert_eq!(value(false), Value::Inactive);
    }

    #[test]
    fn a_line_is_found_by_its_unique_name() {
        let lines = [line(0, "LED"), line(1, ""), line(2, "DOOR_RELAY"), line(3, "BUZZER")];
        assert_eq!(find_named(&lines, "DOOR_RELAY", "/dev/gpiochip0").unwrap(), 2);

        let missing = find_named(&lines, "DOOR", "/dev/gpiochip0").unwrap_err().to_string();
        assert!(missing.contains("no line of /dev/gpiochip0"), "{missing}");

        let repeated = [line(4, "DOOR_RELAY"), line(9, "DOOR_RELAY")];
        let message = find_named(&repeated, "DOOR_RELAY", "/dev/gpiochip0").unwrap_err().to_string();
        assert!(message.contains("lines 4 and 9 of that name"), "{message}");
    }

    #[test]
    fn a_line_in_use_is_refused_naming_its_holder() {
        assert!(check_free(&line(5, "DOOR_RELAY"), "/dev/gpiochip0").is_ok());
        let held = Info { used: true, consumer: "gpioset".into(), ..line(5, "DOOR_RELAY") };
        let message = check_free(&held, "/dev/gpiochip0").unwrap_err().to_string();
        assert!(message.contains("line 5 is already in use by gpioset"), "{message}");
        let by_kernel = Info { used: true, ..line(5, "") };
        let message = check_free(&by_kernel, "/dev/gpiochip0").unwrap_err().to_string();
        assert!(message.contains("the kernel or another program"), "{message}");
    }

    #[test]
    fn a_missing_chip_is_an_error_naming_it() {
        let mut missing = config(DoorMode::FailSecure, DoorState::Locked, false);
        missing.chip = "/dev/gpiochip-deepgate-absent".into();
        let message = format!("{:#}", GpioLine::open(&missing).err().expect("no such chip"));
        assert!(message.contains("relay.chip /dev/gpiochip-deepgate-absent"), "{message}");
    }
}
