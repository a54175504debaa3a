//! Face alignment: the similarity transform that puts the eyes, nose and mouth of a detected face onto the
//! canonical template of `models/alignment.toml` (shared with the training pipeline), with its margin.
#![forbid(unsafe_code)]

use crate::detect::{Face, LEFT_EYE, MOUTH_CENTRE, NOSE_TIP, RIGHT_EYE};
use crate::preprocess::Affine;
use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The alignment definition, as written in `models/alignment.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alignment {
    pub right_eye: [f32; 2],
    pub left_eye: [f32; 2],
    pub nose_tip: [f32; 2],
    pub mouth_centre: [f32; 2],
    pub margin: f32,
    pub default_size: usize,
}

impl Alignment {
    pub fn load(path: &Path) -> Result<Alignment> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading alignment definition {}", path.display()))?;
        let alignment: Alignment = toml::from_str(&text)
            .with_context(|| format!("parsing alignment definition {}", path.display()))?;
        alignment.validate().with_context(|| format!("alignment definition {}", path.display()))?;
        Ok(alignment)
    }

    fn validate(&self) -> Result<()> {
        let points = self.template();
        ensure!(
            points.iter().flatten().all(|value| (0.0..=1.0).contains(value)),
            "template points must lie within [0, 1]"
        );
        ensure!(
            self.left_eye[0] > self.right_eye[0],
            "the subject's left eye must be to the image right of the right eye"
        );
        ensure!((1.0..=3.0).contains(&self.margin), "margin {} outside 1..=3", self.margin);
        ensure!((16..=1024).contains(&self.default_size), "default_size outside 16..=1024");
        Ok(())
    }

    /// The four template points (right eye, left eye, nose tip, mouth centre) as fractions of the crop.
    pub fn template(&self) -> [[f32; 2]; 4] {
        [self.right_eye, self.left_eye, self.nose_tip, self.mouth_centre]
    }

    /// The template in pixels of a `size`×`size` crop, after shrinking by the margin about the centre.
    pub fn template_pixels(&self, size: usize) -> [[f32; 2]; 4] {
        let size = size as f32;
        self.template()
            .map(|[x, y]| [(0.5 + (x - 0.5) / self.margin) * size, (0.5 + (y - 0.5) / self.margin) * size])
    }

    /// The map from crop pixels to source pixels for `face`: the least-squares similarity (rotation, uniform
    /// scale, translation; never a reflection) taking the face's keypoints onto the template.
    pub fn crop_map(&self, face: &Face, size: usize) -> Result<Affine> {
        let source = [RIGHT_EYE, LEFT_EYE, NOSE_TIP, MOUTH_CENTRE].map(|k| face.keypoints[k]);
        let target = self.template_pixels(size);
        // Solve target = s R · source + t, then invert to map crop → source.
        let forward = similarity(&source, &target).context("face keypoints are degenerate")?;
        forward.inverse().context("face keypoints are degenerate")
    }
}

/// A similarity transform [x'; y'] = [a −b; b a] [x; y] + [tx; ty].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    pub a: f32,
    pub b: f32,
    pub tx: f32,
    pub ty: f32,
}

impl Similarity {
    pub fn apply(&self, [x, y]: [f32; 2]) -> [f32; 2] {
        [self.a * x - self.b * y + self.tx, self.b * x + self.a * y + self.ty]
    }

    /// Scale factor of the transform.
    pub fn scale(&self) -> f32 {
        (self.a * self.a + self.b * self.b).sqrt()
    }

    /// The inverse as a general affine map; None when the transform collapses points.
    pub fn inverse(&self) -> Option<Affine> {
        let norm = self.a * self.a + self.b * self.b;
        if !(norm.is_finite() && norm > 1e-12) {
            return None;
        }
        let (a, b) = (self.a / norm, -self.b / norm);
        // The inverse of [a −b; b a] is [a b; −b a] / norm.
        Some(Affine {
            a,
            b: -b,
            c: b,
            d: a,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        })
    }
}

/// Least-squares similarity from `source` to `target` points (closed form, Umeyama without reflection).
pub fn similarity(source: &[[f32; 2]], target: &[[f32; 2]]) -> Option<Similarity> {
    if source.len() != target.len() || source.len() < 2 {
        return None;
    }
    let count = source.len() as f32;
    let mean = |points: &[[f32; 2]]| {
        let sum = points.iter().fold([0.0, 0.0], |acc, p| [acc[0] + p[0], acc[1] + p[1]]);
        [sum[0] / count, sum[1] / count]
    };
    let (source_mean, target_mean) = (mean(source), mean(target));
    let (mut dot, mut cross, mut norm) = (0.0f32, 0.0f32, 0.0f32);
    for (s, t) in source.iter().zip(target) {
        let (sx, sy) = (s[0] - source_mean[0], s[1] - source_mean[1]);
        let (tx, ty) = (t[0] - target_mean[0], t[1] - target_mean[1]);
        dot += sx * tx + sy * ty;
        cross += sx * ty - sy * tx;
        norm += sx * sx + sy * sy;
    }
    if !(norm.is_finite() && norm > 1e-6) {
        return None;
    }
    let (a, b) = (dot / norm, cross / norm);
    Some(Similarity {
        a,
        b,
        tx: target_mean[0] - (a * source_mean[0] - b * source_mean[1]),
        ty: target_mean[1] - (b * source_mean[0] + a * source_mean[1]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::KEYPOINTS;

    const ALIGNMENT: &str = "models/alignment.toml";

    fn rotation_scale(degrees: f32, scale: f32, tx: f32, ty: f32) -> Similarity {
        let (sin, cos) = degrees.to_radians().sin_cos();
        Similarity { a: scale * cos, b: scale * sin, tx, ty }
    }

    fn assert_near(actual: [f32; 2], expected: [f32; 2], tolerance: f32, context: &str) {
        assert!(
            (actual[0] - expected[0]).abs() < tolerance && (actual[1] - expected[1]).abs() < tolerance,
            "{context}: {actual:?} != {expected:?}"
        );
    }

    /// A face-like set of four points: eyes, nose tip, mouth centre.
    const POINTS: [[f32; 2]; 4] = [[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [56.1, 92.3]];

    #[test]
    fn similarity_recovers_an_exact_transform() {
        for truth in [
            rotation_scale(37.0, 2.5, -40.5, 125.25),
            rotation_scale(-20.0, 0.3, 3.0, -7.0),
            rotation_scale(180.0, 1.0, 0.0, 0.0),
            rotation_scale(0.0, 1.0, 0.0, 0.0),
        ] {
            let target = POINTS.map(|point| truth.apply(point));
            let found = similarity(&POINTS, &target).unwrap();
            for (actual, expected) in
                [(found.a, truth.a), (found.b, truth.b), (found.tx, truth.tx), (found.ty, truth.ty)]
            {
                assert!((actual - expected).abs() < 1e-4, "{found:?} != {truth:?}");
            }
            assert!((found.scale() - truth.scale()).abs() < 1e-5);
        }
    }

    /// The least-squares similarity by the normal equations, in f64: unknowns (a, b, tx, ty) with
    /// x' = a x − b y + tx and y' = b x + a y + ty.
    fn normal_equations(source: &[[f32; 2]], target: &[[f32; 2]]) -> [f64; 4] {
        let mut matrix = [[0.0f64; 5]; 4];
        for (s, t) in source.iter().zip(target) {
            let (x, y) = (s[0] as f64, s[1] as f64);
            for (row, value) in [([x, -y, 1.0, 0.0], t[0] as f64), ([y, x, 0.0, 1.0], t[1] as f64)] {
                for i in 0..4 {
                    for j in 0..4 {
                        matrix[i][j] += row[i] * row[j];
                    }
                    matrix[i][4] += row[i] * value;
                }
            }
        }
        // Gauss-Jordan elimination with partial pivoting.
        for column in 0..4 {
            let pivot =
                (column..4).max_by(|&p, &q| matrix[p][column].abs().total_cmp(&matrix[q][column].abs()));
            matrix.swap(column, pivot.unwrap());
            let pivot_row = matrix[column];
            for (row, values) in matrix.iter_mut().enumerate() {
                if row != column {
                    let factor = values[column] / pivot_row[column];
                    for (value, pivot) in values.iter_mut().zip(pivot_row).skip(column) {
                        *value -= factor * pivot;
                    }
                }
            }
        }
        std::array::from_fn(|i| matrix[i][4] / matrix[i][i])
    }

    #[test]
    fn similarity_with_noise_is_the_least_squares_fit() {
        let truth = rotation_scale(12.0, 1.7, 30.0, -15.0);
        let noise = [[0.8, -1.1], [-0.6, 0.4], [1.3, 0.9], [-0.2, -1.5]];
        let target: Vec<[f32; 2]> = POINTS
            .iter()
            .zip(noise)
            .map(|(&point, [dx, dy])| {
                let [x, y] = truth.apply(point);
                [x + dx, y + dy]
            })
            .collect();
        let found = similarity(&POINTS, &target).unwrap();
        let expected = normal_equations(&POINTS, &target);
        let actual = [found.a, found.b, found.tx, found.ty];
        for (actual, expected) in actual.iter().zip(expected) {
            assert!((*actual as f64 - expected).abs() < 1e-3, "{found:?} != {expected:?}");
        }
        // The noise moved the answer away from the truth: this is a fit, not a copy of the exact transform.
        assert!((found.tx - truth.tx).abs() > 1e-2 || (found.a - truth.a).abs() > 1e-3);
    }

    #[test]
    fn similarity_refuses_degenerate_point_sets() {
        let same = [[5.0, 5.0]; 4];
        assert!(similarity(&same, &POINTS).is_none(), "all source points equal");
        assert!(similarity(&POINTS[..1], &POINTS[..1]).is_none(), "one point");
        assert!(similarity(&POINTS, &POINTS[..3]).is_none(), "different counts");
        let not_a_number = [[f32::NAN, 0.0], [1.0, 2.0], [3.0, 4.0], [5.0, 7.0]];
        assert!(similarity(&not_a_number, &POINTS).is_none(), "NaN point");
    }

    #[test]
    fn inverse_undoes_apply() {
        for transform in [
            rotation_scale(20.0, 3.0, 400.0, 250.0),
            rotation_scale(-135.0, 0.25, -10.0, 33.0),
            rotation_scale(0.0, 1.0, 0.0, 0.0),
        ] {
            let inverse = transform.inverse().unwrap();
            for point in POINTS.iter().chain(&[[0.0, 0.0], [-100.0, 640.0]]) {
                let [x, y] = transform.apply(*point);
                let back = inverse.apply(x, y);
                assert_near([back.0, back.1], *point, 1e-3, &format!("{transform:?}"));
            }
        }
        assert!(Similarity { a: 0.0, b: 0.0, tx: 1.0, ty: 1.0 }.inverse().is_none());
        assert!(Similarity { a: f32::NAN, b: 0.0, tx: 0.0, ty: 0.0 }.inverse().is_none());
    }

    #[test]
    fn alignment_file_holds_the_arcface_template() {
        let alignment = Alignment::load(Path::new(ALIGNMENT)).unwrap();
        // The ArcFace 112-pixel template its comment cites, the mouth corners averaged.
        let arcface = [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [(41.5493 + 70.7299) / 2.0, (92.3655 + 92.2041) / 2.0],
        ];
        // The file's mouth centre is 1.4e-4 (0.03 pixel of a 224 crop) from the exact average of the corners.
        for (point, expected) in alignment.template().iter().zip(arcface) {
            assert_near(*point, expected.map(|value| value / 112.0), 2e-4, "template point");
        }
        assert_eq!(alignment.margin, 1.3);
        assert_eq!(alignment.default_size, 224);
    }

    #[test]
    fn template_pixels_shrink_about_the_centre_by_the_margin() {
        let alignment = Alignment::load(Path::new(ALIGNMENT)).unwrap();
        let pixels = alignment.template_pixels(224);
        for (fraction, pixel) in alignment.template().iter().zip(pixels) {
            for axis in 0..2 {
                let expected = 112.0 + (fraction[axis] * 224.0 - 112.0) / 1.3;
                assert!((pixel[axis] - expected).abs() < 1e-3, "{pixel:?} from {fraction:?}");
            }
        }
        // A point at the centre stays there; the eye distance shrinks by the margin.
        let centred = Alignment { nose_tip: [0.5, 0.5], ..alignment.clone() };
        assert_near(centred.template_pixels(224)[2], [112.0, 112.0], 1e-4, "centre");
        let eye_distance =
            |points: [[f32; 2]; 4]| (points[1][0] - points[0][0]).hypot(points[1][1] - points[0][1]);
        let unshrunk = eye_distance(alignment.template().map(|[x, y]| [x * 224.0, y * 224.0]));
        assert!((eye_distance(pixels) - unshrunk / 1.3).abs() < 1e-3);
    }

    fn face_with(keypoints: [[f32; 2]; 4]) -> Face {
        let mut face = Face { bbox: [0.0, 0.0, 10.0, 10.0], score: 0.9, keypoints: [[-1e4, 7e3]; KEYPOINTS] };
        face.keypoints[RIGHT_EYE] = keypoints[0];
        face.keypoints[LEFT_EYE] = keypoints[1];
        face.keypoints[NOSE_TIP] = keypoints[2];
        face.keypoints[MOUTH_CENTRE] = keypoints[3];
        face
    }

    #[test]
    fn crop_map_sends_template_pixels_back_to_the_keypoints() {
        let alignment = Alignment::load(Path::new(ALIGNMENT)).unwrap();
        for size in [224, 112, 380] {
            let template = alignment.template_pixels(size);
            // The face in the source is the template turned by 20 degrees, 3 times larger, and shifted.
            let placement = rotation_scale(20.0, 3.0, 400.0, 250.0);
            let face = face_with(template.map(|point| placement.apply(point)));
            let map = alignment.crop_map(&face, size).unwrap();
            for (point, keypoint) in template.iter().zip(face.keypoints) {
                let (x, y) = map.apply(point[0], point[1]);
                assert_near([x, y], keypoint, 1e-3, &format!("size {size}, template pixel {point:?}"));
            }
            // The whole crop follows the same transform, not only the four points.
            for corner in [[0.0, 0.0], [size as f32, 0.0], [0.0, size as f32], [size as f32, size as f32]] {
                let (x, y) = map.apply(corner[0], corner[1]);
                assert_near(
                    [x, y],
                    placement.apply(corner),
                    1e-2,
                    &format!("size {size}, corner {corner:?}"),
                );
            }
        }
    }

    #[test]
    fn crop_map_refuses_degenerate_keypoints() {
        let alignment = Alignment::load(Path::new(ALIGNMENT)).unwrap();
        assert!(alignment.crop_map(&face_with([[320.0, 240.0]; 4]), 224).is_err(), "all keypoints equal");
        assert!(alignment.crop_map(&face_with([[f32::NAN; 2]; 4]), 224).is_err(), "NaN keypoints");
    }

    /// `models/alignment.toml`'s content with one line replaced, written to a temporary file and loaded.
    fn load_with(label: &str, key: &str, line: &str) -> Result<Alignment> {
        let original = std::fs::read_to_string(ALIGNMENT).unwrap();
        let mut replaced = false;
        let text: Vec<&str> = original
            .lines()
            .map(|current| {
                if current.starts_with(&format!("{key} =")) {
                    replaced = true;
                    line
                } else {
                    current
                }
            })
            .collect();
        assert!(replaced || key.is_empty(), "no `{key}` line to replace");
        let mut text = text.join("\n");
        if key.is_empty() {
            text = format!("{text}\n{line}\n");
        }
        let path = crate::testing::scratch_dir(&format!("align-{label}")).join("alignment.toml");
        std::fs::write(&path, text).unwrap();
        let result = Alignment::load(&path);
        let _ = std::fs::remove_file(&path);
        result
    }

    #[test]
    fn alignment_validation_refuses_bad_templates() {
        let original = Alignment::load(Path::new(ALIGNMENT)).unwrap();
        // The copy itself loads: a refusal below comes from the changed line.
        assert_eq!(load_with("copy", "margin", "margin = 1.3").unwrap(), original);
        let swapped = load_with("swapped", "right_eye", "right_eye = [0.7, 0.461574]");
        assert!(swapped.is_err(), "eyes swapped");
        assert!(load_with("small-margin", "margin", "margin = 0.5").is_err(), "margin 0.5");
        assert!(load_with("large-margin", "margin", "margin = 3.5").is_err(), "margin 3.5");
        assert!(load_with("outside", "nose_tip", "nose_tip = [0.5, 1.2]").is_err(), "point outside the crop");
        assert!(load_with("tiny", "default_size", "default_size = 8").is_err(), "crop of 8 pixels");
        assert!(load_with("unknown", "", "mouth_left = [0.4, 0.8]").is_err(), "unknown field");
        let message = format!("{:#}", load_with("message", "margin", "margin = 0.5").unwrap_err());
        assert!(message.contains("margin"), "{message}");
        assert!(Alignment::load(Path::new("models/no-such-alignment.toml")).is_err());
    }
}
