//! Decision receipts: an append-only audit log of verdicts whose entries are hash-chained (each carries the
//! SHA-256 of the one before), so that an altered, deleted, inserted or reordered entry is found, and where.
//!
//! A line is `{"entry":{...},"hash":"<hex>"}`, where hash = SHA-256(previous hash in hex ‖ the entry's JSON
//! text exactly as written). The first entry's previous hash is 64 zeros.
//!
//! Signing (optional, `[audit] key`): with a device key, each line also carries
//! `"signature":"<hex>"`, the Ed25519 signature of the line's hash (its 64 hex characters). The chain alone
//! stops nobody who can rewrite the whole file; signatures do, for anyone who checks them against the
//! device's public key (`deepgate audit verify --public-key`). The key file holds the 32-byte secret seed as
//! 64 hex characters and must not be readable by group or others.
//!
//! Survival, as the gate spool's (`gate::spool`):
//! - A torn last write (power loss in the middle of a line; a line of zeros a file system left after a
//!   crash; a line without its newline) is cut at the next open, back to the last whole entry, and counted
//!   (logged, and in the chain head line). Only a tail that is not JSON at all and lies within one write of
//!   the end is cut; a well-formed entry that does not verify is tampering, and the log is refused.
//! - A write that fails (disk full, I/O error) is undone: the file is cut back to its last whole entry before
//!   the next write, so a failure never leaves a broken line inside the chain. What the runtime does then is
//!   `[audit] on_failure` (`OnFailure`).
//! - Rotation (`[audit] max_bytes`, `keep`): once the file reaches `max_bytes` it is renamed `FILE.1` (the
//!   older ones shift to `FILE.2`...; beyond `keep` the oldest is deleted) and a new `FILE` starts. The chain
//!   is carried: the new file's first entry continues the sequence and names the last hash of `FILE.1`.
//!   `verify` follows the chain from the oldest kept file to `FILE`; the oldest kept file's first entry is
//!   taken as given (the files before it are gone), which the chain head reports make checkable.
//! - The chain head (the last entry's sequence, hash and signature) goes to the controller every
//!   `[audit] head_interval_s` (`HeadMessage`), so a log cut or replaced on the box is detectable off it.

use crate::decide::Decision;
use crate::decide::Verdict;
use crate::gate::{from_hex, to_hex};
use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

mod verify;
pub use verify::{chain_files, ensure_found, verify, Verification, MAX_TORN_BYTES};

/// The previous hash of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A model as a receipt names it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelRecord {
    pub id: String,
    pub sha256: String,
}

/// The decision thresholds in force, recorded with every verdict.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Thresholds {
    pub frame_threshold: f32,
    pub genuine_at: f32,
    pub fake_at: f32,
}

/// One receipt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub sequence: u64,
    pub previous: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub board: String,
    pub source: String,
    pub decision: Decision,
    pub fake_probability: Option<f32>,
    pub frame_scores: Vec<f32>,
    pub frames_seen: u32,
    pub evidence: f32,
    pub reason: String,
    pub models: Vec<ModelRecord>,
    pub thresholds: Thresholds,
}

#[derive(Serialize)]
struct LineOut<'a> {
    entry: &'a RawValue,
    hash: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineIn<'a> {
    #[serde(borrow)]
    pub(crate) entry: &'a RawValue,
    pub(crate) hash: String,
    pub(crate) signature: Option<String>,
}

/// Reads a device key file (64 hex characters of secret seed), refusing one that group or others can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    load_device_key(path, "audit signing key")
}

/// Reads a device key file as `load_signing_key` does; `what` names the key in errors (`gate.signing_key`).
pub fn load_device_key(path: &Path, what: &str) -> Result<SigningKey> {
    let text = super::read_private_file(path, what)?;
    let seed = from_hex::<32>(&text, &format!("{what} {}", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Makes a new device key from the kernel's random source and writes it to `path` (mode 600, never over an
/// existing file). Returns the public key in hex, which verifiers need.
pub fn generate_signing_key(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut seed))
        .context("reading /dev/urandom")?;
    let key = SigningKey::from_bytes(&seed);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    writeln!(file, "{}", to_hex(&seed)).and_then(|()| file.sync_all())?;
    Ok(public_key_hex(&key))
}

/// The public half of a device key, as `audit verify --public-key` takes it.
pub fn public_key_hex(key: &SigningKey) -> String {
    to_hex(key.verifying_key().as_bytes())
}

/// Parses a public key given in hex.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey> {
    let bytes = from_hex::<32>(text, "the public key")?;
    VerifyingKey::from_bytes(&bytes).context("not a valid Ed25519 public key")
}

fn chain_hash(previous: &str, entry_json: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(entry_json.as_bytes());
    to_hex(&hasher.finalize())
}

/// What the runtime does when a receipt cannot be written (disk full, I/O error): `[audit] on_failure`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// No verdict without its receipt: health `audit_failed` (no decisions, door in its fault state, the
    /// controller told) until a receipt is written again. The default: where receipts are kept, they are
    /// part of what a decision is.
    #[default]
    Fault,
    /// Verdicts go on without receipts: health `audit_degraded` (the controller told) until a receipt is
    /// written again.
    Continue,
}

/// When the log moves to a new file (`[audit] max_bytes`, `keep`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The size at which the file is rotated; 0: never.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` to `FILE.keep`), at least 1.
    pub keep: u32,
}

impl Rotation {
    pub const NEVER: Rotation = Rotation { max_bytes: 0, keep: 1 };
}

/// The rotated file `n` of the log at `path`: `FILE.n`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n}"));
    path.with_file_name(name)
}

/// The chain head as the controller reads it: `{"type":"audit_head","board":...,"sequence":N,"hash":"..",
/// "signature":"..","time_ms":..,"torn_bytes":N,"failing":false}`. `sequence` is the last entry's (null
/// before the first), `hash` its chain hash (64 zeros before the first), `signature` its signature when
/// signing (the controller checks it against the device's public key: the head is the device's);
/// `torn_bytes`: a torn tail cut at this start; `failing`: the last write failed.
#[derive(Serialize)]
pub struct HeadMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub board: &'a str,
    pub sequence: Option<u64>,
    pub hash: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<&'a str>,
    pub time_ms: u64,
    pub torn_bytes: u64,
    pub failing: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The log being appended to.
pub struct AuditLog {
    path: PathBuf,
    /// None until the first write after a rotation that could not create the new file.
    file: Option<File>,
    /// The file's length through its last whole entry: a failed write is cut back to it.
    committed: u64,
    /// A write failed and its bytes may still be in the file: cut back to `committed` before the next one.
    dirty: bool,
    next_sequence: u64,
    last_hash: String,
    last_signature: Option<String>,
    board: String,
    models: Vec<ModelRecord>,
    thresholds: Thresholds,
    key: Option<SigningKey>,
    rotation: Rotation,
    torn_bytes: u64,
}

impl AuditLog {
    /// Opens (or creates) the log at `path` and verifies the existing chain, across its rotated files
    /// (`verify`): a torn last write is cut (module documentation); any other problem refuses the log, so that
    /// evidence of tampering is never buried under new entries. With a signing `key`, every existing entry
    /// must carry this key's valid signature too.
    pub fn open(
        path: &Path,
        board: &str,
        models: Vec<ModelRecord>,
        thresholds: Thresholds,
        key: Option<SigningKey>,
    ) -> Result<AuditLog> {
        let public = key.as_ref().map(SigningKey::verifying_key);
        let checked = verify::check_chain(path, public.as_ref())?;
        let mut torn_bytes = 0;
        if let Some(problem) = &checked.verification.problem {
            let Some(torn) = checked.torn else {
                bail!(
                    "audit log {} does not verify ({problem}); move it (and its rotated files) aside to start \
                     a new one",
                    path.display()
                );
            };
            cut(path, torn.offset)?;
            torn_bytes = torn.bytes;
            log::warn!(
                "audit log {}: cut a torn last write ({} bytes at offset {}: {problem}); {} entries intact",
                path.display(),
                torn.bytes,
                torn.offset,
                checked.verification.entries
            );
        }
        let verification = checked.verification;
        let file = append_to(path)?;
        let committed =
            file.metadata().with_context(|| format!("reading audit log {}", path.display()))?.len();
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Some(file),
            committed,
            dirty: false,
            next_sequence: verification.first_sequence + verification.entries,
            last_hash: verification.last_hash,
            last_signature: verification.last_signature,
            board: board.to_string(),
            models,
            thresholds,
            key,
            rotation: Rotation::NEVER,
            torn_bytes,
        })
    }

    /// Rotates the file as `rotation` says from now on.
    pub fn rotate_at(mut self, rotation: Rotation) -> AuditLog {
        self.rotation = Rotation { max_bytes: rotation.max_bytes, keep: rotation.keep.max(1) };
        self
    }

    /// Bytes of a torn last write cut at open (0: none).
    pub fn torn_bytes(&self) -> u64 {
        self.torn_bytes
    }

    /// The next entry's sequence number, and the last entry's hash.
    pub fn head(&self) -> (u64, &str) {
        (self.next_sequence, &self.last_hash)
    }

    /// The chain head line for the controller (`HeadMessage`), into `line`.
    pub fn head_line(&self, line: &mut super::Line) -> Result<()> {
        let message = HeadMessage {
            kind: "audit_head",
            board: &self.board,
            sequence: self.next_sequence.checked_sub(1),
            hash: &self.last_hash,
            signature: self.last_signature.as_deref(),
            time_ms: now_ms(),
            torn_bytes: self.torn_bytes,
            failing: self.dirty,
        };
        super::encode_line(&message, line)
    }

    /// Appends the receipt of `verdict` about `source` and syncs it to disk; then rotates the file if it
    /// reached `max_bytes` (a rotation that fails is logged and tried again after the next receipt: the receipt
    /// itself is written). On error nothing of the receipt remains in the chain.
    pub fn append(&mut self, source: &str, verdict: &Verdict) -> Result<()> {
        let entry = Entry {
            sequence: self.next_sequence,
            previous: self.last_hash.clone(),
            time_ms: now_ms(),
            board: self.board.clone(),
            source: source.to_string(),
            decision: verdict.decision,
            fake_probability: verdict.fake_probability,
            frame_scores: verdict.scores.to_vec(),
            frames_seen: verdict.frames_seen,
            evidence: verdict.evidence,
            reason: verdict.reason.to_string(),
            models: self.models.clone(),
            thresholds: self.thresholds,
        };
        let entry_json = serde_json::to_string(&entry)?;
        let hash = chain_hash(&self.last_hash, &entry_json);
        let raw = RawValue::from_string(entry_json)?;
        let signature = self.key.as_ref().map(|key| to_hex(&key.sign(hash.as_bytes()).to_bytes()));
        let mut line =
            serde_json::to_string(&LineOut { entry: &raw, hash: &hash, signature: signature.clone() })?;
        line.push('\n');
        self.write(line.as_bytes()).with_context(|| format!("writing audit log {}", self.path.display()))?;
        self.next_sequence += 1;
        self.last_hash = hash;
        self.last_signature = signature;
        if self.rotation.max_bytes > 0 && self.committed >= self.rotation.max_bytes {
            if let Err(error) = self.rotate() {
                log::error!("{error:#}; trying again after the next receipt");
            }
        }
        Ok(())
    }

    /// Writes one whole line and syncs it, first cutting back what a failed write left; on error, cuts back
    /// again (or leaves that to the next write, `dirty`).
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            slot @ None => {
                let file = append_to(&self.path).map_err(std::io::Error::other)?;
                self.committed = file.metadata()?.len();
                slot.insert(file)
            }
        };
        if self.dirty {
            file.set_len(self.committed)?;
            self.dirty = false;
        }
        match file.write_all(bytes).and_then(|()| file.sync_data()) {
            Ok(()) => {
                self.committed += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                // Cut back now if the file system lets us; the next write cuts again in any case, and until a
                // write succeeds the head line says `failing`.
                let _ = file.set_len(self.committed);
                self.dirty = true;
                Err(error)
            }
        }
    }

    /// `FILE` becomes `FILE.1`, `FILE.n` becomes `FILE.n+1`, `FILE.keep` is deleted; a new `FILE` starts.
    fn rotate(&mut self) -> Result<()> {
        let what = |path: &Path| format!("rotating audit log {}", path.display());
        let oldest = rotated(&self.path, self.rotation.keep);
        match std::fs::remove_file(&oldest) {
            Ok(()) => log::info!("audit log: deleted {}, the oldest kept", oldest.display()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| what(&oldest)),
        }
        for n in (1..self.rotation.keep).rev() {
            let from = rotated(&self.path, n);
            match std::fs::rename(&from, rotated(&self.path, n + 1)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error).with_context(|| what(&from))
                }
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1)).with_context(|| what(&self.path))?;
        // From here the old file is FILE.1; a new FILE is made now or, if that fails, at the next write.
        self.file = None;
        self.committed = 0;
        self.dirty = false;
        self.file = Some(append_to(&self.path)?);
        sync_directory(&self.path);
        log::info!(
            "audit log {}: rotated; the chain goes on at entry {}",
            self.path.display(),
            self.next_sequence
        );
        Ok(())
    }
}

fn append_to(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening audit log {}", path.display()))
}

/// Cuts the file at `path` to `length` bytes, durably.
fn cut(path: &Path, length: u64) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.set_len(length).and_then(|()| file.sync_all()))
        .with_context(|| format!("cutting the torn tail of audit log {}", path.display()))
}

/// Makes renames in the log's directory durable; a failure only costs durability of the names, logged.
fn sync_directory(path: &Path) {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Err(error) = File::open(directory).and_then(|directory| directory.sync_all()) {
        log::warn!("audit log: syncing directory {}: {error}", directory.display());
    }
}

#[cfg(test)]
mod tests;
