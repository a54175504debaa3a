//! Frame sources: the one trait every capture backend implements, and the replay backends.

pub mod replay;

use crate::frame::Frame;
use anyhow::Result;

/// Where frames come from. A source owns its buffers and lends one frame at a time; the frame is valid until
/// the next call.
pub trait FrameSource {
    /// The next frame, `Ok(None)` at the end of the stream. An error concerns the current input only (a file
    /// that cannot be read, a truncated video frame, a camera fault): the source moves past it, so the caller
    /// reports the error and asks again.
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>>;

    /// A name for logs and reports: a file path or a device.
    fn describe(&self) -> &str;
}
