//! `deepgate install BUNDLE`: a signed update bundle into the inactive A/B slot, switched to, started, and
//! rolled back when it does not reach READY in time (`deepgate::update::install`). `--check`: the signature
//! and the archive verified, nothing written. One JSON line on stdout says what happened; exit status 0
//! installed and ready, 1 rolled back, 2 refused (nothing changed).

use anyhow::Result;
use deepgate::update::install::{self, Installed, Options};
use deepgate::update::slots::Layout;
use std::process::ExitCode;

pub fn install(options: &Options, check: bool) -> Result<ExitCode> {
    if check {
        let layout = Layout::new(&options.root);
        let (key, _) = install::trusted_key(&layout, options.trust_key.as_deref())?;
        let signature =
            options.signature.clone().unwrap_or_else(|| install::default_signature(&options.bundle));
        let (header, contents, _) = install::verify(&options.bundle, &signature, &key)?;
        println!(
            "{}",
            serde_json::json!({
                "verified": options.bundle.display().to_string(),
                "version": header.version,
                "commit": header.commit,
                "target": header.target,
                "board": header.board,
                "created": header.created,
                "sha256": header.sha256,
                "files": contents.file_count(),
                "unpacked_bytes": contents.size(),
            })
        );
        eprintln!(
            "{}: signature, sha256 and all {} entries verified ({} for {}, commit {})",
            options.bundle.display(),
            contents.file_count(),
            header.version,
            header.target,
            header.commit
        );
        return Ok(ExitCode::SUCCESS);
    }
    match install::install(options)? {
        Installed::Ready { slot, header, previous, after, status } => {
            println!(
                "{}",
                serde_json::json!({
                    "installed": slot.name(),
                    "version": header.version,
                    "commit": header.commit,
                    "previous": previous.as_ref().map(|previous| &previous.version),
                    "ready_after_ms": after.as_millis() as u64,
                    "status": status,
                })
            );
            eprintln!(
                "installed {} in slot {} (current); READY after {:.1} s",
                header.version,
                slot.name(),
                after.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Installed::RolledBack { slot, header, restored, why, restart } => {
            println!(
                "{}",
                serde_json::json!({
                    "rolled_back": slot.name(),
                    "version": header.version,
                    "current": restored.map(|slot| slot.name()),
                    "why": why,
                    "restart": restart,
                })
            );
            eprintln!(
                "ROLLED BACK: {} (slot {}) did not become ready: {why}\ncurrent is {}{}",
                header.version,
                slot.name(),
                restored.map_or("nothing (first install)", |slot| slot.name()),
                restart.map_or(String::new(), |restart| format!("; {restart}"))
            );
            Ok(ExitCode::from(1))
        }
    }
}
