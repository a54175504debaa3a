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
        self.template().map(|[x, y]| {
            [(0.5 + (x - 0.5) / self.margin) * size, (0.5 + (y - 0.5) / self.margin) * size]
        })
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
