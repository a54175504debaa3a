//! Frame sources: the one trait every capture backend implements, and the replay backends.

pub mod replay;
pub mod synthetic;
pub mod y4m;

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

/// Helpers shared by the capture backends' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use anyhow::Result;
    use std::path::{Path, PathBuf};

    /// A file or directory under `tests/fixtures`.
    pub(crate) fn fixture(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(relative)
    }

    /// A fresh, empty directory under the system temporary directory, unique to this process and label.
    pub(crate) fn scratch_directory(label: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("deepgate-replay-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        directory
    }

    /// The error an operation was expected to return, with its whole context chain.
    pub(crate) fn error_text(result: Result<impl Sized>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(error) => format!("{error:#}"),
        }
    }
}
