//! What makes a TCP verdict line evidence a controller can check: who said it (the board id), which start of
//! the runtime (a boot id, random per start) and where in it (a sequence from 1 within that start), when (the
//! wall clock, and a monotonic clock since that start), with which model (its sha256), in which shape (the
//! schema version), and whether it may still be acted on (`expired`); all of it signed with the device's Ed25519
//! key.
//!
//! A verdict is stamped when it is reported (`Stamper`, before it is spooled) and sealed each time it is sent
//! (`Sealer`, on the gate's thread): the spool keeps the stamped line, and `{"id":N,`, `"expired":…` and the
//! signature are added on the way out, because whether a verdict is still actionable depends on when it leaves.
//!
//! # Expiry
//!
//! A verdict sent more than `max_age` after it was made goes out with `"expired":true`: for the record, never
//! to act on. Its age is measured on the monotonic clock of the start that made it, which a wall-clock jump
//! cannot move; a verdict made by an earlier start (found in the spool after a restart) cannot be aged that
//! way, so it is always expired: whoever it was about has been judged again since.
//!
//! # Signature
//!
//! The last field of every verdict line is `"signature":"<128 hex>"`, the Ed25519 signature of the line's
//! bytes without that field: everything before `,"signature":"`, followed by `}`. A verifier cuts the line
//! there and checks the signature against the device's public key (`deepgate audit public-key FILE`).
//!
//! # Identity: boot id and sequence
//!
//! The controller de-duplicates by (`boot`, `seq`), not by the spool's `id`, which only pairs lines with
//! acknowledgements on the link: a spool moved or lost restarts `id` at 1, but never reuses a boot id (128
//! random bits per start), and a line claiming a huge `id` or `seq` cannot hide later verdicts, because it
//! would have to carry a valid signature and even then only speaks for its own start.

use super::protocol::{encode_frame, Frame};
use crate::gate::{encode_line, to_hex, Line, VerdictMessage};
use anyhow::{anyhow, Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The version of the verdict line's shape: 2 added the envelope, the expiry and the signature.
pub const SCHEMA: u32 = 2;

/// The signature field as it ends every signed line, before its 128 hex digits.
pub const SIGNATURE_FIELD: &str = ",\"signature\":\"";

/// 128 random bits from the kernel, in hex: the id of this start of the runtime.
pub fn new_boot_id() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom for the boot id")?;
    Ok(to_hex(&bytes))
}

/// The stamped verdict as spooled: the envelope's fields first, then the verdict's.
#[derive(Serialize)]
struct Stamped<'a> {
    schema: u32,
    board: &'a str,
    boot: &'a str,
    seq: u64,
    wall_ms: u64,
    mono_ms: u64,
    model_sha256: Option<&'a str>,
    #[serde(flatten)]
    verdict: &'a VerdictMessage<'a>,
}

/// The fields of a spooled line the sealer needs (the others are skipped without allocating).
#[derive(Deserialize)]
struct Stamp<'a> {
    #[serde(borrow)]
    boot: &'a str,
    mono_ms: u64,
}

/// Stamps verdicts as they are reported; owned by the `TcpGate`.
pub struct Stamper {
    board: String,
    boot: String,
    model_sha256: Option<String>,
    started: Instant,
    next_seq: u64,
}

impl Stamper {
    pub fn new(board: &str, boot: &str, model_sha256: Option<&str>, started: Instant) -> Stamper {
        Stamper {
            board: board.to_owned(),
            boot: boot.to_owned(),
            model_sha256: model_sha256.map(str::to_owned),
            started,
            next_seq: 1,
        }
    }

    /// Writes the stamped verdict into `line` (no allocation); the sequence advances even if it does not fit,
    /// so a refused verdict leaves a gap rather than a reused number.
    pub fn stamp(&mut self, verdict: &VerdictMessage<'_>, line: &mut Line) -> Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let wall_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
        let stamped = Stamped {
            schema: SCHEMA,
            board: &self.board,
            boot: &self.boot,
            seq,
            wall_ms,
            mono_ms: self.started.elapsed().as_millis() as u64,
            model_sha256: self.model_sha256.as_deref(),
            verdict,
        };
        encode_line(&stamped, line)
    }
}

/// Seals spooled lines for the wire; owned by the gate's thread.
pub struct Sealer {
    boot: String,
    started: Instant,
    max_age: Duration,
    key: Option<SigningKey>,
}

impl Sealer {
    pub fn new(boot: &str, started: Instant, max_age: Duration, key: Option<SigningKey>) -> Sealer {
        Sealer { boot: boot.to_owned(), started, max_age, key }
    }

    /// Whether the spooled `line` is past its age now (module documentation, "Expiry"). A line without a
    /// readable stamp (written by an older version) is expired: its age is unknown.
    pub fn expired(&self, line: &[u8]) -> bool {
        match serde_json::from_slice::<Stamp<'_>>(line) {
            Ok(stamp) if stamp.boot == self.boot => {
                let now = self.started.elapsed().as_millis() as u64;
                now.saturating_sub(stamp.mono_ms) > self.max_age.as_millis() as u64
            }
            _ => true,
        }
    }

    /// `{"id":<id>,<line's fields>,"expired":<bool>,"signature":"<hex>"}` and a newline into `frame` (the
    /// signature only with a key); returns whether the line went out expired.
    pub fn seal(&self, id: u64, line: &[u8], frame: &mut Frame) -> Result<bool> {
        let full = || anyhow!("verdict line too long to seal");
        let expired = self.expired(line);
        encode_frame(id, line, frame)?;
        // Drop the closing `}` and newline, add the expiry, close again: the bytes that are signed.
        frame.truncate(frame.len().saturating_sub(2));
        let field: &[u8] = if expired { b",\"expired\":true}" } else { b",\"expired\":false}" };
        frame.extend_from_slice(field).map_err(|()| full())?;
        if let Some(key) = &self.key {
            let signature = key.sign(frame).to_bytes();
            frame.pop();
            frame.extend_from_slice(SIGNATURE_FIELD.as_bytes()).map_err(|()| full())?;
            let mut hex = [0u8; 128];
            for (index, byte) in signature.iter().enumerate() {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                hex[2 * index] = DIGITS[usize::from(byte >> 4)];
                hex[2 * index + 1] = DIGITS[usize::from(byte & 15)];
            }
            frame.extend_from_slice(&hex).map_err(|()| full())?;
            frame.extend_from_slice(b"\"}").map_err(|()| full())?;
        }
        frame.push(b'\n').map_err(|_| full())?;
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Decision;
    use ed25519_dalek::{Signature, Verifier};

    fn verdict() -> VerdictMessage<'static> {
        VerdictMessage::sample("camera", Decision::Genuine)
    }

    /// Cuts a sealed line at its signature field, as the module documentation tells a verifier to.
    fn verify(key: &SigningKey, text: &str) -> bool {
        let Some(at) = text.rfind(SIGNATURE_FIELD) else { return false };
        let hex = &text[at + SIGNATURE_FIELD.len()..text.len() - 2];
        let Ok(bytes) = crate::gate::from_hex::<64>(hex, "signature") else { return false };
        let message = format!("{}}}", &text[..at]);
        key.verifying_key().verify(message.as_bytes(), &Signature::from_bytes(&bytes)).is_ok()
    }

    #[test]
    fn lines_carry_the_envelope_are_signed_and_a_changed_byte_fails() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let started = Instant::now();
        let mut stamper = Stamper::new("door-1", "00ff", Some("abc"), started);
        let sealer = Sealer::new("00ff", started, Duration::from_secs(5), Some(key.clone()));
        let (mut line, mut frame) = (Line::new(), Frame::new());
        stamper.stamp(&verdict(), &mut line).unwrap();
        stamper.stamp(&verdict(), &mut line).unwrap();
        assert!(!sealer.seal(9, &line, &mut frame).unwrap());
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(text.ends_with("\"}\n"), "{text}");
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!((value["id"].as_u64(), value["seq"].as_u64()), (Some(9), Some(2)), "{text}");
        assert_eq!((value["board"].as_str(), value["boot"].as_str()), (Some("door-1"), Some("00ff")));
        assert_eq!((value["schema"].as_u64(), value["model_sha256"].as_str()), (Some(2), Some("abc")));
        assert_eq!((value["expired"].as_bool(), value["decision"].as_str()), (Some(false), Some("genuine")));
        assert!(value["wall_ms"].as_u64().unwrap() > 1_600_000_000_000 && value["mono_ms"].is_u64());
        assert!(verify(&key, text.trim_end()), "{text}");
        let tampered = text.trim_end().replace("\"genuine\"", "\"fake\"");
        assert!(!verify(&key, &tampered), "a changed verdict must not verify");
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(!verify(&other, text.trim_end()), "another device's key must not verify");
    }

    #[test]
    fn old_lines_and_lines_of_an_earlier_start_go_out_expired() {
        let started = Instant::now() - Duration::from_secs(60);
        let mut stamper = Stamper::new("door-1", "aa", None, started);
        let mut line = Line::new();
        stamper.stamp(&verdict(), &mut line).unwrap();
        let fresh = Sealer::new("aa", started, Duration::from_secs(5), None);
        assert!(!fresh.expired(&line));
        let later = Sealer::new("aa", started - Duration::from_secs(6), Duration::from_secs(5), None);
        assert!(later.expired(&line), "made 6 s before now on this start's clock");
        let restarted = Sealer::new("bb", started, Duration::from_secs(5), None);
        assert!(restarted.expired(&line), "made by an earlier start");
        let mut frame = Frame::new();
        assert!(restarted.seal(1, &line, &mut frame).unwrap());
        let value: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!((value["expired"].as_bool(), value.get("signature")), (Some(true), None));
        assert!(fresh.expired(b"{\"type\":\"verdict\"}"), "a line without a stamp has no known age");
    }
}
