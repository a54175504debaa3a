//! `deepgate replay`: every frame of every input through the pipeline, as JSON lines on stdout.

use super::output::{error_line, frame_line, print, verdict_line};
use anyhow::Result;
use deepgate::pipeline::Pipeline;
use deepgate::session::{play_input, Event, Played};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn replay(board: &Path, inputs: &[PathBuf], timings: bool) -> Result<ExitCode> {
    let (_config, mut pipeline) = super::start(board)?;
    pipeline.times.clear();
    let mut failed = false;
    for input in inputs {
        let played = play_input(&mut pipeline, input, &mut |_| true, &mut |event| match event {
            Event::Frame { frame, faces } => {
                print(&frame_line(frame.source, frame.sequence, frame.width, frame.height, faces))
            }
            Event::Verdict { source, verdict } => print(&verdict_line(source, verdict)),
            Event::Error { source, error } => print(&error_line(source, error)),
            // Files have no camera to lose.
            Event::Camera { .. } => {}
            // Logged; the frame was finished on the CPU and so are the next.
            Event::GpuLost { error } => log::error!("{error:#}"),
        });
        failed |= played != Played::Finished { ok: true };
    }
    if timings {
        print_timings(&pipeline);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

pub fn print_timings(pipeline: &Pipeline) {
    eprintln!("{:<22} {:>7} {:>11} {:>9} {:>9}", "stage", "count", "median ms", "min ms", "max ms");
    for summary in pipeline.times.summary() {
        eprintln!(
            "{:<22} {:>7} {:>11.3} {:>9.3} {:>9.3}",
            summary.stage, summary.count, summary.median_ms, summary.min_ms, summary.max_ms
        );
    }
}
