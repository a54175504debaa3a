//! Preprocessing: frame pixels → model inputs. The CPU implementation (`cpu`) is the reference every other
//! backend (the CUDA kernels) must match: `cpu::warp_definition` states the warp sample by sample, and
//! `cpu::Warper`, which the pipeline runs, computes the same products and sums in the same order with the work
//! shared between pixels, equal to it bit for bit (tested).
//!
//! The definition, which every backend follows exactly:
//! - Colour: YUYV, UYVY and NV12 are BT.601 limited range ("studio swing"), converted per source pixel with
//!   R = 1.164383 (Y−16) + 1.596027 (V−128), G = 1.164383 (Y−16) − 0.391762 (U−128) − 0.812968 (V−128),
//!   B = 1.164383 (Y−16) + 2.017232 (U−128), each clamped to [0, 255] (not rounded). Chroma is taken from the
//!   pixel's own 4:2:2 pair or 4:2:0 quad, without interpolation. GREY gives R = G = B.
//! - Geometry: an affine map from output to source in continuous pixel coordinates (pixel i covers [i, i+1)).
//!   Each output pixel averages n×n samples at the centres of its n×n sub-cells, where n = ceil(s) clamped to
//!   1..=MAX_TAPS and s = sqrt(|det|) is how many source pixels one output pixel spans (n = 1 is plain
//!   bilinear; n > 1 suppresses aliasing when shrinking a 1080p frame to 128 pixels). A sample outside the
//!   source contributes black; inside, it is bilinear between the four nearest pixel centres, edges clamped.
//!   The average is rounded half up to 8 bits.
//! - Normalisation: value = (pixel / 255 − mean) / std per channel, in the model's channel order and layout.

pub mod cpu;
pub mod cuda;
pub mod work;

use crate::manifest::{ChannelOrder, InputSpec, Layout};
use anyhow::{ensure, Result};

/// Where the pixel work (colour conversion, letterbox, face crops) runs (the board's `[runtime] backend`).
#[derive(Clone, Copy, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Always the CPU; the GPU is never touched.
    Cpu,
    /// The GPU when one is usable (driver, NVRTC, a device), else the CPU, said once in the log.
    Auto,
    /// The GPU is expected (a Jetson): as `auto`, but running without it is a fault the controller is told
    /// (`gpu_lost`), at start as when the GPU fails during the run.
    Cuda,
}

/// Most samples per axis an output pixel averages.
pub const MAX_TAPS: u32 = 4;

/// An 8-bit RGB image with tight rows, owned by the pipeline and reused frame after frame.
#[derive(Clone, Debug, Default)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize) -> RgbImage {
        RgbImage { width, height, data: vec![0; width * height * 3] }
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let index = (y * self.width + x) * 3;
        [self.data[index], self.data[index + 1], self.data[index + 2]]
    }
}

/// An affine map from output pixel coordinates to source pixel coordinates:
/// source = [a b; c d] · output + [tx ty]. `repr(C)`: the CUDA kernels take it as their `DgMap` (warp.cuh).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Affine {
    pub a: f32,
    pub b: f32,
    pub c: f32,
    pub d: f32,
    pub tx: f32,
    pub ty: f32,
}

impl Affine {
    pub fn apply(&self, x: f32, y: f32) -> (f32, f32) {
        (self.a * x + self.b * y + self.tx, self.c * x + self.d * y + self.ty)
    }

    /// The map of a `side`-pixel square crop centred on source point (`cx`, `cy`), rotated by `angle`
    /// radians, each crop pixel spanning `scale` source pixels (for tests and benchmarks; real face crops
    /// come from the alignment).
    pub fn square_crop(cx: f32, cy: f32, scale: f32, angle: f32, side: usize) -> Affine {
        let (sin, cos) = angle.sin_cos();
        let half = side as f32 / 2.0;
        Affine {
            a: scale * cos,
            b: -scale * sin,
            c: scale * sin,
            d: scale * cos,
            tx: cx - scale * (cos * half - sin * half),
            ty: cy - scale * (sin * half + cos * half),
        }
    }

    /// Samples per axis each output pixel averages (see the module documentation).
    pub fn taps(&self) -> u32 {
        let span = (self.a * self.d - self.b * self.c).abs().sqrt();
        // The small tolerance keeps an exact 2:1 shrink at 2 taps despite rounding in the map.
        let taps = (span - 1e-3).ceil();
        if taps.is_finite() {
            (taps as u32).clamp(1, MAX_TAPS)
        } else {
            1
        }
    }
}

/// How a frame was fitted into a square model input: scaled by `scale`, then shifted by the offsets
/// (in input pixels) so the unused border is split evenly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub offset_x: f32,
    pub offset_y: f32,
}

impl Letterbox {
    pub fn fit(source_width: u32, source_height: u32, input_width: usize, input_height: usize) -> Letterbox {
        let scale =
            (input_width as f32 / source_width as f32).min(input_height as f32 / source_height as f32);
        Letterbox {
            scale,
            offset_x: (input_width as f32 - source_width as f32 * scale) / 2.0,
            offset_y: (input_height as f32 - source_height as f32 * scale) / 2.0,
        }
    }

    /// The map from input pixels to source pixels, for the warp.
    pub fn to_source_map(&self) -> Affine {
        Affine {
            a: 1.0 / self.scale,
            b: 0.0,
            c: 0.0,
            d: 1.0 / self.scale,
            tx: -self.offset_x / self.scale,
            ty: -self.offset_y / self.scale,
        }
    }

    /// A point in input pixels → the same point in source pixels.
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        ((x - self.offset_x) / self.scale, (y - self.offset_y) / self.scale)
    }
}

/// Writes `image` into `out` as the model input `spec` describes (channel order, layout, normalisation).
pub fn normalise_into(image: &RgbImage, spec: &InputSpec, out: &mut [f32]) -> Result<()> {
    let (width, height) = spec.image_size();
    ensure!(
        image.width == width && image.height == height && out.len() == width * height * 3,
        "input image {}x{} does not fit model input {:?} (tensor of {} values)",
        image.width,
        image.height,
        spec.shape,
        out.len()
    );
    let channel_of = |channel: usize| match spec.colour {
        ChannelOrder::Rgb => channel,
        ChannelOrder::Bgr => 2 - channel,
    };
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * spec.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| spec.mean[c] / spec.std[c]);
    let plane = width * height;
    let source: [usize; 3] = std::array::from_fn(channel_of);
    // The same value per channel either way; the layout only decides where it goes, so it is matched once
    // per call rather than per value, and each loop is a straight pass the compiler vectorises.
    match spec.layout {
        Layout::Nhwc => {
            for (pixel, values) in image.data.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
                for channel in 0..3 {
                    values[channel] = pixel[source[channel]] as f32 * scale[channel] - shift[channel];
                }
            }
        }
        Layout::Nchw => {
            for (channel, values) in out.chunks_exact_mut(plane).enumerate() {
                let (from, scale, shift) = (source[channel], scale[channel], shift[channel]);
                for (value, pixel) in values.iter_mut().zip(image.data.chunks_exact(3)) {
                    *value = pixel[from] as f32 * scale - shift;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDTH: usize = 3;
    const HEIGHT: usize = 2;
    /// Per channel in the model's channel order (ImageNet statistics, the common case).
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];

    fn spec(layout: Layout, colour: ChannelOrder) -> InputSpec {
        let shape = match layout {
            Layout::Nhwc => [1, HEIGHT, WIDTH, 3],
            Layout::Nchw => [1, 3, HEIGHT, WIDTH],
        };
        InputSpec { name: "input".to_string(), shape, layout, colour, mean: MEAN, std: STD }
    }

    /// A 3x2 image whose every byte differs, covering 0 and 255, so any misplaced value is noticed.
    fn image() -> RgbImage {
        let data = vec![0, 255, 17, 34, 51, 68, 85, 102, 119, 136, 153, 170, 187, 204, 221, 238, 1, 128];
        RgbImage { width: WIDTH, height: HEIGHT, data }
    }

    #[test]
    fn normalise_places_channels_by_layout_and_order() {
        let image = image();
        for layout in [Layout::Nhwc, Layout::Nchw] {
            for colour in [ChannelOrder::Rgb, ChannelOrder::Bgr] {
                let mut out = vec![f32::NAN; WIDTH * HEIGHT * 3];
                normalise_into(&image, &spec(layout, colour), &mut out).unwrap();
                for y in 0..HEIGHT {
                    for x in 0..WIDTH {
                        let rgb = image.pixel(x, y);
                        for channel in 0..3 {
                            let pixel = match colour {
                                ChannelOrder::Rgb => rgb[channel],
                                ChannelOrder::Bgr => rgb[2 - channel],
                            };
                            let index = match layout {
                                Layout::Nhwc => (y * WIDTH + x) * 3 + channel,
                                Layout::Nchw => channel * WIDTH * HEIGHT + y * WIDTH + x,
                            };
                            let expected =
                                (pixel as f64 / 255.0 - MEAN[channel] as f64) / STD[channel] as f64;
                            assert!(
                                (out[index] as f64 - expected).abs() < 1e-6,
                                "{layout:?} {colour:?} pixel ({x}, {y}) channel {channel}: {} != {expected}",
                                out[index]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn normalise_with_zero_mean_and_unit_std_is_pixel_over_255() {
        let spec = InputSpec { mean: [0.0; 3], std: [1.0; 3], ..spec(Layout::Nhwc, ChannelOrder::Rgb) };
        let image = image();
        let mut out = vec![0.0; WIDTH * HEIGHT * 3];
        normalise_into(&image, &spec, &mut out).unwrap();
        for (value, pixel) in out.iter().zip(&image.data) {
            assert!((value - *pixel as f32 / 255.0).abs() < 1e-6, "{value} for pixel {pixel}");
        }
        assert_eq!((out[0], out[1]), (0.0, 1.0));
    }

    #[test]
    fn normalise_refuses_sizes_that_do_not_match_the_model() {
        let image = image();
        for layout in [Layout::Nhwc, Layout::Nchw] {
            let spec = spec(layout, ChannelOrder::Rgb);
            let mut short = vec![0.0; WIDTH * HEIGHT * 3 - 1];
            assert!(normalise_into(&image, &spec, &mut short).is_err(), "{layout:?}: tensor one value short");
            let mut long = vec![0.0; WIDTH * HEIGHT * 3 + 1];
            assert!(normalise_into(&image, &spec, &mut long).is_err(), "{layout:?}: tensor one value long");
            // Same pixel count, transposed: width and height must not be confused.
            let transposed = RgbImage { width: HEIGHT, height: WIDTH, data: image.data.clone() };
            let mut out = vec![0.0; WIDTH * HEIGHT * 3];
            assert!(normalise_into(&transposed, &spec, &mut out).is_err(), "{layout:?}: transposed image");
            assert!(normalise_into(&RgbImage::new(1, 1), &spec, &mut out).is_err(), "{layout:?}: 1x1 image");
        }
    }
}
