//! The crops of one frame's faces and their judgement: the buffers one frame's crops need (jobs, per-face slots,
//! classifier tensors, quality crops), allocated once, the one call of the pixel work that fills them, and each
//! face's quality and fake probability measured from them. The one-thread pipeline keeps one `Crops`; the
//! two-thread pipeline (`pipelined`) one per frame slot, so that its worker judges frame n while the caller
//! detects frame n + 1.
#![forbid(unsafe_code)]

use super::{FaceResult, QUALITY_CROP};
use crate::align::Alignment;
use crate::classify::Classifier;
use crate::detect::{Face, MAX_FACES};
use crate::frame::Frame;
use crate::manifest::InputSpec;
use crate::preprocess::cuda::abi::CropJob;
use crate::preprocess::work::PixelWork;
use crate::preprocess::RgbImage;
use crate::quality::{Quality, QualityIssue, QualitySettings};
use crate::timing::Stage;
use anyhow::Result;
use std::time::{Duration, Instant};

/// Every crop of one frame's faces, sized for `MAX_FACES` once.
pub struct Crops {
    /// The classifier crop's size (the alignment's default size when no classifier is configured).
    pub size: (usize, usize),
    /// The crop jobs of the last `make`, in order.
    pub jobs: Vec<CropJob>,
    /// For each face its slot among the aligned faces (`None`: it could not be aligned).
    pub slots: heapless::Vec<Option<usize>, MAX_FACES>,
    /// Classifier tensors, one per aligned face.
    pub tensors: Vec<f32>,
    /// Quality crops (8-bit RGB, `QUALITY_CROP` square), one per aligned face.
    pub images: Vec<u8>,
}

/// Bytes of one quality crop.
pub const QUALITY_LEN: usize = QUALITY_CROP * QUALITY_CROP * 3;

impl Crops {
    pub fn new((width, height): (usize, usize)) -> Crops {
        Crops {
            size: (width, height),
            jobs: Vec::with_capacity(2 * MAX_FACES),
            slots: heapless::Vec::new(),
            tensors: vec![0.0; MAX_FACES * width * height * 3],
            images: vec![0; MAX_FACES * QUALITY_LEN],
        }
    }

    /// Every crop of `faces` in one call of `pixels` (the classifier-crop stage, recorded when there are faces):
    /// tensors normalised as `spec` says when `classify`.
    #[allow(clippy::too_many_arguments)]
    pub fn make(
        &mut self,
        pixels: &mut dyn PixelWork,
        frame: &Frame,
        faces: &[Face],
        alignment: &Alignment,
        spec: &InputSpec,
        classify: bool,
        record: &mut impl FnMut(Stage, Duration),
    ) -> Result<()> {
        self.slots.clear();
        if !faces.is_empty() {
            let mark = Instant::now();
            self.plan(faces, alignment, classify)?;
            pixels.crops(frame, &self.jobs, spec, &mut self.tensors, &mut self.images)?;
            record(Stage::ClassifierCrop, mark.elapsed());
        }
        Ok(())
    }

    /// The crops of `faces`, in order, into `jobs`: for each face that can be aligned its quality crop (8-bit
    /// RGB, `QUALITY_CROP` square) and, when `classify`, its classifier tensor; `slots` says, per face, which
    /// aligned face it is (the index into the RGB crops and the tensors), or `None`.
    fn plan(&mut self, faces: &[Face], alignment: &Alignment, classify: bool) -> Result<()> {
        let (width, height) = self.size;
        self.jobs.clear();
        self.slots.clear();
        let mut aligned = 0;
        for face in faces {
            let slot = match alignment.crop_map(face, QUALITY_CROP) {
                Ok(map) => {
                    self.jobs.push(CropJob { map, width: QUALITY_CROP, height: QUALITY_CROP, rgb: true });
                    if classify {
                        let map = alignment.crop_map(face, width)?;
                        self.jobs.push(CropJob { map, width, height, rgb: false });
                    }
                    aligned += 1;
                    Some(aligned - 1)
                }
                Err(_) => None,
            };
            anyhow::ensure!(self.slots.push(slot).is_ok(), "more than {MAX_FACES} faces in one frame");
        }
        Ok(())
    }

    /// Each face's judgement into `results` from the crops `make` made: its quality and, when it can be aligned
    /// and a classifier is given, its fake probability. No face is marked main (the decision's choice, made
    /// in frame order by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn judge(
        &self,
        (frame_width, frame_height): (u32, u32),
        faces: &[Face],
        settings: &QualitySettings,
        quality_crop: &mut RgbImage,
        mut classifier: Option<&mut Classifier>,
        results: &mut heapless::Vec<FaceResult, MAX_FACES>,
        record: &mut impl FnMut(Stage, Duration),
    ) -> Result<()> {
        results.clear();
        let tensor_len = self.size.0 * self.size.1 * 3;
        for (index, face) in faces.iter().enumerate() {
            let mark = Instant::now();
            let slot = self.slots.get(index).copied().flatten();
            let (quality, issue) = match slot {
                Some(slot) => {
                    let start = slot * QUALITY_LEN;
                    quality_crop.data.copy_from_slice(&self.images[start..start + QUALITY_LEN]);
                    let quality = Quality::measure(face, frame_width, frame_height, quality_crop);
                    (quality, quality.check(settings))
                }
                // Degenerate keypoints (all on one spot): not a face we can align or judge.
                None => (Quality::default(), Some(QualityIssue::TooSmall)),
            };
            record(Stage::Align, mark.elapsed());
            let mut fake_probability = None;
            if let (Some(classifier), Some(slot)) = (classifier.as_deref_mut(), slot) {
                let mark = Instant::now();
                let start = slot * tensor_len;
                fake_probability =
                    Some(classifier.fake_probability_of_input(&self.tensors[start..start + tensor_len])?);
                record(Stage::Classifier, mark.elapsed());
            }
            let _ = results.push(FaceResult { face: *face, quality, issue, fake_probability, main: false });
        }
        Ok(())
    }
}
