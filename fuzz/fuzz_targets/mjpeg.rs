//! A camera's MJPEG frame as the pipeline checks and decodes it: the stream's size (first four bytes, two
//! little-endian u16) and the frame's bytes (the rest); a truncated or mis-sized frame is that frame's error.
#![no_main]

use deepgate::codec::decode_mjpeg;
use deepgate::frame::{Frame, PixelFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((size, bytes)) = data.split_first_chunk::<4>() else { return };
    let width = u32::from(u16::from_le_bytes([size[0], size[1]]));
    let height = u32::from(u16::from_le_bytes([size[2], size[3]]));
    let frame = Frame {
        format: PixelFormat::Mjpeg,
        width,
        height,
        stride: 0,
        data: bytes,
        source: "fuzz",
        sequence: 0,
        timestamp_ns: 0,
        discontinuity: false,
    };
    if let Ok(image) = decode_mjpeg(&frame) {
        assert_eq!((image.width, image.height), (width, height));
        assert_eq!(image.data.len(), image.stride() * image.height as usize);
    }
});
