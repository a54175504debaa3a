//! `deepgate bench`: per-stage timings of the pipeline on camera frames synthesised in each pixel format at a
//! camera resolution, all formats measured in one run so that their figures compare.

use anyhow::{bail, Context, Result};
use deepgate::capture::synthetic::camera_frame;
use deepgate::frame::{Frame, PixelFormat};
use std::path::Path;
use std::process::ExitCode;

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

pub fn bench(
    board: &Path,
    image: &Path,
    size: &str,
    formats: &[String],
    frames: usize,
    json: bool,
) -> Result<ExitCode> {
    let (width, height) = parse_size(size)?;
    let formats: Vec<PixelFormat> = formats.iter().map(|f| parse_format(f)).collect::<Result<_>>()?;
    if !(1..=100_000).contains(&frames) {
        bail!("--frames must be 1 to 100000");
    }
    let photo = image::open(image).with_context(|| format!("reading {}", image.display()))?.to_rgb8();
    let photo = image::imageops::resize(&photo, width, height, image::imageops::FilterType::Triangle);
    let (_config, mut pipeline) = super::start(board)?;
    let mut results = Vec::new();
    for format in formats {
        let stride = format.min_stride(width);
        let data = camera_frame(photo.as_raw(), width, height, format, stride)?;
        let mut frame = Frame::still(format, width, height, stride, &data, "bench");
        // Warm-up, then measure; a session restart every frame budget keeps the classifier path busy.
        for sequence in 0..5 {
            frame.sequence = sequence;
            pipeline.process(&frame)?;
        }
        pipeline.times.clear();
        let mut faces = 0;
        for sequence in 0..frames as u64 {
            frame.sequence = 5 + sequence;
            faces += pipeline.process(&frame)?.0.len();
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
        results.push(serde_json::json!({
            "format": format.name(), "width": width, "height": height, "frames": frames, "faces": faces,
            "stages": summary,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(ExitCode::SUCCESS)
}
