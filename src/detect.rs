//! BlazeFace: anchors, decoding of boxes and keypoints, weighted non-maximum suppression, and the mapping
//! back to source pixels through the letterbox.

use crate::manifest::{BlazeFaceSpec, ModelEntry};
use crate::preprocess::Letterbox;
use anyhow::{ensure, Context, Result};

/// Most faces reported per frame; a kiosk sees one person, a queue a few.
pub const MAX_FACES: usize = 8;
/// Most anchors a BlazeFace model may have (896 for both published variants).
pub const MAX_ANCHORS: usize = 2304;
/// Keypoints kept per face (BlazeFace has 6).
pub const KEYPOINTS: usize = 6;

/// Keypoint indices (the subject's right and left).
pub const RIGHT_EYE: usize = 0;
pub const LEFT_EYE: usize = 1;
pub const NOSE_TIP: usize = 2;
pub const MOUTH_CENTRE: usize = 3;

/// One face in source-image pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Face {
    /// Left, top, width, height.
    pub bbox: [f32; 4],
    pub score: f32,
    pub keypoints: [[f32; 2]; KEYPOINTS],
}

impl Face {
    pub fn area(&self) -> f32 {
        self.bbox[2].max(0.0) * self.bbox[3].max(0.0)
    }
}

/// Intersection over union of two [left, top, width, height] boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let left = a[0].max(b[0]);
    let top = a[1].max(b[1]);
    let right = (a[0] + a[2]).min(b[0] + b[2]);
    let bottom = (a[1] + a[3]).min(b[1] + b[3]);
    let intersection = (right - left).max(0.0) * (bottom - top).max(0.0);
    let union = a[2] * a[3] + b[2] * b[3] - intersection;
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

/// Detection thresholds from the board config.
#[derive(Clone, Copy, Debug)]
pub struct DetectorSettings {
    pub score_threshold: f32,
    /// Faces whose shorter box side is below this many source pixels are dropped.
    pub min_face_px: f32,
    /// Boxes overlapping more than this are blended into one.
    pub nms_iou: f32,
}

/// A candidate in model-input coordinates normalised to [0, 1].
#[derive(Clone, Copy, Default)]
struct Candidate {
    score: f32,
    /// Centre x, centre y, width, height.
    bbox: [f32; 4],
    keypoints: [[f32; 2]; KEYPOINTS],
}

impl Candidate {
    fn corners(&self) -> [f32; 4] {
        [
            self.bbox[0] - self.bbox[2] / 2.0,
            self.bbox[1] - self.bbox[3] / 2.0,
            self.bbox[2],
            self.bbox[3],
        ]
    }
}

/// The decoder: anchors computed once from the manifest, candidate storage allocated once.
pub struct BlazeFaceDecoder {
    spec: BlazeFaceSpec,
    input_size: f32,
    anchors: heapless::Vec<[f32; 2], MAX_ANCHORS>,
    candidates: heapless::Vec<Candidate, MAX_ANCHORS>,
    settings: DetectorSettings,
}

impl BlazeFaceDecoder {
    pub fn new(entry: &ModelEntry, settings: DetectorSettings) -> Result<BlazeFaceDecoder> {
        let spec = entry
            .blazeface
            .clone()
            .context("detector has no [model.blazeface] section")?;
        let (size, _) = entry.input.image_size();
        let mut anchors = heapless::Vec::new();
        for &[grid, per_cell] in &spec.grids {
            for y in 0..grid {
                for x in 0..grid {
                    for _ in 0..per_cell {
                        let centre = [
                            (x as f32 + 0.5) / grid as f32,
                            (y as f32 + 0.5) / grid as f32,
                        ];
                        anchors.push(centre).ok().context("too many anchors")?;
                    }
                }
            }
        }
        ensure!(
            spec.keypoints.len() <= KEYPOINTS,
            "at most {KEYPOINTS} keypoints supported"
        );
        for (index, [grid, per_cell]) in spec.grids.iter().enumerate() {
            let count = grid * grid * per_cell;
            let scores = &entry.outputs[index].shape;
            let regressors = &entry.outputs[spec.grids.len() + index].shape;
            ensure!(
                scores.iter().product::<usize>() == count
                    && regressors.iter().product::<usize>()
                        == count * (4 + 2 * spec.keypoints.len()),
                "outputs of grid {index} do not hold {count} anchors"
            );
        }
        Ok(BlazeFaceDecoder {
            spec,
            input_size: size as f32,
            anchors,
            candidates: heapless::Vec::new(),
            settings,
        })
    }

    /// Decodes score and regressor outputs (one slice each per grid, manifest order) into faces in source
    /// pixels, strongest first.
    pub fn decode(
        &mut self,
        scores: &[&[f32]],
        regressors: &[&[f32]],
        letterbox: &Letterbox,
        faces: &mut heapless::Vec<Face, MAX_FACES>,
    ) -> Result<()> {
        faces.clear();
        self.candidates.clear();
        let stride = 4 + 2 * self.spec.keypoints.len();
        let clamp = self.spec.logit_clamp;
        let threshold = self.settings.score_threshold;
        let mut anchor = 0;
        for (grid, (scores, regressors)) in scores.iter().zip(regressors).enumerate() {
            ensure!(
                regressors.len() == scores.len() * stride,
                "grid {grid}: {} scores but {} regressor values",
                scores.len(),
                regressors.len()
            );
            for (index, &logit) in scores.iter().enumerate() {
                let centre = self
                    .anchors
                    .get(anchor)
                    .copied()
                    .context("more scores than anchors")?;
                anchor += 1;
                if !logit.is_finite() {
                    continue;
                }
                let score = 1.0 / (1.0 + (-logit.clamp(-clamp, clamp)).exp());
                if score < threshold {
                    continue;
                }
                let r = &regressors[index * stride..(index + 1) * stride];
                if r.iter().any(|value| !value.is_finite()) {
                    continue;
                }
                let size = self.input_size;
                let mut candidate = Candidate {
                    score,
                    bbox: [
                        centre[0] + r[0] / size,
                        centre[1] + r[1] / size,
                        r[2] / size,
                        r[3] / size,
                    ],
                    keypoints: [[0.0; 2]; KEYPOINTS],
                };
                for (k, point) in candidate
                    .keypoints
                    .iter_mut()
                    .take(self.spec.keypoints.len())
                    .enumerate()
                {
                    *point = [
                        centre[0] + r[4 + 2 * k] / size,
                        centre[1] + r[5 + 2 * k] / size,
                    ];
                }
                if candidate.bbox[2] > 0.0 && candidate.bbox[3] > 0.0 {
                    // Capacity equals the anchor count, so this cannot overflow.
                    let _ = self.candidates.push(candidate);
                }
            }
        }
        ensure!(
            anchor == self.anchors.len(),
            "outputs cover {anchor} of {} anchors",
            self.anchors.len()
        );
        suppress(
            &mut self.candidates,
            &self.settings,
            self.input_size,
            letterbox,
            faces,
        );
        Ok(())
    }
}

/// MediaPipe's weighted non-maximum suppression: the strongest remaining candidate absorbs every candidate
/// overlapping it by at least `nms_iou`; the blend's box and keypoints are the score-weighted mean, its
/// score the maximum.
fn suppress(
    candidates: &mut heapless::Vec<Candidate, MAX_ANCHORS>,
    settings: &DetectorSettings,
    input_size: f32,
    letterbox: &Letterbox,
    faces: &mut heapless::Vec<Face, MAX_FACES>,
) {
    let nms_iou = settings.nms_iou;
    let min_face_px = settings.min_face_px;
    candidates.sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
    let mut remaining = candidates.len();
    // Candidates [0, remaining) are unclaimed, strongest first; claimed ones are swapped past the end.
    while remaining > 0 && !faces.is_full() {
        let top = candidates[0];
        let top_box = top.corners();
        let mut total = 0.0;
        let mut blended = Candidate {
            score: top.score,
            ..Candidate::default()
        };
        let mut index = 0;
        let mut kept = 0;
        while index < remaining {
            let candidate = candidates[index];
            if iou(&top_box, &candidate.corners()) >= nms_iou {
                total += candidate.score;
                for i in 0..4 {
                    blended.bbox[i] += candidate.bbox[i] * candidate.score;
                }
                for (sum, point) in blended.keypoints.iter_mut().zip(&candidate.keypoints) {
                    sum[0] += point[0] * candidate.score;
                    sum[1] += point[1] * candidate.score;
                }
            } else {
                // Keep unclaimed candidates packed at the front, in score order.
                candidates[kept] = candidate;
                kept += 1;
            }
            index += 1;
        }
        remaining = kept;
        for value in blended.bbox.iter_mut() {
            *value /= total;
        }
        for point in blended.keypoints.iter_mut() {
            point[0] /= total;
            point[1] /= total;
        }
        let face = to_source(&blended, input_size, letterbox);
        if face.bbox[2].min(face.bbox[3]) >= min_face_px {
            let _ = faces.push(face);
        }
    }
}

/// A candidate in normalised input coordinates → a face in source pixels.
fn to_source(candidate: &Candidate, size: f32, letterbox: &Letterbox) -> Face {
    let corners = candidate.corners();
    let (left, top) = letterbox.to_source(corners[0] * size, corners[1] * size);
    let (right, bottom) = letterbox.to_source(
        (corners[0] + corners[2]) * size,
        (corners[1] + corners[3]) * size,
    );
    let mut face = Face {
        bbox: [left, top, right - left, bottom - top],
        score: candidate.score,
        ..Face::default()
    };
    for (out, point) in face.keypoints.iter_mut().zip(&candidate.keypoints) {
        let (x, y) = letterbox.to_source(point[0] * size, point[1] * size);
        *out = [x, y];
    }
    face
}
