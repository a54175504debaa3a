//! The plots of `deepgate eval --plot` and `deepgate calibrate --plot`: the ROC (x = BPCER, y = 1 − APCER) with
//! the chance diagonal and the EER point, and the histogram of genuine fake probabilities with the thresholds,
//! drawn pixel by pixel with a tiny built-in font, because the crate carries no vector or font renderer for two
//! pictures.
#![forbid(unsafe_code)]

use super::metrics::RocPoint;
use anyhow::{ensure, Context, Result};
use image::{ImageFormat, Rgb, RgbImage};
use std::path::Path;

/// Width and height of the picture in pixels.
const SIZE: u32 = 512;
/// Edges of the plot area in pixels; the wider left and bottom margins hold the tick labels and axis titles.
const LEFT: i32 = 56;
const RIGHT: i32 = 496;
const TOP: i32 = 16;
const BOTTOM: i32 = 456;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const AXIS: Rgb<u8> = Rgb([0, 0, 0]);
const CHANCE: Rgb<u8> = Rgb([150, 150, 150]);
const CURVE: Rgb<u8> = Rgb([20, 60, 220]);
const EER_POINT: Rgb<u8> = Rgb([220, 30, 30]);
const TEXT: Rgb<u8> = Rgb([40, 40, 40]);
const BAR: Rgb<u8> = Rgb([20, 60, 220]);
const THRESHOLD: Rgb<u8> = Rgb([220, 30, 30]);
const CURRENT: Rgb<u8> = Rgb([120, 120, 120]);

/// Pixel size of one font cell; glyphs are 3x5 cells.
const FONT_SCALE: i32 = 2;

/// Writes the ROC as a 512x512 PNG to `path` (PNG whatever the extension), with AUC and EER written in the
/// lower right and a red dot where APCER = BPCER.
pub fn write_roc_png(points: &[RocPoint], auc: f64, eer: f64, path: &Path) -> Result<()> {
    ensure!(!points.is_empty(), "no ROC points to plot");
    ensure!(
        points.iter().all(|point| (0.0..=1.0).contains(&point.apcer) && (0.0..=1.0).contains(&point.bpcer)),
        "ROC rates must lie between 0 and 1"
    );
    ensure!(
        (0.0..=1.0).contains(&auc) && (0.0..=1.0).contains(&eer),
        "AUC {auc} and EER {eer} must lie in [0, 1]"
    );
    let mut canvas = Canvas::gridded();
    canvas.line((LEFT, BOTTOM), (RIGHT, TOP), CHANCE, 0);
    canvas.line((LEFT, TOP), (LEFT, BOTTOM), AXIS, 0);
    canvas.line((LEFT, BOTTOM), (RIGHT, BOTTOM), AXIS, 0);
    axis_labels(&mut canvas);

    let pixels: Vec<(i32, i32)> =
        points.iter().map(|point| to_pixel(point.bpcer, 1.0 - point.apcer)).collect();
    for (from, to) in pixels.iter().zip(pixels.iter().skip(1)) {
        canvas.line(*from, *to, CURVE, 1);
    }
    if let [only] = pixels.as_slice() {
        canvas.disc(*only, 1, CURVE);
    }
    canvas.disc(to_pixel(eer, 1.0 - eer), 5, EER_POINT);

    // Drawn last so the figures stay readable over the grid.
    canvas.legend(
        &[format!("AUC {auc:.3}"), format!("EER {:.2}%", 100.0 * eer)],
        Corner::BottomRight,
        EER_POINT,
    );

    canvas
        .image
        .save_with_format(path, ImageFormat::Png)
        .with_context(|| format!("writing ROC plot {}", path.display()))
}

/// Writes the histogram of fake probabilities as a 512x512 PNG to `path`: `bins` equal-width bars over [0, 1]
/// (heights relative to the fullest bin), the calibrated `threshold` as a red line, the board's `current`
/// threshold as a grey dashed one, and the sample count and threshold written in the upper right.
pub fn write_histogram_png(bins: &[u64], threshold: f64, current: Option<f64>, path: &Path) -> Result<()> {
    ensure!(!bins.is_empty(), "no histogram bins to plot");
    ensure!(
        (0.0..=1.0).contains(&threshold) && current.is_none_or(|value| (0.0..=1.0).contains(&value)),
        "thresholds must lie in [0, 1]"
    );
    let fullest = bins.iter().copied().max().unwrap_or(0).max(1);
    let mut canvas = Canvas::gridded();
    for (index, count) in bins.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let (left, top) = to_pixel(index as f64 / bins.len() as f64, *count as f64 / fullest as f64);
        let (right, _) = to_pixel((index + 1) as f64 / bins.len() as f64, 0.0);
        // One pixel of white between neighbouring bars.
        canvas.fill_rectangle((left + 1, top), (right - 1, BOTTOM), BAR);
    }
    canvas.line((LEFT, TOP), (LEFT, BOTTOM), AXIS, 0);
    canvas.line((LEFT, BOTTOM), (RIGHT, BOTTOM), AXIS, 0);
    if let Some(current) = current {
        let (x, _) = to_pixel(current, 0.0);
        for y in (TOP..BOTTOM).step_by(12) {
            canvas.line((x, y), (x, (y + 6).min(BOTTOM)), CURRENT, 0);
        }
    }
    let (x, _) = to_pixel(threshold, 0.0);
    canvas.line((x, TOP), (x, BOTTOM), THRESHOLD, 1);

    let glyph_height = 5 * FONT_SCALE;
    for (value, label) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        let (x, _) = to_pixel(value, 0.0);
        canvas.text((x - text_width(label) / 2, BOTTOM + 6), label, TEXT, false);
    }
    let fullest_label = fullest.to_string();
    canvas.text(
        (LEFT - 6 - text_width(&fullest_label), TOP - glyph_height / 2 + 1),
        &fullest_label,
        TEXT,
        false,
    );
    let (middle_x, middle_y) = to_pixel(0.5, 0.5);
    let x_title = "P FAKE";
    canvas.text((middle_x - text_width(x_title) / 2, BOTTOM + 12 + glyph_height), x_title, TEXT, false);
    let y_title = "COUNT";
    canvas.text((LEFT - 48, middle_y + text_width(y_title) / 2), y_title, TEXT, true);

    let total: u64 = bins.iter().sum();
    canvas.legend(&[format!("N {total}"), format!("T {threshold:.4}")], Corner::TopRight, THRESHOLD);
    canvas
        .image
        .save_with_format(path, ImageFormat::Png)
        .with_context(|| format!("writing histogram plot {}", path.display()))
}

/// Plot coordinates in [0, 1] (clamped) to pixel coordinates, y growing upwards.
fn to_pixel(x: f64, y: f64) -> (i32, i32) {
    let x = LEFT + (x.clamp(0.0, 1.0) * (RIGHT - LEFT) as f64).round() as i32;
    let y = BOTTOM - (y.clamp(0.0, 1.0) * (BOTTOM - TOP) as f64).round() as i32;
    (x, y)
}

/// Tick labels at 0, 0.5 and 1 on both axes, and the axis titles.
fn axis_labels(canvas: &mut Canvas) {
    let glyph_height = 5 * FONT_SCALE;
    for (value, label) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        let (x, y) = to_pixel(value, value);
        canvas.text((x - text_width(label) / 2, BOTTOM + 6), label, TEXT, false);
        canvas.text((LEFT - 6 - text_width(label), y - glyph_height / 2), label, TEXT, false);
    }
    let (middle_x, middle_y) = to_pixel(0.5, 0.5);
    let x_title = "BPCER";
    canvas.text((middle_x - text_width(x_title) / 2, BOTTOM + 12 + glyph_height), x_title, TEXT, false);
    let y_title = "1-APCER";
    canvas.text((LEFT - 48, middle_y + text_width(y_title) / 2), y_title, TEXT, true);
}

/// Width in pixels of `text` in the built-in font.
fn text_width(text: &str) -> i32 {
    (text.chars().count() as i32 * 4 - 1).max(0) * FONT_SCALE
}

/// Rows of a 3x5 glyph, top first, the left column in bit 2; characters without a glyph draw as blanks.
fn glyph(character: char) -> [u8; 5] {
    match character {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '%' => [0b101, 0b001, 0b010, 0b100, 0b101],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        _ => [0; 5],
    }
}

/// The picture with bounds-checked drawing: anything outside it is clipped rather than a panic.
struct Canvas {
    image: RgbImage,
}

/// Where a legend box sits: 6 pixels inside the plot's right edge and its top or bottom edge.
enum Corner {
    TopRight,
    BottomRight,
}

impl Canvas {
    /// A white picture with the plot's 10 x 10 grid.
    fn gridded() -> Canvas {
        let mut canvas = Canvas { image: RgbImage::from_pixel(SIZE, SIZE, WHITE) };
        for step in 0..=10 {
            let (x, y) = to_pixel(step as f64 / 10.0, step as f64 / 10.0);
            canvas.line((x, TOP), (x, BOTTOM), GRID, 0);
            canvas.line((LEFT, y), (RIGHT, y), GRID, 0);
        }
        canvas
    }

    /// `lines` of text in `colour` on a white box in `corner` of the plot.
    fn legend(&mut self, lines: &[String], corner: Corner, colour: Rgb<u8>) {
        let width = lines.iter().map(|line| text_width(line)).max().unwrap_or(0);
        let line_height = 7 * FONT_SCALE;
        let height = lines.len() as i32 * line_height + 6;
        let box_right = RIGHT - 6;
        let (box_top, box_bottom) = match corner {
            Corner::TopRight => (TOP + 6, TOP + 6 + height),
            Corner::BottomRight => (BOTTOM - 6 - height, BOTTOM - 6),
        };
        let box_left = box_right - width - 8;
        self.fill_rectangle((box_left, box_top), (box_right, box_bottom), WHITE);
        for (row, line) in lines.iter().enumerate() {
            self.text((box_left + 4, box_top + 4 + row as i32 * line_height), line, colour, false);
        }
    }

    fn set(&mut self, (x, y): (i32, i32), color: Rgb<u8>) {
        if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y)) {
            if x < self.image.width() && y < self.image.height() {
                self.image.put_pixel(x, y, color);
            }
        }
    }

    /// Fills the square of side 2 * `radius` + 1 centred on `center`.
    fn square(&mut self, (x, y): (i32, i32), radius: i32, color: Rgb<u8>) {
        self.fill_rectangle((x - radius, y - radius), (x + radius, y + radius), color);
    }

    /// Fills the rectangle with corners `top_left` and `bottom_right`, both included.
    fn fill_rectangle(&mut self, top_left: (i32, i32), bottom_right: (i32, i32), color: Rgb<u8>) {
        for y in top_left.1..=bottom_right.1 {
            for x in top_left.0..=bottom_right.0 {
                self.set((x, y), color);
            }
        }
    }

    fn disc(&mut self, (center_x, center_y): (i32, i32), radius: i32, color: Rgb<u8>) {
        for dy in -radius..=radius {
            for dx in -radius..=radius {
                if dx * dx + dy * dy <= radius * radius {
                    self.set((center_x + dx, center_y + dy), color);
                }
            }
        }
    }

    /// Bresenham's line, stamping a square of side 2 * `radius` + 1 at each step for thickness.
    fn line(&mut self, from: (i32, i32), to: (i32, i32), color: Rgb<u8>, radius: i32) {
        let (mut x, mut y) = from;
        let (dx, dy) = ((to.0 - x).abs(), -(to.1 - y).abs());
        let (step_x, step_y) = (if x < to.0 { 1 } else { -1 }, if y < to.1 { 1 } else { -1 });
        let mut error = dx + dy;
        loop {
            self.square((x, y), radius, color);
            if (x, y) == to {
                break;
            }
            let doubled = 2 * error;
            if doubled >= dy {
                error += dy;
                x += step_x;
            }
            if doubled <= dx {
                error += dx;
                y += step_y;
            }
        }
    }

    /// Draws `text` from its top-left corner, or, when `upwards`, rotated a quarter turn to read bottom to top
    /// from its bottom-left corner.
    fn text(&mut self, (x, y): (i32, i32), text: &str, color: Rgb<u8>, upwards: bool) {
        for (index, character) in text.chars().enumerate() {
            let advance = index as i32 * 4 * FONT_SCALE;
            for (row, bits) in glyph(character).iter().enumerate() {
                for column in 0..3 {
                    if bits & (0b100 >> column) == 0 {
                        continue;
                    }
                    let (along, across) = (advance + column * FONT_SCALE, row as i32 * FONT_SCALE);
                    let cell = if upwards {
                        (x + across, y - along - FONT_SCALE + 1)
                    } else {
                        (x + along, y + across)
                    };
                    self.fill_rectangle(cell, (cell.0 + FONT_SCALE - 1, cell.1 + FONT_SCALE - 1), color);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_the_curve_on_white() -> Result<()> {
        // The curve (x = BPCER, y = 1 − APCER) runs (0, 0) → (0, 0.5) → (0.5, 1) → (1, 1); its EER is 0.25.
        let points = [(f64::INFINITY, 1.0, 0.0), (0.9, 0.5, 0.0), (0.5, 0.0, 0.5), (0.1, 0.0, 1.0)]
            .map(|(threshold, apcer, bpcer)| RocPoint { threshold, apcer, bpcer });
        let path = crate::testing::scratch_dir("roc").join("roc.png");
        write_roc_png(&points, 0.875, 0.25, &path)?;
        let picture = image::open(&path)?.to_rgb8();
        std::fs::remove_file(&path)?;

        assert_eq!(picture.dimensions(), (SIZE, SIZE));
        for corner in [(0, 0), (SIZE - 1, 0), (0, SIZE - 1), (SIZE - 1, SIZE - 1)] {
            assert_eq!(*picture.get_pixel(corner.0, corner.1), WHITE, "corner {corner:?}");
        }
        let pixel_at = |x: f64, y: f64| {
            let (x, y) = to_pixel(x, y);
            *picture.get_pixel(x as u32, y as u32)
        };
        for (x, y) in [(0.1, 0.6), (0.4, 0.9), (0.0, 0.3), (0.75, 1.0)] {
            let Rgb([red, green, blue]) = pixel_at(x, y);
            assert!(
                blue > 150 && red < 100 && green < 100,
                "({x}, {y}) is {:?}, not blue",
                [red, green, blue]
            );
            // The line is at least 3 pixels thick across its direction.
            let (px, py) = to_pixel(x, y);
            let Rgb([_, _, beside]) = *picture.get_pixel(px as u32 + 1, py as u32);
            assert!(beside > 150, "({x}, {y}) is thin");
        }
        let Rgb([red, green, blue]) = pixel_at(0.25, 0.75);
        assert!(red > 150 && green < 100 && blue < 100, "EER point is {:?}, not red", [red, green, blue]);
        assert_eq!(pixel_at(0.7, 0.7), CHANCE, "chance diagonal");
        Ok(())
    }

    #[test]
    fn draws_the_histogram_bars_and_the_thresholds() -> Result<()> {
        // Four bins over [0, 1]: the second is the fullest, the fourth empty.
        let path = crate::testing::scratch_dir("histogram").join("histogram.png");
        write_histogram_png(&[2, 4, 1, 0], 0.625, Some(0.875), &path)?;
        let picture = image::open(&path)?.to_rgb8();
        std::fs::remove_file(&path)?;
        assert_eq!(picture.dimensions(), (SIZE, SIZE));
        let pixel_at = |x: f64, y: f64| {
            let (x, y) = to_pixel(x, y);
            *picture.get_pixel(x as u32, y as u32)
        };
        // Bar heights 0.5, 1, 0.25 of the plot, in the middle of their bins.
        assert_eq!(pixel_at(0.125, 0.45), BAR);
        assert_ne!(pixel_at(0.125, 0.55), BAR, "the first bar is half as high as the fullest");
        assert_eq!(pixel_at(0.375, 0.95), BAR);
        assert_eq!(pixel_at(0.55, 0.2), BAR);
        assert_ne!(pixel_at(0.55, 0.3), BAR);
        assert_ne!(pixel_at(0.8, 0.1), BAR, "the empty bin has no bar");
        assert_eq!(pixel_at(0.625, 0.6), THRESHOLD, "the calibrated threshold");
        let dashed = (0..40).any(|step| pixel_at(0.875, step as f64 / 40.0) == CURRENT);
        assert!(dashed, "the board's current threshold");
        assert!(write_histogram_png(&[], 0.5, None, &path).is_err());
        assert!(write_histogram_png(&[1], 1.5, None, &path).is_err());
        assert!(!path.exists());
        Ok(())
    }

    #[test]
    fn rejects_nonsense() {
        let path = crate::testing::scratch_dir("roc-refused").join("roc.png");
        assert!(write_roc_png(&[], 0.5, 0.5, &path).is_err());
        let point = RocPoint { threshold: 0.5, apcer: f64::NAN, bpcer: 0.0 };
        assert!(write_roc_png(&[point], 0.5, 0.5, &path).is_err());
        assert!(!path.exists());
    }
}
