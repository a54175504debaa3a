//! `deepgate crops`: the aligned face crops exactly as the runtime makes them, written as PNG files with an
//! index, so that the training pipeline sees what deployment sees. Inputs are played through the session loop,
//! as `replay` plays them.

use super::output::error_line;
use anyhow::{Context, Result};
use deepgate::align::Alignment;
use deepgate::frame::Frame;
use deepgate::pipeline::{aligned_crop, FaceResult};
use deepgate::preprocess::RgbImage;
use deepgate::session::{play_input, Event, Played};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn crops(
    board: &Path,
    out: &Path,
    size: Option<usize>,
    main_only: bool,
    inputs: &[PathBuf],
) -> Result<ExitCode> {
    let (_config, mut pipeline) = super::start(board)?;
    let size = size.unwrap_or_else(|| pipeline.crop_size());
    anyhow::ensure!((16..=1024).contains(&size), "--size {size} is outside 16..=1024");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let index_path = out.join("index.csv");
    let mut index =
        csv::Writer::from_path(&index_path).with_context(|| format!("creating {}", index_path.display()))?;
    index.write_record([
        "crop",
        "source",
        "frame",
        "face",
        "main",
        "x",
        "y",
        "width",
        "height",
        "detector_score",
        "quality_issue",
        "sharpness",
        "yaw",
        "roll_degrees",
        "brightness",
        "fake_probability",
        "map_a",
        "map_b",
        "map_c",
        "map_d",
        "map_tx",
        "map_ty",
    ])?;
    let mut crop = RgbImage::new(size, size);
    // The session loop holds the pipeline while it reports a frame; the crops are cut with the same alignment.
    let alignment = pipeline.models().alignment.clone();
    let (mut failed, mut written) = (false, 0usize);
    // A crop or index row that cannot be written ends the command (it is not about one input).
    let mut fatal: Option<anyhow::Error> = None;
    let stop = std::cell::Cell::new(false);
    for (input_number, input) in inputs.iter().enumerate() {
        let mut emit = |event: Event| match event {
            Event::Frame { frame, faces } => {
                match write_crops(
                    frame,
                    faces,
                    &alignment,
                    &mut crop,
                    out,
                    input_number,
                    main_only,
                    &mut index,
                ) {
                    Ok((count, all)) => {
                        written += count;
                        failed |= !all;
                    }
                    Err(error) => {
                        fatal.get_or_insert(error);
                        stop.set(true);
                    }
                }
            }
            Event::Error { source, error } => {
                eprintln!("{}", error_line(source, error));
                failed = true;
            }
            Event::GpuLost { error } => log::error!("{error:#}"),
            // Sessions and cameras do not concern crops.
            Event::Verdict { .. } | Event::Camera { .. } => {}
        };
        let played = play_input(&mut pipeline, input, &mut |_| !stop.get(), &mut emit);
        if let Some(error) = fatal.take() {
            return Err(error);
        }
        failed |= played != Played::Finished { ok: true };
    }
    index.flush()?;
    log::info!("{written} crops of {size}x{size} written to {}", out.display());
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Writes the crops of one frame's faces (only the main face's with `main_only`) and their index rows; returns
/// how many, and whether every face could be cut (one that cannot is reported on stderr and skipped).
#[allow(clippy::too_many_arguments)]
fn write_crops(
    frame: &Frame,
    faces: &[FaceResult],
    alignment: &Alignment,
    crop: &mut RgbImage,
    out: &Path,
    input_number: usize,
    main_only: bool,
    index: &mut csv::Writer<std::fs::File>,
) -> Result<(usize, bool)> {
    let name = frame.source;
    let size = crop.width;
    let stem = Path::new(name).file_stem().map_or("input".into(), |s| s.to_string_lossy().into_owned());
    let (mut written, mut all) = (0, true);
    for (number, result) in faces.iter().enumerate().filter(|(_, r)| r.main || !main_only) {
        // The crop → source map goes into the index so that the training pipeline can paste a manipulated crop
        // back into its photo exactly where the runtime took it from.
        let map = match aligned_crop(alignment, frame, &result.face, crop) {
            Ok(map) => map,
            Err(error) => {
                eprintln!("{}", error_line(name, &error));
                all = false;
                continue;
            }
        };
        // The input's position makes the name unique: two inputs may share a file stem (a/test.jpg and
        // b/test.jpg, or photo.png and photo.jpg).
        let file = format!("{input_number:04}_{stem}_f{:05}_{number}.png", frame.sequence);
        let path = out.join(&file);
        image::save_buffer(&path, &crop.data, size as u32, size as u32, image::ExtendedColorType::Rgb8)
            .with_context(|| format!("writing {}", path.display()))?;
        let [x, y, width, height] = result.face.bbox;
        let q = &result.quality;
        index.write_record([
            file,
            name.to_string(),
            frame.sequence.to_string(),
            number.to_string(),
            result.main.to_string(),
            format!("{x:.2}"),
            format!("{y:.2}"),
            format!("{width:.2}"),
            format!("{height:.2}"),
            format!("{:.4}", result.face.score),
            result.issue.map_or(String::new(), |issue| issue.describe().to_string()),
            format!("{:.2}", q.sharpness),
            format!("{:.4}", q.yaw),
            format!("{:.2}", q.roll_degrees),
            format!("{:.2}", q.brightness),
            // The classifier's score for this face, on the crop at the classifier's own size (the decision's
            // input); empty when no classifier is configured.
            result.fake_probability.map_or(String::new(), |p| format!("{p:.6}")),
            format!("{:.6}", map.a),
            format!("{:.6}", map.b),
            format!("{:.6}", map.c),
            format!("{:.6}", map.d),
            format!("{:.4}", map.tx),
            format!("{:.4}", map.ty),
        ])?;
        written += 1;
    }
    Ok((written, all))
}
