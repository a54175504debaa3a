//! `deepgate replay`: every frame of every input through the pipeline, as JSON lines on stdout.

use super::output::{error_line, frame_line, print, verdict_line};
use anyhow::Result;
use deepgate::capture::replay::open_input;
use deepgate::decide::Verdict;
use deepgate::frame::Frame;
use deepgate::pipeline::{FaceResult, Pipeline};
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
        });
        failed |= played != Played::Finished { ok: true };
    }
    if timings {
        print_timings(&pipeline);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// What playing an input produces, in order.
pub enum Event<'a> {
    Frame { frame: &'a Frame<'a>, faces: &'a [FaceResult] },
    Verdict { source: &'a str, verdict: &'a Verdict },
    Error { source: &'a str, error: &'a anyhow::Error },
}

/// How `play_input` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Played {
    /// The input was played to its end; `ok` is false if anything failed.
    Finished { ok: bool },
    /// `before_frame` asked to stop: the open session is left without a verdict.
    Stopped,
}

/// Plays one input (image, directory or video) through the pipeline: the one place that knows where person
/// sessions begin and end (each still image is its own session, a video one stream). `before_frame` sees each
/// frame read and may stop the play (`run` paces frames and watches for signals there); `emit` receives every
/// frame result, verdict and error.
pub fn play_input(
    pipeline: &mut Pipeline,
    input: &Path,
    before_frame: &mut dyn FnMut(&Frame) -> bool,
    emit: &mut dyn FnMut(Event),
) -> Played {
    let input_name = input.display().to_string();
    let mut source = match open_input(input) {
        Ok(source) => source,
        Err(error) => {
            emit(Event::Error { source: &input_name, error: &error });
            return Played::Finished { ok: false };
        }
    };
    let mut ok = true;
    // The source of the open session: the file a still came from, or the video.
    let mut session_source = input_name;
    loop {
        let frame = match source.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(error) => {
                emit(Event::Error { source: source.describe(), error: &error });
                ok = false;
                continue;
            }
        };
        if !before_frame(&frame) {
            return Played::Stopped;
        }
        if frame.discontinuity {
            if let Some(verdict) = pipeline.finish() {
                emit(Event::Verdict { source: &session_source, verdict: &verdict });
            }
        }
        // Reuses the string's storage: no allocation per frame.
        session_source.clear();
        session_source.push_str(frame.source);
        match pipeline.process(&frame) {
            Ok((faces, verdict)) => {
                emit(Event::Frame { frame: &frame, faces });
                if let Some(verdict) = verdict {
                    emit(Event::Verdict { source: frame.source, verdict: &verdict });
                }
            }
            Err(error) => {
                emit(Event::Error { source: frame.source, error: &error });
                ok = false;
            }
        }
    }
    if let Some(verdict) = pipeline.finish() {
        emit(Event::Verdict { source: &session_source, verdict: &verdict });
    }
    Played::Finished { ok }
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
