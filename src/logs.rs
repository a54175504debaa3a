//! What makes the log useful to an operator: the syslog priority of each level (the `<N>` prefix that
//! systemd's journal reads from a service's stderr), whether stderr is that journal (`JOURNAL_STREAM`), the
//! rate limit for a repeated warning or error (the first said, the repeats counted), and the one start-up line
//! that names the build, the board and the models. The binary installs the logger; this module holds the rules.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// The crate version, as Cargo knows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this binary was built from (`build.rs`: set by xtask, else `git rev-parse`, else "unknown").
pub const GIT_COMMIT: &str = env!("DEEPGATE_GIT_COMMIT");

/// The syslog priority of a log level (sd-daemon(3): `<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so
/// that `journalctl -p warning` shows warnings and errors only.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM` to `DEVICE:INODE` of the stream
/// it connected, and a child whose stderr was redirected elsewhere inherits the variable, so the identity of
/// the file is compared, not the variable's presence (systemd.exec(5)).
pub fn stderr_is_journal(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some((device, inode))) = (journal_stream, stderr) else { return false };
    let Some((want_device, want_inode)) = value.split_once(':') else { return false };
    want_device.parse() == Ok(device) && want_inode.parse() == Ok(inode)
}

/// The device and inode of the process's stderr, for `stderr_is_journal`.
pub fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata("/proc/self/fd/2").ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// What to do with one warning or error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Said {
    /// Log it as it is.
    Say,
    /// Log it, saying it was repeated `count` more times (not logged) since it was last said.
    SayRepeated { count: u64 },
    /// Do not log it: it was said less than the window ago (counted).
    Suppress,
}

/// Messages remembered at once; a busy log with more distinct messages than this forgets the oldest.
const REMEMBERED: usize = 32;

/// One message the rate limit remembers.
struct Seen {
    text: String,
    said_at: Instant,
    repeats: u64,
}

/// The rate limit: the same message (its exact text) is said at most once per `window`; the repeats in between
/// are counted and the count is said with the next one after the window, or by `unsaid` at the end. Fixed
/// storage for the table; a message's text is kept (allocated) only when it is first said.
pub struct RateLimit {
    window: Duration,
    seen: heapless::Vec<Seen, REMEMBERED>,
}

impl RateLimit {
    pub fn new(window: Duration) -> RateLimit {
        RateLimit { window, seen: heapless::Vec::new() }
    }

    /// Whether `message`, logged at `now`, is said.
    pub fn check(&mut self, message: &str, now: Instant) -> Said {
        if let Some(entry) = self.seen.iter_mut().find(|seen| seen.text == message) {
            if now.saturating_duration_since(entry.said_at) < self.window {
                entry.repeats += 1;
                return Said::Suppress;
            }
            let count = std::mem::take(&mut entry.repeats);
            entry.said_at = now;
            return if count == 0 { Said::Say } else { Said::SayRepeated { count } };
        }
        if self.seen.is_full() {
            // The message said longest ago makes room; its uncounted repeats are lost, which only a log with
            // more than REMEMBERED distinct repeating messages meets.
            if let Some(oldest) = (0..self.seen.len()).min_by_key(|&index| self.seen[index].said_at) {
                self.seen.swap_remove(oldest);
            }
        }
        let _ = self.seen.push(Seen { text: message.to_string(), said_at: now, repeats: 0 });
        Said::Say
    }

    /// The messages with repeats not yet said, and their counts (reset): said at the end of the process, so
    /// that no count is lost.
    pub fn unsaid(&mut self) -> Vec<(String, u64)> {
        self.seen
            .iter_mut()
            .filter(|seen| seen.repeats > 0)
            .map(|seen| (seen.text.clone(), std::mem::take(&mut seen.repeats)))
            .collect()
    }
}

/// The start-up line: version, commit, board, and each model with its sha256, so that a journal excerpt says
/// exactly what ran.
pub fn startup_line(board: &str, models: &[(&str, &str)]) -> String {
    let models: Vec<String> = models.iter().map(|(id, sha256)| format!("{id} sha256 {sha256}")).collect();
    format!("deepgate {VERSION} (commit {GIT_COMMIT}), board `{board}`, models: {}", models.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_the_syslog_priorities_journald_reads() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Debug), 7);
    }

    #[test]
    fn the_journal_is_recognised_by_the_identity_of_stderr_not_the_variable_alone() {
        assert!(stderr_is_journal(Some("8:12345"), Some((8, 12345))));
        assert!(!stderr_is_journal(Some("8:12345"), Some((8, 999))), "stderr redirected by a child");
        assert!(!stderr_is_journal(None, Some((8, 12345))));
        assert!(!stderr_is_journal(Some("garbage"), Some((8, 12345))));
        assert!(!stderr_is_journal(Some("8:12345"), None));
    }

    #[test]
    fn a_repeated_message_is_said_once_per_window_then_with_its_count() {
        let mut limit = RateLimit::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limit.check("camera: time-out", start), Said::Say);
        for second in 1..=5 {
            assert_eq!(limit.check("camera: time-out", start + Duration::from_secs(second)), Said::Suppress);
        }
        assert_eq!(limit.check("another error", start + Duration::from_secs(6)), Said::Say, "per message");
        assert_eq!(
            limit.check("camera: time-out", start + Duration::from_secs(11)),
            Said::SayRepeated { count: 5 }
        );
        assert_eq!(limit.check("camera: time-out", start + Duration::from_secs(22)), Said::Say);
        limit.check("camera: time-out", start + Duration::from_secs(23));
        limit.check("camera: time-out", start + Duration::from_secs(24));
        assert_eq!(limit.unsaid(), [("camera: time-out".to_string(), 2)]);
        assert!(limit.unsaid().is_empty(), "said once");
    }

    #[test]
    fn more_distinct_messages_than_remembered_never_fail() {
        let mut limit = RateLimit::new(Duration::from_secs(10));
        let now = Instant::now();
        for index in 0..(3 * REMEMBERED) {
            assert_eq!(limit.check(&format!("error {index}"), now), Said::Say);
        }
        assert_eq!(limit.check(&format!("error {}", 3 * REMEMBERED - 1), now), Said::Suppress);
    }

    #[test]
    fn the_startup_line_names_version_commit_board_and_model_checksums() {
        let line = startup_line("host", &[("detector", "ab12"), ("classifier", "cd34")]);
        assert!(line.starts_with(&format!("deepgate {VERSION} (commit {GIT_COMMIT})")), "{line}");
        assert!(line.contains("board `host`") && line.contains("detector sha256 ab12"), "{line}");
        assert!(!GIT_COMMIT.is_empty());
    }
}
