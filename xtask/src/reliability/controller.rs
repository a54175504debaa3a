//! The reliability harness's access controller: a plaintext TCP peer of `deepgate run`'s TCP gate that reads
//! verdict and health lines, acknowledges verdicts by id (all of them, or only some, at random), and keeps a
//! ledger of everything it received across restarts of the runtime, from which the harness checks that nothing
//! was lost, no id was reused and every verdict arrived exactly once.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which verdicts the controller acknowledges.
#[derive(Clone, Copy, Debug)]
pub enum AckPolicy {
    /// Every verdict, as it arrives.
    All,
    /// A verdict with this probability (cumulatively: acknowledging id N covers every id below it), so that a
    /// kill finds some lines acknowledged and some not.
    Some(f64),
}

/// One verdict id as the controller saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub boot: String,
    pub seq: u64,
    /// Lines carrying this id: 1, or more when it was sent again (after a lost acknowledgement or a restart).
    pub times: u32,
    pub expired: bool,
    pub source: String,
    pub decision: String,
    pub fake_probability: Option<f64>,
    /// The runtime's wall clock and its monotonic clock since its start, as the line carries them.
    pub wall_ms: u64,
    pub mono_ms: u64,
    /// The harness's own wall clock when the line first arrived (never faked).
    pub arrived_ms: u64,
}

/// Everything the controller received, across connections.
#[derive(Debug, Default)]
pub struct Ledger {
    pub received: BTreeMap<u64, Received>,
    /// (boot, seq) → id: the same verdict under two ids would be delivered twice.
    pub identities: HashMap<(String, u64), u64>,
    /// The highest id acknowledged.
    pub acked: u64,
    /// Of the lines received, those that carried an id received before.
    pub repeats: u64,
    /// Of the repeats, those of an id the controller had already acknowledged (the runtime was killed before it
    /// removed them from its spool; the protocol allows it, and the id makes it harmless).
    pub repeats_after_ack: u64,
    pub connections: u64,
    /// Boot ids in the order of their first verdict.
    pub boots: Vec<String>,
    /// The latest health line's state, and how many health lines came.
    pub health: Option<String>,
    pub health_lines: u64,
    pub health_states: Vec<String>,
    /// Lines of other types (the audit chain head), by type.
    pub other_lines: BTreeMap<String, u64>,
    /// Broken promises: an id carrying two different verdicts, a new id below one seen before, one verdict
    /// under two ids, a line that is not JSON.
    pub violations: Vec<String>,
    /// When the latest verdict arrived.
    pub last_verdict: Option<Instant>,
}

impl Ledger {
    /// The highest id received, 0 before the first.
    pub fn highest(&self) -> u64 {
        self.received.keys().next_back().copied().unwrap_or(0)
    }

    /// Ids between 1 and the highest that never arrived.
    pub fn gaps(&self) -> Vec<u64> {
        let mut gaps = Vec::new();
        let mut expected = 1;
        for &id in self.received.keys() {
            gaps.extend(expected..id);
            expected = id + 1;
        }
        gaps
    }

    fn verdict(&mut self, line: &serde_json::Value, text: &str) {
        let (Some(id), Some(boot), Some(seq)) =
            (line["id"].as_u64(), line["boot"].as_str(), line["seq"].as_u64())
        else {
            self.violations.push(format!("verdict line without id, boot or seq: {text}"));
            return;
        };
        let expired = line["expired"].as_bool().unwrap_or(false);
        self.last_verdict = Some(Instant::now());
        if self.boots.last().map(String::as_str) != Some(boot)
            && !self.boots.iter().any(|known| known == boot)
        {
            self.boots.push(boot.to_owned());
        }
        let highest = self.highest();
        if let Some(known) = self.received.get_mut(&id) {
            known.times += 1;
            self.repeats += 1;
            if id <= self.acked {
                self.repeats_after_ack += 1;
            }
            if known.boot != boot || known.seq != seq {
                self.violations.push(format!(
                    "id {id} reused: first boot {} seq {}, now boot {boot} seq {seq}",
                    known.boot, known.seq
                ));
            }
            return;
        }
        if id < highest {
            self.violations.push(format!("new verdict id {id} below the highest seen before, {highest}"));
        }
        if let Some(other) = self.identities.insert((boot.to_owned(), seq), id) {
            self.violations.push(format!("boot {boot} seq {seq} delivered under two ids, {other} and {id}"));
        }
        let arrived_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let text = |field: &str| line[field].as_str().unwrap_or_default().to_owned();
        let received = Received {
            boot: boot.to_owned(),
            seq,
            times: 1,
            expired,
            source: text("source"),
            decision: text("decision"),
            fake_probability: line["fake_probability"].as_f64(),
            wall_ms: line["wall_ms"].as_u64().unwrap_or(0),
            mono_ms: line["mono_ms"].as_u64().unwrap_or(0),
            arrived_ms,
        };
        self.received.insert(id, received);
    }
}

/// A controller listening on 127.0.0.1 at a free port, until dropped.
pub struct Controller {
    pub port: u16,
    ledger: Arc<Mutex<Ledger>>,
    policy: Arc<Mutex<AckPolicy>>,
    /// Set by `disconnect`, cleared by the accepting thread once it cut the connections.
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Controller {
    pub fn start(policy: AckPolicy) -> Result<Controller> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the test controller")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let policy = Arc::new(Mutex::new(policy));
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let thread = std::thread::spawn({
            let (ledger, policy, cut, stop) = (ledger.clone(), policy.clone(), cut.clone(), stop.clone());
            move || accept(&listener, &ledger, &policy, &cut, &stop)
        });
        Ok(Controller { port, ledger, policy, cut, stop, thread: Some(thread) })
    }

    /// Cuts every open connection, as a controller restart or a network fault would, and waits until done.
    pub fn disconnect(&self) {
        self.cut.store(true, Ordering::Relaxed);
        while self.cut.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The ledger, locked: read it briefly, the connection threads wait meanwhile.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    pub fn set_policy(&self, policy: AckPolicy) {
        *lock(&self.policy) = policy;
    }

    /// Waits until `condition` holds on the ledger, or `timeout` passes; says which.
    pub fn wait_for(&self, timeout: Duration, condition: impl Fn(&Ledger) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(&self.ledger()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept(
    listener: &TcpListener,
    ledger: &Arc<Mutex<Ledger>>,
    policy: &Arc<Mutex<AckPolicy>>,
    cut: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if cut.load(Ordering::Relaxed) {
            for (_, stream) in &connections {
                if let Some(stream) = stream {
                    let _ = TcpStream::shutdown(stream, Shutdown::Both);
                }
            }
            cut.store(false, Ordering::Relaxed);
        }
        match listener.accept() {
            Ok((stream, _)) => {
                lock(ledger).connections += 1;
                let (ledger, policy) = (ledger.clone(), policy.clone());
                let clone = stream.try_clone().ok();
                connections.retain(|(thread, _): &(JoinHandle<()>, Option<TcpStream>)| !thread.is_finished());
                connections.push((std::thread::spawn(move || serve(stream, &ledger, &policy)), clone));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(error) => {
                lock(ledger).violations.push(format!("controller accept failed: {error}"));
                return;
            }
        }
    }
    for (thread, stream) in connections {
        if let Some(stream) = stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = thread.join();
    }
}

/// A small xorshift generator, seeded from the clock: the acknowledgement coin, the moments of the kills.
pub struct Coin(u64);

impl Coin {
    pub fn new() -> Coin {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |elapsed| elapsed.subsec_nanos() as u64);
        Coin(nanos | 1)
    }

    /// A number in 0..1.
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn heads(&mut self, probability: f64) -> bool {
        self.uniform() < probability
    }
}

fn serve(stream: TcpStream, ledger: &Mutex<Ledger>, policy: &Mutex<AckPolicy>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut coin = Coin::new();
    for line in BufReader::new(stream).lines() {
        let Ok(text) = line else { return };
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(error) => {
                lock(ledger).violations.push(format!("a line that is not JSON ({error}): {text}"));
                continue;
            }
        };
        let ack = {
            let mut ledger = lock(ledger);
            match value["type"].as_str() {
                Some("health") => {
                    ledger.health_lines += 1;
                    let state = value["state"].as_str().unwrap_or("?").to_owned();
                    if ledger.health_states.last() != Some(&state) {
                        ledger.health_states.push(state.clone());
                    }
                    ledger.health = Some(state);
                    None
                }
                Some("verdict") => {
                    ledger.verdict(&value, &text);
                    let id = value["id"].as_u64().unwrap_or(0);
                    let ack = match *lock(policy) {
                        AckPolicy::All => true,
                        AckPolicy::Some(probability) => coin.heads(probability),
                    };
                    // Acknowledging means "every id up to this one received": only ever forward.
                    (ack && id > ledger.acked).then(|| {
                        ledger.acked = id;
                        id
                    })
                }
                other => {
                    *ledger.other_lines.entry(other.unwrap_or("(no type)").to_owned()).or_default() += 1;
                    None
                }
            }
        };
        if let Some(id) = ack {
            if writer.write_all(format!("{{\"ack\":{id}}}\n").as_bytes()).is_err() {
                return;
            }
        }
    }
}
