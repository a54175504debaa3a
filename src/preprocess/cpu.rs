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
    /// Axis-aligned: the bilinear tap of each horizontal sample i and output column, `i * width + column`,
    /// as indices into `line`.
    columns: Vec<LineTap>,
    /// Axis-aligned: the span of one source row the columns read, converted to RGB f32, one `[r, g, b, 0]`
    /// per pixel, and after it one black pixel that the taps outside the source read.
    line: Vec<[f32; 4]>,
    /// Axis-aligned: horizontally interpolated source rows, `[i][column]` each.
    rows: [FilteredRow; CACHED_ROWS],
    /// Axis-aligned: one output row's running sums, one `[r, g, b, 0]` per column.
    sums: Vec<[f32; 4]>,
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
    /// Whether its four pixels lie in the converted region (else they are read from the frame).
    in_region: Vec<bool>,
    fx: Vec<f32>,
    fy: Vec<f32>,
    /// The two source columns and rows the sample reads.
    xa: Vec<u32>,
    xb: Vec<u32>,
    ya: Vec<u32>,
    yb: Vec<u32>,
    /// In the region: the index of pixel (xa, ya), and the steps from it to (xb, ya) and to (xa, yb).
    offset: Vec<u32>,
    right: Vec<u32>,
    down: Vec<u32>,
}

impl RowTaps {
    fn resize(&mut self, width: usize) {
        for flags in [&mut self.inside, &mut self.in_region] {
            flags.resize(width, false);
        }
        for values in [&mut self.fx, &mut self.fy] {
            values.resize(width, 0.0);
        }
        let indices = [&mut self.xa, &mut self.xb, &mut self.ya, &mut self.yb];
        for values in indices.into_iter().chain([&mut self.offset, &mut self.right, &mut self.down]) {
            values.resize(width, 0);
        }
    }
}

/// The source pixels (x0, y0)–(x1, y1), inclusive, that the rotated path converts ahead, row by row.
#[derive(Clone, Copy)]
struct Region {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

impl Region {
    /// Pixels a row.
    fn width(&self) -> usize {
        self.x1 + 1 - self.x0
    }

    fn pixels(&self) -> usize {
        self.width() * (self.y1 + 1 - self.y0)
    }
}

/// One source row after the horizontal step of the axis-aligned path.
#[derive(Default)]
struct FilteredRow {
    /// The source row, or None when the slot is free.
    row: Option<usize>,
    values: Vec<[f32; 4]>,
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
        let horizontal = |column: usize, i: usize| {
            let u = column as f32 + (i as f32 + 0.5) * step;
            axis_tap(map.a * u + map.tx, source_width, last_x)
        };
        // The span of source columns any tap reads: only it is converted.
        let (mut first, mut last) = (usize::MAX, 0);
        for (column, i) in (0..width).flat_map(|column| (0..taps).map(move |i| (column, i))) {
            let tap = horizontal(column, i);
            if tap.inside {
                (first, last) = (first.min(tap.first), last.max(tap.second));
            }
        }
        let first = first.min(last);
        let black = last + 1 - first;
        self.line.resize(black + 1, [0.0; 4]);
        self.line[black] = [0.0; 4];
        self.columns.clear();
        for i in 0..taps {
            for column in 0..width {
                let tap = horizontal(column, i);
                // A tap outside the source reads the black pixel at fraction 0: exactly +0.0, as the
                // definition's skipped sample adds nothing.
                self.columns.push(match tap.inside {
                    true => LineTap {
                        first: (tap.first - first) as u32,
                        second: (tap.second - first) as u32,
                        fraction: tap.fraction,
                    },
                    false => LineTap { first: black as u32, second: black as u32, fraction: 0.0 },
                });
            }
        }
        self.sums.resize(width, [0.0; 4]);
        for slot in &mut self.rows {
            slot.row = None;
            slot.values.resize(taps * width, [0.0; 4]);
        }
        let Warper { columns, line, rows, sums, .. } = self;
        let mut vertical = [AxisTap::default(); super::MAX_TAPS as usize];
        for (row, pixels) in out.data.chunks_exact_mut(width * 3).enumerate() {
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
                    R::convert_row(frame, source_row, first, &mut line[..black]);
                    filter_row(line, columns, &mut slot.values);
                    slot.row = Some(source_row);
                }
            }
            let sums = sums.as_flattened_mut();
            sums.fill(0.0);
            let values = sums.len();
            for tap in vertical.iter().filter(|tap| tap.inside) {
                let slot_of = |row: usize| rows.iter().find(|slot| slot.row == Some(row));
                let (Some(top_row), Some(bottom_row)) = (slot_of(tap.first), slot_of(tap.second)) else {
                    continue;
                };
                let fraction = tap.fraction;
                let (tops, bottoms) = (top_row.values.as_flattened(), bottom_row.values.as_flattened());
                for i in 0..taps {
                    let tops = &tops[i * values..(i + 1) * values];
                    let bottoms = &bottoms[i * values..(i + 1) * values];
                    for ((sum, &top), &bottom) in sums.iter_mut().zip(tops).zip(bottoms) {
                        *sum += top + (bottom - top) * fraction;
                    }
                }
            }
            for (pixel, sum) in pixels.chunks_exact_mut(3).zip(sums.chunks_exact(4)) {
                for c in 0..3 {
                    pixel[c] = to_byte(sum[c], weight);
                }
            }
        }
    }

    /// The rotated path: the source region under the crop converted once, then the definition's samples read
    /// from it. Falls back to the definition's own reads for a region too large, empty or not finite.
    fn warp_rotated<R: PixelReader>(&mut self, frame: &Frame, map: &Affine, out: &mut RgbImage) {
        let (last_x, last_y) = (frame.width as usize - 1, frame.height as usize - 1);
        let Some(bounds) = source_region(map, out.width, out.height, last_x, last_y) else {
            warp_general::<R>(frame, map, out);
            return;
        };
        if bounds.pixels() > MAX_REGION_PIXELS {
            warp_general::<R>(frame, map, out);
            return;
        }
        self.region.resize(bounds.pixels(), [0.0; 4]);
        for (y, pixels) in (bounds.y0..=bounds.y1).zip(self.region.chunks_exact_mut(bounds.width())) {
            R::convert_row(frame, y, bounds.x0, pixels);
        }
        let region = self.region.as_slice();
        // The definition's loops turned inside out: per output row, each tap (j, i) in the definition's
        // order over all columns, so every pixel's sum takes the same samples in the same order, while the
        // coordinates of a whole row of samples, and where they lie in the region, are computed on vectors of
        // columns.
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
                    let all_in_region = sample_row(
                        map,
                        (bv, dv),
                        offset,
                        (source_width, source_height),
                        (last_x, last_y),
                        bounds,
                        row_taps,
                    );
                    if all_in_region {
                        add_region_samples(region, row_taps, sums);
                    } else {
                        add_samples::<R>(frame, region, bounds, row_taps, sums);
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

/// Adds one row of samples (`sample_row`'s) to `sums`, every sample inside the source reading the region.
#[inline(always)]
fn add_region_samples(region: &[[f32; 4]], taps: &RowTaps, sums: &mut [[f32; 4]]) {
    let columns = sums.len();
    let RowTaps { inside, fx, fy, offset, right, down, .. } = taps;
    let (inside, fx, fy) = (&inside[..columns], &fx[..columns], &fy[..columns]);
    let (offset, right, down) = (&offset[..columns], &right[..columns], &down[..columns]);
    for (column, sum) in sums.iter_mut().enumerate() {
        if !inside[column] {
            continue;
        }
        let top_left = offset[column] as usize;
        let bottom_left = top_left + down[column] as usize;
        let step = right[column] as usize;
        let pixels =
            [region[top_left], region[top_left + step], region[bottom_left], region[bottom_left + step]];
        add_bilinear(sum, pixels, fx[column], fy[column]);
    }
}

/// Adds one row of samples to `sums` where some sample inside the source falls outside the region: each reads
/// the region where it can and the frame otherwise.
#[cold]
fn add_samples<R: PixelReader>(
    frame: &Frame,
    region: &[[f32; 4]],
    bounds: Region,
    taps: &RowTaps,
    sums: &mut [[f32; 4]],
) {
    let pixel = |x: usize, y: usize| region[(y - bounds.y0) * bounds.width() + (x - bounds.x0)];
    let RowTaps { inside, in_region, fx, fy, xa, xb, ya, yb, .. } = taps;
    for (column, sum) in sums.iter_mut().enumerate() {
        if !inside[column] {
            continue;
        }
        let (xa, xb, ya, yb) =
            (xa[column] as usize, xb[column] as usize, ya[column] as usize, yb[column] as usize);
        let pixels = if in_region[column] {
            [pixel(xa, ya), pixel(xb, ya), pixel(xa, yb), pixel(xb, yb)]
        } else {
            [(xa, ya), (xb, ya), (xa, yb), (xb, yb)].map(|(x, y)| with_lane(R::rgb_fast(frame, x, y)))
        };
        add_bilinear(sum, pixels, fx[column], fy[column]);
    }
}

/// One output row's samples at one tap into `taps`, column by column: the definition's source position
/// `map.apply(u, v)` (with `b·v` and `d·v` given, the same products, summed in the same order), its inside
/// test, floor, fractions and clamped neighbours, and where those lie in `region`. Straight-line per column,
/// so it runs on vectors. Returns whether every sample inside the source has its four pixels in the region.
#[inline(always)]
fn sample_row(
    map: &Affine,
    (bv, dv): (f32, f32),
    offset: f32,
    (source_width, source_height): (f32, f32),
    (last_x, last_y): (usize, usize),
    region: Region,
    taps: &mut RowTaps,
) -> bool {
    let (last_x, last_y) = (last_x as f32, last_y as f32);
    let (region_x0, region_y0) = (region.x0 as f32, region.y0 as f32);
    let (region_x1, region_y1) = (region.x1 as f32, region.y1 as f32);
    let region_width = region.width() as f32;
    let RowTaps { inside, in_region, fx, fy, xa, xb, ya, yb, offset: top_left, right, down } = taps;
    let columns = inside.len();
    let (in_region, fx, fy) = (&mut in_region[..columns], &mut fx[..columns], &mut fy[..columns]);
    let (xa, xb, ya, yb) = (&mut xa[..columns], &mut xb[..columns], &mut ya[..columns], &mut yb[..columns]);
    let (top_left, right, down) = (&mut top_left[..columns], &mut right[..columns], &mut down[..columns]);
    let mut all_in_region = true;
    for column in 0..columns {
        // Through i32, which converts on vectors (`columns` is an image's width, far below 2^24: exact).
        let u = column as i32 as f32 + offset;
        let sx = map.a * u + bv + map.tx;
        let sy = map.c * u + dv + map.ty;
        inside[column] = sx >= 0.0 && sy >= 0.0 && sx < source_width && sy < source_height;
        let (x, y) = (sx - 0.5, sy - 0.5);
        let (x0, y0) = (x.floor(), y.floor());
        fx[column] = x - x0;
        fy[column] = y - y0;
        // As `warp_general`'s `(x0.max(0.0) as usize).min(last_x)`: the clamp in floats first, where
        // every value it leaves is a whole number below 2^23 (a frame's side is at most 16 384), so the
        // conversion is exact.
        let (left, right_x) = (x0.max(0.0).min(last_x), (x0 + 1.0).max(0.0).min(last_x));
        let (top, bottom) = (y0.max(0.0).min(last_y), (y0 + 1.0).max(0.0).min(last_y));
        xa[column] = whole_to_u32(left);
        xb[column] = whole_to_u32(right_x);
        ya[column] = whole_to_u32(top);
        yb[column] = whole_to_u32(bottom);
        // left <= right_x and top <= bottom: four comparisons place all four pixels. Region indices are
        // below MAX_REGION_PIXELS (2^21), so these products and sums of whole numbers are exact; outside the
        // region they are not used.
        in_region[column] =
            left >= region_x0 && right_x <= region_x1 && top >= region_y0 && bottom <= region_y1;
        all_in_region &= in_region[column] || !inside[column];
        top_left[column] = whole_to_u32((top - region_y0) * region_width + (left - region_x0));
        right[column] = whole_to_u32(right_x - left);
        down[column] = whole_to_u32((bottom - top) * region_width);
    }
    all_in_region
}

/// One horizontal sample of the axis-aligned path: the two pixels of `Warper::line` it reads and the fraction
/// between them.
#[derive(Clone, Copy)]
struct LineTap {
    first: u32,
    second: u32,
    fraction: f32,
}

/// The horizontal step of the axis-aligned path for one converted source row `line`: per column tap, the
/// definition's `p0 + (p1 − p0) · fx` (its `top` or `bottom`) on all four lanes at once (one vector each).
fn filter_row(line: &[[f32; 4]], taps: &[LineTap], filtered: &mut [[f32; 4]]) {
    for (value, tap) in filtered.iter_mut().zip(taps) {
        let (p0, p1, fraction) = (line[tap.first as usize], line[tap.second as usize], tap.fraction);
        *value = std::array::from_fn(|c| p0[c] + (p1[c] - p0[c]) * fraction);
    }
}

/// The source pixels that an output of `width` × `height` through `map` can read, with a margin for rounding;
/// None when the map is not finite or the crop lies wholly outside.
fn source_region(map: &Affine, width: usize, height: usize, last_x: usize, last_y: usize) -> Option<Region> {
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
    Some(Region {
        x0: clamp(low_x, last_x),
        y0: clamp(low_y, last_y),
        x1: clamp(high_x, last_x),
        y1: clamp(high_y, last_y),
    })
}

/// A whole number in [0, 2^23) as u32, through its bits: added to 2^23, it is that power's exponent over the
/// number itself in the mantissa. The same value as `value as u32`, but on vectors (x86 has no vector
/// conversion with `as`'s saturation, so LLVM converts lane by lane with branches). For other inputs the result
/// is meaningless but defined.
#[inline(always)]
fn whole_to_u32(value: f32) -> u32 {
    const TWO_TO_23: f32 = 8_388_608.0;
    (value + TWO_TO_23).to_bits().wrapping_sub(TWO_TO_23.to_bits())
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
