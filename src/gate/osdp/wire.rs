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
    /// Good frames dropped before libosdp sees them: a command code it cannot name (it would crash), or a
    /// header it refuses before reading the frame (it would then look for frames inside this one).
    pub dropped_commands: AtomicU64,
}

/// Follows OSDP framing on one direction of the wire to count frames and refusals; it never changes a byte
/// (libosdp does the protocol). A frame: SOM 0x53, address, length (2 bytes, little-endian, the whole frame),
/// control (bit 2: CRC-16 instead of an 8-bit checksum; bit 3: a security block follows), [security block],
/// code, data, [MAC], check.
#[derive(Default)]
pub(super) struct Inspector {
    buffer: heapless::Vec<u8, MAX_FRAME>,
    /// Whether the last byte taken outside a frame was a mark byte.
    after_mark: bool,
    /// Whether the frame in `buffer` came right after a mark byte.
    marked: bool,
    /// The last good frames counted, oldest first, until `Guard` takes them. One byte can complete several
    /// (the frames found again in a broken frame's bytes); past `GOOD_FRAMES` the oldest is forgotten.
    good: heapless::Deque<GoodFrame, GOOD_FRAMES>,
}

/// Good frames an inspector keeps for `Guard` (see `Inspector::good`).
const GOOD_FRAMES: usize = 4;

/// A complete frame with a good check, as the inspector counted it: its own bytes, so that what is passed on
/// is exactly what was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GoodFrame {
    /// The frame, SOM to check.
    bytes: heapless::Vec<u8, MAX_FRAME>,
    /// Whether a mark byte came right before it.
    marked: bool,
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
                if let Some(&last) = bytes[..start].last() {
                    self.after_mark = last == MARK;
                }
                bytes = &bytes[start..];
                if bytes.is_empty() {
                    return;
                }
                self.marked = self.after_mark;
                self.after_mark = false;
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
        if self.good.is_full() {
            self.good.pop_front();
        }
        let good =
            GoodFrame { bytes: self.buffer.clone(), marked: self.marked, code: frame.get(code_at).copied() };
        let _ = self.good.push_back(good);
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
        // What follows came right after the dropped start of message, not after a mark.
        self.after_mark = false;
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

/// The size of libosdp 3.2.7's packet buffer (`OSDP_PACKET_BUF_SIZE`), which holds a frame with its mark byte.
const LIBOSDP_PACKET_BUFFER: usize = 256;

/// Whether libosdp, as a PD, reads `frame` whole: it refuses a header with a reply's address (bit 7 set) or a
/// frame that does not fit its packet buffer with its mark byte, and then looks for a start of message among
/// the frame's own bytes (`phy_check_header`, osdp_phy.c), framing them differently from the inspector (found
/// by fuzz/osdp_pd: a reply-addressed frame carried a command with a code it crashes on).
fn libosdp_reads_whole(frame: &GoodFrame) -> bool {
    frame.bytes[1] & 0x80 == 0 && frame.bytes.len() + usize::from(frame.marked) <= LIBOSDP_PACKET_BUFFER
}

/// The controller's bytes held back until the frame they belong to is complete, and then passed to libosdp
/// only if it is a whole frame with a good check, a header libosdp reads whole (`libosdp_reads_whole`) and a
/// command code it can name (`crashes_libosdp`), with the mark byte that preceded it. Everything else (noise, broken frames, frames libosdp would crash on) is
/// dropped here: libosdp would only have refused it, so the controller merely gets no answer, as for line
/// noise. What is passed on is the inspector's own copy of each checked frame, never bytes picked out of the
/// stream by position, so libosdp reads a stream of checked frames only and frames it the same way. Counts go
/// to `stats` as the inspector's do; good frames dropped to `stats.dropped_commands`.
#[derive(Default)]
pub(super) struct Guard {
    inspector: Inspector,
}

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
            self.inspector.feed(&[byte], stats, epoch);
            while let Some(frame) = self.inspector.good.pop_front() {
                match frame.code {
                    Some(code) if !crashes_libosdp(code) && libosdp_reads_whole(&frame) => {
                        if frame.marked {
                            release(&[MARK]);
                        }
                        release(&frame.bytes);
                    }
                    Some(_) => {
                        stats.dropped_commands.fetch_add(1, Ordering::Relaxed);
                    }
                    // A security block announced past the frame's end: libosdp would refuse it.
                    None => {}
                }
            }
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

    /// Splits what the guard released into its frames (each with an optional mark before it), failing unless
    /// every byte belongs to a good frame with a code libosdp can name, as an inspector of its own frames it.
    fn released_frames(released: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut rest = released;
        while !rest.is_empty() {
            let marked = rest[0] == MARK;
            if marked {
                rest = &rest[1..];
            }
            assert!(
                rest.len() >= MIN_FRAME && rest[0] == SOM,
                "released bytes that start no frame: {rest:02x?}"
            );
            let length = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
            let (frame, after) = rest.split_at(length);
            let stats = WireStats::default();
            let mut inspector = Inspector::default();
            inspector.feed(frame, &stats, Instant::now());
            let mut good = inspector.good.pop_front().expect("a released frame that is not good");
            good.marked = marked;
            assert_eq!(&good.bytes[..], frame);
            assert!(good.code.is_some_and(|code| !crashes_libosdp(code)), "released {frame:02x?}");
            assert!(libosdp_reads_whole(&good), "released a frame libosdp looks inside: {frame:02x?}");
            frames.push((marked, frame.to_vec()));
            rest = after;
        }
        frames
    }

    #[test]
    fn the_guard_passes_good_frames_whole_with_their_mark_and_nothing_else() {
        let poll = frame(1, 0x04, 0x60, &[]);
        let unnamed = frame(1, 0x04, 0x9B, &[1, 2, 3]);
        let id = frame(1, 0x00, 0x61, &[0]);
        let mut stream = vec![MARK];
        stream.extend_from_slice(&poll);
        stream.extend_from_slice(&unnamed);
        stream.extend_from_slice(b"noise");
        stream.extend_from_slice(&id);
        for chunk in [1, 5, 300] {
            let stats = WireStats::default();
            let mut guard = Guard::default();
            let mut released = Vec::new();
            for piece in stream.chunks(chunk) {
                guard.pass(piece, &stats, Instant::now(), |bytes| released.extend_from_slice(bytes));
            }
            assert_eq!(
                released_frames(&released),
                [(true, poll.clone()), (false, id.clone())],
                "reads of {chunk}"
            );
            assert_eq!(stats.dropped_commands.load(Ordering::Relaxed), 1);
        }
    }

    /// A broken frame's bytes are framed again after its start is dropped; a good frame found there used to be
    /// released by its length from the end of what was held, though a new frame had started after it, so
    /// libosdp was handed bytes the guard never checked, among them a command it crashes on (fuzz/osdp_pd).
    #[test]
    fn the_guard_releases_only_checked_frames_from_hostile_streams() {
        let pieces = [
            frame(1, 0x04, 0x60, &[]),
            frame(1, 0x00, 0x60, &[]),
            frame(1, 0x00, 0x9B, &[0x3F]),
            frame(1, 0x04, 0x9B, &[]),
            frame(1, 0x04, 0x61, &[0]),
            vec![SOM, 0x01, 0x27, 0x00],
            vec![SOM],
            vec![MARK],
            vec![0x00, 0x6E, 0x6E],
        ];
        // A reply-addressed frame (libosdp refuses its header and looks inside) carrying a whole command frame
        // with a code libosdp crashes on, and the longest frame, which does not fit libosdp after a mark.
        let inner = frame(1, 0x00, 0x9B, &[0x3F]);
        let mut pieces = pieces.to_vec();
        pieces.push(frame(0xFF, 0x00, 0x48, &inner));
        pieces.push(frame(1, 0x04, 0x6A, &[0x11; MAX_FRAME - 8]));
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for _ in 0..3000 {
            let mut stream = Vec::new();
            for _ in 0..next(40) {
                let piece = &pieces[next(pieces.len())];
                // Sometimes only part of a piece: frames cut short, then others inside their announced length.
                let cut = if next(3) == 0 { next(piece.len() + 1) } else { piece.len() };
                stream.extend_from_slice(&piece[..cut]);
            }
            let stats = WireStats::default();
            let mut guard = Guard::default();
            let mut released = Vec::new();
            let chunk = 1 + next(64);
            for piece in stream.chunks(chunk) {
                guard.pass(piece, &stats, Instant::now(), |bytes| released.extend_from_slice(bytes));
            }
            released_frames(&released);
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
