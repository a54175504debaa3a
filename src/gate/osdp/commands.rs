//! What the controller reads and asks of the PD: its identity (osdp_ID), the status it reads back (osdp_ISTAT,
//! osdp_LSTAT, the manufacturer health query) and libosdp's command callback, which answers them, stores a
//! site key (osdp_KEYSET) and drives the door (osdp_OUT).

use super::door::follow_output;
use super::keys::store_key;
use super::{OsdpSettings, OsdpStats, INPUTS, MFG_HEALTH};
use libosdp::{OsdpCommand, OsdpStatusReport, OsdpStatusReportType, PdId};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// The PD identity the controller reads with osdp_ID: our vendor code, model 1, this device's serial number
/// (`commissioning::serial_number`), the crate version.
pub(super) fn identity(vendor_code: [u8; 3], serial_number: [u8; 4]) -> PdId {
    let version = |text: &str| text.parse::<u8>().unwrap_or(0);
    PdId {
        version: 1,
        model: 1,
        vendor_code: (vendor_code[0], vendor_code[1], vendor_code[2]),
        serial_number,
        firmware_version: (
            version(env!("CARGO_PKG_VERSION_MAJOR")),
            version(env!("CARGO_PKG_VERSION_MINOR")),
            version(env!("CARGO_PKG_VERSION_PATCH")),
        ),
    }
}

/// What the controller reads with osdp_ISTAT and osdp_LSTAT, shared between the OSDP thread (which changes it)
/// and libosdp's command callback (which answers with it).
#[derive(Default)]
pub(super) struct PanelState {
    /// Bit i: input i active.
    pub(super) inputs: AtomicU8,
    pub(super) tamper: AtomicBool,
    /// The last health state's code, for the manufacturer health query.
    pub(super) health: AtomicU8,
    /// Install mode is armed: the public default key is accepted until the controller sets the site key.
    pub(super) install: AtomicBool,
    /// A site key is in place (it existed at start, or the controller has set one): only then does the door
    /// follow the controller, since in install mode the secure channel may run on the public default key.
    pub(super) site_key: AtomicBool,
}

impl PanelState {
    pub(super) fn input_report(&self) -> OsdpStatusReport {
        let mut report = [0u8; 64];
        let inputs = self.inputs.load(Ordering::Relaxed);
        for (index, entry) in report.iter_mut().take(INPUTS).enumerate() {
            *entry = (inputs >> index) & 1;
        }
        OsdpStatusReport { type_: OsdpStatusReportType::Input, nr_entries: INPUTS, report }
    }

    pub(super) fn local_report(&self) -> OsdpStatusReport {
        let mut report = [0u8; 64];
        report[0] = u8::from(self.tamper.load(Ordering::Relaxed));
        // report[1] is power: the kiosk has no supply monitor, so it always reads normal.
        OsdpStatusReport { type_: OsdpStatusReportType::Local, nr_entries: 2, report }
    }

    pub(super) fn health_reply(&self) -> Vec<u8> {
        let inputs = self.inputs.load(Ordering::Relaxed);
        vec![
            MFG_HEALTH,
            self.health.load(Ordering::Relaxed),
            u8::from(self.tamper.load(Ordering::Relaxed)),
            (inputs >> 2) & 1,
            u8::from(self.install.load(Ordering::Relaxed)),
        ]
    }
}

/// libosdp's command callback: answers status queries from `state`, stores a site key, answers the health
/// query; refuses (NAK) what this PD does not do. Returns 0 to ACK, a negative number to NAK, a positive one
/// to send the (rewritten) manufacturer command back as a manufacturer reply.
pub(super) fn command_handler(
    settings: &OsdpSettings,
    state: Arc<PanelState>,
    stats: Arc<OsdpStats>,
) -> impl FnMut(&mut OsdpCommand) -> i32 {
    let key_path = settings.key.clone();
    let vendor_code = settings.vendor_code;
    let door = settings.door.clone();
    move |command| match command {
        OsdpCommand::Output(output) => {
            let outcome = if state.site_key.load(Ordering::Relaxed) {
                follow_output(door.as_ref(), output.output_no, output.control_code, output.timer_count)
            } else {
                Err(anyhow::anyhow!("install mode: no site key yet, the default key is public"))
            };
            match outcome {
                Ok(()) => {
                    stats.gate.outputs.fetch_add(1, Ordering::Relaxed);
                    0
                }
                Err(error) => {
                    stats.gate.refused_commands.fetch_add(1, Ordering::Relaxed);
                    log::warn!("OSDP: output command refused: {error:#}");
                    -1
                }
            }
        }
        OsdpCommand::Status(report) => {
            *report = match report.type_ {
                OsdpStatusReportType::Input => state.input_report(),
                OsdpStatusReportType::Local => state.local_report(),
                _ => {
                    stats.gate.refused_commands.fetch_add(1, Ordering::Relaxed);
                    return -1;
                }
            };
            0
        }
        OsdpCommand::KeySet(keyset) => match store_key(&key_path, &keyset.data) {
            Ok(()) => {
                stats.gate.keys_set.fetch_add(1, Ordering::Relaxed);
                state.site_key.store(true, Ordering::Relaxed);
                log::info!("OSDP: the controller set a new site key; stored in {}", key_path.display());
                0
            }
            Err(error) => {
                stats.gate.refused_commands.fetch_add(1, Ordering::Relaxed);
                log::error!("OSDP: a new site key could not be stored, refused: {error:#}");
                -1
            }
        },
        OsdpCommand::Mfg(mfg) if mfg.vendor_code == (vendor_code[0], vendor_code[1], vendor_code[2]) => {
            if mfg.data.first() == Some(&MFG_HEALTH) {
                mfg.data = state.health_reply();
                1
            } else {
                stats.gate.refused_commands.fetch_add(1, Ordering::Relaxed);
                log::warn!("OSDP: unknown manufacturer command {:02x?} refused", mfg.data.first());
                -1
            }
        }
        other => {
            stats.gate.refused_commands.fetch_add(1, Ordering::Relaxed);
            log::warn!("OSDP: command {other:?} is not supported by this PD; refused");
            -1
        }
    }
}
