//! `deepgate audit verify FILE [--public-key HEX]`: checks a decision-receipt log, across its rotated files
//! (`FILE.n`, oldest first, then `FILE`), and, with the device's public key, every entry's signature; and
//! pinpoints the first broken entry. `deepgate audit keygen --out
//! FILE`: makes a device signing key. `deepgate audit public-key FILE`: prints a device key's public key (the
//! controller pins it to check signed TCP verdict lines).

use anyhow::Result;
use std::path::Path;
use std::process::ExitCode;

pub fn verify(file: &Path, public_key: Option<&str>) -> Result<ExitCode> {
    let key = public_key.map(deepgate::gate::audit::parse_public_key).transpose()?;
    let verification = deepgate::gate::audit::verify(file, key.as_ref())?;
    deepgate::gate::audit::ensure_found(file, &verification)?;
    println!("{}", serde_json::to_string(&verification)?);
    let files = verification.files.len();
    let start = match verification.first_sequence {
        0 => String::new(),
        first => format!(
            "; the chain starts at entry {first} (the files before the oldest kept were rotated away: compare \
             with the chain heads the controller holds)"
        ),
    };
    Ok(match &verification.problem {
        None => {
            let signatures = if key.is_some() {
                "every entry signed by the given key"
            } else {
                "signatures not checked (pass --public-key)"
            };
            eprintln!(
                "{}: {} entries in {files} file(s), chain intact, {signatures}{start}",
                file.display(),
                verification.entries
            );
            ExitCode::SUCCESS
        }
        Some(problem) => {
            eprintln!(
                "{}: BROKEN at {problem} ({} entries verified before it)",
                file.display(),
                verification.entries
            );
            ExitCode::from(1)
        }
    })
}

pub fn keygen(out: &Path) -> Result<ExitCode> {
    let public = deepgate::gate::audit::generate_signing_key(out)?;
    println!("{public}");
    eprintln!(
        "{}: new device key (mode 600). Set `[audit] key` to it; verify receipts with \
         `deepgate audit verify --public-key {public} LOG`",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn public_key(key: &Path) -> Result<ExitCode> {
    let key = deepgate::gate::audit::load_device_key(key, "device key")?;
    println!("{}", deepgate::gate::audit::public_key_hex(&key));
    Ok(ExitCode::SUCCESS)
}
