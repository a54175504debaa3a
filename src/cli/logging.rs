//! The process's logger: env_logger's filter (`RUST_LOG`, default `info`), lines prefixed with their syslog
//! priority (`<3>` … `<7>`) when stderr is the journal (`JOURNAL_STREAM`), else with a timestamp for a
//! terminal; warnings and errors rate-limited per message text (`deepgate::logs::RateLimit`), the repeats'
//! count said with the next one and, for what is left, when the process ends (`finish`).

use deepgate::logs::{self, RateLimit, Said};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The same warning or error is said at most once in this long.
const REPEAT_WINDOW: Duration = Duration::from_secs(10);

/// env_logger for the format and the filter, behind the rate limit.
struct Limited {
    inner: env_logger::Logger,
    limit: Mutex<RateLimit>,
}

impl log::Log for Limited {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.inner.matches(record) {
            return;
        }
        if record.level() > log::Level::Warn {
            self.inner.log(record);
            return;
        }
        let text = record.args().to_string();
        // A poisoned lock (a panic while logging) must not silence the log: say everything then.
        let said = self.limit.lock().map_or(Said::Say, |mut limit| limit.check(&text, Instant::now()));
        match said {
            Said::Say => self.inner.log(record),
            Said::Suppress => {}
            Said::SayRepeated { count } => self.inner.log(
                &log::Record::builder()
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .args(format_args!("{text} (and {count} more like it since it was last logged)"))
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        let unsaid = self.limit.lock().map(|mut limit| limit.unsaid()).unwrap_or_default();
        for (text, count) in unsaid {
            self.inner.log(
                &log::Record::builder()
                    .level(log::Level::Warn)
                    .target("deepgate")
                    .args(format_args!("{text} ({count} more like it since it was last logged)"))
                    .build(),
            );
        }
        self.inner.flush();
    }
}

/// Installs the logger; a second call (tests) leaves the first in place.
pub fn init() {
    let journal =
        logs::stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref(), logs::stderr_identity());
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if journal {
        // The journal stamps each line itself; the prefix gives it the priority (sd-daemon(3)).
        builder.format(|out, record| {
            writeln!(out, "<{}>{}: {}", logs::priority(record.level()), record.target(), record.args())
        });
    } else {
        builder.format_timestamp_millis();
    }
    let inner = builder.build();
    let level = inner.filter();
    let logger = Limited { inner, limit: Mutex::new(RateLimit::new(REPEAT_WINDOW)) };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// Says the repeats still uncounted, at the end of the process.
pub fn finish() {
    log::logger().flush();
}
