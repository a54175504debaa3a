//! The stdout gate: one JSON line per verdict, and one health line per change of health (the same line the
//! TCP gate sends), for development and for pipes into other programs.

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

    /// `{"type":"health",...}` (`gate::encode_health`), printed on each change of health only: a run that
    /// stays normal prints verdict lines alone.
    fn set_health(&mut self, health: crate::health::Health) {
        let written = super::encode_health(health, &mut self.line).and_then(|()| {
            let mut out = std::io::stdout().lock();
            out.write_all(&self.line)
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
                .context("writing a health line to stdout")
        });
        if let Err(error) = written {
            log::error!("gate stdout: {error:#}");
        }
    }

    /// `{"type":"audit_head",...}`, as the TCP gate sends it.
    fn audit_head(&mut self, line: &Line) {
        let mut out = std::io::stdout().lock();
        let written = out.write_all(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
        if let Err(error) = written {
            log::error!("gate stdout: writing the audit head: {error}");
        }
    }
}
