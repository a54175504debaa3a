//! A scripted live camera: the host twin of the V4L2 source, for tests of what the runtime does when a camera
//! delivers, goes, comes back or falls silent (the session loop, the supervisor, the systemd watchdog). It lends
//! one image as every frame and follows its script call by call, or phase by phase in time.

use super::FrameSource;
use crate::codec::DecodedImage;
use crate::frame::Frame;
use anyhow::{bail, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The name the scripted camera gives itself and its frames.
pub const NAME: &str = "/dev/video-scripted";

/// What the camera does: one call of `next_frame` in a call script, a whole phase in a timed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A frame: the image, the next sequence number; the first one and the first after a loss say
    /// `discontinuity`, as the V4L2 source's do.
    Frame,
    /// No frame, the camera lost (`camera_up` is `Some(false)`).
    Lost,
    /// No frame although the camera says it streams (a stuck driver).
    Silent,
}

enum Script {
    /// One step per call.
    Calls(VecDeque<Step>),
    /// Each step lasts `phase`, counted from the camera's making.
    Timed { steps: Vec<Step>, phase: Duration, started: Instant },
}

/// A live `FrameSource` following a script. When the script is over it sets the stop flag it was given (as a
/// signal would) and has no frame; without one, the call is an error.
pub struct ScriptedCamera<'a> {
    image: DecodedImage,
    script: Script,
    pace: Duration,
    stop: Option<&'a AtomicBool>,
    up: bool,
    delivered: u64,
    /// The next frame starts a stream: the first one, and the first after a loss.
    discontinuity: bool,
}

impl<'a> ScriptedCamera<'a> {
    /// A camera that takes one step of `script` per call, lending `image` as its frames.
    pub fn new(image: DecodedImage, script: impl IntoIterator<Item = Step>) -> ScriptedCamera<'a> {
        ScriptedCamera::with(image, Script::Calls(script.into_iter().collect()))
    }

    /// A camera whose steps each last `phase`, counted from now.
    pub fn timed(image: DecodedImage, steps: &[Step], phase: Duration) -> ScriptedCamera<'a> {
        ScriptedCamera::with(image, Script::Timed { steps: steps.to_vec(), phase, started: Instant::now() })
    }

    fn with(image: DecodedImage, script: Script) -> ScriptedCamera<'a> {
        ScriptedCamera {
            image,
            script,
            pace: Duration::ZERO,
            stop: None,
            up: true,
            delivered: 0,
            discontinuity: true,
        }
    }

    /// Each call first waits `pace`: a camera's frame period, and the V4L2 source's bounded wait when there is
    /// no frame, so that threads watching the run (the relay's) see every change.
    pub fn paced(mut self, pace: Duration) -> ScriptedCamera<'a> {
        self.pace = pace;
        self
    }

    /// When the script is over, `stop` is set and calls have no frame.
    pub fn stopping(mut self, stop: &'a AtomicBool) -> ScriptedCamera<'a> {
        self.stop = Some(stop);
        self
    }

    /// Frames lent so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    fn step(&mut self) -> Option<Step> {
        match &mut self.script {
            Script::Calls(steps) => steps.pop_front(),
            Script::Timed { steps, phase, started } => {
                let index = started.elapsed().as_nanos() / phase.as_nanos().max(1);
                usize::try_from(index).ok().and_then(|index| steps.get(index).copied())
            }
        }
    }
}

impl FrameSource for ScriptedCamera<'_> {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if !self.pace.is_zero() {
            std::thread::sleep(self.pace);
        }
        match self.step() {
            Some(Step::Frame) => {
                let discontinuity = self.discontinuity;
                self.up = true;
                self.discontinuity = false;
                let sequence = self.delivered;
                self.delivered += 1;
                Ok(Some(Frame {
                    format: self.image.format,
                    width: self.image.width,
                    height: self.image.height,
                    stride: self.image.stride(),
                    data: &self.image.data,
                    source: NAME,
                    sequence,
                    timestamp_ns: sequence * 33_000_000,
                    discontinuity,
                }))
            }
            Some(Step::Lost) => {
                self.up = false;
                // The stream starts again when the camera is back.
                self.discontinuity = true;
                Ok(None)
            }
            Some(Step::Silent) => {
                self.up = true;
                Ok(None)
            }
            None => match self.stop {
                Some(stop) => {
                    stop.store(true, Ordering::Relaxed);
                    Ok(None)
                }
                None => bail!("{NAME}: the script is over"),
            },
        }
    }

    fn describe(&self) -> &str {
        NAME
    }

    fn camera_up(&self) -> Option<bool> {
        Some(self.up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;

    fn image() -> DecodedImage {
        DecodedImage { format: PixelFormat::Rgb24, width: 4, height: 2, data: (0..24).collect() }
    }

    /// One call: (sequence, discontinuity) of its frame or None for no frame, and `camera_up` after it.
    type Call = (Option<(u64, bool)>, Option<bool>);

    fn calls(camera: &mut ScriptedCamera, count: usize) -> Vec<Call> {
        (0..count)
            .map(|_| {
                let frame = camera.next_frame().expect("within the script").map(|frame| {
                    assert_eq!((frame.width, frame.height, frame.stride, frame.data.len()), (4, 2, 12, 24));
                    (frame.sequence, frame.discontinuity)
                });
                (frame, camera.camera_up())
            })
            .collect()
    }

    #[test]
    fn a_call_script_lends_frames_loses_the_camera_and_marks_the_returns() {
        use Step::*;
        let mut camera = ScriptedCamera::new(image(), [Frame, Frame, Lost, Silent, Frame]);
        assert_eq!(
            calls(&mut camera, 5),
            [
                (Some((0, true)), Some(true)),
                (Some((1, false)), Some(true)),
                (None, Some(false)),
                (None, Some(true)),
                (Some((2, true)), Some(true)),
            ]
        );
        assert!(camera.next_frame().is_err(), "without a stop flag the end of the script is an error");
        let stop = AtomicBool::new(false);
        let mut camera = ScriptedCamera::new(image(), [Frame]).stopping(&stop);
        assert!(camera.next_frame().unwrap().is_some() && !stop.load(Ordering::Relaxed));
        assert!(camera.next_frame().unwrap().is_none() && stop.load(Ordering::Relaxed));
        assert_eq!(camera.delivered(), 1);
    }

    #[test]
    fn a_timed_script_follows_the_clock() {
        let stop = AtomicBool::new(false);
        // Calls a quarter into each phase, so that a late wake-up on a loaded machine stays in it.
        let phase = Duration::from_millis(200);
        let mut camera = ScriptedCamera::timed(image(), &[Step::Frame, Step::Lost], phase).stopping(&stop);
        assert!(camera.next_frame().unwrap().is_some(), "the first phase starts when the camera is made");
        std::thread::sleep(phase + phase / 4);
        assert!(camera.next_frame().unwrap().is_none());
        assert_eq!(camera.camera_up(), Some(false));
        std::thread::sleep(phase);
        assert!(camera.next_frame().unwrap().is_none() && stop.load(Ordering::Relaxed));
    }
}
