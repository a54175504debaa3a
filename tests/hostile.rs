//! Hostile inputs never panic: thousands of corrupted images, MJPEG frames, Y4M videos, board configs and
//! manifests (real files with bytes flipped, inserted, removed or cut) each give a result or a clear error.

mod common;

use deepgate::capture::y4m::Y4mSource;
use deepgate::capture::FrameSource;
use deepgate::codec::decode_image_bytes;
use deepgate::config::BoardConfig;
use deepgate::frame::{Frame, PixelFormat};
use deepgate::manifest::Manifest;

use deepgate::testing::XorShift;

/// Corruption of real files: a few random flips, insertions, removals, or a cut.
trait Corrupt {
    fn corrupt(&mut self, original: &[u8]) -> Vec<u8>;
}

impl Corrupt for XorShift {
    /// A copy of `original` with a few random flips, insertions, removals, or a cut.
    fn corrupt(&mut self, original: &[u8]) -> Vec<u8> {
        let mut bytes = original.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(bytes.len());
            match self.below(4) {
                0 => bytes[at] = self.next_u64() as u8,
                1 => bytes.insert(at, self.next_u64() as u8),
                2 if bytes.len() > 1 => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at.max(1)),
            }
        }
        bytes
    }
}

#[test]
fn corrupted_images_decode_or_fail_cleanly() {
    let mut random = XorShift(0x0bad_cafe_0000_0001);
    for name in ["faces/obama2.jpg", "faces/astronaut.png", "bad/grey16.png", "bad/cmyk.jpg"] {
        let original = std::fs::read(common::fixture(name)).unwrap();
        for _ in 0..150 {
            let bytes = random.corrupt(&original);
            if let Ok(image) = decode_image_bytes(&bytes, name) {
                assert_eq!(image.data.len(), image.stride() * image.height as usize, "{name}");
            }
        }
    }
}

#[test]
fn corrupted_mjpeg_frames_are_errors_for_that_frame_only() {
    let config = BoardConfig::load(&common::root().join("board/host.toml")).unwrap();
    let models = deepgate::pipeline::Models::load(&config).unwrap();
    let mut pipeline = deepgate::pipeline::Pipeline::new(&config, models).unwrap();
    let photo = image::open(common::fixture("faces/obama.jpg")).unwrap().to_rgb8();
    let photo = image::imageops::resize(&photo, 320, 400, image::imageops::FilterType::Triangle);
    let jpeg =
        deepgate::capture::synthetic::camera_frame(photo.as_raw(), 320, 400, PixelFormat::Mjpeg, 0).unwrap();
    let mut random = XorShift(0x0bad_cafe_0000_0002);
    for sequence in 0..60 {
        let corrupted = random.corrupt(&jpeg);
        let _ = pipeline.process(&mjpeg_frame(&corrupted, sequence));
        // The stream goes on: the intact frame after a corrupt one still finds the face.
        let (faces, _) = pipeline.process(&mjpeg_frame(&jpeg, sequence)).unwrap();
        assert_eq!(faces.len(), 1, "after corrupt frame {sequence}");
    }
}

/// A 320×400 MJPEG frame holding `data`.
fn mjpeg_frame(data: &[u8], sequence: u64) -> Frame<'_> {
    Frame {
        format: PixelFormat::Mjpeg,
        width: 320,
        height: 400,
        stride: 0,
        data,
        source: "mjpeg",
        sequence,
        timestamp_ns: 0,
        discontinuity: false,
    }
}

#[test]
fn corrupted_y4m_videos_play_or_fail_cleanly() {
    let directory = common::temp_dir("hostile-y4m");
    let video = directory.join("clip.y4m");
    common::drifting_video(&video, "faces/astronaut.png", 95, 63, 3, 2);
    let original = std::fs::read(&video).unwrap();
    let mut random = XorShift(0x0bad_cafe_0000_0003);
    let corrupted_path = directory.join("corrupted.y4m");
    for _ in 0..300 {
        // Corrupt mostly the header and frame markers, where the parser works.
        let cut = 120.min(original.len());
        let mut bytes = random.corrupt(&original[..cut]);
        bytes.extend_from_slice(&original[cut..]);
        std::fs::write(&corrupted_path, &bytes).unwrap();
        let Ok(mut source) = Y4mSource::open(&corrupted_path) else { continue };
        for _ in 0..10 {
            match source.next_frame() {
                Ok(Some(frame)) => frame.validate().unwrap(),
                Ok(None) => break,
                Err(_) => {}
            }
        }
    }
}

#[test]
fn corrupted_board_configs_and_manifests_are_refused_cleanly() {
    // A corruption may land in a comment or keep a value valid, so not every one is refused; but most are, and
    // each refusal says what is wrong (a manifest's names its file).
    let mut random = XorShift(0x0bad_cafe_0000_0004);
    let host = std::fs::read(common::root().join("board/host.toml")).unwrap();
    let mut refused = 0;
    for _ in 0..500 {
        let text = String::from_utf8_lossy(&random.corrupt(&host)).into_owned();
        if let Err(error) = BoardConfig::parse(&text) {
            assert!(!format!("{error:#}").trim().is_empty(), "a refusal without a reason");
            refused += 1;
        }
    }
    assert!(refused >= 500 / 3, "only {refused} of 500 corrupted board configs were refused");
    let directory = common::temp_dir("hostile-manifest");
    let manifest = std::fs::read(common::root().join("models/manifest.toml")).unwrap();
    let path = directory.join("manifest.toml");
    let mut refused = 0;
    for _ in 0..300 {
        std::fs::write(&path, random.corrupt(&manifest)).unwrap();
        if let Err(error) = Manifest::load(&path) {
            let error = format!("{error:#}");
            assert!(error.contains(&path.display().to_string()), "the refusal names the manifest: {error}");
            refused += 1;
        }
    }
    assert!(refused >= 300 / 3, "only {refused} of 300 corrupted manifests were refused");
}
