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

use crate::decide::Decision;
use crate::decide::Verdict;
use crate::gate::{from_hex, to_hex};
use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

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
struct LineIn<'a> {
    #[serde(borrow)]
    entry: &'a RawValue,
    hash: String,
    signature: Option<String>,
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

/// The log being appended to.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    next_sequence: u64,
    last_hash: String,
    board: String,
    models: Vec<ModelRecord>,
    thresholds: Thresholds,
    key: Option<SigningKey>,
}

impl AuditLog {
    /// Opens (or creates) the log at `path` and verifies the existing chain: a log that does not verify is
    /// refused, so that evidence of tampering is never buried under new entries. With a signing `key`, every
    /// existing entry must carry this key's valid signature too.
    pub fn open(
        path: &Path,
        board: &str,
        models: Vec<ModelRecord>,
        thresholds: Thresholds,
        key: Option<SigningKey>,
    ) -> Result<AuditLog> {
        let (next_sequence, last_hash) = if path.exists() {
            let summary = verify(path, key.as_ref().map(|key| key.verifying_key()).as_ref())?;
            if let Some(problem) = summary.problem {
                bail!(
                    "audit log {} does not verify ({problem}); move it aside to start a new one",
                    path.display()
                );
            }
            (summary.entries, summary.last_hash)
        } else {
            (0, GENESIS.to_string())
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening audit log {}", path.display()))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            next_sequence,
            last_hash,
            board: board.to_string(),
            models,
            thresholds,
            key,
        })
    }

    /// Appends the receipt of `verdict` about `source` and syncs it to disk.
    pub fn append(&mut self, source: &str, verdict: &Verdict) -> Result<()> {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let entry = Entry {
            sequence: self.next_sequence,
            previous: self.last_hash.clone(),
            time_ms,
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
        let mut line = serde_json::to_string(&LineOut { entry: &raw, hash: &hash, signature })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("writing audit log {}", self.path.display()))?;
        self.next_sequence += 1;
        self.last_hash = hash;
        Ok(())
    }
}

/// The result of checking a log.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// Entries that verified, from the start.
    pub entries: u64,
    /// Of those, the entries whose signature was checked against the given public key.
    pub signatures_checked: u64,
    pub last_hash: String,
    /// The first problem: its line number and what is wrong. None when the whole log verifies.
    pub problem: Option<String>,
}

/// Checks every entry of the log at `path` in order and stops at the first broken one. With a `public_key`,
/// every entry must also carry a valid signature by that key (an unsigned entry is a problem); without one,
/// signatures are not checked.
pub fn verify(path: &Path, public_key: Option<&VerifyingKey>) -> Result<Verification> {
    let file = File::open(path).with_context(|| format!("opening audit log {}", path.display()))?;
    let mut verification =
        Verification { entries: 0, signatures_checked: 0, last_hash: GENESIS.to_string(), problem: None };
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading audit log {}", path.display()))?;
        match check_line(&line, verification.entries, &verification.last_hash, public_key) {
            Ok(hash) => verification.last_hash = hash,
            Err(problem) => {
                verification.problem = Some(format!("line {number}: {problem}"));
                return Ok(verification);
            }
        }
        verification.entries += 1;
        verification.signatures_checked += u64::from(public_key.is_some());
    }
    Ok(verification)
}

/// Why one line does not continue the chain (`expected_sequence`, `previous` hash) or lacks a valid
/// signature by `public_key`, if so; else its hash.
fn check_line(
    line: &[u8],
    expected_sequence: u64,
    previous: &str,
    public_key: Option<&VerifyingKey>,
) -> std::result::Result<String, String> {
    let parsed: LineIn = serde_json::from_slice(line).map_err(|error| format!("not a receipt ({error})"))?;
    let entry: Entry =
        serde_json::from_str(parsed.entry.get()).map_err(|error| format!("malformed entry ({error})"))?;
    if entry.sequence != expected_sequence {
        return Err(format!(
            "entry has sequence {} where {expected_sequence} was expected (entries removed, inserted or reordered)",
            entry.sequence
        ));
    }
    if entry.previous != previous {
        return Err(format!("entry {} does not follow the one before it (chain broken)", entry.sequence));
    }
    if chain_hash(previous, parsed.entry.get()) != parsed.hash {
        return Err(format!("entry {} was altered after it was written (hash mismatch)", entry.sequence));
    }
    if let Some(public_key) = public_key {
        let Some(signature) = &parsed.signature else {
            return Err(format!("entry {} is not signed", entry.sequence));
        };
        let bytes = from_hex::<64>(signature, "the signature").map_err(|error| format!("{error:#}"))?;
        public_key.verify(parsed.hash.as_bytes(), &Signature::from_bytes(&bytes)).map_err(|_| {
            format!("entry {} is not signed by this key (rewritten, or another device's)", entry.sequence)
        })?;
    }
    Ok(parsed.hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Reason, Scores};

    fn verdict(decision: Decision, scores: &[f32]) -> Verdict {
        let mut reason = Reason::new();
        let _ = reason.push_str("test");
        Verdict {
            decision,
            fake_probability: Some(scores.iter().sum::<f32>() / scores.len() as f32),
            frames_used: scores.len() as u32,
            frames_seen: scores.len() as u32 + 1,
            first_frame: 0,
            last_frame: scores.len() as u64,
            evidence: 1.5,
            reason,
            scores: scores.iter().copied().collect::<Scores>(),
        }
    }

    fn log_with_three_entries(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("deepgate-audit-{}-{name}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let models = vec![ModelRecord { id: "detector".into(), sha256: "ab".repeat(32) }];
        let thresholds = Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 };
        let mut log = AuditLog::open(&path, "kiosk-1", models, thresholds, None).unwrap();
        log.append("cam", &verdict(Decision::Genuine, &[0.1, 0.05])).unwrap();
        log.append("cam", &verdict(Decision::Fake, &[0.9, 0.95, 0.99])).unwrap();
        log.append("cam", &verdict(Decision::Uncertain, &[0.5])).unwrap();
        path
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    #[test]
    fn receipts_record_the_decision_scores_models_and_thresholds_and_verify() {
        let path = log_with_three_entries("intact");
        let verification = verify(&path, None).unwrap();
        assert_eq!(verification.entries, 3);
        assert!(verification.problem.is_none(), "{verification:?}");
        let second: serde_json::Value = serde_json::from_str(&lines(&path)[1]).unwrap();
        let entry = &second["entry"];
        assert_eq!(entry["sequence"], 1);
        assert_eq!(entry["decision"], "fake");
        assert_eq!(entry["board"], "kiosk-1");
        assert_eq!(entry["frame_scores"].as_array().unwrap().len(), 3);
        assert_eq!(entry["models"][0]["sha256"], "ab".repeat(32));
        assert_eq!(entry["thresholds"]["frame_threshold"], 0.5);
        let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
        assert_eq!(entry["previous"], first["hash"], "each entry carries the hash of the one before");
        assert_eq!(first["entry"]["previous"], GENESIS);
    }

    #[test]
    fn an_altered_entry_is_found_at_its_line() {
        let path = log_with_three_entries("altered");
        let mut text = lines(&path);
        text[1] = text[1].replacen("\"decision\":\"fake\"", "\"decision\":\"genuine\"", 1);
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        let verification = verify(&path, None).unwrap();
        assert_eq!(verification.entries, 1);
        let problem = verification.problem.unwrap();
        assert!(problem.starts_with("line 2:") && problem.contains("altered"), "{problem}");
    }

    #[test]
    fn deleted_reordered_and_torn_entries_are_found() {
        let path = log_with_three_entries("deleted");
        let text = lines(&path);
        std::fs::write(&path, format!("{}\n{}\n", text[0], text[2])).unwrap();
        let problem = verify(&path, None).unwrap().problem.unwrap();
        assert!(problem.starts_with("line 2:") && problem.contains("sequence 2 where 1"), "{problem}");

        std::fs::write(&path, format!("{}\n{}\n{}\n", text[1], text[0], text[2])).unwrap();
        let problem = verify(&path, None).unwrap().problem.unwrap();
        assert!(problem.starts_with("line 1:"), "{problem}");

        // A crash in the middle of writing leaves a torn last line.
        std::fs::write(&path, format!("{}\n{}\n{}", text[0], text[1], &text[2][..40])).unwrap();
        let verification = verify(&path, None).unwrap();
        assert_eq!(verification.entries, 2);
        assert!(verification.problem.unwrap().starts_with("line 3: not a receipt"));
    }

    #[test]
    fn reopening_continues_an_intact_chain_and_refuses_a_broken_one() {
        let path = log_with_three_entries("reopen");
        let thresholds = Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 };
        let mut log = AuditLog::open(&path, "kiosk-1", Vec::new(), thresholds, None).unwrap();
        log.append("cam", &verdict(Decision::NoFace, &[0.2])).unwrap();
        drop(log);
        let verification = verify(&path, None).unwrap();
        assert_eq!((verification.entries, verification.problem), (4, None));

        let text = lines(&path);
        std::fs::write(&path, text[1..].join("\n") + "\n").unwrap();
        let error = AuditLog::open(&path, "kiosk-1", Vec::new(), thresholds, None).err().unwrap();
        assert!(format!("{error:#}").contains("does not verify"), "{error:#}");
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn signed_log(name: &str, signer: &SigningKey) -> PathBuf {
        let path = std::env::temp_dir().join(format!("deepgate-audit-{}-{name}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let thresholds = Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 };
        let mut log = AuditLog::open(&path, "kiosk-1", Vec::new(), thresholds, Some(signer.clone())).unwrap();
        log.append("cam", &verdict(Decision::Genuine, &[0.1])).unwrap();
        log.append("cam", &verdict(Decision::Fake, &[0.9])).unwrap();
        log.append("cam", &verdict(Decision::Genuine, &[0.2])).unwrap();
        path
    }

    #[test]
    fn signed_receipts_verify_against_the_device_key_only() {
        let device = key(7);
        let path = signed_log("signed", &device);
        let verification = verify(&path, Some(&device.verifying_key())).unwrap();
        assert_eq!((verification.entries, verification.signatures_checked), (3, 3));
        assert!(verification.problem.is_none(), "{verification:?}");
        let problem = verify(&path, Some(&key(8).verifying_key())).unwrap().problem.unwrap();
        assert!(problem.starts_with("line 1:") && problem.contains("not signed by this key"), "{problem}");
        // Without a key, the chain is still checked and signatures are left alone.
        assert_eq!(verify(&path, None).unwrap().signatures_checked, 0);
    }

    #[test]
    fn a_rebuilt_chain_without_the_key_is_found_where_it_was_rewritten() {
        // Whoever can write the file can alter an entry and recompute every hash after it: the chain then
        // verifies, but the signatures no longer match.
        let device = key(7);
        let path = signed_log("rebuilt", &device);
        let mut rebuilt = Vec::new();
        let mut previous = GENESIS.to_string();
        for (index, line) in lines(&path).iter().enumerate() {
            let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
            if index == 0 {
                // The first entry stays as written.
                rebuilt.push(line.clone());
                previous = parsed["hash"].as_str().unwrap().to_string();
                continue;
            }
            let mut entry = parsed["entry"].clone();
            entry["previous"] = serde_json::Value::String(previous.clone());
            if index == 1 {
                entry["decision"] = serde_json::Value::String("genuine".into());
            }
            let entry_json = serde_json::to_string(&entry).unwrap();
            let hash = chain_hash(&previous, &entry_json);
            let signature = parsed["signature"].as_str().unwrap();
            rebuilt.push(format!(r#"{{"entry":{entry_json},"hash":"{hash}","signature":"{signature}"}}"#));
            previous = hash;
        }
        std::fs::write(&path, rebuilt.join("\n") + "\n").unwrap();
        assert!(verify(&path, None).unwrap().problem.is_none(), "the rebuilt chain itself is consistent");
        let verification = verify(&path, Some(&device.verifying_key())).unwrap();
        assert_eq!(verification.entries, 1);
        assert!(verification.problem.unwrap().starts_with("line 2:"));
    }

    #[test]
    fn unsigned_entries_and_another_devices_log_are_refused_when_signing() {
        let path = log_with_three_entries("unsigned");
        let problem = verify(&path, Some(&key(7).verifying_key())).unwrap().problem.unwrap();
        assert!(problem.contains("entry 0 is not signed"), "{problem}");
        let thresholds = Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 };
        let error = AuditLog::open(&path, "kiosk-1", Vec::new(), thresholds, Some(key(7))).err().unwrap();
        assert!(format!("{error:#}").contains("does not verify"), "{error:#}");
        let other = signed_log("other-device", &key(9));
        assert!(AuditLog::open(&other, "kiosk-1", Vec::new(), thresholds, Some(key(7))).is_err());
    }

    #[test]
    fn key_files_are_created_private_and_refused_when_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("deepgate-audit-{}-device.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let public = generate_signing_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = load_signing_key(&path).unwrap();
        assert_eq!(public_key_hex(&loaded), public);
        assert_eq!(parse_public_key(&public).unwrap(), loaded.verifying_key());
        assert!(generate_signing_key(&path).is_err(), "an existing key is never overwritten");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_signing_key(&path).err().unwrap();
        assert!(format!("{error:#}").contains("chmod 600"), "{error:#}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(format!("{:#}", load_signing_key(&path).err().unwrap()).contains("64 hexadecimal digits"));
        assert!(parse_public_key("abc").is_err());
    }
}
