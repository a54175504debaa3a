//! The person-session loop: every frame of a `FrameSource` through the pipeline, and the one place that knows
//! where person sessions begin and end. `deepgate run` (through the supervisor), `replay`, `eval`, `crops` and
//! `calibrate` all play their inputs through it; what each does with a frame, a verdict or an error is the
//! `emit` callback's business.

use crate::capture::replay::open_input;
use crate::capture::FrameSource;
use crate::decide::Verdict;
use crate::frame::Frame;
use crate::pipeline::pipelined::Completed;
use crate::pipeline::{FaceResult, Pipeline};
use std::path::Path;

/// What playing an input produces, in order.
pub enum Event<'a> {
    Frame {
        frame: &'a Frame<'a>,
        faces: &'a [FaceResult],
    },
    Verdict {
        source: &'a str,
        verdict: &'a Verdict,
    },
    Error {
        source: &'a str,
        error: &'a anyhow::Error,
    },
    /// A live source's camera went away (`up: false`: lost, refused, re-opening) or came back (`up: true`).
    /// An open session is abandoned without a verdict when the camera goes: it concerns frames from before.
    Camera {
        source: &'a str,
        up: bool,
    },
    /// The GPU path failed (or, with backend "cuda", was missing at start): the pipeline finished the frame on
    /// the CPU and carries on there. Reported once, right after that frame's results (with two threads, right
    /// after the call that met it, so before that frame's results, which come one frame later).
    GpuLost {
        error: &'a anyhow::Error,
    },
}

/// How `play_input` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Played {
    /// The input was played to its end; `ok` is false if anything failed.
    Finished { ok: bool },
    /// `before_frame` asked to stop: the open session is left without a verdict.
    Stopped,
}

/// Plays one input (image, directory or video) through the pipeline (`play_source` on what it opens).
pub fn play_input(
    pipeline: &mut Pipeline,
    input: &Path,
    before_frame: &mut dyn FnMut(Option<&Frame>) -> bool,
    emit: &mut dyn FnMut(Event),
) -> Played {
    let input_name = input.display().to_string();
    match open_input(input) {
        Ok(mut source) => play_source(pipeline, source.as_mut(), input_name, before_frame, emit),
        Err(error) => {
            emit(Event::Error { source: &input_name, error: &error });
            Played::Finished { ok: false }
        }
    }
}

/// Plays a source through the pipeline: the one place that knows where person sessions begin and end (each
/// still image is its own session; a video, or a camera, is one stream, cut where a frame says
/// `discontinuity`, e.g. after a camera re-open). `before_frame` sees each frame read (and, for a live source,
/// `None` when it has no frame now) and may stop the play (`run` paces frames and watches for signals there);
/// `emit` receives every frame result, verdict, error and camera change. `session_source` names the input for
/// a verdict before any frame (its storage is reused per frame).
///
/// With two threads (`[runtime] threads = 2`) a frame's results come while the next frame is taken; the frame in
/// flight is flushed whenever no next frame is coming now (a live source without a frame, a source error, a
/// discontinuity, the end, a stop), so that no verdict waits for a frame that has not come, and the events are
/// the same, in the same order, as with one thread.
pub fn play_source(
    pipeline: &mut Pipeline,
    source: &mut dyn FrameSource,
    mut session_source: String,
    before_frame: &mut dyn FnMut(Option<&Frame>) -> bool,
    emit: &mut dyn FnMut(Event),
) -> Played {
    let mut ok = true;
    // A live source is taken as up until it says otherwise, so a camera that is not there at start is
    // reported at once.
    let mut camera_was_up = true;
    loop {
        // With a frame in flight (two threads), a live source says at once that it has no frame, so that the
        // flush below brings that frame's verdict without waiting for the camera's next frame.
        source.may_wait(!pipeline.in_flight());
        let frame = match source.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                // A finite source: the end. A live one: no frame now.
                flush(pipeline, emit, &mut ok);
                let Some(up) = source.camera_up() else { break };
                camera_change(pipeline, up, &mut camera_was_up, source.describe(), emit);
                if !before_frame(None) {
                    return Played::Stopped;
                }
                continue;
            }
            Err(error) => {
                flush(pipeline, emit, &mut ok);
                emit(Event::Error { source: source.describe(), error: &error });
                ok = false;
                if let Some(up) = source.camera_up() {
                    camera_change(pipeline, up, &mut camera_was_up, source.describe(), emit);
                    if !before_frame(None) {
                        return Played::Stopped;
                    }
                }
                continue;
            }
        };
        if !camera_was_up {
            camera_was_up = true;
            emit(Event::Camera { source: frame.source, up: true });
        }
        if !before_frame(Some(&frame)) {
            flush(pipeline, emit, &mut ok);
            return Played::Stopped;
        }
        if frame.discontinuity {
            flush(pipeline, emit, &mut ok);
            if let Some(verdict) = pipeline.finish() {
                emit(Event::Verdict { source: &session_source, verdict: &verdict });
            }
        }
        // Reuses the string's storage: no allocation per frame.
        session_source.clear();
        session_source.push_str(frame.source);
        if let Some(completed) = pipeline.push(&frame) {
            report(completed, emit, &mut ok);
        }
        if let Some(error) = pipeline.take_gpu_failure() {
            emit(Event::GpuLost { error: &error });
        }
    }
    flush(pipeline, emit, &mut ok);
    if let Some(verdict) = pipeline.finish() {
        emit(Event::Verdict { source: &session_source, verdict: &verdict });
    }
    Played::Finished { ok }
}

/// Emits a frame's outcome: its results and the verdict it made, or its error.
fn report(completed: Completed, emit: &mut dyn FnMut(Event), ok: &mut bool) {
    let frame = &completed.frame;
    match completed.outcome {
        Ok((faces, verdict)) => {
            emit(Event::Frame { frame, faces });
            if let Some(verdict) = verdict {
                emit(Event::Verdict { source: frame.source, verdict: &verdict });
            }
        }
        Err(error) => {
            emit(Event::Error { source: frame.source, error: &error });
            *ok = false;
        }
    }
}

/// Emits the outcome of the frame in flight (two threads; with one, nothing is ever in flight), then any GPU
/// loss during it.
fn flush(pipeline: &mut Pipeline, emit: &mut dyn FnMut(Event), ok: &mut bool) {
    if let Some(completed) = pipeline.flush() {
        report(completed, emit, ok);
        if let Some(error) = pipeline.take_gpu_failure() {
            emit(Event::GpuLost { error: &error });
        }
    }
}

/// Reports a live source's camera going (`up` false) or coming back. A person session open when the camera
/// goes is abandoned without a verdict: no decision is made on a camera that may have been tampered with, and
/// the person has likely gone by the time it is back.
fn camera_change(
    pipeline: &mut Pipeline,
    up: bool,
    camera_was_up: &mut bool,
    source: &str,
    emit: &mut dyn FnMut(Event),
) {
    if up == *camera_was_up {
        return;
    }
    *camera_was_up = up;
    if !up && pipeline.finish().is_some() {
        log::warn!("{source}: the camera went during a person session; session abandoned without a verdict");
    }
    emit(Event::Camera { source, up });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::scripted::{ScriptedCamera, Step, NAME};
    use crate::config::BoardConfig;
    use crate::frame::PixelFormat;
    use crate::pipeline::Models;

    #[derive(Debug, PartialEq)]
    enum Seen {
        Frame { sequence: u64 },
        Verdict,
        Camera { up: bool },
        Idle,
    }

    #[test]
    fn a_live_source_that_goes_and_comes_back_reports_it_abandons_the_stream_and_resumes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = BoardConfig::load(&root.join("board/host.toml")).expect("host.toml");
        let mut pipeline = Pipeline::new(&config, Models::load(&config).expect("models")).expect("pipeline");
        // A scene without a face: its frames never end a session on their own, so every verdict seen would
        // be one made at a camera change (a no_face verdict from the abandoned stream), which must not come.
        let image =
            crate::codec::decode_image_file(&root.join("tests/fixtures/scenes/coffee.png")).expect("photo");
        assert_eq!(image.format, PixelFormat::Rgb24);
        // Lost at start, three frames, lost for three calls, two frames, then stop.
        let mut script = vec![Step::Lost, Step::Lost];
        script.extend([Step::Frame; 3]);
        script.extend([Step::Lost; 3]);
        script.extend([Step::Frame; 2]);
        let calls = script.len();
        // The last call loses the camera again; `before_frame` then stops the play.
        script.push(Step::Lost);
        let mut camera = ScriptedCamera::new(image, script);
        let mut seen = Vec::new();
        let mut asked = 0;
        let played = {
            let seen = std::cell::RefCell::new(&mut seen);
            play_source(
                &mut pipeline,
                &mut camera,
                NAME.into(),
                &mut |frame| {
                    asked += 1;
                    if frame.is_none() {
                        seen.borrow_mut().push(Seen::Idle);
                    }
                    asked <= calls
                },
                &mut |event| {
                    seen.borrow_mut().push(match event {
                        Event::Frame { frame, .. } => Seen::Frame { sequence: frame.sequence },
                        Event::Verdict { .. } => Seen::Verdict,
                        Event::Camera { up, .. } => Seen::Camera { up },
                        Event::Error { error, .. } | Event::GpuLost { error } => {
                            panic!("unexpected error {error:#}")
                        }
                    })
                },
            )
        };
        assert_eq!(played, Played::Stopped, "a live source ends only when asked to stop");
        use Seen::*;
        assert_eq!(
            seen,
            [
                Camera { up: false },
                Idle,
                Idle,
                Camera { up: true },
                Frame { sequence: 0 },
                Frame { sequence: 1 },
                Frame { sequence: 2 },
                // The session open on frames 0-2 is abandoned: no verdict about a camera that went.
                Camera { up: false },
                Idle,
                Idle,
                Idle,
                Camera { up: true },
                Frame { sequence: 3 },
                Frame { sequence: 4 },
                Camera { up: false },
                Idle,
            ]
        );
    }
}
