//! Frame sources: the one trait every capture backend implements, the replay backends, and the scripted camera
//! tests use in place of the V4L2 one.

pub mod replay;
pub mod scripted;
pub mod synthetic;
pub mod v4l2;
pub mod y4m;

use crate::frame::Frame;
use anyhow::Result;
use serde::Deserialize;
use std::path::PathBuf;

/// Where frames come from. A source owns its buffers and lends one frame at a time; the frame is valid until
/// the next call (a camera's buffer goes back to the driver then).
///
/// Two kinds of source: finite ones (files: `camera_up` is `None`), whose `Ok(None)` is the end of the stream,
/// and live ones (a camera: `camera_up` is `Some`), which never end. A live source's `next_frame` returns
/// within about a quarter of a second whatever happens (it never sleeps out a whole back-off or waits for a
/// frame without a time-out), with `Ok(None)` when it has no frame now (none yet, or the camera lost and not
/// back yet), so the caller can check its stop flag and `camera_up` between calls.
pub trait FrameSource {
    /// The next frame; `Ok(None)`: the end of a finite source, "no frame now" from a live one. An error
    /// concerns the current input or frame only (a file that cannot be read, a truncated video frame, a
    /// defective camera frame, a frame time-out): the source moves past it, so the caller reports the error and
    /// asks again.
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>>;

    /// A name for logs and reports: a file path or a device.
    fn describe(&self) -> &str;

    /// Whether the camera is streaming: `Some(false)` while it is lost, refused (a swapped or virtual device)
    /// or being re-opened, `Some(true)` while it delivers; `None` for a source with no camera to lose (files).
    /// Mirrors `Gate::link_up`; cheap, asked after every `next_frame`.
    fn camera_up(&self) -> Option<bool> {
        None
    }

    /// Whether `next_frame` may wait for a frame (`true`, the default) or must say at once that a live source
    /// has none now (`false`: the pipeline holds a frame in flight, on two threads, whose results should not
    /// wait for the next frame). A source that never waits ignores it.
    fn may_wait(&mut self, _wait: bool) {}
}

/// The board config's `[source]` section: where frames come from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum SourceSection {
    /// Still images, directories of images and Y4M videos, played in order.
    Replay {
        paths: Vec<PathBuf>,
        /// Start again from the first input at the end (a demo kiosk); false ends `deepgate run`.
        #[serde(default)]
        repeat: bool,
        /// Pace frames at this rate, like a camera; 0 plays as fast as the pipeline runs.
        #[serde(default)]
        frame_rate: f32,
    },
    /// A V4L2 camera (`src/capture/v4l2`), streamed through mmap buffers until SIGINT/SIGTERM.
    V4l2(v4l2::section::V4l2Section),
}

impl SourceSection {
    /// The V4L2 camera's section, when the source is one.
    pub fn v4l2(&self) -> Option<&v4l2::section::V4l2Section> {
        match self {
            SourceSection::V4l2(section) => Some(section),
            SourceSection::Replay { .. } => None,
        }
    }

    /// Refuses source settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        match self {
            SourceSection::Replay { paths, frame_rate, .. } => {
                anyhow::ensure!(
                    !paths.is_empty(),
                    "source.paths must name at least one image, directory or video"
                );
                anyhow::ensure!(
                    frame_rate.is_finite() && (0.0..=1000.0).contains(frame_rate),
                    "source.frame_rate {frame_rate} must be between 0 (unpaced) and 1000"
                );
                Ok(())
            }
            SourceSection::V4l2(section) => section.settings().map(drop),
        }
    }
}

/// Helpers shared by the capture backends' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use anyhow::Result;
    use std::path::{Path, PathBuf};

    /// A file or directory under `tests/fixtures`.
    pub(crate) fn fixture(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(relative)
    }

    /// A fresh, empty directory for one test (`testing::scratch_dir`).
    pub(crate) fn scratch_directory(label: &str) -> PathBuf {
        crate::testing::scratch_dir(&format!("replay-{label}"))
    }

    /// The error an operation was expected to return, with its whole context chain.
    pub(crate) fn error_text(result: Result<impl Sized>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(error) => format!("{error:#}"),
        }
    }
}
