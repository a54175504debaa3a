//! Checking a log: every entry in order, across the rotated files (`FILE.n`, oldest first, then `FILE`), to
//! the first broken one; and whether that one is a torn last write that `AuditLog::open` may cut.

use super::{chain_hash, Entry, LineIn, GENESIS};
use crate::gate::from_hex;
use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::Serialize;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The most a torn last write can leave: one entry's line (a few hundred bytes; frame scores and reasons are
/// bounded). A problem further from the end than this is damage, not a write cut short.
pub const MAX_TORN_BYTES: u64 = 64 * 1024;

/// The result of checking a log.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// The files followed, oldest first: the rotated ones (`FILE.n`), then `FILE`.
    pub files: Vec<PathBuf>,
    /// The sequence of the first entry checked: 0, unless rotation deleted the files before the oldest kept
    /// one (whose first entry is then taken as given: the chain heads the controller holds check it).
    pub first_sequence: u64,
    /// Entries that verified, from the first.
    pub entries: u64,
    /// Of those, the entries whose signature was checked against the given public key.
    pub signatures_checked: u64,
    pub last_hash: String,
    #[serde(skip)]
    pub last_signature: Option<String>,
    /// The first problem: its file and line number, and what is wrong. None when the whole chain verifies.
    pub problem: Option<String>,
}

/// A torn last write: where the file is cut back to, and how many bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Torn {
    pub offset: u64,
    pub bytes: u64,
}

pub(super) struct Checked {
    pub verification: Verification,
    /// Set when the problem is a torn last write of `FILE` itself.
    pub torn: Option<Torn>,
}

/// The files of the log at `path`, oldest first: `FILE.n` from the highest n down to `FILE.1`, then `FILE`
/// (those that exist). A gap in the numbers (a rotation cut short by a crash) is skipped: renames go from the
/// oldest down, so the order stays the chain's.
pub fn chain_files(path: &Path) -> Result<Vec<PathBuf>> {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|name| name.to_str()).context("the audit log path names no file")?;
    let mut numbered = Vec::new();
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("listing {}", directory.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", directory.display()))?;
        let file_name = entry.file_name();
        let Some(suffix) = file_name.to_str().and_then(|file| file.strip_prefix(name)?.strip_prefix('.'))
        else {
            continue;
        };
        if !suffix.is_empty() && !suffix.starts_with('0') && suffix.bytes().all(|byte| byte.is_ascii_digit())
        {
            if let Ok(number) = suffix.parse::<u32>() {
                numbered.push((number, entry.path()));
            }
        }
    }
    numbered.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, path)| path).collect();
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => files.push(path.to_path_buf()),
        Ok(_) => bail!("audit log {} is not a regular file", path.display()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading audit log {}", path.display())),
    }
    Ok(files)
}

/// Checks every entry of the log at `path` in order, across its rotated files, and stops at the first broken
/// one. With a `public_key`, every entry must also carry a valid signature by that key (an unsigned entry is a
/// problem); without one, signatures are not checked. No file at all: an empty chain.
pub fn verify(path: &Path, public_key: Option<&VerifyingKey>) -> Result<Verification> {
    check_chain(path, public_key).map(|checked| checked.verification)
}

pub(super) fn check_chain(path: &Path, public_key: Option<&VerifyingKey>) -> Result<Checked> {
    let files = chain_files(path)?;
    let mut verification = Verification {
        files: Vec::new(),
        first_sequence: 0,
        entries: 0,
        signatures_checked: 0,
        last_hash: GENESIS.to_string(),
        last_signature: None,
        problem: None,
    };
    // Whether the first entry has named where the chain starts.
    let mut anchored = false;
    for file_path in &files {
        verification.files.push(file_path.clone());
        let file =
            File::open(file_path).with_context(|| format!("opening audit log {}", file_path.display()))?;
        let size =
            file.metadata().with_context(|| format!("reading audit log {}", file_path.display()))?.len();
        let mut reader = BufReader::new(file);
        let (mut offset, mut number, mut line) = (0u64, 0usize, Vec::new());
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading audit log {}", file_path.display()))?;
            if read == 0 {
                break;
            }
            number += 1;
            let whole = line.last() == Some(&b'\n');
            let text = if whole { &line[..line.len() - 1] } else { &line[..] };
            // Only the oldest kept rotated file may start after entry 0 (rotation deleted the ones before it);
            // a log that never rotated starts at 0, so entries cut from its front are found.
            if !anchored && file_path != path {
                anchored = true;
                let anchor = first_entry(text);
                verification.first_sequence = anchor.as_ref().map_or(0, |entry| entry.sequence);
                if let Some(entry) = anchor.filter(|entry| entry.sequence > 0) {
                    verification.last_hash = entry.previous;
                }
            }
            let sequence = verification.first_sequence + verification.entries;
            let checked = if whole {
                check_line(text, sequence, &verification.last_hash, public_key)
            } else {
                Err(Problem::Unreadable("an unfinished last line (no newline)".to_string()))
            };
            match checked {
                Ok((hash, signature)) => {
                    verification.last_hash = hash;
                    verification.last_signature = signature;
                }
                Err(problem) => {
                    let last_file = file_path == path;
                    let rest = size.saturating_sub(offset);
                    let torn =
                        (last_file && matches!(problem, Problem::Unreadable(_)) && rest <= MAX_TORN_BYTES)
                            .then_some(Torn { offset, bytes: rest });
                    let mut text = format!("{} line {number}: {}", file_path.display(), problem.text());
                    if torn.is_some() {
                        text.push_str(" (a torn last write: the next start cuts it)");
                    }
                    verification.problem = Some(text);
                    return Ok(Checked { verification, torn });
                }
            }
            verification.entries += 1;
            verification.signatures_checked += u64::from(public_key.is_some());
            offset += read as u64;
        }
    }
    Ok(Checked { verification, torn: None })
}

/// The first entry of a file whose predecessors may be gone, if it parses.
fn first_entry(line: &[u8]) -> Option<Entry> {
    let parsed: LineIn = serde_json::from_slice(line).ok()?;
    serde_json::from_str(parsed.entry.get()).ok()
}

/// Why a line does not continue the chain. `Unreadable`: not a receipt at all (what a torn write leaves);
/// `Broken`: a receipt that does not verify (what tampering leaves).
enum Problem {
    Unreadable(String),
    Broken(String),
}

impl Problem {
    fn text(&self) -> &str {
        match self {
            Problem::Unreadable(text) | Problem::Broken(text) => text,
        }
    }
}

/// Whether one line continues the chain (`expected_sequence`, `previous` hash) and carries a valid
/// signature by `public_key`; if so, its hash and signature.
fn check_line(
    line: &[u8],
    expected_sequence: u64,
    previous: &str,
    public_key: Option<&VerifyingKey>,
) -> std::result::Result<(String, Option<String>), Problem> {
    let parsed: LineIn = serde_json::from_slice(line)
        .map_err(|error| Problem::Unreadable(format!("not a receipt ({error})")))?;
    let broken = Problem::Broken;
    let entry: Entry = serde_json::from_str(parsed.entry.get())
        .map_err(|error| broken(format!("malformed entry ({error})")))?;
    if entry.sequence != expected_sequence {
        return Err(broken(format!(
            "entry has sequence {} where {expected_sequence} was expected (entries removed, inserted or reordered)",
            entry.sequence
        )));
    }
    if entry.previous != previous {
        return Err(broken(format!(
            "entry {} does not follow the one before it (chain broken)",
            entry.sequence
        )));
    }
    if chain_hash(previous, parsed.entry.get()) != parsed.hash {
        return Err(broken(format!(
            "entry {} was altered after it was written (hash mismatch)",
            entry.sequence
        )));
    }
    if let Some(public_key) = public_key {
        let Some(signature) = &parsed.signature else {
            return Err(broken(format!("entry {} is not signed", entry.sequence)));
        };
        let bytes =
            from_hex::<64>(signature, "the signature").map_err(|error| broken(format!("{error:#}")))?;
        public_key.verify(parsed.hash.as_bytes(), &Signature::from_bytes(&bytes)).map_err(|_| {
            broken(format!(
                "entry {} is not signed by this key (rewritten, or another device's)",
                entry.sequence
            ))
        })?;
    }
    Ok((parsed.hash, parsed.signature))
}

/// Refuses a verification that followed no file: `deepgate audit verify` on a path with no log.
pub fn ensure_found(path: &Path, verification: &Verification) -> Result<()> {
    if verification.files.is_empty() {
        bail!("no audit log at {} (nor rotated files {}.N)", path.display(), path.display());
    }
    Ok(())
}
