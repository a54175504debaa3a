//! `deepgate explain`: where in the face the runtime's own classifier saw manipulation, drawn over the aligned
//! crop it judged: the model's predicted manipulation map (manifest `map_output`) where it has one, occlusion
//! sensitivity otherwise. For an operator reviewing a rejected person.

use anyhow::{bail, ensure, Context, Result};
use deepgate::capture::replay::open_input;
use deepgate::classify::Classifier;
use deepgate::infer::Model;
use deepgate::manifest::Role;
use deepgate::pipeline::FaceResult;
use deepgate::preprocess::RgbImage;
use std::path::Path;
use std::process::ExitCode;

/// How the heat map is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// The model's predicted manipulation map (needs `map_output` in the manifest).
    Map,
    /// Occlusion sensitivity: the drop of the fake probability when a patch of the crop is greyed out.
    Occlusion,
    /// `map` when the model has one, else `occlusion`.
    Auto,
}

/// Occlusion settings: the patch side and the step between patches, in crop pixels.
#[derive(Clone, Copy, Debug)]
pub struct Occlusion {
    pub patch: usize,
    pub stride: usize,
}

/// Each crop pixel becomes a square of this many output pixels.
pub const SCALE: usize = 4;

/// Opacity of the strongest heat over the crop.
const MOST_OPAQUE: f32 = 0.6;

/// The smallest occlusion heat scale: changes of the fake probability below this are not stretched to full
/// colour, so an insensitive model shows as pale rather than as loud noise.
const MIN_OCCLUSION_SCALE: f32 = 0.05;

/// A heat map over the crop: `values` in `height` × `width` cells, each covering crop pixels x in
/// [j·W/width, (j+1)·W/width), y likewise. `signed`: values in [-1, 1] (red positive, blue negative) after
/// division by `scale`; otherwise in [0, 1] (red).
struct Heat {
    width: usize,
    height: usize,
    values: Vec<f32>,
    scale: f32,
    signed: bool,
}

impl Heat {
    fn at(&self, x: usize, y: usize, crop_width: usize, crop_height: usize) -> f32 {
        let (column, row) = (x * self.width / crop_width, y * self.height / crop_height);
        self.values[row * self.width + column] / self.scale
    }

    fn range(&self) -> (f32, f32) {
        let low = self.values.iter().copied().fold(f32::INFINITY, f32::min);
        let high = self.values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (low, high)
    }
}

pub fn explain(
    board: &Path,
    image: &Path,
    out: &Path,
    method: Method,
    occlusion: Occlusion,
) -> Result<ExitCode> {
    let (config, mut pipeline) = super::start(board)?;
    let Some(id) = config.models.classifier.clone() else {
        bail!("no classifier configured in {}: explain needs models.classifier", board.display());
    };
    let mut source = open_input(image)?;
    let Some(frame) = source.next_frame()? else {
        bail!("{} holds no frame", image.display());
    };
    let main: Option<FaceResult> = pipeline.process(&frame)?.0.iter().find(|face| face.main).copied();
    let Some(main) = main else {
        eprintln!("deepgate explain: no face found in {}", image.display());
        return Ok(ExitCode::from(1));
    };
    if main.fake_probability.is_none() {
        eprintln!(
            "deepgate explain: the face in {} cannot be aligned (degenerate keypoints)",
            image.display()
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(issue) = main.issue {
        log::warn!(
            "{}: {}: the runtime would not use this frame as evidence",
            image.display(),
            issue.describe()
        );
    }
    let side = pipeline.crop_size();
    let mut crop = RgbImage::new(side, side);
    pipeline.crop(&frame, &main.face, &mut crop)?;
    // A classifier of its own, on the CPU (deterministic), so that the pipeline's stays as the runtime uses it.
    let manifest = &pipeline.models().manifest;
    let entry = manifest.get(&id, Role::Classifier)?;
    let mut classifier = Classifier::new(Model::load(manifest, entry)?)?;
    let (probability, map) = classifier.fake_probability_and_map(&crop)?;
    let chosen = match (method, &map) {
        (Method::Map, None) => bail!(
            "--method map: classifier `{id}` declares no map_output in its manifest entry; use --method \
             occlusion (or auto)"
        ),
        (Method::Occlusion, _) | (Method::Auto, None) => Method::Occlusion,
        (Method::Map | Method::Auto, Some(_)) => Method::Map,
    };
    let heat = match (chosen, map) {
        (Method::Map, Some(map)) => {
            let values = (0..map.height)
                .flat_map(|row| (0..map.width).map(move |column| (row, column)))
                .map(|(row, column)| map.manipulation_probability(row, column))
                .collect();
            Heat { width: map.width, height: map.height, values, scale: 1.0, signed: false }
        }
        _ => occlusion_heat(&mut classifier, &crop, probability, occlusion)?,
    };
    let (low, high) = heat.range();
    ensure!(low.is_finite() && high.is_finite(), "the heat map holds a value that is not finite");
    let picture = render(&crop, &heat);
    image::save_buffer(
        out,
        &picture.data,
        picture.width as u32,
        picture.height as u32,
        image::ExtendedColorType::Rgb8,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    let map_meaning = classifier.entry().map_output().map(|output| output.meaning.clone());
    // 4 decimals for probabilities and heat, 0.01 pixel for the box, as `replay` prints them.
    let round = |value: f32, per_unit: f64| (f64::from(value) * per_unit).round() / per_unit;
    let line = serde_json::json!({
        "type": "explain",
        "image": image.display().to_string(),
        "model": id,
        "box": main.face.bbox.map(|value| round(value, 100.0)),
        "quality_issue": main.issue.map(|issue| issue.describe()),
        "fake_probability": round(probability, 1e4),
        "method": if chosen == Method::Map { "map" } else { "occlusion" },
        "map_meaning": if chosen == Method::Map { map_meaning } else { None },
        "cells": [heat.height, heat.width],
        "patch": (chosen == Method::Occlusion).then_some(occlusion.patch),
        "stride": (chosen == Method::Occlusion).then_some(occlusion.stride),
        "map_min": round(low, 1e4),
        "map_max": round(high, 1e4),
        "heat_scale": round(heat.scale, 1e4),
        "output": out.display().to_string(),
        "output_size": [picture.width, picture.height],
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// Occlusion sensitivity: a `patch`-sided square of the crop's mean colour slid over it in steps of `stride`
/// (the last row and column of patches touching the far edges), the classifier rerun on each; a pixel's heat is
/// the mean, over the patches covering it, of `base` minus the occluded fake probability (positive: hiding the
/// region made the face look less fake, so the classifier saw manipulation there).
fn occlusion_heat(
    classifier: &mut Classifier,
    crop: &RgbImage,
    base: f32,
    settings: Occlusion,
) -> Result<Heat> {
    let (width, height) = (crop.width, crop.height);
    let Occlusion { patch, stride } = settings;
    ensure!(
        (1..=width.min(height)).contains(&patch) && stride >= 1,
        "--patch {patch} must be 1 to the crop's side ({}) and --stride {stride} at least 1",
        width.min(height)
    );
    let starts = |side: usize| {
        let mut starts: Vec<usize> = (0..=side - patch).step_by(stride).collect();
        if starts.last() != Some(&(side - patch)) {
            starts.push(side - patch);
        }
        starts
    };
    let pixels = width * height;
    let mut mean = [0u8; 3];
    for (channel, value) in mean.iter_mut().enumerate() {
        let total: usize = crop.data.iter().skip(channel).step_by(3).map(|&v| usize::from(v)).sum();
        *value = u8::try_from((total + pixels / 2) / pixels).unwrap_or(u8::MAX);
    }
    let (mut sums, mut counts) = (vec![0f32; pixels], vec![0u32; pixels]);
    let mut occluded = RgbImage::new(width, height);
    for top in starts(height) {
        for left in starts(width) {
            occluded.data.copy_from_slice(&crop.data);
            for y in top..top + patch {
                for x in left..left + patch {
                    occluded.data[(y * width + x) * 3..][..3].copy_from_slice(&mean);
                }
            }
            let change = base - classifier.fake_probability(&occluded)?;
            for y in top..top + patch {
                for x in left..left + patch {
                    sums[y * width + x] += change;
                    counts[y * width + x] += 1;
                }
            }
        }
    }
    let values: Vec<f32> = sums.iter().zip(&counts).map(|(sum, count)| sum / *count as f32).collect();
    let largest = values.iter().fold(0f32, |most, value| most.max(value.abs()));
    Ok(Heat { width, height, values, scale: largest.max(MIN_OCCLUSION_SCALE), signed: true })
}

/// The crop enlarged `SCALE` times, twice side by side: as it is, and with the heat over it.
fn render(crop: &RgbImage, heat: &Heat) -> RgbImage {
    let (width, height) = (crop.width * SCALE, crop.height * SCALE);
    let mut picture = RgbImage::new(2 * width, height);
    for y in 0..height {
        for x in 0..width {
            let (crop_x, crop_y) = (x / SCALE, y / SCALE);
            let pixel = &crop.data[(crop_y * crop.width + crop_x) * 3..][..3];
            picture.data[(y * 2 * width + x) * 3..][..3].copy_from_slice(pixel);
            let value = heat.at(crop_x, crop_y, crop.width, crop.height).clamp(-1.0, 1.0);
            let (colour, strength) = match (heat.signed, value >= 0.0) {
                (false, _) | (true, true) => ([255.0, 0.0, 0.0], value.max(0.0)),
                (true, false) => ([0.0, 80.0, 255.0], -value),
            };
            let alpha = MOST_OPAQUE * strength;
            let tinted = &mut picture.data[(y * 2 * width + width + x) * 3..][..3];
            for ((out, &base), tint) in tinted.iter_mut().zip(pixel).zip(colour) {
                *out = ((1.0 - alpha) * f32::from(base) + alpha * tint).round() as u8;
            }
        }
    }
    picture
}
