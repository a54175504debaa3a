//! Entry points for the fuzz targets (`fuzz/`, `cargo xtask fuzz`), not an API: the wire inspector and the
//! peripheral device, each fed hostile bytes the way the serial port would deliver them. The PD is this gate's
//! own (identity, capabilities, Secure Channel enforced, install mode on the public default key, the command
//! callback that stores a site key), on an in-memory channel instead of the tty.

use super::commands::PanelState;
use super::commissioning::StartKey;
use super::wire::{Guard, Inspector};
use super::{device_on, OsdpSettings, OsdpStats, WireStats};
use anyhow::Result;
use libosdp::{Channel, ChannelError};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Feeds `bytes` to one direction's inspector in reads of `chunk` bytes (at least 1), as a serial port splits
/// a stream, and returns the counts.
pub fn inspect_wire(bytes: &[u8], chunk: usize) -> WireStats {
    let stats = WireStats::default();
    let epoch = Instant::now();
    let mut inspector = Inspector::default();
    for piece in bytes.chunks(chunk.max(1)) {
        inspector.feed(piece, &stats, epoch);
    }
    stats
}

/// The controller's side of the line as the fuzzer writes it: `bytes` read `chunk` at a time, and whatever the
/// PD answers counted by the outgoing inspector.
struct LineState {
    bytes: Vec<u8>,
    position: usize,
    chunk: usize,
    stats: Arc<OsdpStats>,
    incoming: Guard,
    released: VecDeque<u8>,
    outgoing: Inspector,
}

/// The channel libosdp is given: a handle on the line's state, which `peripheral_device` takes back after the
/// run. The libosdp crate (0.2.2) never frees a device's channel, so a channel that owned the state would leak
/// it (a few KB) on every run; the fuzzer then ran out of memory after about 600 000 runs.
struct HostileLine(Arc<Mutex<Option<Box<LineState>>>>);

impl HostileLine {
    fn with_state<T>(&self, action: impl FnOnce(&mut LineState) -> T) -> Result<T, ChannelError> {
        let mut state = self.0.lock().map_err(|_| ChannelError::TransportError)?;
        state.as_deref_mut().map(action).ok_or(ChannelError::TransportError)
    }
}

impl Channel for HostileLine {
    fn get_id(&self) -> i32 {
        0
    }

    /// As the serial channel reads: the line's bytes through the guard, libosdp served what it released.
    fn read(&mut self, buffer: &mut [u8]) -> Result<usize, ChannelError> {
        self.with_state(|line| {
            if line.released.is_empty() {
                let end = line.bytes.len().min(line.position + line.chunk).min(line.position + buffer.len());
                let piece = &line.bytes[line.position..end];
                let released = &mut line.released;
                line.incoming
                    .pass(piece, &line.stats.received, line.stats.epoch, |bytes| released.extend(bytes));
                line.position = end;
            }
            super::serial::serve(&mut line.released, buffer)
        })?
    }

    fn write(&mut self, buffer: &[u8]) -> Result<usize, ChannelError> {
        self.with_state(|line| line.outgoing.feed(buffer, &line.stats.sent, line.stats.epoch))?;
        Ok(buffer.len())
    }

    fn flush(&mut self) -> Result<(), ChannelError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), ChannelError> {
        Ok(())
    }
}

/// Runs this gate's PD (address 1, install mode: the public default key) on a line carrying `bytes`, read
/// `chunk` bytes at a time, refreshing libosdp after each read and a few times after the last; a site key the
/// controller sets is stored at `key` (a path in a scratch directory). Returns the counts of what crossed the
/// wire and what the command callback did.
pub fn peripheral_device(bytes: &[u8], chunk: usize, key: &Path) -> Result<Arc<OsdpStats>> {
    let settings = OsdpSettings {
        device: "/dev/null".into(),
        baud: 9600,
        address: 1,
        key: key.to_path_buf(),
        install_window: Duration::from_secs(60),
        vendor_code: [0x0A, 0x0B, 0x0C],
        hold: Duration::from_millis(500),
        model: [0; 8],
        door: None,
    };
    let stats = Arc::new(OsdpStats::default());
    let state = Arc::new(PanelState::default());
    state.install.store(true, Ordering::Relaxed);
    let chunk = chunk.max(1);
    let line = Arc::new(Mutex::new(Some(Box::new(LineState {
        bytes: bytes.to_vec(),
        position: 0,
        chunk,
        stats: Arc::clone(&stats),
        incoming: Guard::default(),
        released: VecDeque::new(),
        outgoing: Inspector::default(),
    }))));
    let start = StartKey::Install(settings.install_window);
    let channel = Box::new(HostileLine(Arc::clone(&line)));
    let mut pd = device_on(&settings, channel, &start, [1, 2, 3, 4], &state, &stats)?;
    for _ in 0..bytes.len().div_ceil(chunk) + 8 {
        pd.refresh();
    }
    drop(pd);
    // The state back from the channel libosdp keeps (see `HostileLine`).
    line.lock().map_err(|_| anyhow::anyhow!("the line's lock was poisoned"))?.take();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::osdp::wire::{crc16, SOM};

    /// A plain osdp_POLL to address 1 with sequence 0 and a CRC: a frame a controller really sends.
    fn poll() -> Vec<u8> {
        let mut frame = vec![SOM, 0x01, 8, 0, 0x04, 0x60];
        let crc = crc16(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame
    }

    #[test]
    fn the_inspector_counts_the_same_frames_whatever_the_reads() {
        let mut stream = vec![0x00, 0x11];
        stream.extend(poll());
        stream.extend(poll());
        for chunk in [1, 3, 64] {
            let stats = inspect_wire(&stream, chunk);
            assert_eq!(stats.frames.load(Ordering::Relaxed), 2, "reads of {chunk}");
            assert_eq!(stats.garbage.load(Ordering::Relaxed), 2, "reads of {chunk}");
        }
    }

    #[test]
    fn the_device_answers_a_poll_and_survives_garbage() {
        let directory = crate::testing::scratch_dir("osdp-fuzzing");
        let key = directory.join("osdp.key");
        let stats = peripheral_device(&poll(), 4, &key).unwrap();
        assert_eq!(stats.received.frames.load(Ordering::Relaxed), 1);
        assert!(stats.sent.frames.load(Ordering::Relaxed) >= 1, "the PD answered nothing");
        let stats = peripheral_device(&[SOM, 0xFF, 0xFF, 0xFF, 0x53, 0x01], 2, &key).unwrap();
        assert_eq!(stats.sent.frames.load(Ordering::Relaxed), 0, "garbage was answered");
        assert!(!key.exists(), "no controller set a key");
        // A plain command with a code libosdp cannot name (0x9B) once crashed the process (SIGSEGV in libosdp);
        // the guard drops it, and the poll after it is still answered.
        let mut stream = vec![SOM, 0x01, 8, 0, 0x04, 0x9B];
        let crc = crc16(&stream);
        stream.extend_from_slice(&crc.to_le_bytes());
        stream.extend(poll());
        let stats = peripheral_device(&stream, 3, &key).unwrap();
        assert_eq!(stats.received.dropped_commands.load(Ordering::Relaxed), 1);
        assert_eq!(stats.received.frames.load(Ordering::Relaxed), 2);
        assert!(stats.sent.frames.load(Ordering::Relaxed) >= 1, "the poll after it was not answered");
        // The same crash reached past a guard that passed the bytes between frames on to libosdp, which framed
        // them differently (fuzz/osdp_pd, second finding): the guard now passes checked frames only. The
        // fuzz input's first byte is the read size.
        let input = include_bytes!("../../../fuzz/corpus/osdp_pd/crash-unnamed-command-code-past-guard.bin");
        let stats = peripheral_device(&input[1..], usize::from(input[0]) + 1, &key).unwrap();
        assert!(stats.received.dropped_commands.load(Ordering::Relaxed) >= 1);
        // And past the guard that passed only checked frames, but picked a frame found again inside a broken
        // one out of what it held by position, after a new frame had started (third finding, in CI).
        for input in [
            &include_bytes!("../../../fuzz/corpus/osdp_pd/crash-checked-frame-released-by-position.bin")[..],
            &include_bytes!("../../../fuzz/corpus/osdp_pd/crash-checked-frame-released-by-position-2.bin")[..],
        ] {
            let stats = peripheral_device(&input[1..], usize::from(input[0]) + 1, &key).unwrap();
            assert!(stats.received.dropped_commands.load(Ordering::Relaxed) >= 1);
        }
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
