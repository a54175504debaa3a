//! Wire inspection for the OSDP gate: each direction of the line followed frame by frame (OSDP framing, checks,
//! NAK reasons) so that every kind of refusal is counted; libosdp does the protocol, nothing here changes a byte.

use super::{EVENT_REPLIES, MAX_FRAME, NAK_REASONS, REPLY_NAK};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts of what crossed the wire, one direction each, and of what the gate did. Read with `OsdpGate::stats`.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Complete frames with a good checksum or CRC.
    pub frames: AtomicU64,
    /// Frames whose checksum or CRC was wrong (refused by libosdp too).
    pub bad_check: AtomicU64,
    /// Frames announcing more than `MAX_FRAME` bytes, or fewer than a header.
    pub oversized: AtomicU64,
    /// Bytes outside any frame (line noise, a second master, garbage).
    pub garbage: AtomicU64,
    /// osdp_NAK replies by reason code (index 0: reason unreadable because encrypted or out of range).
    /// Reason 1 is a bad check, 4 a sequence error (replays), 6 secure channel conditions not met (bad MAC,
    /// plain commands while the secure channel is enforced).
    pub naks: [AtomicU64; NAK_REASONS],
    /// Replies that carried an event (status or manufacturer reply).
    pub event_replies: AtomicU64,
    /// When the last good frame passed, in milliseconds since `OsdpStats::epoch`.
    pub last_frame_ms: AtomicU64,
    /// Frames with a command code libosdp cannot name, dropped before it sees them (it would crash).
    pub dropped_commands: AtomicU64,
}

/// Follows OSDP framing on one direction of the wire to count frames and refusals; it never changes a byte
/// (libosdp does the protocol). A frame: SOM 0x53, address, length (2 bytes, little-endian, the whole frame),
/// control (bit 2: CRC-16 instead of an 8-bit checksum; bit 3: a security block follows), [security block],
/// code, data, [MAC], check.
#[derive(Default)]
pub(super) struct Inspector {
    buffer: heapless::Vec<u8, MAX_FRAME>,
    /// The last good frame counted, until `Guard` takes it.
    last_frame: Option<GoodFrame>,
}

/// A complete frame with a good check, as the inspector counted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GoodFrame {
    /// Its length in bytes (SOM to check).
    length: usize,
    /// Its command or reply code; `None` when a security block announced runs past the frame.
    code: Option<u8>,
}

pub(super) const SOM: u8 = 0x53;
/// The mark byte OSDP allows before a frame.
pub(super) const MARK: u8 = 0xFF;
/// SOM, address, two length bytes, control, code, and a 1-byte checksum.
pub(super) const MIN_FRAME: usize = 7;

impl Inspector {
    pub(super) fn feed(&mut self, mut bytes: &[u8], stats: &WireStats, epoch: Instant) {
        while !bytes.is_empty() {
            if self.buffer.is_empty() {
                // Between frames: skip to the next start of message.
                let start = bytes.iter().position(|&byte| byte == SOM).unwrap_or(bytes.len());
                let noise = bytes[..start].iter().filter(|&&byte| byte != MARK).count();
                stats.garbage.fetch_add(noise as u64, Ordering::Relaxed);
                bytes = &bytes[start..];
                if bytes.is_empty() {
                    return;
                }
            }
            let wanted = if self.buffer.len() < 4 {
                4 - self.buffer.len()
            } else {
                let length = usize::from(u16::from_le_bytes([self.buffer[2], self.buffer[3]]));
                if !(MIN_FRAME..=MAX_FRAME).contains(&length) {
                    stats.oversized.fetch_add(1, Ordering::Relaxed);
                    self.resynchronise(stats, epoch);
                    continue;
                }
                length - self.buffer.len()
            };
            let take = wanted.min(bytes.len());
            // Cannot fail: `wanted` keeps the buffer within MAX_FRAME.
            let _ = self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let length = (self.buffer.len() >= 4)
                .then(|| usize::from(u16::from_le_bytes([self.buffer[2], self.buffer[3]])));
            // A header announcing exactly its own 4 bytes is complete here but shorter than any frame: it is
            // refused as out of range on the next turn, like every other bad length (found by fuzz/osdp_wire).
            if length == Some(self.buffer.len()) && self.buffer.len() >= MIN_FRAME {
                self.finish(stats, epoch);
            }
        }
    }

    /// A complete frame is in the buffer: check it and count.
    fn finish(&mut self, stats: &WireStats, epoch: Instant) {
        let frame = &self.buffer[..];
        let control = frame[4];
        let good = if control & 0x04 != 0 {
            let (body, check) = frame.split_at(frame.len() - 2);
            crc16(body) == u16::from_le_bytes([check[0], check[1]])
        } else {
            frame.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte)) == 0
        };
        if !good {
            stats.bad_check.fetch_add(1, Ordering::Relaxed);
            self.resynchronise(stats, epoch);
            return;
        }
        stats.frames.fetch_add(1, Ordering::Relaxed);
        stats.last_frame_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let code_at = 5 + if control & 0x08 != 0 { usize::from(frame[5]) } else { 0 };
        self.last_frame = Some(GoodFrame { length: frame.len(), code: frame.get(code_at).copied() });
        if frame.get(code_at).is_some_and(|code| EVENT_REPLIES.contains(code)) {
            stats.event_replies.fetch_add(1, Ordering::Relaxed);
        }
        if frame.get(code_at) == Some(&REPLY_NAK) {
            // Security block types 0x17 and 0x18 carry encrypted data: the reason cannot be read then.
            let encrypted = control & 0x08 != 0 && matches!(frame.get(6), Some(0x17 | 0x18));
            let reason = match frame.get(code_at + 1) {
                Some(&reason) if !encrypted && usize::from(reason) < NAK_REASONS => usize::from(reason),
                _ => 0,
            };
            stats.naks[reason].fetch_add(1, Ordering::Relaxed);
        }
        self.buffer.clear();
    }

    /// Drops the start of message that led to a broken frame and looks for the next one in what followed it.
    fn resynchronise(&mut self, stats: &WireStats, epoch: Instant) {
        let rest: heapless::Vec<u8, MAX_FRAME> = self.buffer.iter().skip(1).copied().collect();
        self.buffer.clear();
        self.feed(&rest, stats, epoch);
    }
}

/// The command codes libosdp 3.2.7 has a name for in the range it names (`osdp_cmd_name`, osdp_common.c): for
/// another code in 0x60..=0xA7 it reads a name through a null pointer and the process dies (SIGSEGV), which it
/// does while logging a plain command refused under Secure Channel enforcement, i.e. for one unauthenticated
/// frame (found by fuzz/osdp_pd).
const NAMED_COMMANDS: [u8; 28] = [
    0x60, 0x61, 0x62, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x73, 0x74, 0x75,
    0x76, 0x77, 0x7B, 0x7C, 0x80, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA7,
];

/// Whether libosdp would crash naming command `code` (see `NAMED_COMMANDS`).
fn crashes_libosdp(code: u8) -> bool {
    (0x60..=0xA7).contains(&code) && !NAMED_COMMANDS.contains(&code)
}

/// The controller's bytes held back until the frame they belong to is complete, and then passed to libosdp
/// only if it is a whole frame with a good check and a command code libosdp can name (`crashes_libosdp`), with
/// the mark byte that preceded it. Everything else (noise, broken frames, frames libosdp would crash on) is
/// dropped here: libosdp would only have refused it, so the controller merely gets no answer, as for line
/// noise. libosdp thus never frames bytes itself that the inspector did not frame the same way: it reads a
/// stream of checked frames only. Counts go to `stats` as the inspector's do; dropped frames with a command
/// code libosdp cannot name to `stats.dropped_commands`.
#[derive(Default)]
pub(super) struct Guard {
    inspector: Inspector,
    held: heapless::Vec<u8, HELD>,
}

/// Bytes held while a frame is incomplete: the frame so far and the noise before it. When noise fills it, only
/// the frame so far is kept (a frame is at most `MAX_FRAME` bytes).
const HELD: usize = 2 * MAX_FRAME;

impl Guard {
    /// Takes `bytes` read from the line and hands `release` what libosdp may read, in order.
    pub(super) fn pass(
        &mut self,
        bytes: &[u8],
        stats: &WireStats,
        epoch: Instant,
        mut release: impl FnMut(&[u8]),
    ) {
        for &byte in bytes {
            if self.held.push(byte).is_err() {
                // Noise before the frame so far: dropped. The inspector's buffer is the frame so far, the last
                // bytes held, shorter than MAX_FRAME.
                self.held.clear();
                let _ = self.held.extend_from_slice(&self.inspector.buffer);
                let _ = self.held.push(byte);
            }
            self.inspector.feed(&[byte], stats, epoch);
            if !self.inspector.buffer.is_empty() {
                continue;
            }
            // At a frame boundary: what is held is noise, broken frames and at most one good frame, at its end.
            match self.inspector.last_frame.take() {
                Some(GoodFrame { length, code: Some(code) }) if !crashes_libosdp(code) => {
                    let start = self.held.len().saturating_sub(length);
                    let from = if start > 0 && self.held[start - 1] == MARK { start - 1 } else { start };
                    release(&self.held[from..]);
                }
                Some(GoodFrame { code: Some(_), .. }) => {
                    stats.dropped_commands.fetch_add(1, Ordering::Relaxed);
                }
                // A security block announced past the frame's end, or no good frame: libosdp would refuse it.
                Some(GoodFrame { code: None, .. }) | None => {}
            }
            self.held.clear();
        }
    }
}

/// CRC-16 as OSDP defines it (CRC-16/AUG-CCITT: polynomial 0x1021, initial value 0x1D0F).
pub(super) fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0x1D0F, |mut crc: u16, &byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { crc << 1 ^ 0x1021 } else { crc << 1 };
        }
        crc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(address: u8, control: u8, code: u8, data: &[u8]) -> Vec<u8> {
        let crc = control & 0x04 != 0;
        let length = 6 + data.len() + if crc { 2 } else { 1 };
        let mut frame = vec![SOM, address, length as u8, (length >> 8) as u8, control, code];
        frame.extend_from_slice(data);
        if crc {
            let check = crc16(&frame);
            frame.extend_from_slice(&check.to_le_bytes());
        } else {
            let sum = frame.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte));
            frame.push(sum.wrapping_neg());
        }
        frame
    }

    #[test]
    fn crc16_is_osdp_s_check() {
        // CRC-16/AUG-CCITT's published check value for "123456789".
        assert_eq!(crc16(b"123456789"), 0xE5CC);
    }

    #[test]
    fn the_inspector_counts_good_frames_bad_checks_oversized_frames_and_noise() {
        let stats = WireStats::default();
        let mut inspector = Inspector::default();
        let poll = frame(5, 0x04, 0x60, &[]);
        let mut corrupt = frame(5, 0x04, 0x61, &[0]);
        corrupt[6] ^= 0x40;
        let mut stream = vec![MARK];
        stream.extend_from_slice(&poll);
        stream.extend_from_slice(b"noise");
        stream.extend_from_slice(&corrupt);
        stream.extend_from_slice(&[SOM, 5, 0x00, 0x10, 0x04]); // announces 4096 bytes
        stream.extend_from_slice(&frame(5, 0x00, 0x60, &[]));
        // Fed one byte at a time and all at once, the counts are the same.
        for byte in &stream {
            inspector.feed(std::slice::from_ref(byte), &stats, Instant::now());
        }
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        assert_eq!(load(&stats.frames), 2);
        assert_eq!(load(&stats.bad_check), 1);
        assert_eq!(load(&stats.oversized), 1);
        // "noise" minus its 'S' (taken for a start of message, then dropped as a broken frame).
        assert!(load(&stats.garbage) >= 4, "{}", load(&stats.garbage));

        let again = WireStats::default();
        Inspector::default().feed(&stream, &again, Instant::now());
        assert_eq!(
            (load(&again.frames), load(&again.bad_check), load(&again.oversized)),
            (load(&stats.frames), load(&stats.bad_check), load(&stats.oversized))
        );
    }

    #[test]
    fn a_header_announcing_only_itself_is_refused_not_read_past() {
        // Once a panic in the serial channel's read, inside libosdp's C callback: the process aborted.
        let poll = frame(1, 0x04, 0x60, &[]);
        for chunk in [1, 4, 64] {
            let stats = WireStats::default();
            let mut inspector = Inspector::default();
            let mut stream = vec![SOM, 0x00, 0x04, 0x00];
            stream.extend_from_slice(&poll);
            for piece in stream.chunks(chunk) {
                inspector.feed(piece, &stats, Instant::now());
            }
            let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            assert_eq!((load(&stats.oversized), load(&stats.frames)), (1, 1), "reads of {chunk}");
        }
    }

    #[test]
    fn naks_are_counted_by_reason_unless_encrypted() {
        let stats = WireStats::default();
        let mut inspector = Inspector::default();
        inspector.feed(&frame(0x85, 0x04, REPLY_NAK, &[0x04]), &stats, Instant::now()); // sequence error
        inspector.feed(&frame(0x85, 0x04, REPLY_NAK, &[0x06]), &stats, Instant::now()); // SC conditions not met
                                                                                        // With a security block of type 0x18 (encrypted data), the reason is not readable.
        inspector.feed(&frame(0x85, 0x0C, 0x02, &[0x18, REPLY_NAK, 0x99]), &stats, Instant::now());
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        assert_eq!((load(&stats.naks[4]), load(&stats.naks[6])), (1, 1));
        assert_eq!(load(&stats.frames), 3);
    }
}
