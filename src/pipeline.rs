//! The pipeline for one frame: preprocess → detect → align → judge quality → classify → decide. It owns every
//! buffer it uses, allocated at start-up, so that a frame in steady state costs no heap allocation outside
//! tract's own inference and MJPEG decoding.

use crate::align::Alignment;
use crate::capture::replay::{decode_image_bytes, DecodedImage};
use crate::classify::Classifier;
use crate::config::{Backend, BoardConfig};
use crate::decide::{Decider, Observation, Verdict};
use crate::detect::{BlazeFaceDecoder, Face, MAX_FACES};
use crate::frame::{Frame, PixelFormat};
use crate::infer::Model;
use crate::manifest::{Manifest, Role};
use crate::preprocess::cuda::abi::CropJob;
use crate::preprocess::cuda::Kernels;
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
        let detector = Model::load_on(&manifest, detector_entry, config.runtime.detector_inference)?;
        let classifier = match &config.models.classifier {
            Some(id) => {
                let entry = manifest.get(id, Role::Classifier)?;
                Some(Classifier::new(Model::load_on(&manifest, entry, config.runtime.classifier_inference)?)?)
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

    /// The models, detector first.
    pub fn each_mut(&mut self) -> impl Iterator<Item = &mut Model> {
        std::iter::once(&mut self.detector).chain(self.classifier.as_mut().map(Classifier::model_mut))
    }

    /// Where each model's inference runs, for the log: `detector on the GPU, classifier on the CPU`.
    pub fn placements(&self) -> String {
        let mut text = format!("detector on the {}", self.detector.placement_name());
        if let Some(classifier) = &self.classifier {
            text += &format!(", classifier on the {}", classifier.model().placement_name());
        }
        text
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
    /// The GPU path while it is healthy (None: the CPU does the pixel work). The first error drops it for good.
    gpu: Option<Box<dyn Kernels>>,
    /// Why the GPU path was dropped during the last frame; taken by `take_gpu_failure`.
    gpu_failure: Option<anyhow::Error>,
    /// The GPU crops of one frame: jobs, classifier tensors and quality crops, sized for `MAX_FACES` once.
    crop_jobs: Vec<CropJob>,
    crop_tensors: Vec<f32>,
    crop_images: Vec<u8>,
}

impl Pipeline {
    pub fn new(config: &BoardConfig, models: Models) -> Result<Pipeline> {
        let decoder = BlazeFaceDecoder::new(&models.detector.entry, config.detector.settings())?;
        let (width, height) = models.detector.entry.input.image_size();
        let (crop_width, crop_height) = match &models.classifier {
            Some(classifier) => classifier.crop_size(),
            None => (models.alignment.default_size, models.alignment.default_size),
        };
        let mut pipeline = Pipeline {
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
            gpu: None,
            gpu_failure: None,
            crop_jobs: Vec::with_capacity(2 * MAX_FACES),
            crop_tensors: vec![0.0; MAX_FACES * crop_width * crop_height * 3],
            crop_images: vec![0; MAX_FACES * QUALITY_CROP * QUALITY_CROP * 3],
            models,
        };
        match crate::preprocess::cuda::open(config) {
            Ok(Some(kernels)) => {
                log::info!("pixel work on the GPU: {}", kernels.name());
                pipeline.use_gpu(kernels);
            }
            Ok(None) => log::info!("pixel work on the CPU (backend \"cpu\")"),
            Err(reason) if config.runtime.backend == Backend::Cuda => {
                log::error!("backend \"cuda\": no GPU path ({reason}); the CPU does the pixel work");
                pipeline.gpu_failure = Some(anyhow::anyhow!("no GPU path at start: {reason}"));
            }
            Err(reason) => {
                log::info!("backend \"auto\": no GPU path ({reason}); the CPU does the pixel work")
            }
        }
        // A model whose placement asked for the GPU and did not get it: as for the pixel work.
        let unplaced: Vec<anyhow::Error> =
            pipeline.models.each_mut().filter_map(Model::take_gpu_failure).collect();
        for error in unplaced {
            if config.runtime.backend == Backend::Cuda {
                log::error!("backend \"cuda\": {error:#}; that model runs on the CPU");
                // Said here; the controller is told once (the first reason of several is kept).
                pipeline.gpu_failure.get_or_insert(error);
            } else {
                log::info!("backend \"auto\": {error:#}; that model runs on the CPU");
            }
        }
        log::info!("inference: {}", pipeline.models.placements());
        Ok(pipeline)
    }

    /// Keeps `error` for `take_gpu_failure` (the first of a frame; the others are logged).
    fn note_gpu_failure(&mut self, error: anyhow::Error) {
        match &self.gpu_failure {
            None => self.gpu_failure = Some(error),
            Some(_) => log::error!("{error:#}"),
        }
    }

    /// Hands the pixel work to `kernels` (the GPU path) from the next frame on.
    pub fn use_gpu(&mut self, kernels: Box<dyn Kernels>) {
        self.gpu = Some(kernels);
    }

    /// The GPU path's name while it is in use.
    pub fn gpu(&self) -> Option<String> {
        self.gpu.as_ref().map(|kernels| kernels.name())
    }

    /// The error that made the pipeline drop the GPU path (pixel work or a model's inference) during the last
    /// frame, once; a second one in the same frame is logged. The frame itself was finished on the CPU; so is
    /// every frame after it.
    pub fn take_gpu_failure(&mut self) -> Option<anyhow::Error> {
        let from_models: Vec<anyhow::Error> =
            self.models.each_mut().filter_map(Model::take_gpu_failure).collect();
        for error in from_models {
            self.note_gpu_failure(error);
        }
        self.gpu_failure.take()
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
        let map = letterbox.to_source_map();
        let detector = &mut self.models.detector;
        let letterbox_on_gpu = on_gpu(&mut self.gpu, &mut self.gpu_failure, |kernels| {
            kernels.upload(frame)?;
            detector.write_input(|spec, input| kernels.letterbox(&map, spec, input))
        });
        if !letterbox_on_gpu {
            cpu::warp(frame, &map, &mut self.detector_image)?;
            self.models.detector.set_input_image(&self.detector_image)?;
        }
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
        let mark = Instant::now();
        // Every crop of the frame in one GPU launch (timed as the classifier-crop stage), when the GPU path is
        // up; else each on the CPU below.
        let crops_on_gpu = !self.faces.is_empty() && {
            let (jobs, faces, models) = (&mut self.crop_jobs, &self.faces, &self.models);
            let (tensors, images) = (&mut self.crop_tensors, &mut self.crop_images);
            let size = (self.classifier_crop.width, self.classifier_crop.height);
            on_gpu(&mut self.gpu, &mut self.gpu_failure, |kernels| {
                gpu_crops(kernels, faces, models, size, jobs, tensors, images)
            })
        };
        if crops_on_gpu {
            self.times.record(Stage::ClassifierCrop, mark.elapsed());
        }
        let (quality_len, tensor_len) = (QUALITY_CROP * QUALITY_CROP * 3, self.classifier_crop.data.len());
        let mut aligned_index = 0;
        for (index, face) in self.faces.iter().enumerate() {
            let mark = Instant::now();
            let alignment = &self.models.alignment;
            let (quality, issue, aligned) = match alignment.crop_map(face, QUALITY_CROP) {
                Ok(map) => {
                    if crops_on_gpu {
                        let start = aligned_index * quality_len;
                        self.quality_crop.data.copy_from_slice(&self.crop_images[start..start + quality_len]);
                    } else {
                        cpu::warp(frame, &map, &mut self.quality_crop)?;
                    }
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
                if crops_on_gpu {
                    let start = aligned_index * tensor_len;
                    let tensor = &self.crop_tensors[start..start + tensor_len];
                    fake_probability = Some(classifier.fake_probability_of_input(tensor)?);
                    self.times.record(Stage::Classifier, mark.elapsed());
                } else {
                    let crop_map = alignment.crop_map(face, self.classifier_crop.width)?;
                    cpu::warp(frame, &crop_map, &mut self.classifier_crop)?;
                    self.times.record(Stage::ClassifierCrop, mark.elapsed());
                    let mark = Instant::now();
                    fake_probability = Some(classifier.fake_probability(&self.classifier_crop)?);
                    self.times.record(Stage::Classifier, mark.elapsed());
                }
            }
            aligned_index += usize::from(aligned);
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

/// Runs `work` on the GPU path if there is one; on error (or a panic in the CUDA library) drops the path for
/// good (keeping the error for `Pipeline::take_gpu_failure`) and returns false, so that the caller does the
/// work on the CPU.
fn on_gpu(
    gpu: &mut Option<Box<dyn Kernels>>,
    failure: &mut Option<anyhow::Error>,
    work: impl FnOnce(&mut dyn Kernels) -> Result<()>,
) -> bool {
    let Some(kernels) = gpu.as_mut() else { return false };
    match crate::panics::contain("the CUDA library", || work(kernels.as_mut())) {
        Ok(()) => true,
        Err(error) => {
            let name = kernels.name();
            *gpu = None;
            *failure = Some(error.context(format!("{name}: the GPU path failed; the CPU takes over")));
            false
        }
    }
}

/// The GPU crops of the frame last uploaded, in one launch: for each face that can be aligned, in order, its
/// quality crop (8-bit RGB, `QUALITY_CROP` square) and, with a classifier, its classifier tensor (`size`).
fn gpu_crops(
    kernels: &mut dyn Kernels,
    faces: &[Face],
    models: &Models,
    (width, height): (usize, usize),
    jobs: &mut Vec<CropJob>,
    tensors: &mut [f32],
    images: &mut [u8],
) -> Result<()> {
    jobs.clear();
    for face in faces {
        let Ok(map) = models.alignment.crop_map(face, QUALITY_CROP) else { continue };
        jobs.push(CropJob { map, width: QUALITY_CROP, height: QUALITY_CROP, rgb: true });
        if models.classifier.is_some() {
            let map = models.alignment.crop_map(face, width)?;
            jobs.push(CropJob { map, width, height, rgb: false });
        }
    }
    let spec = match &models.classifier {
        Some(classifier) => &classifier.entry().input,
        // No tensors are asked for; any spec does.
        None => &models.detector.entry.input,
    };
    kernels.crops(jobs, spec, tensors, images)
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

/// The GPU path's fallback, checked with the host build of the kernels standing in for the GPU (the real GPU's
/// fault injection is checked through the binary: tests/gpu.rs).
#[cfg(all(test, deepgate_host_kernels))]
mod fallback {
    use super::*;
    use crate::capture::replay::decode_image_file;
    use std::fmt::Write;
    use std::path::Path;

    /// Photos played as one stream each (a new photo is a discontinuity), `FRAMES` frames a photo, as RGB24 and
    /// as YUYV: 24 frames.
    pub const PHOTOS: [&str; 2] = ["tests/fixtures/faces/astronaut.png", "tests/fixtures/faces/obama.jpg"];
    pub const FRAMES: usize = 6;

    pub fn pipeline() -> Pipeline {
        let config = BoardConfig::load(Path::new("board/host.toml")).expect("board/host.toml");
        assert_eq!(config.runtime.backend, Backend::Cpu, "host.toml keeps the GPU out unless a test adds it");
        Pipeline::new(&config, Models::load(&config).expect("the bundled models")).expect("pipeline")
    }

    /// BT.601 limited range RGB → YUYV, averaging each pair's chroma (odd widths repeat the last pixel).
    fn yuyv(rgb: &[u8], width: usize, height: usize) -> (Vec<u8>, usize) {
        let stride = width.div_ceil(2) * 4;
        let mut out = vec![0u8; stride * height];
        let luma =
            |p: &[u8]| (16.0 + 0.257 * p[0] as f32 + 0.504 * p[1] as f32 + 0.098 * p[2] as f32).round() as u8;
        for y in 0..height {
            for pair in 0..width.div_ceil(2) {
                let first = &rgb[(y * width + 2 * pair) * 3..][..3];
                let second = &rgb[(y * width + (2 * pair + 1).min(width - 1)) * 3..][..3];
                let (r, g, b) = (
                    (first[0] as f32 + second[0] as f32) / 2.0,
                    (first[1] as f32 + second[1] as f32) / 2.0,
                    (first[2] as f32 + second[2] as f32) / 2.0,
                );
                let u = (128.0 - 0.148 * r - 0.291 * g + 0.439 * b).round().clamp(0.0, 255.0) as u8;
                let v = (128.0 + 0.439 * r - 0.368 * g - 0.071 * b).round().clamp(0.0, 255.0) as u8;
                out[y * stride + pair * 4..][..4].copy_from_slice(&[luma(first), u, luma(second), v]);
            }
        }
        (out, stride)
    }

    /// Everything the pipeline reported, one line per frame result and verdict (floats printed exactly), and
    /// the frames after which it reported a GPU failure.
    pub fn play(pipeline: &mut Pipeline) -> (Vec<String>, Vec<usize>) {
        let (mut lines, mut failures, mut index) = (Vec::new(), Vec::new(), 0);
        for path in PHOTOS {
            let image = decode_image_file(Path::new(path)).expect("fixture photo");
            assert_eq!(image.format, PixelFormat::Rgb24, "{path}");
            let (packed, stride) = yuyv(&image.data, image.width as usize, image.height as usize);
            for frame_number in 0..2 * FRAMES {
                let rgb = frame_number < FRAMES;
                let mut frame = image.frame(path, frame_number as u64, 0, frame_number % FRAMES == 0);
                if !rgb {
                    (frame.format, frame.data, frame.stride) = (PixelFormat::Yuyv, &packed, stride);
                }
                if frame.discontinuity {
                    if let Some(verdict) = pipeline.finish() {
                        lines.push(format!(
                            "verdict {:?} {} {:?} {:?}",
                            verdict.decision, verdict.reason, verdict.fake_probability, verdict.evidence
                        ));
                    }
                }
                let (faces, verdict) = pipeline.process(&frame).expect("frame");
                let mut line = format!("{path} frame {frame_number}:");
                for face in faces {
                    let _ =
                        write!(line, " {:?} {:?} {:?}", face.face.bbox, face.issue, face.fake_probability);
                }
                lines.push(line);
                if let Some(verdict) = verdict {
                    lines.push(format!(
                        "verdict {:?} {} {:?} {:?}",
                        verdict.decision, verdict.reason, verdict.fake_probability, verdict.evidence
                    ));
                }
                if let Some(error) = pipeline.take_gpu_failure() {
                    eprintln!("frame {index}: {error:#}");
                    failures.push(index);
                }
                index += 1;
            }
        }
        if let Some(verdict) = pipeline.finish() {
            lines.push(format!(
                "verdict {:?} {} {:?} {:?}",
                verdict.decision, verdict.reason, verdict.fake_probability, verdict.evidence
            ));
        }
        (lines, failures)
    }

    #[test]
    fn a_failing_gpu_path_loses_no_frame_and_no_verdict() {
        use crate::preprocess::cuda::host::HostKernels;
        let (reference, failures) = play(&mut pipeline());
        assert!(failures.is_empty());
        assert!(reference.iter().filter(|line| line.starts_with("verdict")).count() >= 2, "{reference:#?}");
        assert!(reference.iter().any(|line| line.contains("Some(")), "faces were judged: {reference:#?}");

        // The kernels in the pipeline, working: the same results, bit for bit (the kernels equal the reference).
        let mut with_kernels = pipeline();
        with_kernels.use_gpu(Box::new(HostKernels::default()));
        let (lines, failures) = play(&mut with_kernels);
        assert!(failures.is_empty());
        assert!(with_kernels.gpu().is_some(), "the path stayed in use");
        assert_eq!(lines, reference);

        // Failing from the middle of a stream on: reported once, that frame redone on the CPU, nothing lost.
        let mut failing = pipeline();
        let fail_from = FRAMES as u64 + 2;
        let mut kernels = HostKernels::default();
        kernels.fail_from = Some(fail_from);
        failing.use_gpu(Box::new(kernels));
        let (lines, failures) = play(&mut failing);
        assert_eq!(failures, vec![fail_from as usize], "one report, at the failing frame");
        assert!(failing.gpu().is_none(), "the failed path is not used again");
        assert_eq!(lines, reference);

        // A panic inside the GPU library instead of an error: contained, and the same as a failure.
        let mut panicking = pipeline();
        let mut kernels = HostKernels::default();
        kernels.panic_at = Some(fail_from);
        panicking.use_gpu(Box::new(kernels));
        let (lines, failures) = play(&mut panicking);
        assert_eq!(failures, vec![fail_from as usize - 1], "one report, at the panicking frame");
        assert!(panicking.gpu().is_none());
        assert_eq!(lines, reference);
    }
}
