//! The stdout gate: one JSON line per verdict, for development and for pipes into other programs.

use super::{encode_line, Gate, Line, VerdictMessage};
use anyhow::{Context, Result};
use std::io::Write;

#[derive(Default)]
pub struct StdoutGate {
    line: Line,
}

impl Gate for StdoutGate {
    fn report(&mut self, verdict: &VerdictMessage<'_>) -> Result<()> {
        encode_line(verdict, &mut self.line)?;
        let mut out = std::io::stdout().lock();
        out.write_all(&self.line)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .context("writing a verdict to stdout")
    }

    fn flush(&mut self, _timeout: std::time::Duration) -> Result<()> {
        std::io::stdout().flush().context("flushing stdout")
    }

    fn describe(&self) -> &str {
        "stdout"
    }
}
