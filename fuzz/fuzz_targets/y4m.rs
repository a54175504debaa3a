//! A YUV4MPEG2 video as `deepgate run` replays it: the header parsed strictly, then frames read until the end,
//! each either lent whole or refused with an error for that frame.
#![no_main]

use deepgate::capture::y4m::Y4mSource;
use deepgate::capture::FrameSource;
use libfuzzer_sys::fuzz_target;

/// More than any seed has; a frame error moves past the frame, so a few more reads than frames end the file.
const MOST_READS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let path = deepgate_fuzz::scratch("y4m").join("video.y4m");
    deepgate_fuzz::write(&path, data);
    let Ok(mut source) = Y4mSource::open(&path) else { return };
    for _ in 0..MOST_READS {
        match source.next_frame() {
            Ok(Some(frame)) => {
                assert!(frame.width > 0 && frame.height > 0);
                assert!(frame.data.len() >= frame.format.frame_bytes(frame.stride, frame.height));
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
});
