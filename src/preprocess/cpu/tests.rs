//! The CPU reference checked against the preprocessing definition: colour conversion per pixel format, the
//! letterbox, supersampling, rotated maps, refusals and the axis-aligned fast path.

use super::pixels::yuv_to_rgb_fast;
use super::*;
use crate::preprocess::{Letterbox, MAX_TAPS};

use crate::testing::XorShift;

fn frame(format: PixelFormat, width: u32, height: u32, stride: usize, data: &[u8]) -> Frame<'_> {
    Frame::still(format, width, height, stride, data, "test")
}

fn identity() -> Affine {
    Affine { a: 1.0, b: 0.0, c: 0.0, d: 1.0, tx: 0.0, ty: 0.0 }
}

fn scaling(scale: f32) -> Affine {
    Affine { a: scale, b: 0.0, c: 0.0, d: scale, tx: 0.0, ty: 0.0 }
}

/// The module documentation's BT.601 limited-range formula, written out again in f64 and clamped.
fn bt601(y: u8, u: u8, v: u8) -> [f64; 3] {
    let luma = 1.164383 * (y as f64 - 16.0);
    let u = u as f64 - 128.0;
    let v = v as f64 - 128.0;
    [luma + 1.596027 * v, luma - 0.391762 * u - 0.812968 * v, luma + 2.017232 * u]
        .map(|value| value.clamp(0.0, 255.0))
}

/// Checks that `actual` is `exact` rounded half up. Within `tie` of a half, f32 arithmetic cannot tell
/// which way the exact value rounds, so either neighbour is accepted there.
fn assert_rounded(actual: u8, exact: f64, tie: f64, context: &str) {
    let rounded = (exact + 0.5).floor();
    if ((exact - exact.floor()) - 0.5).abs() < tie {
        assert!(
            actual as f64 == exact.floor() || actual as f64 == exact.floor() + 1.0,
            "{context}: {actual} is neither rounding of {exact}"
        );
    } else {
        assert_eq!(actual as f64, rounded, "{context}: {exact} should round to {rounded}");
    }
}

/// Sizes with odd widths and heights, single rows and single columns.
const SIZES: [(u32, u32); 10] =
    [(1, 1), (1, 9), (9, 1), (2, 2), (3, 2), (7, 5), (33, 4), (4, 33), (16, 16), (1, 33)];

#[test]
fn identity_warp_returns_packed_and_grey_pixels_unchanged() {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut out = RgbImage::new(1, 1);
    for format in [PixelFormat::Rgb24, PixelFormat::Bgr24, PixelFormat::Grey] {
        for (width, height) in SIZES {
            for padding in [0, 1, 5, 64] {
                let stride = format.min_stride(width) + padding;
                // Every byte, padding and trailing bytes included, is random: a padding byte that leaks
                // into the output shows up as a wrong pixel.
                let data = random.bytes(stride * height as usize + padding);
                let source = frame(format, width, height, stride, &data);
                to_rgb(&source, &mut out).unwrap();
                assert_eq!((out.width, out.height), (width as usize, height as usize));
                for y in 0..height as usize {
                    for x in 0..width as usize {
                        let row = &data[y * stride..];
                        let expected = match format {
                            PixelFormat::Rgb24 => [row[x * 3], row[x * 3 + 1], row[x * 3 + 2]],
                            PixelFormat::Bgr24 => [row[x * 3 + 2], row[x * 3 + 1], row[x * 3]],
                            _ => [row[x]; 3],
                        };
                        assert_eq!(
                            out.pixel(x, y),
                            expected,
                            "{} {width}x{height} stride {stride} at ({x}, {y})",
                            format.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn identity_warp_overwrites_every_output_byte() {
    let data = [10, 20, 30, 40, 50, 60];
    let source = frame(PixelFormat::Rgb24, 2, 1, 6, &data);
    let mut out = RgbImage { width: 2, height: 1, data: vec![0xAB; 6] };
    to_rgb(&source, &mut out).unwrap();
    assert_eq!(out.data, data);
}

/// Y, U and V samples of a test picture: `luma(x, y)` per pixel and `chroma(pair, row)` per U V pair,
/// where `row` is the pixel row for 4:2:2 and half of it for 4:2:0.
struct Samples<'a> {
    width: usize,
    height: usize,
    luma: &'a dyn Fn(usize, usize) -> u8,
    chroma: &'a dyn Fn(usize, usize) -> (u8, u8),
}

impl Samples<'_> {
    /// The U V pair pixel (x, y) uses in `format`.
    fn chroma_of(&self, format: PixelFormat, x: usize, y: usize) -> (u8, u8) {
        match format {
            PixelFormat::Nv12 => (self.chroma)(x / 2, y / 2),
            _ => (self.chroma)(x / 2, y),
        }
    }

    /// Packs the samples as `format` with `padding` extra bytes per row, every unused byte random.
    fn pack(&self, format: PixelFormat, padding: usize, random: &mut XorShift) -> (Vec<u8>, usize) {
        let stride = format.min_stride(self.width as u32) + padding;
        let mut data = random.bytes(format.frame_bytes(stride, self.height as u32) + padding);
        let pairs = self.width.div_ceil(2);
        for y in 0..self.height {
            for pair in 0..pairs {
                let (u, v) = self.chroma_of(format, pair * 2, y);
                let first = (self.luma)(pair * 2, y);
                // The second Y of an odd width's last pair lies beyond the picture: left random.
                let second = (pair * 2 + 1 < self.width).then(|| (self.luma)(pair * 2 + 1, y));
                let at = y * stride + pair * 4;
                match format {
                    PixelFormat::Yuyv => {
                        data[at] = first;
                        data[at + 1] = u;
                        data[at + 3] = v;
                        if let Some(second) = second {
                            data[at + 2] = second;
                        }
                    }
                    PixelFormat::Uyvy => {
                        data[at] = u;
                        data[at + 1] = first;
                        data[at + 2] = v;
                        if let Some(second) = second {
                            data[at + 3] = second;
                        }
                    }
                    PixelFormat::Nv12 => {
                        data[y * stride + pair * 2] = first;
                        if let Some(second) = second {
                            data[y * stride + pair * 2 + 1] = second;
                        }
                        let chroma = stride * self.height + (y / 2) * stride + pair * 2;
                        data[chroma] = u;
                        data[chroma + 1] = v;
                    }
                    _ => unreachable!("not a YUV format"),
                }
            }
        }
        (data, stride)
    }

    /// Converts the packed samples with `to_rgb` and checks every pixel against the formula.
    fn check(&self, format: PixelFormat, padding: usize, random: &mut XorShift) {
        let (data, stride) = self.pack(format, padding, random);
        let source = frame(format, self.width as u32, self.height as u32, stride, &data);
        let mut out = RgbImage::default();
        to_rgb(&source, &mut out).unwrap();
        for y in 0..self.height {
            for x in 0..self.width {
                let (u, v) = self.chroma_of(format, x, y);
                let luma = (self.luma)(x, y);
                let exact = bt601(luma, u, v);
                let actual = out.pixel(x, y);
                for channel in 0..3 {
                    let context = format!(
                        "{} {}x{} stride {stride} at ({x}, {y}) Y {luma} U {u} V {v} channel {channel}",
                        format.name(),
                        self.width,
                        self.height
                    );
                    assert_rounded(actual[channel], exact[channel], 1e-4, &context);
                }
            }
        }
    }
}

const YUV_FORMATS: [PixelFormat; 3] = [PixelFormat::Yuyv, PixelFormat::Uyvy, PixelFormat::Nv12];

#[test]
fn yuv_frames_convert_with_the_bt601_limited_range_formula() {
    let mut random = XorShift(0x2545_f491_4f6c_dd1d);
    for format in YUV_FORMATS {
        for (width, height) in SIZES {
            for padding in [0, 2, 7] {
                let luma_values = random.bytes((width * height) as usize);
                let chroma_values = random.bytes((width * height * 2) as usize);
                let samples = Samples {
                    width: width as usize,
                    height: height as usize,
                    luma: &|x, y| luma_values[y * width as usize + x],
                    chroma: &|pair, row| {
                        let at = (row * width as usize + pair) * 2;
                        (chroma_values[at], chroma_values[at + 1])
                    },
                };
                samples.check(format, padding, &mut random);
            }
        }
    }
}

#[test]
fn yuv_conversion_covers_every_luma_and_extreme_chroma() {
    // Chroma values at and around the limits of the studio range and of the byte.
    const CHROMA: [u8; 16] = [0, 1, 15, 16, 17, 64, 100, 127, 128, 129, 160, 200, 239, 240, 241, 255];
    let mut random = XorShift(0xd1b5_4a32_d192_ed03);
    // Width 257: every Y value in each row, and an odd last pixel.
    let samples = Samples {
        width: 257,
        height: CHROMA.len() * CHROMA.len(),
        luma: &|x, _| (x % 256) as u8,
        chroma: &|_, row| (CHROMA[row % 16], CHROMA[(row / 16) % 16]),
    };
    samples.check(PixelFormat::Yuyv, 4, &mut random);
    samples.check(PixelFormat::Uyvy, 0, &mut random);
    // NV12 shares chroma between row pairs; double the rows so each chroma pair still meets every Y.
    let samples = Samples { height: samples.height * 2, ..samples };
    samples.check(PixelFormat::Nv12, 3, &mut random);
}

#[test]
fn yuv_formats_with_the_same_samples_give_identical_rgb() {
    let mut random = XorShift(0x1234_5678_9abc_def1);
    for (width, height) in [(1, 1), (7, 5), (33, 9), (2, 3), (64, 31)] {
        let luma_values = random.bytes(width * height);
        let chroma_values = random.bytes(width.div_ceil(2) * height.div_ceil(2) * 2);
        // 4:2:0 content: the 4:2:2 formats repeat each chroma row for the two pixel rows it covers.
        let samples = Samples {
            width,
            height,
            luma: &|x, y| luma_values[y * width + x],
            chroma: &|pair, row| {
                let at = (row * width.div_ceil(2) + pair) * 2;
                (chroma_values[at], chroma_values[at + 1])
            },
        };
        let halved = |pair, row: usize| (samples.chroma)(pair, row / 2);
        let packed = Samples { chroma: &halved, ..samples };
        let mut images = Vec::new();
        for (format, padding) in [(PixelFormat::Yuyv, 3), (PixelFormat::Uyvy, 0), (PixelFormat::Nv12, 5)] {
            let layout = if format == PixelFormat::Nv12 { &samples } else { &packed };
            let (data, stride) = layout.pack(format, padding, &mut random);
            let mut out = RgbImage::default();
            to_rgb(&frame(format, width as u32, height as u32, stride, &data), &mut out).unwrap();
            images.push(out.data);
        }
        assert_eq!(images[0], images[1], "YUYV and UYVY differ at {width}x{height}");
        assert_eq!(images[0], images[2], "YUYV and NV12 differ at {width}x{height}");
    }
}

#[test]
fn letterbox_fits_640x480_into_128_with_16_rows_of_padding() {
    let letterbox = Letterbox::fit(640, 480, 128, 128);
    assert!((letterbox.scale - 0.2).abs() < 1e-6, "{letterbox:?}");
    assert!(letterbox.offset_x.abs() < 1e-4 && (letterbox.offset_y - 16.0).abs() < 1e-4, "{letterbox:?}");
    // Portrait: the padding moves to the columns.
    let portrait = Letterbox::fit(480, 640, 128, 128);
    assert!((portrait.offset_x - 16.0).abs() < 1e-4 && portrait.offset_y.abs() < 1e-4, "{portrait:?}");
    // The corners of the content region in input pixels are the corners of the source.
    let map = letterbox.to_source_map();
    for ((x, y), expected) in
        [((0.0, 16.0), (0.0, 0.0)), ((128.0, 112.0), (640.0, 480.0)), ((128.0, 16.0), (640.0, 0.0))]
    {
        for (actual_x, actual_y) in [letterbox.to_source(x, y), map.apply(x, y)] {
            assert!(
                (actual_x - expected.0).abs() < 1e-3 && (actual_y - expected.1).abs() < 1e-3,
                "({x}, {y}) maps to ({actual_x}, {actual_y}), expected {expected:?}"
            );
        }
    }
}

#[test]
fn letterbox_warp_is_black_in_the_padding_and_content_elsewhere() {
    let mut random = XorShift(0xa076_1d64_78bd_642f);
    // Source values of at least 60: any average of them is far from black.
    let data: Vec<u8> = (0..640 * 480 * 3).map(|_| 60 + random.byte() % 196).collect();
    let source = frame(PixelFormat::Rgb24, 640, 480, 640 * 3, &data);
    let map = Letterbox::fit(640, 480, 128, 128).to_source_map();
    let mut out = RgbImage::new(128, 128);
    warp(&source, &map, &mut out).unwrap();
    for y in 0..128 {
        for x in 0..128 {
            let pixel = out.pixel(x, y);
            if (16..112).contains(&y) {
                assert!(pixel.iter().all(|&value| value >= 60), "content pixel ({x}, {y}) is {pixel:?}");
            } else {
                assert_eq!(pixel, [0, 0, 0], "padding pixel ({x}, {y})");
            }
        }
    }
}

#[test]
fn uniform_grey_letterboxes_to_the_same_grey_and_black_around_it() {
    const GREY: u8 = 137;
    const INPUT: usize = 128;
    for (width, height) in [(1920, 1080), (1080, 1920), (7, 5), (1, 1), (8000, 6000), (640, 480), (3, 1000)] {
        let data = vec![GREY; width as usize * height as usize];
        let source = frame(PixelFormat::Grey, width, height, width as usize, &data);
        let letterbox = Letterbox::fit(width, height, INPUT, INPUT);
        let mut out = RgbImage::new(INPUT, INPUT);
        warp(&source, &letterbox.to_source_map(), &mut out).unwrap();
        // The content region in input pixels; a pixel wholly inside is grey, one wholly outside is black,
        // one across its edge is a blend and is not checked.
        let left = letterbox.offset_x;
        let right = left + width as f32 * letterbox.scale;
        let top = letterbox.offset_y;
        let bottom = top + height as f32 * letterbox.scale;
        let slack = 1e-3;
        let inside =
            |low: usize, start: f32, end: f32| low as f32 >= start - slack && (low + 1) as f32 <= end + slack;
        let outside =
            |low: usize, start: f32, end: f32| (low + 1) as f32 <= start + slack || low as f32 >= end - slack;
        let mut grey_pixels = 0;
        for y in 0..INPUT {
            for x in 0..INPUT {
                let pixel = out.pixel(x, y);
                if inside(x, left, right) && inside(y, top, bottom) {
                    assert_eq!(pixel, [GREY; 3], "{width}x{height}: content pixel ({x}, {y})");
                    grey_pixels += 1;
                } else if outside(x, left, right) || outside(y, top, bottom) {
                    assert_eq!(pixel, [0; 3], "{width}x{height}: padding pixel ({x}, {y})");
                }
            }
        }
        let expected = (right - left).floor() * (bottom - top).floor();
        assert!(grey_pixels as f32 >= expected - 2.0 * INPUT as f32, "{width}x{height}: {grey_pixels} grey");
    }
}

#[test]
fn taps_grow_with_the_shrink_factor_up_to_the_maximum() {
    for (scale, taps) in [(1.0, 1), (2.0, 2), (10.0, MAX_TAPS), (0.5, 1), (3.0, 3), (2.5, 3), (1.01, 2)] {
        assert_eq!(scaling(scale).taps(), taps, "scale {scale}");
    }
    // The span is the area factor: a 4:1 squeeze along one axis spans 2 pixels.
    assert_eq!(Affine { a: 4.0, d: 1.0, ..scaling(0.0) }.taps(), 2);
    // A rotation by 30 degrees with scale 2 still spans 2 pixels; a mirror counts as its unmirrored map.
    let (sin, cos) = 30f32.to_radians().sin_cos();
    let rotated = Affine { a: 2.0 * cos, b: -2.0 * sin, c: 2.0 * sin, d: 2.0 * cos, tx: 5.0, ty: -3.0 };
    assert_eq!(rotated.taps(), 2);
    assert_eq!(Affine { a: -3.0, ..scaling(3.0) }.taps(), 3);
    assert_eq!(Affine { a: f32::NAN, ..identity() }.taps(), 1);
    assert_eq!(scaling(f32::INFINITY).taps(), 1);
}

#[test]
fn shrinking_by_an_exact_factor_averages_each_block() {
    let mut random = XorShift(0x5851_f42d_4c95_7f2d);
    for factor in [2usize, 3, 4, 8] {
        let (out_width, out_height) = (5, 3);
        let (width, height) = (out_width * factor, out_height * factor);
        let data = random.bytes(width * height * 3);
        let source = frame(PixelFormat::Rgb24, width as u32, height as u32, width * 3, &data);
        let mut out = RgbImage::new(out_width, out_height);
        warp(&source, &scaling(factor as f32), &mut out).unwrap();
        let count = factor * factor;
        for y in 0..out_height {
            for x in 0..out_width {
                for channel in 0..3 {
                    let mut sum = 0;
                    for dy in 0..factor {
                        for dx in 0..factor {
                            sum += data[((y * factor + dy) * width + x * factor + dx) * 3 + channel] as usize;
                        }
                    }
                    // The block mean, rounded half up, in integers.
                    let expected = (2 * sum + count) / (2 * count);
                    assert_eq!(
                        out.pixel(x, y)[channel] as usize,
                        expected,
                        "factor {factor}, block ({x}, {y}), channel {channel}"
                    );
                }
            }
        }
    }
    // A checkerboard of 2x2 blocks shrunk 2:1 keeps its blocks; shrunk 4:1 it becomes their average.
    let board: Vec<u8> =
        (0..8 * 8).map(|i| if ((i % 8) / 2 + (i / 8) / 2) % 2 == 0 { 255 } else { 0 }).collect();
    let source = frame(PixelFormat::Grey, 8, 8, 8, &board);
    let mut half = RgbImage::new(4, 4);
    warp(&source, &scaling(2.0), &mut half).unwrap();
    for y in 0..4 {
        for x in 0..4 {
            assert_eq!(half.pixel(x, y), [if (x + y) % 2 == 0 { 255 } else { 0 }; 3], "2:1 at ({x}, {y})");
        }
    }
    let mut quarter = RgbImage::new(2, 2);
    warp(&source, &scaling(4.0), &mut quarter).unwrap();
    assert!(quarter.data.iter().all(|&value| value == 128), "{:?}", quarter.data);
}

/// The warp of the module documentation, written out again in f64: the unrounded average of each output
/// pixel, or None where a sample lies so close to the source's edge that f32 may place it on either side.
fn reference_warp(
    pixels: &[u8],
    width: usize,
    height: usize,
    map: &Affine,
    out_width: usize,
    out_height: usize,
) -> Vec<Option<[f64; 3]>> {
    let taps = map.taps() as usize;
    let pixel = |x: usize, y: usize| -> [f64; 3] {
        std::array::from_fn(|channel| pixels[(y * width + x) * 3 + channel] as f64)
    };
    let mut result = Vec::new();
    for row in 0..out_height {
        for column in 0..out_width {
            let mut sum = [0.0; 3];
            let mut ambiguous = false;
            for j in 0..taps {
                for i in 0..taps {
                    let u = column as f64 + (i as f64 + 0.5) / taps as f64;
                    let v = row as f64 + (j as f64 + 0.5) / taps as f64;
                    let sx = map.a as f64 * u + map.b as f64 * v + map.tx as f64;
                    let sy = map.c as f64 * u + map.d as f64 * v + map.ty as f64;
                    let near = |value: f64, limit: f64| value.abs() < 1e-3 || (value - limit).abs() < 1e-3;
                    ambiguous |= near(sx, width as f64) || near(sy, height as f64);
                    if !(0.0..width as f64).contains(&sx) || !(0.0..height as f64).contains(&sy) {
                        continue;
                    }
                    let (x, y) = (sx - 0.5, sy - 0.5);
                    let (fx, fy) = (x - x.floor(), y - y.floor());
                    let clamp_x = |value: f64| value.clamp(0.0, (width - 1) as f64) as usize;
                    let clamp_y = |value: f64| value.clamp(0.0, (height - 1) as f64) as usize;
                    let (x0, x1) = (clamp_x(x.floor()), clamp_x(x.floor() + 1.0));
                    let (y0, y1) = (clamp_y(y.floor()), clamp_y(y.floor() + 1.0));
                    let (p00, p10, p01, p11) = (pixel(x0, y0), pixel(x1, y0), pixel(x0, y1), pixel(x1, y1));
                    for channel in 0..3 {
                        let top = p00[channel] * (1.0 - fx) + p10[channel] * fx;
                        let bottom = p01[channel] * (1.0 - fx) + p11[channel] * fx;
                        sum[channel] += top * (1.0 - fy) + bottom * fy;
                    }
                }
            }
            result.push((!ambiguous).then(|| sum.map(|value| value / (taps * taps) as f64)));
        }
    }
    result
}

#[test]
fn warp_matches_the_definition_for_rotated_and_scaled_maps() {
    let mut random = XorShift(0x0123_4567_89ab_cdef);
    let (width, height) = (37, 29);
    let data = random.bytes(width * height * 3);
    let source = frame(PixelFormat::Rgb24, width as u32, height as u32, width * 3, &data);
    // Scales on both sides of 1 (1 to 4 taps), rotations, mirrors, and maps partly outside the source.
    for (scale, degrees, mirror, shift) in [
        (0.37, 0.0, false, (3.3, 4.1)),
        (0.8, 17.0, false, (10.0, -2.0)),
        (1.3, -40.0, true, (20.0, 5.0)),
        (1.7, 90.0, false, (30.0, 0.5)),
        (2.6, 200.0, false, (36.0, 28.0)),
        (3.4, 5.0, true, (-4.0, -6.0)),
        (5.5, 33.0, false, (2.0, 1.0)),
    ] {
        let (sin, cos) = (degrees as f32).to_radians().sin_cos();
        let flip = if mirror { -1.0 } else { 1.0 };
        let map = Affine {
            a: scale * cos * flip,
            b: -scale * sin,
            c: scale * sin * flip,
            d: scale * cos,
            tx: shift.0,
            ty: shift.1,
        };
        let (out_width, out_height) = (23, 19);
        let mut out = RgbImage::new(out_width, out_height);
        warp(&source, &map, &mut out).unwrap();
        let expected = reference_warp(&data, width, height, &map, out_width, out_height);
        let mut checked = 0;
        for (index, expected) in expected.iter().enumerate() {
            let Some(expected) = expected else { continue };
            for (channel, &exact) in expected.iter().enumerate() {
                let context = format!("map {map:?} pixel {index} channel {channel}");
                assert_rounded(out.data[index * 3 + channel], exact, 1e-2, &context);
            }
            checked += 1;
        }
        assert!(checked > out_width * out_height * 9 / 10, "{map:?}: only {checked} pixels checked");
    }
}

#[test]
fn warp_refuses_what_it_cannot_convert_without_panicking() {
    let data = vec![7u8; 4 * 4 * 3];
    let mut out = RgbImage::new(2, 2);
    let jpeg = frame(PixelFormat::Mjpeg, 4, 4, 0, &data);
    assert!(warp(&jpeg, &identity(), &mut out).is_err(), "MJPEG must be decoded first");
    let good = frame(PixelFormat::Rgb24, 4, 4, 12, &data);
    let mut short = RgbImage { width: 2, height: 2, data: vec![0; 11] };
    assert!(warp(&good, &identity(), &mut short).is_err(), "output buffer one byte short");
    let mut long = RgbImage { width: 2, height: 2, data: vec![0; 13] };
    assert!(warp(&good, &identity(), &mut long).is_err(), "output buffer one byte long");
    let truncated = frame(PixelFormat::Rgb24, 4, 4, 12, &data[..data.len() - 1]);
    assert!(warp(&truncated, &identity(), &mut out).is_err(), "frame buffer one byte short");
    let narrow = frame(PixelFormat::Rgb24, 4, 4, 11, &data);
    assert!(warp(&narrow, &identity(), &mut out).is_err(), "stride below a row");
    let nv12 = frame(PixelFormat::Nv12, 4, 3, 4, &data[..4 * 3 + 4]);
    assert!(warp(&nv12, &identity(), &mut out).is_err(), "NV12 missing its last chroma row");
    let empty = frame(PixelFormat::Grey, 0, 4, 0, &data);
    assert!(warp(&empty, &identity(), &mut out).is_err(), "zero-width frame");
    // An output with no pixels is refused rather than panicking on a zero-length row.
    let mut no_pixels = RgbImage::new(0, 2);
    assert!(warp(&good, &identity(), &mut no_pixels).is_err(), "zero-width output");
    // `to_rgb` sizes its output itself but must still refuse a bad frame.
    assert!(to_rgb(&truncated, &mut out).is_err());
}

#[test]
fn maps_outside_the_source_or_not_a_number_give_black() {
    let data = vec![200u8; 6 * 5 * 3];
    let source = frame(PixelFormat::Rgb24, 6, 5, 18, &data);
    for map in [
        Affine { tx: 100.0, ..identity() },
        Affine { ty: -100.0, ..identity() },
        Affine { tx: -6.0, ..scaling(0.5) },
        Affine { tx: 1e30, ty: 1e30, ..scaling(10.0) },
        Affine { a: f32::NAN, ..identity() },
        Affine { tx: f32::NAN, ty: f32::NAN, ..identity() },
        Affine { tx: f32::INFINITY, ..scaling(3.0) },
        scaling(f32::NAN),
    ] {
        let mut out = RgbImage { width: 8, height: 8, data: vec![0xAB; 8 * 8 * 3] };
        warp(&source, &map, &mut out).unwrap();
        assert!(out.data.iter().all(|&value| value == 0), "{map:?} left {:?}", &out.data[..6]);
    }
}

#[test]
fn a_sample_on_the_far_edge_of_the_source_is_outside() {
    // Pixel i covers [i, i+1): a 6x5 source covers [0, 6) x [0, 5), so x = 6 or y = 5 is outside.
    let data = vec![200u8; 6 * 5 * 3];
    let source = frame(PixelFormat::Rgb24, 6, 5, 18, &data);
    let mut out = RgbImage::new(1, 1);
    // The single sample of output pixel (0, 0) lies at (0.5, 0.5) + the shift.
    for (tx, ty, expected) in
        [(5.5, 0.0, 0), (0.0, 4.5, 0), (5.49, 4.49, 200), (-0.5, -0.5, 200), (-0.51, 0.0, 0)]
    {
        warp(&source, &Affine { tx, ty, ..identity() }, &mut out).unwrap();
        assert_eq!(out.pixel(0, 0), [expected; 3], "shift ({tx}, {ty})");
    }
}

#[test]
fn the_fast_warp_equals_the_definition_bit_for_bit() {
    let mut random = XorShift(0x5eed_1234_abcd_0001);
    // One warper for every case: what it keeps from one call must never leak into the next.
    let mut warper = Warper::default();
    for (width, height) in [(1u32, 1u32), (7, 5), (33, 20), (640, 480), (97, 301)] {
        for format in PixelFormat::RAW {
            let stride = format.min_stride(width) + 3;
            let data = random.bytes(format.frame_bytes(stride, height));
            let source = frame(format, width, height, stride, &data);
            let mut maps = Vec::new();
            // Axis-aligned: shrinks of 1 to 4 taps, upscales, shifts partly off the source.
            for (output, scale, tx, ty) in [
                (16usize, 0.3f32, -2.0f32, 3.5f32),
                (64, 1.0, 0.0, 0.0),
                (128, 9.7, -30.25, 12.0),
                (40, 2.0, 0.5, -0.5),
                (128, 5.0, -64.0, 0.0),
                (112, 1.7, 3.0, -9.0),
            ] {
                maps.push((output, Affine { a: scale, b: 0.0, c: 0.0, d: scale * 0.75, tx, ty }));
            }
            // Rotated crops of several sizes and places, some partly or wholly off the frame.
            for _ in 0..6 {
                let side = [7, 23, 112][random.below(3)];
                let angle = (random.below(2000) as f32 / 1000.0 - 1.0) * 1.2;
                let face = (width.min(height) as f32) * (0.1 + random.below(1500) as f32 / 1000.0);
                let cx = random.below(width as usize * 2 + 1) as f32 - width as f32 / 2.0;
                let cy = random.below(height as usize * 2 + 1) as f32 - height as f32 / 2.0;
                maps.push((side, Affine::square_crop(cx, cy, face / side as f32, angle, side)));
            }
            for (output, map) in maps {
                let mut fast = RgbImage::new(output, output);
                let mut definition = RgbImage::new(output, output);
                warper.warp(&source, &map, &mut fast).unwrap();
                warp_definition(&source, &map, &mut definition).unwrap();
                assert!(
                    fast.data == definition.data,
                    "{} {width}x{height} -> {output}, map {map:?}",
                    format.name()
                );
            }
        }
    }
}

#[test]
fn the_looked_up_yuv_conversion_equals_the_formula_for_every_input() {
    for y in 0..=255u8 {
        for u in 0..=255u8 {
            for v in 0..=255u8 {
                let (formula, looked_up) = (yuv_to_rgb(y, u, v), yuv_to_rgb_fast(y, u, v));
                assert!(
                    formula.map(f32::to_bits) == looked_up.map(f32::to_bits),
                    "Y {y} U {u} V {v}: {formula:?} != {looked_up:?}"
                );
            }
        }
    }
}

#[test]
fn samples_outside_the_converted_region_read_the_frame_and_give_the_same_sums() {
    let mut random = XorShift(0x0f10_0123_4567_89ab);
    let (width, height) = (160u32, 120u32);
    let stride = PixelFormat::Yuyv.min_stride(width);
    let data = random.bytes(PixelFormat::Yuyv.frame_bytes(stride, height));
    let source = frame(PixelFormat::Yuyv, width, height, stride, &data);
    let map = Affine::square_crop(80.0, 60.0, 1.6, 0.3, 48);
    let (last_x, last_y) = (width as usize - 1, height as usize - 1);
    let whole = source_region(&map, 48, 48, last_x, last_y).unwrap();
    // The whole region, and one missing twelve pixels on every side, each converted ahead.
    let convert = |region: Region| {
        let mut pixels = vec![[0.0f32; 4]; region.pixels()];
        for (y, row) in (region.y0..=region.y1).zip(pixels.chunks_exact_mut(region.width())) {
            pixels::Yuyv::convert_row(&source, y, region.x0, row);
        }
        pixels
    };
    let inner = Region { x0: whole.x0 + 12, y0: whole.y0 + 12, x1: whole.x1 - 12, y1: whole.y1 - 12 };
    let (whole_pixels, inner_pixels) = (convert(whole), convert(inner));
    let mut taps = RowTaps::default();
    taps.resize(48);
    let mut fallbacks = 0;
    for row in 0..48 {
        let v = row as f32 + 0.5;
        let (bv, dv) = (map.b * v, map.d * v);
        let size = (width as f32, height as f32);
        let mut read_region = vec![[0.0f32; 4]; 48];
        assert!(sample_row(&map, (bv, dv), 0.5, size, (last_x, last_y), whole, &mut taps));
        add_region_samples(&whole_pixels, &taps, &mut read_region);
        let mut read_frame = vec![[0.0f32; 4]; 48];
        if !sample_row(&map, (bv, dv), 0.5, size, (last_x, last_y), inner, &mut taps) {
            fallbacks += 1;
        }
        add_samples::<pixels::Yuyv>(&source, &inner_pixels, inner, &taps, &mut read_frame);
        let bits = |sums: &[[f32; 4]]| sums.iter().flatten().map(|value| value.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&read_region), bits(&read_frame), "row {row}");
    }
    assert!(fallbacks >= 24, "only {fallbacks} rows reached past the inner region");
}
