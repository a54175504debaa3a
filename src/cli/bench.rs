//! `deepgate bench`: per-stage timings of the pipeline on camera frames synthesised in each pixel format at a
//! camera resolution, all formats measured in one run so that their figures compare. With `--save-frames DIR`
//! it also writes those frames and an index, so that the Python peer (`bench/peer.py`, run by
//! `cargo xtask bench-peer`) works on exactly the same bytes; `--json` reports what the last frame found, for
//! the peer's agreement check.

use anyhow::{bail, Context, Result};
use deepgate::capture::synthetic::camera_frame;
use deepgate::frame::{Frame, PixelFormat};
use deepgate::pipeline::FaceResult;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

/// The index `--save-frames` writes beside the frames.
const FRAMES_INDEX: &str = "frames.json";

/// Parses "640x480".
pub(super) fn parse_size(text: &str) -> Result<(u32, u32)> {
    let (width, height) =
        text.split_once('x').with_context(|| format!("size `{text}` must be WIDTHxHEIGHT"))?;
    let size = (width.parse::<u32>()?, height.parse::<u32>()?);
    if !(16..=8192).contains(&size.0) || !(16..=8192).contains(&size.1) {
        bail!("size `{text}` must be between 16x16 and 8192x8192");
    }
    Ok(size)
}

pub(super) fn parse_format(text: &str) -> Result<PixelFormat> {
    PixelFormat::from_name(text).with_context(|| {
        format!("unknown pixel format `{text}` (RGB24, BGR24, GREY, YUYV, UYVY, NV12, MJPEG)")
    })
}

/// One face of a frame as `--json` reports it: box and keypoints in frame pixels, the quality measures, the fake
/// probability.
fn face_json(result: &FaceResult) -> serde_json::Value {
    json!({
        "box": result.face.bbox, "score": result.face.score, "keypoints": result.face.keypoints,
        "quality": result.quality, "issue": result.issue, "fake_probability": result.fake_probability,
        "main": result.main,
    })
}

/// Writes one synthesised frame into `directory` and returns its index entry.
fn save_frame(
    directory: &Path,
    format: PixelFormat,
    (width, height, stride): (u32, u32, usize),
    data: &[u8],
) -> Result<serde_json::Value> {
    let extension = if format == PixelFormat::Mjpeg { "jpg" } else { "raw" };
    let file = format!("{}_{width}x{height}.{extension}", format.name());
    let path = directory.join(&file);
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(json!({ "format": format.name(), "width": width, "height": height, "stride": stride, "file": file }))
}

pub fn bench(
    board: &Path,
    image: &Path,
    size: &str,
    formats: &[String],
    frames: usize,
    json: bool,
    save_frames: Option<&Path>,
) -> Result<ExitCode> {
    let (width, height) = parse_size(size)?;
    let formats: Vec<PixelFormat> = formats.iter().map(|f| parse_format(f)).collect::<Result<_>>()?;
    if !(1..=100_000).contains(&frames) {
        bail!("--frames must be 1 to 100000");
    }
    let photo = image::open(image).with_context(|| format!("reading {}", image.display()))?.to_rgb8();
    let photo = image::imageops::resize(&photo, width, height, image::imageops::FilterType::Triangle);
    let (config, mut pipeline) = super::start(board)?;
    if let Some(directory) = save_frames {
        std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    }
    let mut saved = Vec::new();
    let mut results = Vec::new();
    for format in formats {
        let stride = format.min_stride(width);
        let data = camera_frame(photo.as_raw(), width, height, format, stride)?;
        if let Some(directory) = save_frames {
            saved.push(save_frame(directory, format, (width, height, stride), &data)?);
        }
        let mut frame = Frame::still(format, width, height, stride, &data, "bench");
        // Warm-up, then measure; a session restart every frame budget keeps the classifier path busy.
        for sequence in 0..5 {
            frame.sequence = sequence;
            pipeline.process(&frame)?;
        }
        pipeline.times.clear();
        let mut faces = 0;
        let mut last = Vec::new();
        for sequence in 0..frames as u64 {
            frame.sequence = 5 + sequence;
            let found = pipeline.process(&frame)?.0;
            faces += found.len();
            if sequence + 1 == frames as u64 {
                last = found.iter().map(face_json).collect();
            }
        }
        pipeline.finish();
        let summary = pipeline.times.summary();
        if !json {
            println!("{} {width}x{height}: {frames} frames, {faces} faces", format.name());
            println!("  {:<22} {:>11} {:>9} {:>9}", "stage", "median ms", "min ms", "max ms");
            for stage in &summary {
                println!(
                    "  {:<22} {:>11.3} {:>9.3} {:>9.3}",
                    stage.stage, stage.median_ms, stage.min_ms, stage.max_ms
                );
            }
        }
        results.push(json!({
            "format": format.name(), "width": width, "height": height, "frames": frames, "faces": faces,
            "stages": summary, "faces_found": last,
        }));
    }
    if let Some(directory) = save_frames {
        // What the peer needs besides the frames, as the pipeline loaded it: the model and alignment definitions
        // it reads itself, the board's settings, and the pipeline's own constants.
        let detector = config.detector;
        let index = json!({
            "source_image": image, "board": board, "frames": saved,
            "manifest": config.resolve(&config.models.manifest),
            "alignment": config.resolve(&config.models.alignment),
            "detector": config.models.detector, "classifier": config.models.classifier,
            "detector_settings": {
                "score_threshold": detector.score_threshold, "min_face_px": detector.min_face_px,
                "nms_iou": detector.nms_iou,
            },
            "quality_settings": config.quality,
            "quality_crop": deepgate::pipeline::QUALITY_CROP, "max_faces": deepgate::detect::MAX_FACES,
            "max_taps": deepgate::preprocess::MAX_TAPS,
        });
        let path = directory.join(FRAMES_INDEX);
        std::fs::write(&path, serde_json::to_string_pretty(&index)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(ExitCode::SUCCESS)
}
