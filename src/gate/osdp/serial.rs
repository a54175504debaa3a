//! The OSDP gate's serial port as libosdp's channel: raw, non-blocking, every byte both ways shown to the wire
//! inspector, a failed port closed, logged once and opened again until it is back.

use super::wire::{Guard, Inspector};
use super::OsdpStats;
use anyhow::{Context, Result};
use libosdp::{Channel, ChannelError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The serial port as libosdp's channel: non-blocking reads, and every byte both ways seen by an inspector.
/// A port that fails (a USB RS-485 adapter unplugged) is closed, logged once, and opened again every
/// `REOPEN` until it is back; meanwhile the channel reads nothing and writes nowhere, so the controller's
/// polls time out and the secure channel drops, which the health monitor sees as the link going down.
pub(super) struct SerialChannel {
    pub(super) port: Option<serialport::TTYPort>,
    pub(super) device: PathBuf,
    pub(super) baud: u32,
    /// When to try opening a failed port again.
    pub(super) reopen_at: Instant,
    pub(super) stats: Arc<OsdpStats>,
    /// The controller's bytes, held until their frame is complete and checked (`Guard`).
    pub(super) incoming: Guard,
    /// What the guard released and libosdp has not read yet.
    pub(super) released: std::collections::VecDeque<u8>,
    pub(super) outgoing: Inspector,
}

/// How often a failed serial port is opened again.
pub(super) const REOPEN: Duration = Duration::from_secs(1);

/// Opens the serial port raw at `baud`, reads never waiting.
pub(super) fn open_port(device: &Path, baud: u32) -> Result<serialport::TTYPort> {
    serialport::new(device.to_string_lossy(), baud)
        .timeout(Duration::ZERO)
        .open_native()
        .with_context(|| format!("opening OSDP serial port {}", device.display()))
}

impl SerialChannel {
    /// The open port, opening it again when it failed and `REOPEN` has passed.
    fn port(&mut self) -> Option<&mut serialport::TTYPort> {
        if self.port.is_none() && Instant::now() >= self.reopen_at {
            match open_port(&self.device, self.baud) {
                Ok(port) => {
                    log::info!("OSDP serial port {} is back", self.device.display());
                    self.port = Some(port);
                }
                Err(_) => self.reopen_at = Instant::now() + REOPEN,
            }
        }
        self.port.as_mut()
    }

    fn failed(&mut self, error: &std::io::Error) -> ChannelError {
        log::error!(
            "OSDP serial port {}: {error}; closed, opening it again every {} s",
            self.device.display(),
            REOPEN.as_secs()
        );
        self.stats.port_failures.fetch_add(1, Ordering::Relaxed);
        self.port = None;
        self.reopen_at = Instant::now() + REOPEN;
        // Half a frame from before the failure must not be joined to what comes after it.
        (self.incoming, self.outgoing) = (Guard::default(), Inspector::default());
        self.released.clear();
        ChannelError::WouldBlock
    }
}

pub(super) fn would_block(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

impl Channel for SerialChannel {
    fn get_id(&self) -> i32 {
        0
    }

    fn read(&mut self, buffer: &mut [u8]) -> Result<usize, ChannelError> {
        if self.released.is_empty() {
            let Some(port) = self.port() else { return Err(ChannelError::WouldBlock) };
            match port.read(buffer) {
                Ok(count) => {
                    let released = &mut self.released;
                    self.incoming.pass(&buffer[..count], &self.stats.received, self.stats.epoch, |bytes| {
                        released.extend(bytes)
                    });
                }
                Err(error) if would_block(&error) => return Err(ChannelError::WouldBlock),
                Err(error) => return Err(self.failed(&error)),
            }
        }
        serve(&mut self.released, buffer)
    }

    fn write(&mut self, buffer: &[u8]) -> Result<usize, ChannelError> {
        // With no port, the bytes are gone as on a cut line: the controller hears nothing and retries.
        let Some(port) = self.port() else { return Ok(buffer.len()) };
        match port.write(buffer) {
            Ok(count) => {
                self.outgoing.feed(&buffer[..count], &self.stats.sent, self.stats.epoch);
                Ok(count)
            }
            Err(error) if would_block(&error) => Err(ChannelError::WouldBlock),
            Err(error) => Err(self.failed(&error)),
        }
    }

    fn flush(&mut self) -> Result<(), ChannelError> {
        // Discards unread input: libosdp calls this to resynchronise after a broken frame.
        if let Some(port) = self.port.as_ref() {
            if let Err(error) = serialport::SerialPort::clear(port, serialport::ClearBuffer::Input) {
                log::warn!("OSDP serial port {}: discarding input: {error}", self.device.display());
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), ChannelError> {
        Ok(())
    }
}

/// Moves what the guard released into libosdp's `buffer`, as much as fits; `WouldBlock` when nothing waits.
pub(super) fn serve(
    released: &mut std::collections::VecDeque<u8>,
    buffer: &mut [u8],
) -> Result<usize, ChannelError> {
    let count = released.len().min(buffer.len());
    if count == 0 {
        return Err(ChannelError::WouldBlock);
    }
    for (slot, byte) in buffer.iter_mut().zip(released.drain(..count)) {
        *slot = byte;
    }
    Ok(count)
}
