//! A still image (JPEG or PNG, recognised from its content) as the replay source decodes it.
#![no_main]

use deepgate::codec::decode_image_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = decode_image_bytes(data, "fuzz") {
        assert!(image.width > 0 && image.height > 0);
        assert_eq!(image.data.len(), image.stride() * image.height as usize);
    }
});
