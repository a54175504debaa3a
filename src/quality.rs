//! Quality gates for one face: size, sharpness, pose from keypoints, exposure. A frame that fails a gate is
//! not used as evidence, and the reason is kept for the verdict.
#![forbid(unsafe_code)]

use crate::detect::{Face, LEFT_EYE, MOUTH_CENTRE, NOSE_TIP, RIGHT_EYE};
use crate::preprocess::RgbImage;
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
        Quality {
            face_px: width.min(height),
            sharpness,
            yaw,
            roll_degrees,
            brightness,
            clipped,
            outside,
        }
    }

    /// The first failed gate, or None when the face is usable.
    pub fn check(&self, settings: &QualitySettings) -> Option<QualityIssue> {
        // `!(a >= b)` rather than `a < b`: a NaN measurement fails the gate.
        if !(self.face_px >= settings.min_face_px) {
            Some(QualityIssue::TooSmall)
        } else if !(self.outside <= settings.max_outside) {
            Some(QualityIssue::OutsideFrame)
        } else if !(self.yaw.abs() <= settings.max_yaw) {
            Some(QualityIssue::Turned)
        } else if !(self.roll_degrees.abs() <= settings.max_roll_degrees) {
            Some(QualityIssue::Tilted)
        } else if !(self.brightness >= settings.min_brightness) {
            Some(QualityIssue::TooDark)
        } else if !(self.brightness <= settings.max_brightness) {
            Some(QualityIssue::TooBright)
        } else if !(self.clipped <= settings.max_clipped) {
            Some(QualityIssue::Clipped)
        } else if !(self.sharpness >= settings.min_sharpness) {
            Some(QualityIssue::Blurred)
        } else {
            None
        }
    }
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
    if !(distance > 0.0) {
        return (f32::NAN, roll_degrees);
    }
    // Average the nose and mouth offsets: both sit on the face's midline.
    let middle = [(left[0] + right[0]) / 2.0, (left[1] + right[1]) / 2.0];
    let along = |point: [f32; 2]| ((point[0] - middle[0]) * eye_x + (point[1] - middle[1]) * eye_y) / distance;
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
            if !(5.0..250.0).contains(&centre) {
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
