//! `deepgate audit verify FILE`: checks a decision-receipt log and pinpoints the first broken entry.

use anyhow::Result;
use std::path::Path;
use std::process::ExitCode;

pub fn verify(file: &Path) -> Result<ExitCode> {
    let verification = deepgate::gate::audit::verify(file)?;
    println!("{}", serde_json::to_string(&verification)?);
    Ok(match &verification.problem {
        None => {
            eprintln!("{}: {} entries, chain intact", file.display(), verification.entries);
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
