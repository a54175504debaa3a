//! What every board-config section shares: the range check whose message names the key. Each module defines
//! and validates its own section (`detect::DetectorSettings`, `quality::QualitySettings`, ...); `config`
//! aggregates them.

use anyhow::{bail, Result};

/// Refuses `value` outside `low..=high` (NaN included), naming `key` as the board config writes it.
pub fn in_range(key: &str, value: f32, low: f32, high: f32) -> Result<()> {
    if !(value >= low && value <= high) {
        bail!("{key} = {value} is outside {low}..={high}");
    }
    Ok(())
}
