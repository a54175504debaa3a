//! The systemd notification protocol (`sd_notify`), as much of it as a `Type=notify` service with a watchdog
//! needs: `READY=1` once, `WATCHDOG=1` paced at half of `WATCHDOG_USEC`, `STATUS=` lines and `STOPPING=1`.
//! Without `NOTIFY_SOCKET` (not started by systemd, or by a unit that is not `Type=notify`) every call does
//! nothing. What deserves a ping or a status line is the supervisor's business; this module only speaks the
//! protocol.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the socket systemd names, so it is written here with
//! std's `UnixDatagram` rather than with a crate: a dependency would add a build and a supply-chain surface for
//! about thirty lines, and nothing in it would be more correct than this.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where and how often to tell systemd; built once from the environment systemd gives the service.
pub struct Notifier {
    /// The socket to send to, or `None`: every call is a no-op.
    target: Option<(UnixDatagram, SocketAddr)>,
    /// The pause between two watchdog pings (half of `WATCHDOG_USEC`), or `None` when systemd wants none.
    ping_every: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
    ready: AtomicBool,
    /// A failed send is logged once: a notify socket that went away would otherwise fill the log.
    failed: AtomicBool,
}

impl Notifier {
    /// A notifier from `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, as systemd sets them.
    pub fn from_environment() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(socket.as_deref(), watchdog_interval(watchdog_usec.as_deref(), watchdog_pid.as_deref()))
    }

    /// A notifier sending to `socket` (a path, or `@name` for an abstract socket), pinging at half of
    /// `watchdog` when there is one. An unusable socket name is logged and gives the no-op notifier.
    pub fn new(socket: Option<&str>, watchdog: Option<Duration>) -> Notifier {
        let target = socket.filter(|name| !name.is_empty()).and_then(|name| match open(name) {
            Ok(target) => Some(target),
            Err(error) => {
                log::warn!("NOTIFY_SOCKET={name}: {error}; systemd will not be told about this run");
                None
            }
        });
        if target.is_some() {
            match watchdog {
                Some(interval) => {
                    log::info!("systemd: notify socket, watchdog every {} ms", interval.as_millis())
                }
                None => log::info!("systemd: notify socket, no watchdog"),
            }
        }
        Notifier {
            ping_every: target.as_ref().and(watchdog).map(|interval| interval / 2),
            target,
            last_ping: Mutex::new(None),
            ready: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }

    /// Whether anything is sent at all.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1` with a status line, the first time only; later calls do nothing.
    pub fn ready(&self, status: &str) {
        if self.target.is_none() || self.ready.swap(true, Ordering::Relaxed) {
            return;
        }
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
        // Counts as a ping: systemd starts the watchdog's clock now.
        self.ping_sent(Instant::now());
    }

    /// A `STATUS=` line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        if self.target.is_some() {
            self.send(&format!("STATUS={}", one_line(status)));
        }
    }

    /// `WATCHDOG=1`, unless one went less than half the watchdog interval ago (this is called per frame).
    pub fn watchdog(&self) {
        let Some(every) = self.ping_every else { return };
        let now = Instant::now();
        let due = match self.last_ping.lock() {
            Ok(last) => last.is_none_or(|last| now.duration_since(last) >= every),
            Err(_) => true,
        };
        if due {
            self.send("WATCHDOG=1");
            self.ping_sent(now);
        }
    }

    /// `STOPPING=1`: the clean shutdown has begun.
    pub fn stopping(&self) {
        if self.target.is_some() {
            self.send("STOPPING=1");
        }
    }

    fn ping_sent(&self, at: Instant) {
        if let Ok(mut last) = self.last_ping.lock() {
            *last = Some(at);
        }
    }

    fn send(&self, message: &str) {
        let Some((socket, address)) = &self.target else { return };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), address) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                log::warn!("systemd notify socket: {error} (said once)");
            }
        }
    }
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or this process.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// An unbound datagram socket and the address `name` stands for: `@` starts an abstract name (Linux).
fn open(name: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let address = match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        }
        None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither a path nor an abstract name ('@')",
            ))
        }
    };
    Ok((UnixDatagram::unbound()?, address))
}

/// A status text as one protocol line: a newline would start another assignment.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str) -> (UnixDatagram, std::path::PathBuf) {
        let path = crate::testing::scratch_dir(&format!("notify-{name}")).join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binds");
        socket.set_nonblocking(true).expect("non-blocking");
        (socket, path)
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        let mut buffer = [0u8; 512];
        let mut messages = Vec::new();
        while let Ok(length) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
        messages
    }

    #[test]
    fn ready_is_sent_once_and_pings_are_paced_at_half_the_interval() {
        let (socket, path) = listener("pace");
        let notifier = Notifier::new(path.to_str(), Some(Duration::from_millis(400)));
        notifier.ready("health: normal");
        notifier.ready("again");
        notifier.watchdog();
        notifier.status("health: camera_lost\nsecond line");
        assert_eq!(
            received(&socket),
            ["READY=1\nSTATUS=health: normal", "STATUS=health: camera_lost second line"]
        );
        std::thread::sleep(Duration::from_millis(210));
        notifier.watchdog();
        notifier.watchdog();
        assert_eq!(received(&socket), ["WATCHDOG=1"]);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn without_a_socket_or_a_watchdog_nothing_is_sent() {
        let quiet = Notifier::new(None, Some(Duration::from_secs(1)));
        assert!(!quiet.active());
        quiet.ready("x");
        quiet.watchdog();
        let (socket, path) = listener("nowatchdog");
        let notifier = Notifier::new(path.to_str(), None);
        notifier.watchdog();
        assert!(received(&socket).is_empty());
        assert!(!Notifier::new(Some("relative/name"), None).active());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_interval_is_ours_only_when_watchdog_pid_is_unset_or_this_process() {
        let ours = std::process::id().to_string();
        assert_eq!(watchdog_interval(Some("2000000"), None), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_interval(Some("2000000"), Some(&ours)), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_interval(Some("2000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }
}
