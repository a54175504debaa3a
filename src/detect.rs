//! BlazeFace: anchors, decoding of boxes and keypoints, weighted non-maximum suppression, and the mapping
//! back to source pixels through the letterbox.

use crate::manifest::{BlazeFaceSpec, ModelEntry};
use crate::preprocess::Letterbox;
use crate::settings::in_range;
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

/// Detection thresholds: the board config's `[detector]` section.
#[derive(Clone, Copy, Debug, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectorSettings {
    pub score_threshold: f32,
    /// Faces whose shorter box side is below this many source pixels are dropped.
    pub min_face_px: f32,
    /// Boxes overlapping more than this are blended into one.
    pub nms_iou: f32,
    /// Run the detector at least every this many frames (1: every frame). In between, the last detection's
    /// faces are held while they stay still and confident (`pipeline::hold`); absent: 1.
    #[serde(default = "every_frame")]
    pub redetect_every: u32,
    /// A detection whose faces all score at least this may be held; a weaker one is re-detected next frame.
    #[serde(default = "hold_min_score_default")]
    pub hold_min_score: f32,
    /// Mean absolute difference (8-bit levels) of a held face's quality crop from its crop at the detection
    /// above which the face may have moved or changed: the detector runs again on that same frame.
    #[serde(default = "hold_max_change_default")]
    pub hold_max_change: f32,
}

fn every_frame() -> u32 {
    1
}

fn hold_min_score_default() -> f32 {
    0.9
}

fn hold_max_change_default() -> f32 {
    6.0
}

impl DetectorSettings {
    /// Refuses values the detector cannot work with, naming the key.
    pub fn validate(&self) -> Result<()> {
        in_range("detector.score_threshold", self.score_threshold, 0.05, 1.0)?;
        in_range("detector.min_face_px", self.min_face_px, 0.0, 4096.0)?;
        in_range("detector.nms_iou", self.nms_iou, 0.05, 1.0)?;
        ensure!((1..=30).contains(&self.redetect_every), "detector.redetect_every must be 1 to 30");
        in_range("detector.hold_min_score", self.hold_min_score, self.score_threshold, 1.0)?;
        in_range("detector.hold_max_change", self.hold_max_change, 0.5, 64.0)
    }
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
        [self.bbox[0] - self.bbox[2] / 2.0, self.bbox[1] - self.bbox[3] / 2.0, self.bbox[2], self.bbox[3]]
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
        let spec = entry.blazeface.clone().context("detector has no [model.blazeface] section")?;
        let (size, _) = entry.input.image_size();
        let mut anchors = heapless::Vec::new();
        for &[grid, per_cell] in &spec.grids {
            for y in 0..grid {
                for x in 0..grid {
                    for _ in 0..per_cell {
                        let centre = [(x as f32 + 0.5) / grid as f32, (y as f32 + 0.5) / grid as f32];
                        anchors.push(centre).ok().context("too many anchors")?;
                    }
                }
            }
        }
        ensure!(spec.keypoints.len() <= KEYPOINTS, "at most {KEYPOINTS} keypoints supported");
        for (index, [grid, per_cell]) in spec.grids.iter().enumerate() {
            let count = grid * grid * per_cell;
            let scores = &entry.outputs[index].shape;
            let regressors = &entry.outputs[spec.grids.len() + index].shape;
            ensure!(
                scores.iter().product::<usize>() == count
                    && regressors.iter().product::<usize>() == count * (4 + 2 * spec.keypoints.len()),
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
                let centre = self.anchors.get(anchor).copied().context("more scores than anchors")?;
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
                    bbox: [centre[0] + r[0] / size, centre[1] + r[1] / size, r[2] / size, r[3] / size],
                    keypoints: [[0.0; 2]; KEYPOINTS],
                };
                for (k, point) in candidate.keypoints.iter_mut().take(self.spec.keypoints.len()).enumerate() {
                    *point = [centre[0] + r[4 + 2 * k] / size, centre[1] + r[5 + 2 * k] / size];
                }
                if candidate.bbox[2] > 0.0 && candidate.bbox[3] > 0.0 {
                    // Capacity equals the anchor count, so this cannot overflow.
                    let _ = self.candidates.push(candidate);
                }
            }
        }
        ensure!(anchor == self.anchors.len(), "outputs cover {anchor} of {} anchors", self.anchors.len());
        suppress(&mut self.candidates, &self.settings, self.input_size, letterbox, faces);
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
        let mut blended = Candidate { score: top.score, ..Candidate::default() };
        let mut index = 0;
        let mut kept = 0;
        while index < remaining {
            let candidate = candidates[index];
            // The top candidate always joins its own blend: its overlap with itself can round to just under
            // 1, and with `nms_iou` = 1 it would otherwise never be claimed and the loop would never end.
            if index == 0 || iou(&top_box, &candidate.corners()) >= nms_iou {
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
    let (right, bottom) =
        letterbox.to_source((corners[0] + corners[2]) * size, (corners[1] + corners[3]) * size);
    let mut face =
        Face { bbox: [left, top, right - left, bottom - top], score: candidate.score, ..Face::default() };
    for (out, point) in face.keypoints.iter_mut().zip(&candidate.keypoints) {
        let (x, y) = letterbox.to_source(point[0] * size, point[1] * size);
        *out = [x, y];
    }
    face
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ChannelOrder, InputSpec, Layout, OutputSpec, Role};

    const SIZE: usize = 128;
    /// Values per anchor: box (4) and six keypoints (12).
    const STRIDE: usize = 4 + 2 * KEYPOINTS;

    /// A detector entry with one anchor grid of `grid`×`grid` cells, one anchor per cell, on a 128 px input.
    fn entry(grid: usize) -> ModelEntry {
        let output = |name: &str, values: usize| OutputSpec {
            name: name.to_string(),
            shape: vec![1, grid * grid, values],
            meaning: String::new(),
        };
        ModelEntry {
            id: "tiny_blazeface".to_string(),
            role: Role::Detector,
            file: "tiny.onnx".to_string(),
            sha256: "0".repeat(64),
            bytes: 0,
            licence: "test".to_string(),
            licence_file: None,
            provenance: "hand-built for unit tests".to_string(),
            input: InputSpec {
                name: "input".to_string(),
                shape: [1, SIZE, SIZE, 3],
                layout: Layout::Nhwc,
                colour: ChannelOrder::Rgb,
                mean: [0.5; 3],
                std: [0.5; 3],
            },
            outputs: vec![output("scores", 1), output("regressors", STRIDE)],
            blazeface: Some(BlazeFaceSpec {
                grids: vec![[grid, 1]],
                keypoints: ["right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear", "left_ear"]
                    .map(String::from)
                    .to_vec(),
                logit_clamp: 100.0,
            }),
            classifier: None,
        }
    }

    fn settings() -> DetectorSettings {
        DetectorSettings {
            score_threshold: 0.5,
            min_face_px: 0.0,
            nms_iou: 0.3,
            redetect_every: 1,
            hold_min_score: 0.9,
            hold_max_change: 6.0,
        }
    }

    /// Input pixels are source pixels.
    const IDENTITY: Letterbox = Letterbox { scale: 1.0, offset_x: 0.0, offset_y: 0.0 };

    /// Raw outputs for a grid: every anchor far below threshold until `set` says otherwise.
    struct Outputs {
        scores: Vec<f32>,
        regressors: Vec<f32>,
    }

    impl Outputs {
        fn new(anchors: usize) -> Outputs {
            Outputs { scores: vec![-10.0; anchors], regressors: vec![0.0; anchors * STRIDE] }
        }

        /// A candidate at `anchor`: box centre offset and size, and keypoints, in input pixels relative to
        /// the anchor centre.
        fn set(&mut self, anchor: usize, logit: f32, bbox: [f32; 4], keypoints: [[f32; 2]; KEYPOINTS]) {
            self.scores[anchor] = logit;
            let values = &mut self.regressors[anchor * STRIDE..(anchor + 1) * STRIDE];
            values[..4].copy_from_slice(&bbox);
            for (k, point) in keypoints.iter().enumerate() {
                values[4 + 2 * k..6 + 2 * k].copy_from_slice(point);
            }
        }

        fn decode(
            &self,
            grid: usize,
            settings: DetectorSettings,
            letterbox: &Letterbox,
        ) -> Result<Vec<Face>> {
            let mut decoder = BlazeFaceDecoder::new(&entry(grid), settings)?;
            let mut faces = heapless::Vec::new();
            decoder.decode(&[&self.scores], &[&self.regressors], letterbox, &mut faces)?;
            Ok(faces.to_vec())
        }
    }

    fn sigmoid(logit: f32) -> f32 {
        1.0 / (1.0 + (-logit).exp())
    }

    fn close(actual: f32, expected: f32) -> bool {
        (actual - expected).abs() <= 1e-3 * expected.abs().max(1.0)
    }

    fn assert_box(face: &Face, expected: [f32; 4]) {
        assert!(
            face.bbox.iter().zip(&expected).all(|(a, e)| close(*a, *e)),
            "box {:?}, expected {expected:?}",
            face.bbox
        );
    }

    /// Keypoints spread around the anchor, different for each point so a mix-up shows.
    const KEYPOINT_OFFSETS: [[f32; 2]; KEYPOINTS] =
        [[-10.0, -8.0], [10.0, -8.0], [0.0, 4.0], [0.0, 14.0], [-18.0, -2.0], [18.0, -2.0]];

    #[test]
    fn iou_of_known_boxes() {
        let a = [10.0, 20.0, 40.0, 30.0];
        assert!(close(iou(&a, &a), 1.0));
        assert_eq!(iou(&a, &[100.0, 100.0, 10.0, 10.0]), 0.0);
        // Shifted by half its width: intersection 20×30, union 2·1200 − 600.
        assert!(close(iou(&a, &[30.0, 20.0, 40.0, 30.0]), 600.0 / 1800.0));
        // Touching edges share no area.
        assert_eq!(iou(&a, &[50.0, 20.0, 40.0, 30.0]), 0.0);
        let empty = [5.0, 5.0, 0.0, 0.0];
        assert_eq!(iou(&empty, &empty), 0.0);
        assert_eq!(iou(&empty, &a), 0.0);
    }

    #[test]
    fn scores_below_threshold_are_dropped() {
        let mut outputs = Outputs::new(4);
        outputs.set(0, -0.1, [0.0, 0.0, 20.0, 20.0], KEYPOINT_OFFSETS);
        assert!(outputs.decode(2, settings(), &IDENTITY).expect("decodes").is_empty());
        outputs.set(0, 0.1, [0.0, 0.0, 20.0, 20.0], KEYPOINT_OFFSETS);
        assert_eq!(outputs.decode(2, settings(), &IDENTITY).expect("decodes").len(), 1);
    }

    #[test]
    fn one_strong_anchor_decodes_to_the_box_and_keypoints_computed_by_hand() {
        let mut outputs = Outputs::new(4);
        // Anchor 3 is the bottom-right cell of the 2×2 grid: centre (96, 96) in a 128 px input.
        outputs.set(3, 3.0, [4.0, -2.0, 40.0, 48.0], KEYPOINT_OFFSETS);
        let faces = outputs.decode(2, settings(), &IDENTITY).expect("decodes");
        assert_eq!(faces.len(), 1);
        let face = &faces[0];
        // Centre (100, 94), size 40×48 → left 80, top 70.
        assert_box(face, [80.0, 70.0, 40.0, 48.0]);
        assert!(close(face.score, sigmoid(3.0)));
        for (point, offset) in face.keypoints.iter().zip(&KEYPOINT_OFFSETS) {
            assert!(close(point[0], 96.0 + offset[0]) && close(point[1], 96.0 + offset[1]), "{point:?}");
        }
    }

    #[test]
    fn overlapping_candidates_are_blended_by_score() {
        let mut outputs = Outputs::new(4);
        // Anchors 0 (32, 32) and 1 (96, 32) both see a 40 px face near x = 64: centres 62 and 66.
        outputs.set(0, 2.0, [30.0, 0.0, 40.0, 40.0], KEYPOINT_OFFSETS);
        outputs.set(1, 1.0, [-30.0, 2.0, 40.0, 44.0], KEYPOINT_OFFSETS);
        let faces = outputs.decode(2, settings(), &IDENTITY).expect("decodes");
        assert_eq!(faces.len(), 1, "{faces:?}");
        let (strong, weak) = (sigmoid(2.0), sigmoid(1.0));
        let blend = |a: f32, b: f32| (a * strong + b * weak) / (strong + weak);
        let (centre_x, centre_y) = (blend(62.0, 66.0), blend(32.0, 34.0));
        let (width, height) = (40.0, blend(40.0, 44.0));
        assert_box(&faces[0], [centre_x - width / 2.0, centre_y - height / 2.0, width, height]);
        assert!(close(faces[0].score, strong), "the blend keeps the best score");
        let nose = faces[0].keypoints[NOSE_TIP];
        assert!(close(nose[0], blend(32.0, 96.0)) && close(nose[1], blend(36.0, 36.0)), "{nose:?}");
    }

    #[test]
    fn far_apart_candidates_stay_separate_strongest_first() {
        let mut outputs = Outputs::new(4);
        outputs.set(0, 1.0, [0.0, 0.0, 30.0, 30.0], KEYPOINT_OFFSETS);
        outputs.set(3, 4.0, [0.0, 0.0, 30.0, 30.0], KEYPOINT_OFFSETS);
        let faces = outputs.decode(2, settings(), &IDENTITY).expect("decodes");
        assert_eq!(faces.len(), 2);
        assert!(close(faces[0].score, sigmoid(4.0)) && close(faces[1].score, sigmoid(1.0)));
        assert_box(&faces[0], [81.0, 81.0, 30.0, 30.0]);
        assert_box(&faces[1], [17.0, 17.0, 30.0, 30.0]);
    }

    #[test]
    fn non_finite_outputs_are_skipped() {
        let mut outputs = Outputs::new(4);
        outputs.set(0, f32::NAN, [0.0, 0.0, 30.0, 30.0], KEYPOINT_OFFSETS);
        outputs.set(1, f32::INFINITY, [0.0, 0.0, 30.0, 30.0], KEYPOINT_OFFSETS);
        outputs.set(2, 5.0, [0.0, f32::NAN, 30.0, 30.0], KEYPOINT_OFFSETS);
        let mut infinite_keypoint = KEYPOINT_OFFSETS;
        infinite_keypoint[MOUTH_CENTRE][0] = f32::NEG_INFINITY;
        outputs.set(3, 5.0, [0.0, 0.0, 30.0, 30.0], infinite_keypoint);
        assert!(outputs.decode(2, settings(), &IDENTITY).expect("decodes").is_empty());
        // The same anchor with finite values is found: the skip was for the bad values.
        outputs.set(3, 5.0, [0.0, 0.0, 30.0, 30.0], KEYPOINT_OFFSETS);
        let faces = outputs.decode(2, settings(), &IDENTITY).expect("decodes");
        assert_eq!(faces.len(), 1);
        assert!(faces[0].bbox.iter().chain(faces[0].keypoints.iter().flatten()).all(|v| v.is_finite()));
    }

    #[test]
    fn faces_smaller_than_min_face_px_in_source_pixels_are_dropped() {
        // A 640×480 frame shrinks by 5 into the input: 16 input px are 80 source px.
        let letterbox = Letterbox::fit(640, 480, SIZE, SIZE);
        let mut outputs = Outputs::new(4);
        outputs.set(0, 3.0, [0.0, 0.0, 16.0, 20.0], KEYPOINT_OFFSETS);
        outputs.set(3, 2.0, [0.0, 0.0, 12.0, 30.0], KEYPOINT_OFFSETS);
        let settings = DetectorSettings { min_face_px: 70.0, ..settings() };
        let faces = outputs.decode(2, settings, &letterbox).expect("decodes");
        assert_eq!(faces.len(), 1, "{faces:?}");
        assert!(close(faces[0].score, sigmoid(3.0)));
        assert!(close(faces[0].bbox[2], 80.0));
    }

    #[test]
    fn letterbox_maps_back_to_source_pixels() {
        let letterbox = Letterbox::fit(640, 480, SIZE, SIZE);
        // Scale 0.2; the 96 px high picture is centred, 16 px below the input's top.
        assert_eq!(letterbox, Letterbox { scale: 0.2, offset_x: 0.0, offset_y: 16.0 });
        let mut outputs = Outputs::new(4);
        outputs.set(3, 3.0, [4.0, -2.0, 40.0, 48.0], KEYPOINT_OFFSETS);
        let faces = outputs.decode(2, settings(), &letterbox).expect("decodes");
        assert_eq!(faces.len(), 1);
        // Input box [80, 70, 40, 48] → source [80 / 0.2, (70 − 16) / 0.2, 40 / 0.2, 48 / 0.2].
        assert_box(&faces[0], [400.0, 270.0, 200.0, 240.0]);
        let eye = faces[0].keypoints[RIGHT_EYE];
        assert!(close(eye[0], (96.0 - 10.0) / 0.2) && close(eye[1], (96.0 - 8.0 - 16.0) / 0.2), "{eye:?}");
    }

    #[test]
    fn at_most_max_faces_are_reported_the_strongest_ones() {
        // A 4×4 grid of 32 px cells, a separate 16 px face in every cell, each stronger than the last.
        let mut outputs = Outputs::new(16);
        for anchor in 0..16 {
            outputs.set(anchor, 0.5 + anchor as f32 * 0.25, [0.0, 0.0, 16.0, 16.0], KEYPOINT_OFFSETS);
        }
        let faces = outputs.decode(4, settings(), &IDENTITY).expect("decodes");
        assert_eq!(faces.len(), MAX_FACES);
        for (face, anchor) in faces.iter().zip((0..16).rev()) {
            assert!(
                close(face.score, sigmoid(0.5 + anchor as f32 * 0.25)),
                "{face:?} is not anchor {anchor}"
            );
        }
    }

    #[test]
    fn wrong_output_lengths_are_errors() {
        let mut decoder = BlazeFaceDecoder::new(&entry(2), settings()).expect("valid entry");
        let mut faces = heapless::Vec::new();
        let scores = [0.0f32; 4];
        let regressors = [0.0f32; 4 * STRIDE];
        // Regressors for three anchors only.
        assert!(decoder.decode(&[&scores], &[&regressors[..3 * STRIDE]], &IDENTITY, &mut faces).is_err());
        // Fewer anchors than the grid has.
        assert!(decoder
            .decode(&[&scores[..3]], &[&regressors[..3 * STRIDE]], &IDENTITY, &mut faces)
            .is_err());
        // More anchors than the grid has.
        let (more_scores, more_regressors) = ([0.0f32; 5], [0.0f32; 5 * STRIDE]);
        assert!(decoder.decode(&[&more_scores], &[&more_regressors], &IDENTITY, &mut faces).is_err());
        // No outputs at all.
        assert!(decoder.decode(&[], &[], &IDENTITY, &mut faces).is_err());
        assert!(decoder.decode(&[&scores], &[&regressors], &IDENTITY, &mut faces).is_ok());
    }

    #[test]
    fn an_entry_whose_outputs_do_not_match_its_grids_is_refused() {
        let mut wrong = entry(2);
        wrong.outputs[1].shape = vec![1, 4, 4];
        assert!(BlazeFaceDecoder::new(&wrong, settings()).is_err());
        let mut classifier = entry(2);
        classifier.blazeface = None;
        assert!(BlazeFaceDecoder::new(&classifier, settings()).is_err());
    }

    #[test]
    fn nms_iou_of_one_still_terminates() {
        // The config allows nms_iou = 1.0. This box's right edge minus its left edge rounds below its width in
        // f32, so its overlap with itself is just under 1: the strongest candidate must still claim itself.
        let mut outputs = Outputs::new(4);
        outputs.set(0, 3.0, [-17.7, -17.7, 10.7, 10.7], KEYPOINT_OFFSETS);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let settings = DetectorSettings { nms_iou: 1.0, ..settings() };
            let _ = sender.send(outputs.decode(2, settings, &IDENTITY).map(|faces| faces.len()));
        });
        let result =
            receiver.recv_timeout(std::time::Duration::from_secs(10)).expect("decoding must terminate");
        assert_eq!(result.expect("decodes"), 1);
    }
}
