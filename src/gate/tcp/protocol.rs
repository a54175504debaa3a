//! The TCP gate's wire protocol (ARCHITECTURE.md and `gate::tcp` state it): a verdict line framed with its id
//! first, and the controller's acknowledgements read strictly, anything else refused as misbehaviour.

use crate::gate::MAX_LINE;
use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use std::io::{ErrorKind, Read};

/// The longest acknowledgement line accepted: `{"ack":18446744073709551615}` with room for spaces.
pub(super) const MAX_ACK_LINE: usize = 64;

/// A line on the wire: `{"id":N,` (at most 27 bytes), the verdict line without its `{`, the expiry and the
/// signature (`envelope`, under 170 bytes) and a newline, so that each verdict goes out in one write (one
/// segment with `TCP_NODELAY`).
pub(crate) type Frame = heapless::Vec<u8, { MAX_LINE + 256 }>;

/// `{"id":<id>,` followed by `line` (a JSON object) without its opening brace, and a newline.
pub(super) fn encode_frame(id: u64, line: &[u8], frame: &mut Frame) -> Result<()> {
    let full = || anyhow!("line longer than {MAX_LINE} bytes");
    let body = line.strip_prefix(b"{").context("a spooled verdict line is not a JSON object")?;
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = id;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    frame.clear();
    frame.extend_from_slice(b"{\"id\":").map_err(|()| full())?;
    frame.extend_from_slice(&digits[start..]).map_err(|()| full())?;
    if body != b"}" {
        frame.push(b',').map_err(|_| full())?;
    }
    frame.extend_from_slice(body).map_err(|()| full())?;
    frame.push(b'\n').map_err(|_| full())
}

/// A connection ended because the controller broke the protocol (as opposed to a network failure).
#[derive(Debug)]
pub(super) struct Misbehaved(pub(super) String);

impl std::fmt::Display for Misbehaved {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Misbehaved {}

/// Why reading from the controller ended the connection.
pub(super) enum End {
    Closed,
    Failed(std::io::Error),
    /// A line that is not a valid acknowledgement, and why.
    Refused(String),
}

/// Grants one poll may carry; more at once is a controller misbehaving.
pub(super) const MAX_GRANTS: usize = 16;

/// What one poll found: the highest valid acknowledgement, the verdicts the controller granted (in order),
/// and an end if the connection must go.
pub(super) struct Polled {
    pub(super) through: Option<u64>,
    pub(super) grants: heapless::Vec<u64, MAX_GRANTS>,
    pub(super) end: Option<End>,
}

/// A line from the controller: exactly one of `{"ack":N}` and `{"grant":N}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControllerLine {
    ack: Option<u64>,
    grant: Option<u64>,
}

/// Collects acknowledgement lines from the controller, across reads.
#[derive(Default)]
pub(super) struct AckReader {
    line: heapless::Vec<u8, MAX_ACK_LINE>,
}

impl AckReader {
    /// Reads what the controller sent so far, without waiting, and parses the complete lines; `highest_sent`
    /// bounds the ids that may be acknowledged. Acknowledgements before a bad line or the end of the stream count.
    pub(super) fn poll(&mut self, stream: &mut super::link::Link, highest_sent: u64) -> Polled {
        let mut polled = Polled { through: None, grants: heapless::Vec::new(), end: None };
        if let Err(error) = stream.socket().set_nonblocking(true) {
            polled.end = Some(End::Failed(error));
            return polled;
        }
        let mut scratch = [0u8; 512];
        // Bounded, so that a controller that keeps talking cannot keep the thread here.
        for _ in 0..16 {
            match stream.read(&mut scratch) {
                Ok(0) => {
                    polled.end = Some(End::Closed);
                    break;
                }
                Ok(count) => {
                    if let Err(why) = self.take(&scratch[..count], highest_sent, &mut polled) {
                        polled.end = Some(End::Refused(why));
                        break;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => {
                    polled.end = Some(End::Failed(error));
                    break;
                }
            }
        }
        if let Err(error) = stream.socket().set_nonblocking(false) {
            polled.end.get_or_insert(End::Failed(error));
        }
        polled
    }

    fn take(&mut self, bytes: &[u8], highest_sent: u64, polled: &mut Polled) -> Result<(), String> {
        for &byte in bytes {
            if byte != b'\n' {
                if self.line.push(byte).is_err() {
                    return Err(format!("a line longer than {MAX_ACK_LINE} bytes"));
                }
                continue;
            }
            let not_a_line = |why: &dyn std::fmt::Display| {
                format!(
                    "`{}` is not {{\"ack\":ID}} or {{\"grant\":ID}} ({why})",
                    String::from_utf8_lossy(&self.line).escape_debug()
                )
            };
            let line: ControllerLine =
                serde_json::from_slice(&self.line).map_err(|error| not_a_line(&error))?;
            let (id, grant) = match (line.ack, line.grant) {
                (Some(id), None) => (id, false),
                (None, Some(id)) => (id, true),
                _ => return Err(not_a_line(&"exactly one of ack and grant")),
            };
            let what = if grant { "a grant" } else { "an acknowledgement" };
            if id > highest_sent {
                return Err(format!("{what} of id {id}, never sent (highest sent: {highest_sent})"));
            }
            self.line.clear();
            if grant {
                polled.grants.push(id).map_err(|_| format!("more than {MAX_GRANTS} grants at once"))?;
            } else {
                polled.through = Some(polled.through.map_or(id, |earlier| earlier.max(id)));
            }
        }
        Ok(())
    }
}

/// The controller's lines as the acknowledgement reader takes them, for the fuzz target (`fuzz/`), not an API:
/// `bytes` arrive in reads of `chunk` bytes (at least 1); returns the highest acknowledgement and the grants, or
/// why the connection would be ended.
#[doc(hidden)]
pub fn read_controller_lines(
    bytes: &[u8],
    chunk: usize,
    highest_sent: u64,
) -> Result<(Option<u64>, Vec<u64>), String> {
    let mut reader = AckReader::default();
    let mut polled = Polled { through: None, grants: heapless::Vec::new(), end: None };
    for piece in bytes.chunks(chunk.max(1)) {
        reader.take(piece, highest_sent, &mut polled)?;
    }
    Ok((polled.through, polled.grants.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(id: u64, line: &[u8]) -> String {
        let mut frame = Frame::new();
        encode_frame(id, line, &mut frame).unwrap();
        String::from_utf8(frame.to_vec()).unwrap()
    }

    #[test]
    fn the_id_goes_first_and_the_verdict_fields_follow() {
        assert_eq!(
            frame_of(17, br#"{"type":"verdict","frames":3}"#),
            "{\"id\":17,\"type\":\"verdict\",\"frames\":3}\n"
        );
        assert_eq!(frame_of(u64::MAX, b"{}"), format!("{{\"id\":{}}}\n", u64::MAX));
        assert_eq!(frame_of(0, b"{\"a\":1}"), "{\"id\":0,\"a\":1}\n");
        let longest = format!("{{\"reason\":\"{}\"}}", "x".repeat(MAX_LINE - 13));
        assert_eq!(longest.len(), MAX_LINE);
        assert!(frame_of(u64::MAX, longest.as_bytes()).ends_with("x\"}\n"));
    }

    #[test]
    fn acknowledgements_are_parsed_strictly() {
        let parse = |bytes: &[u8], highest_sent: u64| {
            let mut reader = AckReader::default();
            let mut polled = Polled { through: None, grants: heapless::Vec::new(), end: None };
            reader.take(bytes, highest_sent, &mut polled).map(|()| (polled.through, reader.line.len()))
        };
        assert_eq!(parse(b"{\"ack\":3}\n", 5), Ok((Some(3), 0)));
        assert_eq!(
            parse(b"{\"ack\":3}\r\n{ \"ack\" : 5 }\n{\"ack\":4}\n", 5),
            Ok((Some(5), 0)),
            "cumulative"
        );
        assert_eq!(parse(b"{\"ack\":2}\n{\"ack\"", 5), Ok((Some(2), 6)), "a partial line waits for its end");
        let refusal = |bytes: &[u8]| parse(bytes, 5).unwrap_err();
        assert!(refusal(b"{\"ack\":6}\n").contains("never sent"));
        assert!(refusal(b"hello\n").contains("is not {\"ack\":ID}"));
        assert!(refusal(b"{\"ack\":1,\"grant\":1}\n").contains("exactly one"));
        assert!(refusal(b"{}\n").contains("exactly one"));
        assert!(refusal(b"{\"grant\":6}\n").contains("a grant of id 6, never sent"));
        let mut reader = AckReader::default();
        let mut polled = Polled { through: None, grants: heapless::Vec::new(), end: None };
        reader.take(b"{\"grant\":3}\n{\"ack\":4}\n{\"grant\":4}\n", 5, &mut polled).unwrap();
        assert_eq!((polled.through, polled.grants.as_slice()), (Some(4), &[3, 4][..]));
        assert!(refusal(b"{\"ack\":-1}\n").contains("is not"));
        assert!(refusal(b"{\"ack\":1,\"extra\":2}\n").contains("is not"));
        assert!(refusal(b"\n").contains("is not"));
        assert!(refusal(&[b'7'; 65]).contains("longer than 64 bytes"));
    }

    #[test]
    fn lines_split_across_reads_parse_as_one() {
        let stream = b"{\"grant\":2}\n{\"ack\":3}\n{\"ack\":1}\n";
        for chunk in [1, 2, 7, 64] {
            assert_eq!(read_controller_lines(stream, chunk, 3), Ok((Some(3), vec![2])), "reads of {chunk}");
        }
        assert!(read_controller_lines(b"{\"ack\":4}\n", 1, 3).unwrap_err().contains("never sent"));
    }
}
