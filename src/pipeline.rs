//! The pipeline for one frame: preprocess → detect → align → judge quality → classify → decide. It owns every
//! buffer it uses, allocated at start-up, so that a frame in steady state costs no heap allocation outside
//! tract's own inference and MJPEG decoding.

use crate::align::Alignment;
use crate::capture::replay::{decode_image_bytes, DecodedImage};
use crate::classify::Classifier;
use crate::config::BoardConfig;
use crate::decide::{Decider, Observation, Verdict};
use crate::detect::{BlazeFaceDecoder, Face, MAX_FACES};
use crate::frame::{Frame, PixelFormat};
use crate::infer::Model;
use crate::manifest::{Manifest, Role};
use crate::preprocess::{cpu, Affine, Letterbox, RgbImage};
use crate::quality::{Quality, QualityIssue, QualitySettings};
use crate::timing::{Stage, StageTimes};
use anyhow::{Context, Result};
use std::time::Instant;

/// Side of the aligned crop the quality gates measure, fixed so that their thresholds do not depend on the
/// classifier's input size.
pub const QUALITY_CROP: usize = 112;

/// What the pipeline found about one face of a frame.
#[derive(Clone, Copy, Debug)]
pub struct FaceResult {
    pub face: Face,
    pub quality: Quality,
    pub issue: Option<QualityIssue>,
    pub fake_probability: Option<f32>,
    /// Whether this is the face the decision follows.
    pub main: bool,
}

/// The models a pipeline runs, loaded and verified once.
pub struct Models {
    pub manifest: Manifest,
    pub detector: Model,
    pub classifier: Option<Classifier>,
    pub alignment: Alignment,
}

impl Models {
    pub fn load(config: &BoardConfig) -> Result<Models> {
        let manifest = Manifest::load(&config.resolve(&config.models.manifest))?;
        let alignment = Alignment::load(&config.resolve(&config.models.alignment))?;
        let detector_entry = manifest.get(&config.models.detector, Role::Detector)?;
        let detector = Model::load(&manifest, detector_entry)?;
        let classifier = match &config.models.classifier {
            Some(id) => {
                let entry = manifest.get(id, Role::Classifier)?;
                Some(Classifier::new(Model::load(&manifest, entry)?)?)
            }
            None => {
                log::warn!(
                    "no classifier configured: faces are found but not judged; verdicts will be `uncertain`"
                );
                None
            }
        };
        Ok(Models { manifest, detector, classifier, alignment })
    }
}

pub struct Pipeline {
    models: Models,
    decoder: BlazeFaceDecoder,
    decider: Decider,
    quality: QualitySettings,
    detector_image: RgbImage,
    quality_crop: RgbImage,
    classifier_crop: RgbImage,
    /// The last decoded MJPEG frame (decoding allocates inside the JPEG decoder; see ARCHITECTURE.md).
    decoded: Option<DecodedImage>,
    faces: heapless::Vec<Face, MAX_FACES>,
    results: heapless::Vec<FaceResult, MAX_FACES>,
    pub times: StageTimes,
}

impl Pipeline {
    pub fn new(config: &BoardConfig, models: Models) -> Result<Pipeline> {
        let decoder = BlazeFaceDecoder::new(&models.detector.entry, config.detector.settings())?;
        let (width, height) = models.detector.entry.input.image_size();
        let (crop_width, crop_height) = match &models.classifier {
            Some(classifier) => classifier.crop_size(),
            None => (models.alignment.default_size, models.alignment.default_size),
        };
        Ok(Pipeline {
            decoder,
            decider: Decider::new(config.decision),
            quality: config.quality,
            detector_image: RgbImage::new(width, height),
            quality_crop: RgbImage::new(QUALITY_CROP, QUALITY_CROP),
            classifier_crop: RgbImage::new(crop_width, crop_height),
            decoded: None,
            faces: heapless::Vec::new(),
            results: heapless::Vec::new(),
            times: StageTimes::with_capacity(4096),
            models,
        })
    }

    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Processes one frame: returns its faces, and the verdict if this frame decided the session.
    pub fn process(&mut self, frame: &Frame) -> Result<(&[FaceResult], Option<Verdict>)> {
        let start = Instant::now();
        frame.validate()?;
        let decoded_frame;
        let frame = if frame.format == PixelFormat::Mjpeg {
            let image = decode_mjpeg(frame)?;
            decoded_frame = self.decoded.insert(image).frame(
                frame.source,
                frame.sequence,
                frame.timestamp_ns,
                frame.discontinuity,
            );
            self.times.record(Stage::Decode, start.elapsed());
            &decoded_frame
        } else {
            frame
        };

        let mark = Instant::now();
        let (input_width, input_height) = (self.detector_image.width, self.detector_image.height);
        let letterbox = Letterbox::fit(frame.width, frame.height, input_width, input_height);
        cpu::warp(frame, &letterbox.to_source_map(), &mut self.detector_image)?;
        self.models.detector.set_input_image(&self.detector_image)?;
        self.times.record(Stage::Letterbox, mark.elapsed());

        let mark = Instant::now();
        let outputs = self.models.detector.run()?;
        self.times.record(Stage::Detector, mark.elapsed());

        let mark = Instant::now();
        {
            let grids = outputs.len() / 2;
            let mut scores: heapless::Vec<&[f32], 4> = heapless::Vec::new();
            let mut regressors: heapless::Vec<&[f32], 4> = heapless::Vec::new();
            for index in 0..grids {
                let _ = scores.push(outputs[index].try_as_plain_ram()?.as_slice::<f32>()?);
                let _ = regressors.push(outputs[grids + index].try_as_plain_ram()?.as_slice::<f32>()?);
            }
            self.decoder.decode(&scores, &regressors, &letterbox, &mut self.faces)?;
        }
        self.times.record(Stage::Postprocess, mark.elapsed());

        let main = self.decider.select_main(&self.faces);
        self.results.clear();
        for (index, face) in self.faces.iter().enumerate() {
            let mark = Instant::now();
            let alignment = &self.models.alignment;
            let (quality, issue, aligned) = match alignment.crop_map(face, QUALITY_CROP) {
                Ok(map) => {
                    cpu::warp(frame, &map, &mut self.quality_crop)?;
                    let quality = Quality::measure(face, frame.width, frame.height, &self.quality_crop);
                    (quality, quality.check(&self.quality), true)
                }
                // Degenerate keypoints (all on one spot): not a face we can align or judge.
                Err(_) => (Quality::default(), Some(QualityIssue::TooSmall), false),
            };
            self.times.record(Stage::Align, mark.elapsed());
            let mut fake_probability = None;
            if let (Some(classifier), true) = (&mut self.models.classifier, aligned) {
                let mark = Instant::now();
                let crop_map = alignment.crop_map(face, self.classifier_crop.width)?;
                cpu::warp(frame, &crop_map, &mut self.classifier_crop)?;
                self.times.record(Stage::ClassifierCrop, mark.elapsed());
                let mark = Instant::now();
                fake_probability = Some(classifier.fake_probability(&self.classifier_crop)?);
                self.times.record(Stage::Classifier, mark.elapsed());
            }
            let _ = self.results.push(FaceResult {
                face: *face,
                quality,
                issue,
                fake_probability,
                main: main == Some(index),
            });
        }

        let mark = Instant::now();
        let observation = main.and_then(|index| self.results.get(index)).map(|result| Observation {
            bbox: result.face.bbox,
            issue: result.issue,
            fake_probability: result.fake_probability,
        });
        let verdict = self.decider.observe(frame.sequence, observation.as_ref());
        self.times.record(Stage::Decision, mark.elapsed());
        self.times.record(Stage::Frame, start.elapsed());
        Ok((&self.results, verdict))
    }

    /// Ends the current stream's session (end of input or discontinuity); see `Decider::finish`.
    pub fn finish(&mut self) -> Option<Verdict> {
        self.decider.finish()
    }

    /// The side of the classifier's crop (the alignment's default size when no classifier is configured).
    pub fn crop_size(&self) -> usize {
        self.classifier_crop.width
    }

    /// Writes the aligned crop of `face` at `out`'s size into `out` (for `deepgate crops`) and returns the map
    /// from crop to frame pixels it used.
    pub fn crop(&self, frame: &Frame, face: &Face, out: &mut RgbImage) -> Result<Affine> {
        let map = self.models.alignment.crop_map(face, out.width)?;
        cpu::warp(frame, &map, out)?;
        Ok(map)
    }
}

/// Decodes an MJPEG frame, refusing the truncated frames USB cameras deliver (often the first one), which a
/// lenient JPEG decoder would otherwise fill with grey: a complete JPEG ends with the EOI marker (FF D9),
/// possibly followed by zero padding.
fn decode_mjpeg(frame: &Frame) -> Result<DecodedImage> {
    let end = frame.data.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    anyhow::ensure!(
        frame.data.starts_with(&[0xFF, 0xD8]) && frame.data[..end].ends_with(&[0xFF, 0xD9]),
        "MJPEG frame {} from {} is incomplete or not a JPEG ({} bytes, no start or end marker)",
        frame.sequence,
        frame.source,
        frame.data.len()
    );
    let image = decode_image_bytes(&frame.data[..end], "MJPEG frame")
        .with_context(|| format!("decoding MJPEG frame {} from {}", frame.sequence, frame.source))?;
    anyhow::ensure!(
        image.width == frame.width && image.height == frame.height,
        "MJPEG frame {} from {} is {}x{}, the stream is {}x{}",
        frame.sequence,
        frame.source,
        image.width,
        image.height,
        frame.width,
        frame.height
    );
    Ok(image)
}
