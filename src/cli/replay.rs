//! `deepgate replay`: every frame of every input through the pipeline, as JSON lines on stdout.

use super::output::{error_line, frame_line, print, verdict_line};
use anyhow::Result;
use deepgate::capture::replay::open_input;
use deepgate::pipeline::Pipeline;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn replay(board: &Path, inputs: &[PathBuf], timings: bool) -> Result<ExitCode> {
    let (_config, mut pipeline) = super::start(board)?;
    pipeline.times.clear();
    let mut failed = false;
    for input in inputs {
        failed |= !replay_input(&mut pipeline, input, &mut |line| print(line));
    }
    if timings {
        print_timings(&pipeline);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Plays one input (image, directory or video) through the pipeline, handing each JSON line to `emit`.
/// Each still image is its own person session, a video one stream. Returns false if anything failed.
pub fn replay_input(pipeline: &mut Pipeline, input: &Path, emit: &mut dyn FnMut(&str)) -> bool {
    let input_name = input.display().to_string();
    let mut source = match open_input(input) {
        Ok(source) => source,
        Err(error) => {
            emit(&error_line(&input_name, &error));
            return false;
        }
    };
    let mut ok = true;
    // The source of the open session: the file a still came from, or the video.
    let mut session_source = input_name.clone();
    loop {
        let frame = match source.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(error) => {
                emit(&error_line(source.describe(), &error));
                ok = false;
                continue;
            }
        };
        if frame.discontinuity {
            if let Some(verdict) = pipeline.finish() {
                emit(&verdict_line(&session_source, &verdict));
            }
        }
        let name = frame.source.to_string();
        session_source.clone_from(&name);
        match pipeline.process(&frame) {
            Ok((faces, verdict)) => {
                emit(&frame_line(&name, frame.sequence, frame.width, frame.height, faces));
                if let Some(verdict) = verdict {
                    emit(&verdict_line(&name, &verdict));
                }
            }
            Err(error) => {
                emit(&error_line(&name, &error));
                ok = false;
            }
        }
    }
    if let Some(verdict) = pipeline.finish() {
        emit(&verdict_line(&session_source, &verdict));
    }
    ok
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
