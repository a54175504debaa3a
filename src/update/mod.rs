//! Signed update bundles: the detached signature file `cargo xtask dist` writes beside a bundle
//! (`BUNDLE.tar.gz.sig`), its checks, and the install of a verified bundle into A/B slots (`install`).
//!
//! The signature file is a few TOML lines (the signed header) followed by one last line, `signature = "HEX"`:
//! the Ed25519 signature of every byte before that line. The header names the bundle's sha256 and size, so one
//! signature covers the archive and what it claims to be (version, git commit, target triple, board, time of
//! the build). The signature is checked over the exact bytes first, and only then is the header parsed, so a
//! forged file is refused before any of it is interpreted; the archive is read into memory and its sha256
//! compared with the header's before a single entry of it is looked at. `xtask/src/dist.rs` writes the same
//! format (the xtask cannot link this library); `cargo xtask ci` checks the two agree by verifying its signed
//! bundle with `deepgate install --check`.

pub mod install;
pub mod ready;
pub mod slots;
pub mod unpack;

use crate::hex::{from_hex, to_hex};
use anyhow::{bail, ensure, Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The version of the signature file's layout.
pub const FORMAT: u32 = 1;

/// Where the signature line starts: after the header's last newline.
const SIGNATURE_LINE: &str = "signature = \"";

/// What a signature vouches for: the archive (its sha256 and size) and what it is.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The layout of the signature file, [`FORMAT`].
    pub format: u32,
    /// The archive's file name when it was signed (informative: a renamed bundle still verifies).
    pub file: String,
    pub size: u64,
    /// The archive's sha256, hexadecimal.
    pub sha256: String,
    /// The package version (semver), ordered against the installed one to refuse downgrades.
    pub version: String,
    /// The git commit the bundle was built from (`-dirty` when the tree had changes).
    pub commit: String,
    /// The Rust target triple of the bundle's binary.
    pub target: String,
    /// The board the bundle is for: its config is `board/<board>.toml` in the bundle.
    pub board: String,
    /// When the bundle was built (seconds since 1970: `SOURCE_DATE_EPOCH` or the last commit's time).
    pub created: u64,
}

impl Header {
    /// The header lines exactly as they are signed (the order and quoting `dist` writes too).
    pub fn to_text(&self) -> String {
        format!(
            "# deepgate update bundle signature (README, \"Updates\"): `deepgate install` checks it\n\
             format = {}\nfile = {:?}\nsize = {}\nsha256 = {:?}\nversion = {:?}\ncommit = {:?}\n\
             target = {:?}\nboard = {:?}\ncreated = {}\n",
            self.format,
            self.file,
            self.size,
            self.sha256,
            self.version,
            self.commit,
            self.target,
            self.board,
            self.created
        )
    }

    /// The version as semver, or an error naming it.
    pub fn semver(&self) -> Result<semver::Version> {
        semver::Version::parse(&self.version)
            .with_context(|| format!("the bundle's version `{}` is not a semantic version", self.version))
    }
}

/// The signature file for `header`, signed with `key`.
pub fn sign(header: &Header, key: &SigningKey) -> String {
    let text = header.to_text();
    let signature = key.sign(text.as_bytes());
    format!("{text}{SIGNATURE_LINE}{}\"\n", to_hex(&signature.to_bytes()))
}

/// The header of the signature file `text` once its signature by `key` is checked (nothing of it is parsed
/// before). `what` names the file in errors.
pub fn verify_signature(text: &[u8], key: &VerifyingKey, what: &str) -> Result<Header> {
    let start = find_signature_line(text).with_context(|| {
        format!("{what}: no `signature = \"...\"` line at its end (not a deepgate bundle signature)")
    })?;
    let (signed, line) = text.split_at(start);
    let line =
        std::str::from_utf8(line).with_context(|| format!("{what}: the signature line is not UTF-8"))?;
    let digits = line
        .strip_prefix(SIGNATURE_LINE)
        .and_then(|rest| rest.trim_end_matches('\n').strip_suffix('"'))
        .with_context(|| format!("{what}: the signature line must be the file's last line"))?;
    let bytes = from_hex::<64>(digits, &format!("{what}: the signature"))?;
    key.verify(signed, &Signature::from_bytes(&bytes)).map_err(|_| {
        anyhow::anyhow!(
            "{what}: the signature does not verify with the trusted key {} (signed by another key, or the file \
             was changed)",
            to_hex(key.as_bytes())
        )
    })?;
    let signed = std::str::from_utf8(signed).with_context(|| format!("{what}: the header is not UTF-8"))?;
    let header: Header =
        toml::from_str(signed).with_context(|| format!("{what}: reading the signed header"))?;
    ensure!(
        header.format == FORMAT,
        "{what}: signature format {} (this installer reads {FORMAT})",
        header.format
    );
    from_hex::<32>(&header.sha256, &format!("{what}: sha256"))?;
    Ok(header)
}

/// The offset of the last line when it is the signature line.
fn find_signature_line(text: &[u8]) -> Option<usize> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body.iter().rposition(|&byte| byte == b'\n').map_or(0, |newline| newline + 1);
    body[start..].starts_with(SIGNATURE_LINE.as_bytes()).then_some(start)
}

/// Checks that `archive` is the bundle `header` describes (size, then sha256).
pub fn check_archive(archive: &[u8], header: &Header, what: &str) -> Result<()> {
    ensure!(
        archive.len() as u64 == header.size,
        "{what}: {} bytes, but the signed header says {} (truncated or replaced)",
        archive.len(),
        header.size
    );
    let found = to_hex(&Sha256::digest(archive));
    if found != header.sha256 {
        bail!(
            "{what}: sha256 {found}, but the signed header says {} (the archive was changed)",
            header.sha256
        );
    }
    Ok(())
}

/// Reads a public key file: 64 hexadecimal digits (what `deepgate audit public-key` prints), white space
/// around them ignored.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the public key {}", path.display()))?;
    let bytes = from_hex::<32>(&text, &format!("the public key in {}", path.display()))?;
    VerifyingKey::from_bytes(&bytes)
        .with_context(|| format!("{}: not a valid Ed25519 public key", path.display()))
}

/// Whether a binary built for the target triple `target` runs here: the same architecture and operating
/// system as this program (`aarch64-unknown-linux-gnu` on a Jetson).
pub fn runs_here(target: &str) -> bool {
    let mut parts = target.split('-');
    parts.next() == Some(std::env::consts::ARCH) && parts.any(|part| part == std::env::consts::OS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT,
            file: "deepgate-1.2.3-board-aarch64.tar.gz".into(),
            size: 3,
            sha256: to_hex(&Sha256::digest(b"abc")),
            version: "1.2.3".into(),
            commit: "0123456789abcdef".into(),
            target: "aarch64-unknown-linux-gnu".into(),
            board: "board".into(),
            created: 1_700_000_000,
        }
    }

    #[test]
    fn a_signed_header_verifies_and_any_changed_byte_or_other_key_does_not() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let text = sign(&header(), &key);
        let verified = verify_signature(text.as_bytes(), &key.verifying_key(), "sig").unwrap();
        assert_eq!(verified, header());
        check_archive(b"abc", &verified, "bundle").unwrap();
        assert!(check_archive(b"abd", &verified, "bundle").unwrap_err().to_string().contains("sha256"));
        assert!(check_archive(b"abcd", &verified, "bundle").unwrap_err().to_string().contains("4 bytes"));

        let changed = text.replace("version = \"1.2.3\"", "version = \"9.2.3\"");
        let error = verify_signature(changed.as_bytes(), &key.verifying_key(), "sig").unwrap_err();
        assert!(error.to_string().contains("does not verify"), "{error}");
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(verify_signature(text.as_bytes(), &other, "sig").is_err());
        // A line added after the signature: the signature is no longer the last line.
        let appended = format!("{text}version = \"9.9.9\"\n");
        let error = verify_signature(appended.as_bytes(), &key.verifying_key(), "sig").unwrap_err();
        assert!(error.to_string().contains("no `signature"), "{error}");
        let error = verify_signature(b"", &key.verifying_key(), "sig").unwrap_err();
        assert!(error.to_string().contains("no `signature"), "{error}");
    }

    /// The vector `xtask/src/dist.rs` writes (its test `the_signature_covers_the_header_lines...` pins the same
    /// signature): what dist signs, the runtime verifies.
    #[test]
    fn a_signature_made_by_xtask_dist_verifies() {
        let text = concat!(
        "# deepgate update bundle signature (README, \"Updates\"): `deepgate install` checks it\n",
        "format = 1\n",
        "file = \"b.tar.gz\"\n",
        "size = 7\n",
        "sha256 = \"0eb3e36bfb24dcd9bb1d1bece1531216b59539a8fde17ee80224af0653c92aa3\"\n",
        "version = \"0.1.0\"\n",
        "commit = \"abc\"\n",
        "target = \"aarch64-unknown-linux-gnu\"\n",
        "board = \"jetson-orin-nano\"\n",
        "created = 1\n",
        "signature = \"990acf846eea0b028e07c492b213543e8eac9a0d1c5c157fa60507f33b199adfb462868c0fe6ef46292ce8805ef0ae68cf5925d3d86e14602e0603417c324409\"\n",
        );
        let key = SigningKey::from_bytes(&[5; 32]).verifying_key();
        let header = verify_signature(text.as_bytes(), &key, "dist's").unwrap();
        assert_eq!((header.size, header.board.as_str(), header.created), (7, "jetson-orin-nano", 1));
        assert_eq!(header.to_text(), text[..text.find("signature =").unwrap()]);
        check_archive(b"archive", &header, "archive").unwrap();
    }

    #[test]
    fn a_validly_signed_header_with_an_unknown_key_or_format_is_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let sign_text = |text: String| {
            let signature = key.sign(text.as_bytes());
            format!("{text}{SIGNATURE_LINE}{}\"\n", to_hex(&signature.to_bytes()))
        };
        let extra = sign_text(format!("{}extra = 1\n", header().to_text()));
        let error = verify_signature(extra.as_bytes(), &key.verifying_key(), "sig").unwrap_err();
        assert!(format!("{error:#}").contains("extra"), "{error:#}");
        let future = sign_text(header().to_text().replace("format = 1", "format = 2"));
        let error = verify_signature(future.as_bytes(), &key.verifying_key(), "sig").unwrap_err();
        assert!(error.to_string().contains("format 2"), "{error}");
    }
}
