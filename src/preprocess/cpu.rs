//! The CPU preprocessing reference: colour conversion and the supersampled affine warp of `preprocess`.

use super::{Affine, RgbImage};
use crate::frame::{Frame, PixelFormat};
use anyhow::{bail, Result};
pub use pixels::yuv_to_rgb;
use pixels::{with_lane, Bgr24, Grey, Nv12, PixelReader, Rgb24, Uyvy, Yuyv};

mod pixels;

/// Warps `frame` into `out` through `map` (output → source), as the module documentation defines. A one-off
/// call: it allocates its scratch (`Warper` keeps it from call to call; the pipeline uses one).
/// The frame must have passed `Frame::validate`; MJPEG must be decoded first.
pub fn warp(frame: &Frame, map: &Affine, out: &mut RgbImage) -> Result<()> {
    Warper::default().warp(frame, map, out)
}

/// The warp written sample by sample exactly as the module documentation states it, with no shortcut: slow,
/// and the oracle `Warper`'s fast paths are tested against, bit for bit.
pub fn warp_definition(frame: &Frame, map: &Affine, out: &mut RgbImage) -> Result<()> {
    check(frame, out)?;
    match frame.format {
        PixelFormat::Rgb24 => warp_general::<Rgb24>(frame, map, out),
        PixelFormat::Bgr24 => warp_general::<Bgr24>(frame, map, out),
        PixelFormat::Grey => warp_general::<Grey>(frame, map, out),
        PixelFormat::Yuyv => warp_general::<Yuyv>(frame, map, out),
        PixelFormat::Uyvy => warp_general::<Uyvy>(frame, map, out),
        PixelFormat::Nv12 => warp_general::<Nv12>(frame, map, out),
        PixelFormat::Mjpeg => bail!("MJPEG frames must be decoded before warping"),
    }
    Ok(())
}

/// Refuses what no warp can read or write: a frame failing its geometry check, an empty or mis-sized output
/// (its rows would be zero-length chunks, which panic).
fn check(frame: &Frame, out: &RgbImage) -> Result<()> {
    frame.validate()?;
    if out.width == 0 || out.height == 0 || out.data.len() != out.width * out.height * 3 {
        bail!("output image buffer does not match its {}x{} size", out.width, out.height);
    }
    Ok(())
}

/// Most source pixels the rotated path converts ahead into its region buffer (32 MiB of 4-lane f32); a crop that
/// spans more is warped sample by sample instead, so a huge face in a huge still cannot grow the buffer.
const MAX_REGION_PIXELS: usize = 1 << 21;

/// Rows of horizontally filtered source the axis-aligned path keeps: every row one output row needs (two per
/// vertical tap).
const CACHED_ROWS: usize = 2 * super::MAX_TAPS as usize;

/// The fast warp, equal to `warp_definition` bit for bit (tested): the same products and sums in the same order
/// per output pixel, with the work shared between pixels where the definition repeats it.
/// - Each source pixel's colour conversion is done once per call instead of once per bilinear read (up to
///   4 × taps² reads an output pixel): source rows (axis-aligned) or the source region under a crop (rotated)
///   are converted ahead into f32 buffers.
/// - Axis-aligned maps (letterbox, resize) are separable: each sample's source x depends only on the output
///   column and its y only on the row, so the horizontal interpolation (`top`, `bottom` of the definition) is
///   computed once per source row and column tap, then the vertical step and the sum run over whole output
///   rows in loops the compiler vectorises. A column tap outside the source adds exactly +0.0, which leaves
///   every sum unchanged, as skipping it does.
///
/// Its buffers grow to the largest call's needs and are kept, so steady state allocates nothing.
#[derive(Default)]
pub struct Warper {
    /// Axis-aligned: the bilinear tap of each output column and horizontal sample, `column * taps + i`.
    columns: Vec<AxisTap>,
    /// One source row (the span of it the columns read, or the rotated path's region row) converted to RGB
    /// f32, one `[r, g, b, 0]` per pixel.
    line: Vec<[f32; 4]>,
    /// Axis-aligned: horizontally interpolated source rows, `[i][column * 3 + c]` each.
    rows: [FilteredRow; CACHED_ROWS],
    /// Axis-aligned: one output row's running sums, `column * 3 + c`.
    sums: Vec<f32>,
    /// Rotated: the source region under the crop converted to RGB f32, row-major, one `[r, g, b, 0]` per
    /// pixel (a fourth lane so a pixel is one aligned vector and the interpolation runs on all lanes at once).
    region: Vec<[f32; 4]>,
    /// Rotated: one output row's samples for one (j, i) tap, column by column (`RowTaps`).
    taps: RowTaps,
    /// Rotated: one output row's running sums, one `[r, g, b, 0]` per column.
    pixel_sums: Vec<[f32; 4]>,
}

/// The bilinear samples of one output row at one tap (j, i), one entry per column, as separate arrays so
/// that the loop computing them runs on vectors of columns.
#[derive(Default)]
struct RowTaps {
    /// Whether the sample falls inside the source (else it adds nothing).
    inside: Vec<bool>,
    fx: Vec<f32>,
    fy: Vec<f32>,
    /// The two source columns and rows the sample reads.
    xa: Vec<u32>,
    xb: Vec<u32>,
    ya: Vec<u32>,
    yb: Vec<u32>,
}

impl RowTaps {
    fn resize(&mut self, width: usize) {
        self.inside.resize(width, false);
        for values in [&mut self.fx, &mut self.fy] {
            values.resize(width, 0.0);
        }
        for values in [&mut self.xa, &mut self.xb, &mut self.ya, &mut self.yb] {
            values.resize(width, 0);
        }
    }
}

/// One source row after the horizontal step of the axis-aligned path.
#[derive(Default)]
struct FilteredRow {
    /// The source row, or None when the slot is free.
    row: Option<usize>,
    values: Vec<f32>,
}

impl Warper {
    /// Warps `frame` into `out` through `map`, as `warp` does.
    pub fn warp(&mut self, frame: &Frame, map: &Affine, out: &mut RgbImage) -> Result<()> {
        check(frame, out)?;
        match frame.format {
            PixelFormat::Rgb24 => self.warp_with::<Rgb24>(frame, map, out),
            PixelFormat::Bgr24 => self.warp_with::<Bgr24>(frame, map, out),
            PixelFormat::Grey => self.warp_with::<Grey>(frame, map, out),
            PixelFormat::Yuyv => self.warp_with::<Yuyv>(frame, map, out),
            PixelFormat::Uyvy => self.warp_with::<Uyvy>(frame, map, out),
            PixelFormat::Nv12 => self.warp_with::<Nv12>(frame, map, out),
            PixelFormat::Mjpeg => bail!("MJPEG frames must be decoded before warping"),
        }
        Ok(())
    }

    fn warp_with<R: PixelReader>(&mut self, frame: &Frame, map: &Affine, out: &mut RgbImage) {
        if map.b == 0.0 && map.c == 0.0 {
            self.warp_axis_aligned::<R>(frame, map, out);
        } else {
            self.warp_rotated::<R>(frame, map, out);
        }
    }

    /// The separable path for maps without rotation.
    fn warp_axis_aligned<R: PixelReader>(&mut self, frame: &Frame, map: &Affine, out: &mut RgbImage) {
        let taps = map.taps() as usize;
        let step = 1.0 / taps as f32;
        let weight = 1.0 / (taps * taps) as f32;
        let (source_width, source_height) = (frame.width as f32, frame.height as f32);
        let (last_x, last_y) = (frame.width as usize - 1, frame.height as usize - 1);
        let width = out.width;
        let values = width * 3;
        self.columns.clear();
        for column in 0..width {
            for i in 0..taps {
                let u = column as f32 + (i as f32 + 0.5) * step;
                self.columns.push(axis_tap(map.a * u + map.tx, source_width, last_x));
            }
        }
        // The span of source columns any tap reads: only it is converted.
        let inside = self.columns.iter().filter(|tap| tap.inside);
        let first = inside.clone().map(|tap| tap.first).min().unwrap_or(0);
        let last = inside.map(|tap| tap.second).max().unwrap_or(0);
        self.line.resize(last + 1 - first, [0.0; 4]);
        resize(&mut self.sums, values);
        for slot in &mut self.rows {
            slot.row = None;
            resize(&mut slot.values, taps * values);
        }
        let Warper { columns, line, rows, sums, .. } = self;
        let mut vertical = [AxisTap::default(); super::MAX_TAPS as usize];
        for (row, pixels) in out.data.chunks_exact_mut(values).enumerate() {
            for (j, tap) in vertical.iter_mut().take(taps).enumerate() {
                let v = row as f32 + (j as f32 + 0.5) * step;
                *tap = axis_tap(map.d * v + map.ty, source_height, last_y);
            }
            let vertical = &vertical[..taps];
            // The source rows this output row needs, filtered horizontally once each.
            let needed =
                |row: usize| vertical.iter().any(|tap| tap.inside && (tap.first == row || tap.second == row));
            for tap in vertical.iter().filter(|tap| tap.inside) {
                for source_row in [tap.first, tap.second] {
                    if rows.iter().any(|slot| slot.row == Some(source_row)) {
                        continue;
                    }
                    // At most CACHED_ROWS rows are needed, so a slot holding none of them is always there.
                    let Some(slot) = rows.iter_mut().find(|slot| !slot.row.is_some_and(needed)) else {
                        continue;
                    };
                    filter_row::<R>(frame, source_row, first, columns, taps, line, &mut slot.values);
                    slot.row = Some(source_row);
                }
            }
            sums.fill(0.0);
            for tap in vertical.iter().filter(|tap| tap.inside) {
                let slot_of = |row: usize| rows.iter().find(|slot| slot.row == Some(row));
                let (Some(top_row), Some(bottom_row)) = (slot_of(tap.first), slot_of(tap.second)) else {
                    continue;
                };
                let fraction = tap.fraction;
                for i in 0..taps {
                    let tops = &top_row.values[i * values..(i + 1) * values];
                    let bottoms = &bottom_row.values[i * values..(i + 1) * values];
                    for ((sum, &top), &bottom) in sums.iter_mut().zip(tops).zip(bottoms) {
                        *sum += top + (bottom - top) * fraction;
                    }
                }
            }
            for (pixel, &sum) in pixels.iter_mut().zip(sums.iter()) {
                *pixel = to_byte(sum, weight);
            }
        }
    }

    /// The rotated path: the source region under the crop converted once, then the definition's samples read
    /// from it. Falls back to the definition's own reads for a region too large, empty or not finite.
    fn warp_rotated<R: PixelReader>(&mut self, frame: &Frame, map: &Affine, out: &mut RgbImage) {
        let (last_x, last_y) = (frame.width as usize - 1, frame.height as usize - 1);
        let Some((x0, y0, x1, y1)) = source_region(map, out.width, out.height, last_x, last_y) else {
            warp_general::<R>(frame, map, out);
            return;
        };
        let region_width = x1 + 1 - x0;
        if region_width * (y1 + 1 - y0) > MAX_REGION_PIXELS {
            warp_general::<R>(frame, map, out);
            return;
        }
        self.region.resize(region_width * (y1 + 1 - y0), [0.0; 4]);
        for (y, pixels) in (y0..=y1).zip(self.region.chunks_exact_mut(region_width)) {
            R::convert_row(frame, y, x0, pixels);
        }
        let region = &self.region;
        let pixel = |x: usize, y: usize| region[(y - y0) * region_width + (x - x0)];
        let read = |xa: usize, xb: usize, ya: usize, yb: usize| {
            // xa <= xb and ya <= yb: four comparisons place all four pixels.
            if xa >= x0 && xb <= x1 && ya >= y0 && yb <= y1 {
                [pixel(xa, ya), pixel(xb, ya), pixel(xa, yb), pixel(xb, yb)]
            } else {
                [(xa, ya), (xb, ya), (xa, yb), (xb, yb)].map(|(x, y)| with_lane(R::rgb_fast(frame, x, y)))
            }
        };
        // The definition's loops turned inside out: per output row, each tap (j, i) in the definition's
        // order over all columns, so every pixel's sum takes the same samples in the same order, while the
        // coordinates of a whole row of samples are computed on vectors of columns.
        let taps = map.taps();
        let step = 1.0 / taps as f32;
        let weight = 1.0 / (taps * taps) as f32;
        let (source_width, source_height) = (frame.width as f32, frame.height as f32);
        let width = out.width;
        self.taps.resize(width);
        self.pixel_sums.resize(width, [0.0; 4]);
        let (row_taps, sums) = (&mut self.taps, &mut self.pixel_sums);
        for (row, line) in out.data.chunks_exact_mut(width * 3).enumerate() {
            sums.fill([0.0; 4]);
            for j in 0..taps {
                let v = row as f32 + (j as f32 + 0.5) * step;
                let (bv, dv) = (map.b * v, map.d * v);
                for i in 0..taps {
                    let offset = (i as f32 + 0.5) * step;
                    sample_row(
                        map,
                        (bv, dv),
                        offset,
                        (source_width, source_height),
                        (last_x, last_y),
                        row_taps,
                    );
                    let RowTaps { inside, fx, fy, xa, xb, ya, yb } = &*row_taps;
                    for (column, sum) in sums.iter_mut().enumerate() {
                        if !inside[column] {
                            continue;
                        }
                        let pixels = read(
                            xa[column] as usize,
                            xb[column] as usize,
                            ya[column] as usize,
                            yb[column] as usize,
                        );
                        add_bilinear(sum, pixels, fx[column], fy[column]);
                    }
                }
            }
            for (pixel, sum) in line.chunks_exact_mut(3).zip(sums.iter()) {
                for c in 0..3 {
                    pixel[c] = to_byte(sum[c], weight);
                }
            }
        }
    }
}

/// One output row's samples at one tap into `taps`, column by column: the definition's source position
/// `map.apply(u, v)` (with `b·v` and `d·v` given, the same products, summed in the same order), its inside
/// test, floor, fractions and clamped neighbours. Straight-line per column, so it runs on vectors.
#[inline(always)]
fn sample_row(
    map: &Affine,
    (bv, dv): (f32, f32),
    offset: f32,
    (source_width, source_height): (f32, f32),
    (last_x, last_y): (usize, usize),
    taps: &mut RowTaps,
) {
    let (last_x, last_y) = (last_x as f32, last_y as f32);
    let RowTaps { inside, fx, fy, xa, xb, ya, yb } = taps;
    let columns = inside.len();
    let (fx, fy) = (&mut fx[..columns], &mut fy[..columns]);
    let (xa, xb, ya, yb) = (&mut xa[..columns], &mut xb[..columns], &mut ya[..columns], &mut yb[..columns]);
    for column in 0..columns {
        let u = column as f32 + offset;
        let sx = map.a * u + bv + map.tx;
        let sy = map.c * u + dv + map.ty;
        inside[column] = sx >= 0.0 && sy >= 0.0 && sx < source_width && sy < source_height;
        let (x, y) = (sx - 0.5, sy - 0.5);
        let (x0, y0) = (floor_in_range(x), floor_in_range(y));
        fx[column] = x - x0;
        fy[column] = y - y0;
        // As `warp_general`'s `(x0.max(0.0) as usize).min(last_x)`: the clamp in floats first, where
        // every value it leaves is a whole number below 2^24, so the conversion is exact.
        xa[column] = x0.max(0.0).min(last_x) as u32;
        xb[column] = (x0 + 1.0).max(0.0).min(last_x) as u32;
        ya[column] = y0.max(0.0).min(last_y) as u32;
        yb[column] = (y0 + 1.0).max(0.0).min(last_y) as u32;
    }
}

/// Sets `buffer` to `len` values, allocating only when it has never been that long.
fn resize(buffer: &mut Vec<f32>, len: usize) {
    buffer.resize(len, 0.0);
}

/// The horizontal step of the axis-aligned path for source row `y`: per column tap i and output column, the
/// definition's `p0 + (p1 − p0) · fx` (its `top` or `bottom`), or 0 for a tap outside the source.
fn filter_row<R: PixelReader>(
    frame: &Frame,
    y: usize,
    first: usize,
    columns: &[AxisTap],
    taps: usize,
    line: &mut [[f32; 4]],
    filtered: &mut [f32],
) {
    R::convert_row(frame, y, first, line);
    let values = filtered.len() / taps;
    for (column, column_taps) in columns.chunks_exact(taps).enumerate() {
        for (i, tap) in column_taps.iter().enumerate() {
            let out = &mut filtered[i * values + column * 3..][..3];
            if !tap.inside {
                out.fill(0.0);
                continue;
            }
            // All four lanes at once (one vector), the fourth dropped.
            let (p0, p1) = (line[tap.first - first], line[tap.second - first]);
            let mut value = [0f32; 4];
            for c in 0..4 {
                value[c] = p0[c] + (p1[c] - p0[c]) * tap.fraction;
            }
            out.copy_from_slice(&value[..3]);
        }
    }
}

/// The source pixels (x0, y0)–(x1, y1), inclusive, that an output of `width` × `height` through `map` can
/// read, with a margin for rounding; None when the map is not finite or the crop lies wholly outside.
fn source_region(
    map: &Affine,
    width: usize,
    height: usize,
    last_x: usize,
    last_y: usize,
) -> Option<(usize, usize, usize, usize)> {
    let (w, h) = (width as f32, height as f32);
    let corners = [map.apply(0.0, 0.0), map.apply(w, 0.0), map.apply(0.0, h), map.apply(w, h)];
    let low_x = corners.iter().map(|c| c.0).fold(f32::INFINITY, f32::min).floor() - 2.0;
    let high_x = corners.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max).ceil() + 2.0;
    let low_y = corners.iter().map(|c| c.1).fold(f32::INFINITY, f32::min).floor() - 2.0;
    let high_y = corners.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max).ceil() + 2.0;
    if !(low_x.is_finite() && high_x.is_finite() && low_y.is_finite() && high_y.is_finite()) {
        return None;
    }
    if high_x < 0.0 || high_y < 0.0 || low_x > last_x as f32 || low_y > last_y as f32 {
        return None;
    }
    let clamp = |value: f32, last: usize| (value.max(0.0) as usize).min(last);
    Some((clamp(low_x, last_x), clamp(low_y, last_y), clamp(high_x, last_x), clamp(high_y, last_y)))
}

/// `x.floor()` for the positions the warp takes it of (a sample inside the source, less half a pixel: within
/// [−0.5, 16384), where every f32 the conversion to i32 truncates is exact) without a call into libm.
#[inline(always)]
fn floor_in_range(x: f32) -> f32 {
    let truncated = x as i32 as f32;
    if truncated > x {
        truncated - 1.0
    } else {
        truncated
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
    let floor = floor_in_range(position);
    AxisTap {
        inside: true,
        first: (floor.max(0.0) as usize).min(last),
        second: ((floor + 1.0).max(0.0) as usize).min(last),
        fraction: position - floor,
    }
}

/// The warp exactly as the module documentation defines it, for any affine map, each sample reading the frame.
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
            // Per channel, plus a fourth lane of zeros that is never stored.
            let mut sum = [0.0f32; 4];
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
                    let pixels =
                        [(xa, ya), (xb, ya), (xa, yb), (xb, yb)].map(|(x, y)| with_lane(R::rgb(frame, x, y)));
                    add_bilinear(&mut sum, pixels, fx, fy);
                }
            }
            for c in 0..3 {
                pixel[c] = to_byte(sum[c], weight);
            }
        }
    }
}

/// Adds the definition's bilinear sample of the four source pixels (x0, y0), (x1, y0), (x0, y1), (x1, y1) at
/// fractions `fx`, `fy` to `sum`, on all four lanes: the interpolation every path shares, in one place.
#[inline(always)]
fn add_bilinear(sum: &mut [f32; 4], [p00, p10, p01, p11]: [[f32; 4]; 4], fx: f32, fy: f32) {
    for c in 0..4 {
        let top = p00[c] + (p10[c] - p00[c]) * fx;
        let bottom = p01[c] + (p11[c] - p01[c]) * fx;
        sum[c] += top + (bottom - top) * fy;
    }
}

/// An output byte from a channel's sum of samples and their weight (1 / taps²): rounded, clamped.
#[inline(always)]
fn to_byte(sum: f32, weight: f32) -> u8 {
    (sum * weight + 0.5).clamp(0.0, 255.0) as u8
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
