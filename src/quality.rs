//! Quality gates for one face: size, sharpness, pose from keypoints, exposure. A frame that fails a gate is
//! not used as evidence, and the reason is kept for the verdict.
#![forbid(unsafe_code)]

use crate::detect::{Face, LEFT_EYE, MOUTH_CENTRE, NOSE_TIP, RIGHT_EYE};
use crate::preprocess::RgbImage;
use crate::settings::in_range;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Limits from the board config's `[quality]` section.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QualitySettings {
    /// Shorter side of the face box, in source pixels, below which the face is too small to judge.
    pub min_face_px: f32,
    /// Minimum variance of the Laplacian of the aligned crop's luminance (sharpness; lower is blurrier).
    pub min_sharpness: f32,
    /// Largest |yaw| proxy: nose offset from the eye midpoint along the eye line, over the eye distance.
    pub max_yaw: f32,
    /// Largest head roll in degrees (angle of the eye line).
    pub max_roll_degrees: f32,
    /// Allowed mean luminance of the crop's central region, 0..=255.
    pub min_brightness: f32,
    pub max_brightness: f32,
    /// Largest fraction of the central region that is clipped (≤ 5 or ≥ 250).
    pub max_clipped: f32,
    /// Largest fraction of the face box lying outside the frame (a face cut by the image edge).
    pub max_outside: f32,
}

impl QualitySettings {
    /// Refuses limits that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        in_range("quality.min_face_px", self.min_face_px, 0.0, 4096.0)?;
        in_range("quality.min_sharpness", self.min_sharpness, 0.0, 1e6)?;
        in_range("quality.max_yaw", self.max_yaw, 0.0, 1.0)?;
        in_range("quality.max_roll_degrees", self.max_roll_degrees, 0.0, 180.0)?;
        in_range("quality.min_brightness", self.min_brightness, 0.0, 255.0)?;
        in_range("quality.max_brightness", self.max_brightness, self.min_brightness, 255.0)?;
        in_range("quality.max_clipped", self.max_clipped, 0.0, 1.0)?;
        in_range("quality.max_outside", self.max_outside, 0.0, 1.0)
    }
}

/// Which gate failed first, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityIssue {
    TooSmall,
    OutsideFrame,
    Blurred,
    Turned,
    Tilted,
    TooDark,
    TooBright,
    Clipped,
}

impl QualityIssue {
    pub fn describe(self) -> &'static str {
        match self {
            QualityIssue::TooSmall => "face too small",
            QualityIssue::OutsideFrame => "face partly outside the image",
            QualityIssue::Blurred => "face blurred",
            QualityIssue::Turned => "head turned away",
            QualityIssue::Tilted => "head tilted",
            QualityIssue::TooDark => "face too dark",
            QualityIssue::TooBright => "face too bright",
            QualityIssue::Clipped => "face over- or under-exposed",
        }
    }
}

/// The measured quality of one face.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Quality {
    pub face_px: f32,
    pub sharpness: f32,
    pub yaw: f32,
    pub roll_degrees: f32,
    pub brightness: f32,
    pub clipped: f32,
    pub outside: f32,
}

impl Quality {
    /// Measures `face`, found in a frame of `frame_width`×`frame_height`, and its aligned crop.
    pub fn measure(face: &Face, frame_width: u32, frame_height: u32, crop: &RgbImage) -> Quality {
        let (yaw, roll_degrees) = pose(face);
        let (sharpness, brightness, clipped) = crop_statistics(crop);
        let [left, top, width, height] = face.bbox;
        let inside_width = (left + width).min(frame_width as f32) - left.max(0.0);
        let inside_height = (top + height).min(frame_height as f32) - top.max(0.0);
        let inside = inside_width.max(0.0) * inside_height.max(0.0);
        let outside = if width * height > 0.0 { 1.0 - inside / (width * height) } else { 1.0 };
        Quality { face_px: width.min(height), sharpness, yaw, roll_degrees, brightness, clipped, outside }
    }

    /// The first failed gate, or None when the face is usable.
    pub fn check(&self, settings: &QualitySettings) -> Option<QualityIssue> {
        // `at_least`/`at_most` are false for NaN, so a measurement that went wrong fails its gate.
        if !at_least(self.face_px, settings.min_face_px) {
            Some(QualityIssue::TooSmall)
        } else if !at_most(self.outside, settings.max_outside) {
            Some(QualityIssue::OutsideFrame)
        } else if !at_most(self.yaw.abs(), settings.max_yaw) {
            Some(QualityIssue::Turned)
        } else if !at_most(self.roll_degrees.abs(), settings.max_roll_degrees) {
            Some(QualityIssue::Tilted)
        } else if !at_least(self.brightness, settings.min_brightness) {
            Some(QualityIssue::TooDark)
        } else if !at_most(self.brightness, settings.max_brightness) {
            Some(QualityIssue::TooBright)
        } else if !at_most(self.clipped, settings.max_clipped) {
            Some(QualityIssue::Clipped)
        } else if !at_least(self.sharpness, settings.min_sharpness) {
            Some(QualityIssue::Blurred)
        } else {
            None
        }
    }
}

/// `value >= minimum`, false for NaN.
fn at_least(value: f32, minimum: f32) -> bool {
    value >= minimum
}

/// `value <= maximum`, false for NaN.
fn at_most(value: f32, maximum: f32) -> bool {
    value <= maximum
}

/// Yaw proxy and roll from the keypoints. In the frame of the eye line, a frontal face has its nose tip
/// half-way between the eyes; turning the head moves it sideways by about sin(yaw) of the eye distance.
fn pose(face: &Face) -> (f32, f32) {
    let right = face.keypoints[RIGHT_EYE];
    let left = face.keypoints[LEFT_EYE];
    let nose = face.keypoints[NOSE_TIP];
    let mouth = face.keypoints[MOUTH_CENTRE];
    let eye_x = left[0] - right[0];
    let eye_y = left[1] - right[1];
    let distance = (eye_x * eye_x + eye_y * eye_y).sqrt();
    let roll_degrees = eye_y.atan2(eye_x).to_degrees();
    if distance.is_nan() || distance <= 0.0 {
        return (f32::NAN, roll_degrees);
    }
    // Average the nose and mouth offsets: both sit on the face's midline.
    let middle = [(left[0] + right[0]) / 2.0, (left[1] + right[1]) / 2.0];
    let along =
        |point: [f32; 2]| ((point[0] - middle[0]) * eye_x + (point[1] - middle[1]) * eye_y) / distance;
    let yaw = (along(nose) * 0.7 + along(mouth) * 0.3) / distance;
    (yaw, roll_degrees)
}

/// Sharpness (variance of the 4-neighbour Laplacian), mean luminance and clipped fraction over the central
/// half of the crop, where the face is; the border holds background and letterbox black.
fn crop_statistics(crop: &RgbImage) -> (f32, f32, f32) {
    let (width, height) = (crop.width, crop.height);
    if width < 8 || height < 8 {
        return (0.0, 0.0, 1.0);
    }
    let luma = |x: usize, y: usize| {
        let [r, g, b] = crop.pixel(x, y);
        0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32
    };
    let (x0, x1, y0, y1) = (width / 4, width * 3 / 4, height / 4, height * 3 / 4);
    let (mut sum, mut clipped, mut count) = (0.0f64, 0usize, 0usize);
    let (mut laplacian_sum, mut laplacian_squares) = (0.0f64, 0.0f64);
    for y in y0..y1 {
        for x in x0..x1 {
            let centre = luma(x, y);
            sum += centre as f64;
            // Clipped as documented: at or below 5, at or above 250.
            if centre <= 5.0 || centre >= 250.0 {
                clipped += 1;
            }
            let laplacian =
                (luma(x - 1, y) + luma(x + 1, y) + luma(x, y - 1) + luma(x, y + 1) - 4.0 * centre) as f64;
            laplacian_sum += laplacian;
            laplacian_squares += laplacian * laplacian;
            count += 1;
        }
    }
    let n = count as f64;
    let mean_laplacian = laplacian_sum / n;
    let variance = laplacian_squares / n - mean_laplacian * mean_laplacian;
    (variance as f32, (sum / n) as f32, clipped as f32 / count as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The development board's limits (board/host.toml).
    fn settings() -> QualitySettings {
        QualitySettings {
            min_face_px: 64.0,
            min_sharpness: 15.0,
            max_yaw: 0.35,
            max_roll_degrees: 30.0,
            min_brightness: 40.0,
            max_brightness: 220.0,
            max_clipped: 0.25,
            max_outside: 0.1,
        }
    }

    /// A frontal face: eyes level 40 px apart, nose tip and mouth on the midline.
    fn frontal() -> Face {
        let mut face = Face { bbox: [100.0, 100.0, 200.0, 200.0], score: 0.9, ..Face::default() };
        face.keypoints[RIGHT_EYE] = [180.0, 180.0];
        face.keypoints[LEFT_EYE] = [220.0, 180.0];
        face.keypoints[NOSE_TIP] = [200.0, 200.0];
        face.keypoints[MOUTH_CENTRE] = [200.0, 220.0];
        face
    }

    /// `face`'s keypoints rotated by `degrees` about the point between the eyes.
    fn rotated(face: &Face, degrees: f32) -> Face {
        let (sin, cos) = degrees.to_radians().sin_cos();
        let centre = [200.0, 180.0];
        let mut out = *face;
        for point in out.keypoints.iter_mut() {
            let (x, y) = (point[0] - centre[0], point[1] - centre[1]);
            *point = [centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos];
        }
        out
    }

    /// A crop of `width`×`height` whose pixel (x, y) is grey level `level(x, y)`.
    fn crop(width: usize, height: usize, level: impl Fn(usize, usize) -> u8) -> RgbImage {
        let mut image = RgbImage::new(width, height);
        for y in 0..height {
            for x in 0..width {
                let index = (y * width + x) * 3;
                image.data[index..index + 3].fill(level(x, y));
            }
        }
        image
    }

    fn measure_crop(image: &RgbImage) -> Quality {
        Quality::measure(&frontal(), 640, 480, image)
    }

    /// A measurement that passes every gate of `settings()`.
    fn good() -> Quality {
        Quality {
            face_px: 200.0,
            sharpness: 100.0,
            yaw: 0.0,
            roll_degrees: 0.0,
            brightness: 128.0,
            clipped: 0.0,
            outside: 0.0,
        }
    }

    #[test]
    fn frontal_face_has_no_yaw_or_roll() {
        let (yaw, roll) = pose(&frontal());
        assert!(yaw.abs() < 1e-6 && roll.abs() < 1e-4, "yaw {yaw}, roll {roll}");
    }

    #[test]
    fn nose_moving_towards_an_eye_increases_yaw() {
        let turned = |shift: f32| {
            let mut face = frontal();
            face.keypoints[NOSE_TIP][0] += shift;
            pose(&face).0
        };
        // Nose only (weight 0.7) moved by a quarter of the eye distance.
        assert!((turned(10.0) - 0.7 * 10.0 / 40.0).abs() < 1e-5, "yaw {}", turned(10.0));
        assert!(turned(5.0).abs() < turned(10.0).abs() && turned(10.0).abs() < turned(20.0).abs());
        // Turning the other way gives the same size with the opposite sign.
        assert!((turned(-10.0) + turned(10.0)).abs() < 1e-6);
        assert!(good().check(&settings()).is_none());
        let face = Quality { yaw: turned(25.0), ..good() };
        assert_eq!(face.check(&settings()), Some(QualityIssue::Turned));
    }

    #[test]
    fn tilted_eyes_give_the_roll_angle_and_no_yaw() {
        let mut face = frontal();
        face.keypoints[LEFT_EYE] = [210.0, 210.0];
        face.keypoints[RIGHT_EYE] = [180.0, 180.0];
        assert!((pose(&face).1 - 45.0).abs() < 1e-4, "roll {}", pose(&face).1);
        // A frontal face rotated in the image plane is tilted, not turned.
        for degrees in [-40.0, -10.0, 20.0, 35.0] {
            let (yaw, roll) = pose(&rotated(&frontal(), degrees));
            assert!((roll - degrees).abs() < 1e-3, "{degrees}°: roll {roll}");
            assert!(yaw.abs() < 1e-5, "{degrees}°: yaw {yaw}");
        }
    }

    #[test]
    fn eyes_at_the_same_point_fail_the_pose_gate() {
        let mut face = frontal();
        face.keypoints[LEFT_EYE] = face.keypoints[RIGHT_EYE];
        let (yaw, _) = pose(&face);
        assert_eq!(Quality { yaw, ..good() }.check(&settings()), Some(QualityIssue::Turned));
    }

    #[test]
    fn check_reports_the_first_failed_gate_in_order() {
        let settings = settings();
        // Fail every gate, then repair one at a time: each repair reveals the next gate in order.
        let mut quality = Quality {
            face_px: 10.0,
            sharpness: 1.0,
            yaw: 0.9,
            roll_degrees: -60.0,
            brightness: 10.0,
            clipped: 0.9,
            outside: 0.5,
        };
        type Repair = fn(&mut Quality);
        let repairs: [(QualityIssue, Repair); 8] = [
            (QualityIssue::TooSmall, |q| q.face_px = 200.0),
            (QualityIssue::OutsideFrame, |q| q.outside = 0.0),
            (QualityIssue::Turned, |q| q.yaw = -0.1),
            (QualityIssue::Tilted, |q| q.roll_degrees = -5.0),
            (QualityIssue::TooDark, |q| q.brightness = 240.0),
            (QualityIssue::TooBright, |q| q.brightness = 128.0),
            (QualityIssue::Clipped, |q| q.clipped = 0.1),
            (QualityIssue::Blurred, |q| q.sharpness = 100.0),
        ];
        for (issue, repair) in repairs {
            assert_eq!(quality.check(&settings), Some(issue), "{quality:?}");
            repair(&mut quality);
        }
        assert_eq!(quality.check(&settings), None);
    }

    #[test]
    fn a_nan_measurement_fails_its_gate() {
        let settings = settings();
        let nan = f32::NAN;
        let cases = [
            (Quality { face_px: nan, ..good() }, QualityIssue::TooSmall),
            (Quality { outside: nan, ..good() }, QualityIssue::OutsideFrame),
            (Quality { yaw: nan, ..good() }, QualityIssue::Turned),
            (Quality { roll_degrees: nan, ..good() }, QualityIssue::Tilted),
            (Quality { brightness: nan, ..good() }, QualityIssue::TooDark),
            (Quality { clipped: nan, ..good() }, QualityIssue::Clipped),
            (Quality { sharpness: nan, ..good() }, QualityIssue::Blurred),
        ];
        for (quality, issue) in cases {
            assert_eq!(quality.check(&settings), Some(issue), "{quality:?}");
        }
    }

    #[test]
    fn flat_grey_crop_has_no_sharpness_and_its_own_brightness() {
        let quality = measure_crop(&crop(32, 32, |_, _| 128));
        assert_eq!(quality.sharpness, 0.0);
        assert!((quality.brightness - 128.0).abs() < 1e-3, "brightness {}", quality.brightness);
        assert_eq!(quality.clipped, 0.0);
        assert_eq!(quality.check(&settings()), Some(QualityIssue::Blurred));
    }

    #[test]
    fn checkerboard_crop_is_sharp() {
        // Neighbours differ by 50 levels: the Laplacian is ±200 everywhere, its variance 200².
        let quality = measure_crop(&crop(32, 32, |x, y| if (x + y) % 2 == 0 { 100 } else { 150 }));
        assert!((quality.sharpness - 40_000.0).abs() < 1.0, "sharpness {}", quality.sharpness);
        assert!((quality.brightness - 125.0).abs() < 1e-3, "brightness {}", quality.brightness);
        assert_eq!(quality.clipped, 0.0);
        assert_eq!(quality.check(&settings()), None);
    }

    #[test]
    fn only_the_centre_of_the_crop_is_measured() {
        // Black letterbox bars in the outer quarter (beyond the Laplacian's reach of one pixel) do not darken
        // or sharpen the face.
        let barred = crop(32, 32, |x, _| if (7..25).contains(&x) { 128 } else { 0 });
        let quality = measure_crop(&barred);
        assert_eq!(quality.sharpness, 0.0);
        assert!((quality.brightness - 128.0).abs() < 1e-3, "brightness {}", quality.brightness);
    }

    #[test]
    fn white_crop_is_clipped_and_too_bright() {
        let quality = measure_crop(&crop(32, 32, |_, _| 255));
        assert_eq!(quality.clipped, 1.0);
        assert!((quality.brightness - 255.0).abs() < 1e-3, "brightness {}", quality.brightness);
        assert_eq!(quality.check(&settings()), Some(QualityIssue::TooBright));
        assert_eq!(Quality { brightness: 128.0, ..quality }.check(&settings()), Some(QualityIssue::Clipped));
    }

    #[test]
    fn clipping_includes_the_documented_limits() {
        // Documented as clipped at <= 5 or >= 250.
        for (level, clipped) in [(4, 1.0), (5, 1.0), (6, 0.0), (249, 0.0), (250, 1.0)] {
            assert_eq!(measure_crop(&crop(32, 32, |_, _| level)).clipped, clipped, "level {level}");
        }
    }

    #[test]
    fn a_crop_too_small_to_measure_fails() {
        let quality = measure_crop(&crop(4, 4, |_, _| 128));
        assert_eq!(quality.clipped, 1.0);
        assert!(quality.check(&settings()).is_some());
    }

    #[test]
    fn measure_reports_size_and_the_share_outside_the_frame() {
        let image = crop(32, 32, |_, _| 128);
        let inside = Quality::measure(&frontal(), 640, 480, &image);
        assert_eq!((inside.face_px, inside.outside), (200.0, 0.0));
        // Half the box beyond the left edge.
        let mut cut = frontal();
        cut.bbox = [-50.0, 100.0, 100.0, 120.0];
        let quality = Quality::measure(&cut, 640, 480, &image);
        assert_eq!(quality.face_px, 100.0);
        assert!((quality.outside - 0.5).abs() < 1e-6, "outside {}", quality.outside);
        assert_eq!(quality.check(&settings()), Some(QualityIssue::OutsideFrame));
        // A box entirely outside, and an empty box, are wholly outside.
        cut.bbox = [700.0, 100.0, 100.0, 100.0];
        assert_eq!(Quality::measure(&cut, 640, 480, &image).outside, 1.0);
        cut.bbox = [100.0, 100.0, 0.0, 0.0];
        assert_eq!(Quality::measure(&cut, 640, 480, &image).outside, 1.0);
    }
}
