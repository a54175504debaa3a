//! The controller's output command (osdp_OUT) on the door relay: the mapping of OSDP control codes to the
//! relay's grant and lock (table in the parent module's documentation).

use crate::gate::relay::DoorControl;
use anyhow::{ensure, Context, Result};
use std::time::Duration;

/// Follows the controller's osdp_OUT on the door (mapping in the module documentation); `Err` says why it is
/// refused (the command is then NAKed).
pub(super) fn follow_output(
    door: Option<&DoorControl>,
    output: u8,
    control_code: u8,
    timer_count: u16,
) -> Result<()> {
    let door = door.context("this kiosk has no door relay ([relay] is not configured)")?;
    ensure!(output == 0, "output {output} does not exist (output 0 is the door relay)");
    match control_code {
        0 => Ok(()),
        1 | 3 | 6 => {
            door.lock("OSDP osdp_OUT from the controller");
            Ok(())
        }
        5 => {
            ensure!(timer_count > 0, "a timed unlock (code 5) with a timer of 0");
            let asked = Duration::from_millis(u64::from(timer_count) * 100);
            door.grant(Some(asked), "OSDP osdp_OUT from the controller").map(|_| ())
        }
        2 | 4 => anyhow::bail!(
            "control code {control_code} (permanently on) refused: the door is unlocked only for a bounded time"
        ),
        other => anyhow::bail!("control code {other} is not defined by OSDP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_commands_without_a_relay_are_refused() {
        let message = format!("{:#}", follow_output(None, 0, 5, 30).unwrap_err());
        assert!(message.contains("no door relay"), "{message}");
    }
}
