//! Detector scheduling (`[detector] redetect_every`): held frames skip the detector, a still input gets the
//! same results and verdicts as detection on every frame, and a face that moves or is swapped between frames
//! makes the detector run again on that same frame, so it is judged on a fresh box.

use deepgate::codec::{decode_image_file, DecodedImage};
use deepgate::config::BoardConfig;
use deepgate::frame::PixelFormat;
use deepgate::pipeline::{Models, Pipeline};
use std::fmt::Write;
use std::path::Path;

fn pipeline(redetect_every: u32) -> Pipeline {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = BoardConfig::load(&root.join("board/host.toml")).expect("board/host.toml");
    config.detector.redetect_every = redetect_every;
    // Any face the detector reports may be held: these tests are about the schedule, not the score bound.
    config.detector.hold_min_score = config.detector.score_threshold;
    config.detector.validate().expect("valid [detector]");
    Pipeline::new(&config, Models::load(&config).expect("the bundled models")).expect("pipeline")
}

fn photo(name: &str) -> DecodedImage {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let image = decode_image_file(&root.join("tests/fixtures/faces").join(name)).expect("fixture photo");
    assert_eq!(image.format, PixelFormat::Rgb24, "{name}");
    image
}

/// The same photo moved right by `shift` pixels (wrapping round): the same face, somewhere else.
fn shifted(image: &DecodedImage, shift: usize) -> DecodedImage {
    let stride = image.stride();
    let mut data = image.data.clone();
    for row in data.chunks_mut(stride) {
        row.rotate_right(shift * 3);
    }
    DecodedImage { data, ..*image }
}

/// Plays `images` as one stream (a discontinuity at the first frame only) and returns one line per frame
/// (every face's box, score, issue and fake probability, exactly) and per verdict, and the detector's runs.
fn play(pipeline: &mut Pipeline, images: &[&DecodedImage]) -> (Vec<String>, u64) {
    let mut lines = Vec::new();
    for (sequence, image) in images.iter().enumerate() {
        let frame = image.frame("hold-test", sequence as u64, 0, sequence == 0);
        let (faces, verdict) = pipeline.process(&frame).expect("frame");
        let mut line = format!("frame {sequence}:");
        for face in faces {
            let _ = write!(
                line,
                " {:?} {} {:?} {:?} {}",
                face.face.bbox, face.face.score, face.issue, face.fake_probability, face.main
            );
        }
        lines.push(line);
        if let Some(verdict) = verdict {
            lines.push(format!("verdict {:?} {} {:?}", verdict.decision, verdict.reason, verdict.scores));
        }
    }
    if let Some(verdict) = pipeline.finish() {
        lines.push(format!("verdict {:?} {} {:?}", verdict.decision, verdict.reason, verdict.scores));
    }
    let detector_runs = pipeline
        .times
        .summary()
        .iter()
        .find(|summary| summary.stage == "detector")
        .map_or(0, |summary| summary.recorded);
    (lines, detector_runs)
}

#[test]
fn a_still_face_is_held_between_detections_with_the_same_results_as_every_frame() {
    let image = photo("obama.jpg");
    let frames = vec![&image; 12];
    let mut every = pipeline(1);
    let (reference, runs) = play(&mut every, &frames);
    assert_eq!(runs, 12);
    assert_eq!(every.hold_counts().held, 0);
    assert!(reference.iter().any(|line| line.contains("Some(")), "the face was judged: {reference:#?}");

    let mut held = pipeline(4);
    let (lines, runs) = play(&mut held, &frames);
    assert_eq!(runs, 3, "the detector ran on frames 0, 4 and 8 only");
    let counts = held.hold_counts();
    assert_eq!((counts.detected, counts.held, counts.moved), (3, 9, 0));
    assert_eq!(lines, reference, "held frames judge the same face the same way");
}

#[test]
fn a_face_that_moves_or_is_swapped_is_detected_again_on_that_frame() {
    let still = photo("obama.jpg");
    let moved = shifted(&still, still.width as usize / 8);
    // A different person in the same frame size: the first photo's size, the second's pixels scaled to it.
    let other = photo("obama2.jpg");
    let other = image::imageops::resize(
        &image::RgbImage::from_raw(other.width, other.height, other.data.clone()).expect("rgb"),
        still.width,
        still.height,
        image::imageops::FilterType::Triangle,
    );
    let swapped = DecodedImage { data: other.into_raw(), ..still };
    let frames = [&still, &still, &moved, &moved, &still, &swapped, &swapped, &still];

    let (reference, runs) = play(&mut pipeline(1), &frames);
    assert_eq!(runs, frames.len() as u64);
    let mut held = pipeline(30);
    let (lines, runs) = play(&mut held, &frames);
    let counts = held.hold_counts();
    // Every change of picture sends the held frame back to the detector (its crop changed), and the frame is
    // judged on the new detection: results equal detection on every frame.
    assert_eq!(counts.moved, 4, "{counts:?}");
    assert_eq!(counts.held, 3, "{counts:?}");
    assert_eq!(runs, counts.detected);
    assert_eq!(lines, reference);
}
