//! Parity of a kernel backend (the GPU, or the host build of the same source) with the CPU reference: every
//! raw pixel format, many frame sizes including odd ones and padded strides, letterboxes of several scales and
//! rotated, scaled, partly off-frame crops, both layouts and channel orders. Tests only.

use super::abi::CropJob;
use super::Kernels;
use crate::frame::{Frame, PixelFormat};
use crate::manifest::{ChannelOrder, InputSpec, Layout};
use crate::preprocess::{cpu, normalise_into, Affine, Letterbox, RgbImage};
use crate::testing::XorShift;
use anyhow::{bail, Result};
use std::fmt::Write;

/// Frame sizes: tiny, odd in either direction, and camera sizes.
const SIZES: [(u32, u32); 9] =
    [(1, 1), (2, 2), (3, 5), (17, 9), (64, 48), (127, 95), (333, 211), (640, 480), (1281, 721)];

fn spec(width: usize, height: usize, layout: Layout, colour: ChannelOrder) -> InputSpec {
    let shape = match layout {
        Layout::Nhwc => [1, height, width, 3],
        Layout::Nchw => [1, 3, height, width],
    };
    InputSpec {
        name: "input".into(),
        shape,
        layout,
        colour,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    }
}

/// A rotated, scaled crop of about `side` pixels around a random point (sometimes partly off the frame).
fn random_crop(random: &mut XorShift, width: u32, height: u32, side: usize) -> Affine {
    let angle = (random.below(2000) as f32 / 1000.0 - 1.0) * 0.6;
    let face = (width.min(height) as f32) * (0.2 + random.below(1000) as f32 / 1000.0);
    let cx = random.below(width as usize + 1) as f32;
    let cy = random.below(height as usize + 1) as f32;
    Affine::square_crop(cx, cy, face / side as f32, angle, side)
}

/// Compares `actual` with the reference tensor in 8-bit steps (|Δ| · 255 · std); returns the largest, infinite
/// where a value is not a number (left unwritten: the outputs start as NaN).
fn steps_apart(actual: &[f32], expected: &[f32], spec: &InputSpec) -> f32 {
    let plane = actual.len() / 3;
    let channel_of = |index: usize| match spec.layout {
        Layout::Nhwc => index % 3,
        Layout::Nchw => index / plane.max(1),
    };
    actual
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(index, (a, e))| match (a - e).abs() * 255.0 * spec.std[channel_of(index)] {
            apart if apart.is_nan() => f32::INFINITY,
            apart => apart,
        })
        .fold(0.0, f32::max)
}

/// Runs every case through `kernels` and the reference; fails on the first case more than `tolerance` 8-bit
/// steps apart (0: bit for bit). Returns a summary.
pub fn check(kernels: &mut dyn Kernels, tolerance: f32) -> Result<String> {
    let mut random = XorShift(0x5eed_cafe_f00d_0001);
    let (mut cases, mut values, mut worst) = (0usize, 0usize, 0.0f32);
    let mut reference;
    for format in PixelFormat::RAW {
        for (width, height) in SIZES {
            for padding in [0usize, 7] {
                let stride = format.min_stride(width) + padding;
                let data = random.bytes(format.frame_bytes(stride, height));
                let frame = Frame::still(format, width, height, stride, &data, "parity");
                let context = format!("{} {width}x{height} stride {stride}", format.name());
                kernels.upload(&frame)?;
                // Letterboxes: the detector's 128 square, an odd non-square input, an upscale.
                for (input_w, input_h, layout, colour) in [
                    (128, 128, Layout::Nhwc, ChannelOrder::Rgb),
                    (37, 23, Layout::Nchw, ChannelOrder::Bgr),
                    (width as usize * 2 + 1, height as usize + 3, Layout::Nchw, ChannelOrder::Rgb),
                ] {
                    let spec = spec(input_w, input_h, layout, colour);
                    let map = Letterbox::fit(width, height, input_w, input_h).to_source_map();
                    reference = RgbImage::new(input_w, input_h);
                    cpu::warp(&frame, &map, &mut reference)?;
                    let mut expected = vec![0.0; input_w * input_h * 3];
                    normalise_into(&reference, &spec, &mut expected)?;
                    let mut actual = vec![f32::NAN; expected.len()];
                    kernels.letterbox(&map, &spec, &mut actual)?;
                    let apart = steps_apart(&actual, &expected, &spec);
                    if apart > tolerance {
                        bail!(
                            "{}: letterbox {context} → {input_w}x{input_h}: {apart} steps apart",
                            kernels.name()
                        );
                    }
                    worst = worst.max(apart);
                    cases += 1;
                    values += expected.len();
                }
                // Crops: three faces, each a classifier tensor and a quality RGB crop, in one launch.
                let spec = spec(112, 112, Layout::Nchw, ChannelOrder::Rgb);
                let jobs: Vec<CropJob> = (0..3)
                    .flat_map(|_| {
                        let map = random_crop(&mut random, width, height, 112);
                        let small = random_crop(&mut random, width, height, 31);
                        [
                            CropJob { map, width: 112, height: 112, rgb: false },
                            CropJob { map: small, width: 31, height: 31, rgb: true },
                        ]
                    })
                    .collect();
                let mut tensors = vec![f32::NAN; 3 * 112 * 112 * 3];
                let mut images = vec![0xA5u8; 3 * 31 * 31 * 3];
                kernels.crops(&jobs, &spec, &mut tensors, &mut images)?;
                let (mut floats, mut bytes) = (0, 0);
                for (index, job) in jobs.iter().enumerate() {
                    reference = RgbImage::new(job.width, job.height);
                    cpu::warp(&frame, &job.map, &mut reference)?;
                    let crop = format!("{context}, crop {index} ({:?})", job.map);
                    if job.rgb {
                        let actual = &images[bytes..bytes + reference.data.len()];
                        let apart = actual
                            .iter()
                            .zip(&reference.data)
                            .map(|(a, e)| a.abs_diff(*e) as f32)
                            .fold(0.0, f32::max);
                        if apart > tolerance {
                            bail!("{}: RGB {crop}: {apart} steps apart", kernels.name());
                        }
                        worst = worst.max(apart);
                        bytes += reference.data.len();
                    } else {
                        let mut expected = vec![0.0; reference.data.len()];
                        normalise_into(&reference, &spec, &mut expected)?;
                        let actual = &tensors[floats..floats + expected.len()];
                        let apart = steps_apart(actual, &expected, &spec);
                        if apart > tolerance {
                            bail!("{}: tensor {crop}: {apart} steps apart", kernels.name());
                        }
                        worst = worst.max(apart);
                        floats += expected.len();
                    }
                    values += reference.data.len();
                    cases += 1;
                }
            }
        }
    }
    let mut report = String::new();
    let _ = write!(
        report,
        "{}: {cases} outputs ({values} values) over {} formats and {} sizes; largest difference {worst} \
         8-bit steps (tolerance {tolerance})",
        kernels.name(),
        PixelFormat::RAW.len(),
        SIZES.len()
    );
    Ok(report)
}
