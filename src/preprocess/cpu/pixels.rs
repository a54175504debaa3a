//! Reading source pixels as RGB, per pixel format: the definition's colour conversion (`yuv_to_rgb`), its
//! looked-up form for single pixels and its computed form for whole rows of the YUV formats.

use crate::frame::Frame;

/// Reads one source pixel as RGB, unrounded (the module definition's colour conversion).
pub(super) trait PixelReader {
    /// The pixel by the definition's formula.
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3];

    /// The same value, computed faster where the format allows (the YUV formats look their products up).
    #[inline(always)]
    fn rgb_fast(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        Self::rgb(frame, x, y)
    }

    /// Source pixels `first..first + line.len()` of row `y` into `line` as `[r, g, b, 0]`, the same values
    /// as `rgb` (the packed YUV formats convert two pixels at a time in loops the compiler vectorises).
    #[inline(always)]
    fn convert_row(frame: &Frame, y: usize, first: usize, line: &mut [[f32; 4]]) {
        for (x, pixel) in (first..).zip(line.iter_mut()) {
            *pixel = with_lane(Self::rgb_fast(frame, x, y));
        }
    }
}

/// `PixelReader::convert_row` for a packed 4:2:2 format: each 4-byte group holds two pixels' luma at
/// `luma` and their shared U and V at `u` and `v`. `yuv_to_rgb`'s products and sums, in its order, computed
/// rather than looked up (an IEEE product is the same either way), so that whole groups vectorise.
#[inline(always)]
fn convert_packed_row<R: PixelReader>(
    frame: &Frame,
    y: usize,
    first: usize,
    line: &mut [[f32; 4]],
    luma: [usize; 2],
    (u, v): (usize, usize),
) {
    convert_in_pairs::<R>(frame, y, first, line, |x, line| {
        let start = y * frame.stride + x * 2;
        let groups = &frame.data[start..start + line.len() * 2];
        for (group, out) in groups.chunks_exact(4).zip(line.chunks_exact_mut(2)) {
            convert_pair(&[group[luma[0]], group[luma[1]]], (group[u], group[v]), out);
        }
    });
}

/// Pixels `first..first + line.len()` of row `y` two at a time, where each pair shares its chroma: an odd
/// first pixel (the second of its pair) on its own, then the whole pairs through `convert_pairs` (given the
/// first pair's x and their part of `line`), then a last lone pixel.
#[inline(always)]
fn convert_in_pairs<R: PixelReader>(
    frame: &Frame,
    y: usize,
    first: usize,
    line: &mut [[f32; 4]],
    convert_pairs: impl FnOnce(usize, &mut [[f32; 4]]),
) {
    let (mut x, mut line) = (first, line);
    if x % 2 == 1 && !line.is_empty() {
        line[0] = with_lane(R::rgb_fast(frame, x, y));
        line = &mut line[1..];
        x += 1;
    }
    let (pairs, rest) = line.split_at_mut(line.len() / 2 * 2);
    let lone = x + pairs.len();
    convert_pairs(x, pairs);
    if let [last] = rest {
        *last = with_lane(R::rgb_fast(frame, lone, y));
    }
}

/// Two pixels' luma bytes and their shared chroma into `out`: `yuv_to_rgb`'s products and sums, in its order,
/// computed rather than looked up (an IEEE product is the same either way), so that whole rows vectorise.
#[inline(always)]
fn convert_pair(luma: &[u8], (u, v): (u8, u8), out: &mut [[f32; 4]]) {
    let chroma_u = u as f32 - 128.0;
    let chroma_v = v as f32 - 128.0;
    let red = 1.596027 * chroma_v;
    let green_u = 0.391762 * chroma_u;
    let green_v = 0.812968 * chroma_v;
    let blue = 2.017232 * chroma_u;
    for (pixel, &byte) in out.iter_mut().zip(luma) {
        let value = 1.164383 * (byte as f32 - 16.0);
        *pixel = [
            (value + red).clamp(0.0, 255.0),
            (value - green_u - green_v).clamp(0.0, 255.0),
            (value + blue).clamp(0.0, 255.0),
            0.0,
        ];
    }
}

pub(super) struct Rgb24;
pub(super) struct Bgr24;
pub(super) struct Grey;
pub(super) struct Yuyv;
pub(super) struct Uyvy;
pub(super) struct Nv12;

/// BT.601 limited range to RGB, clamped to [0, 255].
#[inline(always)]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    let luma = 1.164383 * (y as f32 - 16.0);
    let u = u as f32 - 128.0;
    let v = v as f32 - 128.0;
    [
        (luma + 1.596027 * v).clamp(0.0, 255.0),
        (luma - 0.391762 * u - 0.812968 * v).clamp(0.0, 255.0),
        (luma + 2.017232 * u).clamp(0.0, 255.0),
    ]
}

/// The products of `yuv_to_rgb` for every byte value, computed at compile time as `yuv_to_rgb` computes them
/// at run time (an IEEE product is correctly rounded either way; a test compares all 2^24 inputs).
struct YuvTables {
    luma: [f32; 256],
    red_v: [f32; 256],
    green_u: [f32; 256],
    green_v: [f32; 256],
    blue_u: [f32; 256],
}

static YUV: YuvTables = yuv_tables();

const fn yuv_tables() -> YuvTables {
    let mut tables = YuvTables {
        luma: [0.0; 256],
        red_v: [0.0; 256],
        green_u: [0.0; 256],
        green_v: [0.0; 256],
        blue_u: [0.0; 256],
    };
    let mut byte = 0;
    while byte < 256 {
        let value = byte as f32;
        tables.luma[byte] = 1.164383 * (value - 16.0);
        tables.red_v[byte] = 1.596027 * (value - 128.0);
        tables.green_u[byte] = 0.391762 * (value - 128.0);
        tables.green_v[byte] = 0.812968 * (value - 128.0);
        tables.blue_u[byte] = 2.017232 * (value - 128.0);
        byte += 1;
    }
    tables
}

/// `yuv_to_rgb` with its products looked up: the same sums in the same order, so the same values.
#[inline(always)]
pub(super) fn yuv_to_rgb_fast(y: u8, u: u8, v: u8) -> [f32; 3] {
    let luma = YUV.luma[y as usize];
    let (u, v) = (u as usize, v as usize);
    [
        (luma + YUV.red_v[v]).clamp(0.0, 255.0),
        (luma - YUV.green_u[u] - YUV.green_v[v]).clamp(0.0, 255.0),
        (luma + YUV.blue_u[u]).clamp(0.0, 255.0),
    ]
}

/// The bytes of pixels `first..first + count` of row `y`, `size` bytes a pixel.
#[inline(always)]
fn row_bytes<'a>(frame: &Frame<'a>, y: usize, first: usize, count: usize, size: usize) -> &'a [u8] {
    let start = y * frame.stride + first * size;
    &frame.data[start..start + count * size]
}

impl PixelReader for Rgb24 {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let i = y * frame.stride + x * 3;
        [frame.data[i] as f32, frame.data[i + 1] as f32, frame.data[i + 2] as f32]
    }

    #[inline(always)]
    fn convert_row(frame: &Frame, y: usize, first: usize, line: &mut [[f32; 4]]) {
        let bytes = row_bytes(frame, y, first, line.len(), 3);
        for (pixel, bytes) in line.iter_mut().zip(bytes.chunks_exact(3)) {
            *pixel = [bytes[0] as f32, bytes[1] as f32, bytes[2] as f32, 0.0];
        }
    }
}

impl PixelReader for Bgr24 {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let i = y * frame.stride + x * 3;
        [frame.data[i + 2] as f32, frame.data[i + 1] as f32, frame.data[i] as f32]
    }

    #[inline(always)]
    fn convert_row(frame: &Frame, y: usize, first: usize, line: &mut [[f32; 4]]) {
        let bytes = row_bytes(frame, y, first, line.len(), 3);
        for (pixel, bytes) in line.iter_mut().zip(bytes.chunks_exact(3)) {
            *pixel = [bytes[2] as f32, bytes[1] as f32, bytes[0] as f32, 0.0];
        }
    }
}

impl PixelReader for Grey {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let value = frame.data[y * frame.stride + x] as f32;
        [value; 3]
    }

    #[inline(always)]
    fn convert_row(frame: &Frame, y: usize, first: usize, line: &mut [[f32; 4]]) {
        let bytes = row_bytes(frame, y, first, line.len(), 1);
        for (pixel, &byte) in line.iter_mut().zip(bytes) {
            let value = byte as f32;
            *pixel = [value, value, value, 0.0];
        }
    }
}

impl PixelReader for Yuyv {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let pair = y * frame.stride + (x / 2) * 4;
        let d = frame.data;
        yuv_to_rgb(d[pair + (x & 1) * 2], d[pair + 1], d[pair + 3])
    }

    #[inline(always)]
    fn rgb_fast(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let pair = y * frame.stride + (x / 2) * 4;
        let d = frame.data;
        yuv_to_rgb_fast(d[pair + (x & 1) * 2], d[pair + 1], d[pair + 3])
    }

    #[inline(always)]
    fn convert_row(frame: &Frame, y: usize, first: usize, line: &mut [[f32; 4]]) {
        convert_packed_row::<Self>(frame, y, first, line, [0, 2], (1, 3));
    }
}

impl PixelReader for Uyvy {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let pair = y * frame.stride + (x / 2) * 4;
        let d = frame.data;
        yuv_to_rgb(d[pair + 1 + (x & 1) * 2], d[pair], d[pair + 2])
    }

    #[inline(always)]
    fn rgb_fast(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let pair = y * frame.stride + (x / 2) * 4;
        let d = frame.data;
        yuv_to_rgb_fast(d[pair + 1 + (x & 1) * 2], d[pair], d[pair + 2])
    }

    #[inline(always)]
    fn convert_row(frame: &Frame, y: usize, first: usize, line: &mut [[f32; 4]]) {
        convert_packed_row::<Self>(frame, y, first, line, [1, 3], (0, 2));
    }
}

impl PixelReader for Nv12 {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let d = frame.data;
        let chroma = frame.stride * frame.height as usize + (y / 2) * frame.stride + (x / 2) * 2;
        yuv_to_rgb(d[y * frame.stride + x], d[chroma], d[chroma + 1])
    }

    #[inline(always)]
    fn rgb_fast(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let d = frame.data;
        let chroma = frame.stride * frame.height as usize + (y / 2) * frame.stride + (x / 2) * 2;
        yuv_to_rgb_fast(d[y * frame.stride + x], d[chroma], d[chroma + 1])
    }

    /// Two pixels at a time: each pair's two luma bytes with the U and V the pair shares in its chroma row,
    /// `yuv_to_rgb`'s products computed as in `convert_packed_row`.
    #[inline(always)]
    fn convert_row(frame: &Frame, y: usize, first: usize, line: &mut [[f32; 4]]) {
        convert_in_pairs::<Self>(frame, y, first, line, |x, line| {
            let luma_start = y * frame.stride + x;
            let chroma_start = frame.stride * frame.height as usize + (y / 2) * frame.stride + x;
            let luma = &frame.data[luma_start..luma_start + line.len()];
            let chroma = &frame.data[chroma_start..chroma_start + line.len()];
            for ((luma, chroma), out) in
                luma.chunks_exact(2).zip(chroma.chunks_exact(2)).zip(line.chunks_exact_mut(2))
            {
                convert_pair(luma, (chroma[0], chroma[1]), out);
            }
        });
    }
}

/// An RGB pixel with the fourth lane the warp computes on.
#[inline(always)]
pub(super) fn with_lane([r, g, b]: [f32; 3]) -> [f32; 4] {
    [r, g, b, 0.0]
}
