//! The CPU preprocessing reference: colour conversion and the supersampled affine warp of `preprocess`.

use super::{Affine, RgbImage};
use crate::frame::{Frame, PixelFormat};
use anyhow::{bail, Result};

/// Reads one source pixel as RGB, unrounded (the module definition's colour conversion).
trait PixelReader {
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3];
}

struct Rgb24;
struct Bgr24;
struct Grey;
struct Yuyv;
struct Uyvy;
struct Nv12;

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

impl PixelReader for Rgb24 {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let i = y * frame.stride + x * 3;
        [frame.data[i] as f32, frame.data[i + 1] as f32, frame.data[i + 2] as f32]
    }
}

impl PixelReader for Bgr24 {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let i = y * frame.stride + x * 3;
        [frame.data[i + 2] as f32, frame.data[i + 1] as f32, frame.data[i] as f32]
    }
}

impl PixelReader for Grey {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let value = frame.data[y * frame.stride + x] as f32;
        [value; 3]
    }
}

impl PixelReader for Yuyv {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let pair = y * frame.stride + (x / 2) * 4;
        let d = frame.data;
        yuv_to_rgb(d[pair + (x & 1) * 2], d[pair + 1], d[pair + 3])
    }
}

impl PixelReader for Uyvy {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let pair = y * frame.stride + (x / 2) * 4;
        let d = frame.data;
        yuv_to_rgb(d[pair + 1 + (x & 1) * 2], d[pair], d[pair + 2])
    }
}

impl PixelReader for Nv12 {
    #[inline(always)]
    fn rgb(frame: &Frame, x: usize, y: usize) -> [f32; 3] {
        let d = frame.data;
        let chroma = frame.stride * frame.height as usize + (y / 2) * frame.stride + (x / 2) * 2;
        yuv_to_rgb(d[y * frame.stride + x], d[chroma], d[chroma + 1])
    }
}

/// Warps `frame` into `out` through `map` (output → source), as the module documentation defines.
/// The frame must have passed `Frame::validate`; MJPEG must be decoded first.
pub fn warp(frame: &Frame, map: &Affine, out: &mut RgbImage) -> Result<()> {
    frame.validate()?;
    // An empty output is refused too: its rows would be zero-length chunks, which panic.
    if out.width == 0 || out.height == 0 || out.data.len() != out.width * out.height * 3 {
        bail!("output image buffer does not match its {}x{} size", out.width, out.height);
    }
    match frame.format {
        PixelFormat::Rgb24 => warp_with::<Rgb24>(frame, map, out),
        PixelFormat::Bgr24 => warp_with::<Bgr24>(frame, map, out),
        PixelFormat::Grey => warp_with::<Grey>(frame, map, out),
        PixelFormat::Yuyv => warp_with::<Yuyv>(frame, map, out),
        PixelFormat::Uyvy => warp_with::<Uyvy>(frame, map, out),
        PixelFormat::Nv12 => warp_with::<Nv12>(frame, map, out),
        PixelFormat::Mjpeg => bail!("MJPEG frames must be decoded before warping"),
    }
    Ok(())
}

fn warp_with<R: PixelReader>(frame: &Frame, map: &Affine, out: &mut RgbImage) {
    if map.b == 0.0 && map.c == 0.0 {
        warp_axis_aligned::<R>(frame, map, out);
    } else {
        warp_general::<R>(frame, map, out);
    }
}

/// One bilinear tap along one axis: the two neighbouring pixel indices and the fraction between them, or
/// None when the sample falls outside the source (it then contributes black).
#[derive(Clone, Copy, Default)]
struct AxisTap {
    inside: bool,
    first: usize,
    second: usize,
    fraction: f32,
}

/// The tap at source coordinate `s` along an axis of `size` pixels, as `warp_general` computes it.
#[inline(always)]
fn axis_tap(s: f32, size: f32, last: usize) -> AxisTap {
    if !(s >= 0.0 && s < size) {
        return AxisTap::default();
    }
    let position = s - 0.5;
    let floor = position.floor();
    AxisTap {
        inside: true,
        first: (floor.max(0.0) as usize).min(last),
        second: ((floor + 1.0).max(0.0) as usize).min(last),
        fraction: position - floor,
    }
}

/// The same warp for maps without rotation (letterbox, plain resize): the source x of a sample depends only
/// on the output column and the y only on the row, so each is computed once per row or column instead of
/// once per sample. Bit-identical to `warp_general` (a test checks it): with b = c = 0 the general map's
/// products b·v and c·u are zeros that leave every sum unchanged.
fn warp_axis_aligned<R: PixelReader>(frame: &Frame, map: &Affine, out: &mut RgbImage) {
    let taps = map.taps() as usize;
    let step = 1.0 / taps as f32;
    let weight = 1.0 / (taps * taps) as f32;
    let (source_width, source_height) = (frame.width as f32, frame.height as f32);
    let (last_x, last_y) = (frame.width as usize - 1, frame.height as usize - 1);
    let mut rows = [AxisTap::default(); super::MAX_TAPS as usize];
    let mut columns = [AxisTap::default(); super::MAX_TAPS as usize];
    for (row, line) in out.data.chunks_exact_mut(out.width * 3).enumerate() {
        for (j, tap) in rows.iter_mut().take(taps).enumerate() {
            let v = row as f32 + (j as f32 + 0.5) * step;
            *tap = axis_tap(map.d * v + map.ty, source_height, last_y);
        }
        for (column, pixel) in line.chunks_exact_mut(3).enumerate() {
            for (i, tap) in columns.iter_mut().take(taps).enumerate() {
                let u = column as f32 + (i as f32 + 0.5) * step;
                *tap = axis_tap(map.a * u + map.tx, source_width, last_x);
            }
            let mut sum = [0.0f32; 3];
            for y in rows.iter().take(taps).filter(|tap| tap.inside) {
                for x in columns.iter().take(taps).filter(|tap| tap.inside) {
                    let p00 = R::rgb(frame, x.first, y.first);
                    let p10 = R::rgb(frame, x.second, y.first);
                    let p01 = R::rgb(frame, x.first, y.second);
                    let p11 = R::rgb(frame, x.second, y.second);
                    for c in 0..3 {
                        let top = p00[c] + (p10[c] - p00[c]) * x.fraction;
                        let bottom = p01[c] + (p11[c] - p01[c]) * x.fraction;
                        sum[c] += top + (bottom - top) * y.fraction;
                    }
                }
            }
            for c in 0..3 {
                pixel[c] = (sum[c] * weight + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// The warp exactly as the module documentation defines it, for any affine map.
fn warp_general<R: PixelReader>(frame: &Frame, map: &Affine, out: &mut RgbImage) {
    let taps = map.taps();
    let step = 1.0 / taps as f32;
    let weight = 1.0 / (taps * taps) as f32;
    let source_width = frame.width as f32;
    let source_height = frame.height as f32;
    let last_x = frame.width as usize - 1;
    let last_y = frame.height as usize - 1;
    for (row, line) in out.data.chunks_exact_mut(out.width * 3).enumerate() {
        for (column, pixel) in line.chunks_exact_mut(3).enumerate() {
            let mut sum = [0.0f32; 3];
            for j in 0..taps {
                let v = row as f32 + (j as f32 + 0.5) * step;
                for i in 0..taps {
                    let u = column as f32 + (i as f32 + 0.5) * step;
                    let (sx, sy) = map.apply(u, v);
                    // Outside the source: black. `!(..)` also catches NaN from a degenerate map.
                    if !(sx >= 0.0 && sy >= 0.0 && sx < source_width && sy < source_height) {
                        continue;
                    }
                    let x = sx - 0.5;
                    let y = sy - 0.5;
                    let x0 = x.floor();
                    let y0 = y.floor();
                    let fx = x - x0;
                    let fy = y - y0;
                    let xa = (x0.max(0.0) as usize).min(last_x);
                    let xb = ((x0 + 1.0).max(0.0) as usize).min(last_x);
                    let ya = (y0.max(0.0) as usize).min(last_y);
                    let yb = ((y0 + 1.0).max(0.0) as usize).min(last_y);
                    let p00 = R::rgb(frame, xa, ya);
                    let p10 = R::rgb(frame, xb, ya);
                    let p01 = R::rgb(frame, xa, yb);
                    let p11 = R::rgb(frame, xb, yb);
                    for c in 0..3 {
                        let top = p00[c] + (p10[c] - p00[c]) * fx;
                        let bottom = p01[c] + (p11[c] - p01[c]) * fx;
                        sum[c] += top + (bottom - top) * fy;
                    }
                }
            }
            for c in 0..3 {
                pixel[c] = (sum[c] * weight + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Converts a whole frame to RGB at its own size (for crops written to disk and for tests).
pub fn to_rgb(frame: &Frame, out: &mut RgbImage) -> Result<()> {
    if out.width != frame.width as usize || out.height != frame.height as usize {
        *out = RgbImage::new(frame.width as usize, frame.height as usize);
    }
    let identity = Affine { a: 1.0, b: 0.0, c: 0.0, d: 1.0, tx: 0.0, ty: 0.0 };
    warp(frame, &identity, out)
}

#[cfg(test)]
mod tests;
