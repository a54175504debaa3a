//! The pipeline for one frame: preprocess → detect → align → judge quality → classify → decide. It owns every
//! buffer it uses, allocated at start-up, so that a frame in steady state costs no heap allocation outside
//! tract's own inference and MJPEG decoding. The detector may skip frames while the faces hold still (`hold`).
//! With `[runtime] threads = 2` each frame's crops, quality and classifier run on a second thread beside the
//! next frame's detection (`pipelined`: `push` and `flush`); `process` stays the one-thread call.

pub mod crops;
pub mod hold;
pub mod pipelined;

use crate::align::Alignment;
use crate::classify::Classifier;
use crate::codec::{decode_mjpeg, DecodedImage};
use crate::config::BoardConfig;
use crate::decide::{Decider, Observation, Verdict};
use crate::detect::{BlazeFaceDecoder, Face, MAX_FACES};
use crate::frame::{Frame, PixelFormat};
use crate::infer::Model;
use crate::manifest::{Manifest, Role};
use crate::preprocess::cuda::abi::MAX_CROPS;
use crate::preprocess::cuda::{KernelWork, Kernels};
use crate::preprocess::work::{CpuWork, Fallback, PixelWork};
use crate::preprocess::{cpu, Affine, Backend, Letterbox, RgbImage};
use crate::quality::{Quality, QualityIssue, QualitySettings};
use crate::timing::{Stage, StageTimes};
use anyhow::Result;
use crops::{Crops, QUALITY_LEN};
use hold::{Hold, HoldCounts};
use std::time::Instant;

/// Side of the aligned crop the quality gates measure, fixed so that their thresholds do not depend on the
/// classifier's input size.
pub const QUALITY_CROP: usize = 112;

// One GPU launch makes every crop of a frame: a quality crop and a classifier crop per face.
const _: () = assert!(2 * MAX_FACES <= MAX_CROPS, "the GPU crop launch cannot hold every face's crops");

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

/// One frame through every stage, with every buffer it needs allocated once.
pub struct Pipeline {
    models: Models,
    decoder: BlazeFaceDecoder,
    decider: Decider,
    quality: QualitySettings,
    /// The pixel work: the GPU path while it is healthy, else the CPU reference (`work::Fallback`).
    pixels: Fallback,
    quality_crop: RgbImage,
    /// The last decoded MJPEG frame (decoding allocates inside the JPEG decoder; see ARCHITECTURE.md).
    decoded: Option<DecodedImage>,
    faces: heapless::Vec<Face, MAX_FACES>,
    results: heapless::Vec<FaceResult, MAX_FACES>,
    pub times: StageTimes,
    /// Why the GPU was not used at start (backend "cuda"), or a model's GPU inference failed; taken by
    /// `take_gpu_failure` with the pixel work's own loss.
    gpu_failure: Option<anyhow::Error>,
    /// The crops of one frame, sized for `MAX_FACES` once.
    crops: Crops,
    /// When the detector may be skipped (`[detector] redetect_every`).
    hold: Hold,
    /// Whether the pixel work is on the GPU path (then the crops stay on this thread with two threads).
    pixels_on_gpu: bool,
    /// The worker and the frame slots with two threads (`[runtime] threads = 2`; `pipelined`).
    pipelined: Option<pipelined::Pipelined>,
}

impl Pipeline {
    pub fn new(config: &BoardConfig, models: Models) -> Result<Pipeline> {
        let decoder = BlazeFaceDecoder::new(&models.detector.entry, config.detector)?;
        let detector_size = models.detector.entry.input.image_size();
        let (crop_width, crop_height) = match &models.classifier {
            Some(classifier) => classifier.crop_size(),
            None => (models.alignment.default_size, models.alignment.default_size),
        };
        let cpu =
            CpuWork::with_sizes(&[detector_size, (QUALITY_CROP, QUALITY_CROP), (crop_width, crop_height)]);
        let mut pipeline = Pipeline {
            decoder,
            decider: Decider::new(config.decision),
            quality: config.quality,
            pixels: Fallback::new(cpu),
            quality_crop: RgbImage::new(QUALITY_CROP, QUALITY_CROP),
            decoded: None,
            faces: heapless::Vec::new(),
            results: heapless::Vec::new(),
            times: StageTimes::with_capacity(4096),
            gpu_failure: None,
            crops: Crops::new((crop_width, crop_height)),
            hold: Hold::new(&config.detector, QUALITY_LEN),
            pixels_on_gpu: false,
            pipelined: None,
            models,
        };
        let options = config.runtime.cuda_options(|path| config.resolve(path));
        match crate::preprocess::cuda::open(&options) {
            Ok(Some(kernels)) => {
                log::info!("pixel work on the GPU: {}", kernels.name());
                pipeline.pixels.use_gpu(Box::new(kernels));
                pipeline.pixels_on_gpu = true;
            }
            Ok(None) => log::info!("pixel work on the CPU (backend \"cpu\")"),
            Err(reason) if config.runtime.backend == Backend::Cuda => {
                log::error!("backend \"cuda\": no GPU path ({reason:#}); the CPU does the pixel work");
                pipeline.gpu_failure = Some(anyhow::anyhow!("no GPU path at start: {reason:#}"));
            }
            Err(reason) => {
                log::info!("backend \"auto\": no GPU path ({reason:#}); the CPU does the pixel work")
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
        pipeline.set_threads(config.runtime.threads)?;
        if pipeline.threads() == 2 {
            log::info!(
                "two threads: crops, quality and classifier of each frame beside the next's detection"
            );
        }
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
        self.pixels.use_gpu(Box::new(KernelWork::new(kernels)));
        self.set_pixels_on_gpu(true);
    }

    fn set_pixels_on_gpu(&mut self, on_gpu: bool) {
        self.pixels_on_gpu = on_gpu;
        if let Some(pipelined) = self.pipelined.as_mut() {
            pipelined.crops_here = on_gpu;
        }
    }

    /// The GPU path's name while it is in use.
    pub fn gpu(&self) -> Option<String> {
        self.pixels.gpu()
    }

    /// The error that made the pipeline drop the GPU path (pixel work or a model's inference) during the last
    /// frame, once; a second one in the same frame is logged. The frame itself was finished on the CPU; so is
    /// every frame after it.
    pub fn take_gpu_failure(&mut self) -> Option<anyhow::Error> {
        if let Some(error) = self.pixels.take_lost() {
            self.set_pixels_on_gpu(false);
            self.note_gpu_failure(error);
        }
        let from_models: Vec<anyhow::Error> =
            self.models.each_mut().filter_map(Model::take_gpu_failure).collect();
        for error in from_models {
            self.note_gpu_failure(error);
        }
        self.gpu_failure.take()
    }

    /// The models. With two threads the classifier travels with the frame it judges: while a frame is in
    /// flight `classifier` is `None` here (read it before the first `push`, or after a `flush`).
    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Processes one frame start to finish on this thread: returns its faces, and the verdict if this frame
    /// decided the session. With two threads, refused while a frame pushed is in flight (`flush` first);
    /// `push` is the pipelined call.
    pub fn process(&mut self, frame: &Frame) -> Result<(&[FaceResult], Option<Verdict>)> {
        anyhow::ensure!(!self.in_flight(), "a frame pushed is still in flight: flush the pipeline first");
        let start = Instant::now();
        frame.validate()?;
        // An MJPEG frame is decoded into storage the pipeline keeps; the stages then read the decoded frame.
        let mut decoded = self.decoded.take();
        let verdict = if frame.format == PixelFormat::Mjpeg {
            match decode_mjpeg(frame) {
                Ok(image) => {
                    let image = decoded.insert(image);
                    self.times.record(Stage::Decode, start.elapsed());
                    let frame =
                        image.frame(frame.source, frame.sequence, frame.timestamp_ns, frame.discontinuity);
                    self.judge_frame(&frame)
                }
                Err(error) => Err(error),
            }
        } else {
            self.judge_frame(frame)
        };
        self.decoded = decoded;
        if verdict.is_err() {
            // The faces and crops of a failed frame are not a detection to hold.
            self.hold.reset();
        }
        let verdict = verdict?;
        self.times.record(Stage::Frame, start.elapsed());
        Ok((&self.results, verdict))
    }

    /// Detection, then each face's judgement, then the decision, on a frame of raw pixels.
    /// A frame the schedule allows is held: the last detection's faces, cropped from this frame; when one of
    /// their crops changed too much the detector runs on this frame after all (`hold`).
    fn judge_frame(&mut self, frame: &Frame) -> Result<Option<Verdict>> {
        let mut held = self.hold.may_hold(frame);
        if !held {
            self.detect(frame)?;
        }
        self.make_crops(frame)?;
        if held && self.hold.moved(&self.crops.images, QUALITY_LEN) {
            held = false;
            self.detect(frame)?;
            self.make_crops(frame)?;
        }
        if !held {
            self.hold.detected(frame, &self.faces, &self.crops.slots, &self.crops.images, QUALITY_LEN);
        }
        let main = self.decider.select_main(&self.faces);
        let times = &mut self.times;
        self.crops.judge(
            (frame.width, frame.height),
            &self.faces,
            &self.quality,
            &mut self.quality_crop,
            self.models.classifier.as_mut(),
            &mut self.results,
            &mut |stage, elapsed| times.record(stage, elapsed),
        )?;
        if let Some(result) = main.and_then(|index| self.results.get_mut(index)) {
            result.main = true;
        }
        let mark = Instant::now();
        let observation = main.and_then(|index| self.results.get(index)).map(|result| Observation {
            bbox: result.face.bbox,
            issue: result.issue,
            fake_probability: result.fake_probability,
        });
        let verdict = self.decider.observe(frame.sequence, observation.as_ref());
        self.times.record(Stage::Decision, mark.elapsed());
        Ok(verdict)
    }

    /// Detection: the letterbox into the detector's input, the detector, its decoding into `self.faces`.
    fn detect(&mut self, frame: &Frame) -> Result<()> {
        let mark = Instant::now();
        let (input_width, input_height) = self.models.detector.entry.input.image_size();
        let letterbox = Letterbox::fit(frame.width, frame.height, input_width, input_height);
        let map = letterbox.to_source_map();
        let pixels = &mut self.pixels;
        self.models.detector.write_input(|spec, input| pixels.letterbox(frame, &map, spec, input))?;
        self.times.record(Stage::Letterbox, mark.elapsed());

        let mark = Instant::now();
        let outputs = self.models.detector.run()?;
        self.times.record(Stage::Detector, mark.elapsed());

        let mark = Instant::now();
        let grids = outputs.len() / 2;
        let mut scores: heapless::Vec<&[f32], 4> = heapless::Vec::new();
        let mut regressors: heapless::Vec<&[f32], 4> = heapless::Vec::new();
        for index in 0..grids {
            let _ = scores.push(outputs[index].try_as_plain_ram()?.as_slice::<f32>()?);
            let _ = regressors.push(outputs[grids + index].try_as_plain_ram()?.as_slice::<f32>()?);
        }
        self.decoder.decode(&scores, &regressors, &letterbox, &mut self.faces)?;
        self.times.record(Stage::Postprocess, mark.elapsed());
        Ok(())
    }

    /// Every crop of the frame's faces in one call of the pixel work (the classifier-crop stage).
    fn make_crops(&mut self, frame: &Frame) -> Result<()> {
        let spec = match &self.models.classifier {
            Some(classifier) => &classifier.entry().input,
            // No tensors are asked for; any spec does.
            None => &self.models.detector.entry.input,
        };
        let times = &mut self.times;
        self.crops.make(
            &mut self.pixels,
            frame,
            &self.faces,
            &self.models.alignment,
            spec,
            self.models.classifier.is_some(),
            &mut |stage, elapsed| times.record(stage, elapsed),
        )
    }

    /// Ends the current stream's session (end of input or discontinuity); see `Decider::finish`. The session
    /// is the frames whose results came back so far: with two threads a frame still in flight is observed
    /// after, in the next session, as it would be had it been pushed after this call with one thread (callers
    /// that end a stream `flush` first, so that its last frame is in it).
    pub fn finish(&mut self) -> Option<Verdict> {
        self.hold.reset();
        self.decider.finish()
    }

    /// How often the detector ran, was skipped, and was sent back by the motion test (`hold`).
    pub fn hold_counts(&self) -> HoldCounts {
        self.hold.counts
    }

    /// Runs the detector at least every `redetect_every` frames from now on (the board's `[detector]` key;
    /// `deepgate bench` compares settings in one run).
    /// With two threads no frame is held (every frame is detected) until the pipeline is back on one.
    pub fn set_redetect_every(&mut self, redetect_every: u32) {
        self.hold.set_redetect_every(redetect_every);
    }

    /// The side of the classifier's crop (the alignment's default size when no classifier is configured).
    pub fn crop_size(&self) -> usize {
        self.crops.size.0
    }

    /// Writes the aligned crop of `face` at `out`'s size into `out` (for `deepgate crops`) and returns the map
    /// from crop to frame pixels it used.
    pub fn crop(&self, frame: &Frame, face: &Face, out: &mut RgbImage) -> Result<Affine> {
        aligned_crop(&self.models.alignment, frame, face, out)
    }
}

/// Writes the aligned crop of `face` at `out`'s size into `out`, as the runtime makes it (the CPU reference),
/// and returns the map from crop to frame pixels it used: `Pipeline::crop`, for callers that hold the
/// alignment while the pipeline is busy (`deepgate crops` inside the session loop).
pub fn aligned_crop(alignment: &Alignment, frame: &Frame, face: &Face, out: &mut RgbImage) -> Result<Affine> {
    let map = alignment.crop_map(face, out.width)?;
    cpu::warp(frame, &map, out)?;
    Ok(map)
}

/// The GPU path's fallback, checked with the host build of the kernels standing in for the GPU (the real GPU's
/// fault injection is checked through the binary: tests/gpu.rs).
#[cfg(all(test, deepgate_host_kernels))]
mod fallback {
    use super::pipelined::Completed;
    use super::*;
    use crate::codec::decode_image_file;
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

    /// The photo as a YUYV camera frame, through the one encoder the tests and benches share.
    fn yuyv(rgb: &[u8], width: usize, height: usize) -> (Vec<u8>, usize) {
        let stride = PixelFormat::Yuyv.min_stride(width as u32);
        let frame = crate::capture::synthetic::camera_frame(
            rgb,
            width as u32,
            height as u32,
            PixelFormat::Yuyv,
            stride,
        )
        .expect("a YUYV frame of the photo");
        (frame, stride)
    }

    fn verdict_line(verdict: &Verdict) -> String {
        format!(
            "verdict {:?} {} {:?} {:?}",
            verdict.decision, verdict.reason, verdict.fake_probability, verdict.evidence
        )
    }

    /// Everything the pipeline reported, one line per frame result and verdict (floats printed exactly), and
    /// the frames after which it reported a GPU failure. Frames go through `push` and `flush` as the session
    /// loop calls them: with one thread `push` is `process`; with two (`pipelined`) each frame's outcome comes
    /// one call later.
    pub fn play(pipeline: &mut Pipeline) -> (Vec<String>, Vec<usize>) {
        let (mut lines, mut failures, mut index) = (Vec::new(), Vec::new(), 0);
        let report = |completed: Completed, lines: &mut Vec<String>| {
            let (faces, verdict) = completed.outcome.expect("frame");
            let mut line = format!("{} frame {}:", completed.frame.source, completed.frame.sequence);
            for face in faces {
                let _ = write!(line, " {:?} {:?} {:?}", face.face.bbox, face.issue, face.fake_probability);
            }
            lines.push(line);
            if let Some(verdict) = verdict {
                lines.push(verdict_line(&verdict));
            }
        };
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
                    if let Some(completed) = pipeline.flush() {
                        report(completed, &mut lines);
                    }
                    if let Some(verdict) = pipeline.finish() {
                        lines.push(verdict_line(&verdict));
                    }
                }
                if let Some(completed) = pipeline.push(&frame) {
                    report(completed, &mut lines);
                }
                if let Some(error) = pipeline.take_gpu_failure() {
                    eprintln!("frame {index}: {error:#}");
                    failures.push(index);
                }
                index += 1;
            }
        }
        if let Some(completed) = pipeline.flush() {
            report(completed, &mut lines);
        }
        if let Some(verdict) = pipeline.finish() {
            lines.push(verdict_line(&verdict));
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

    #[test]
    fn an_error_that_is_not_a_gpu_fault_fails_that_frame_and_keeps_the_gpu_path() {
        use crate::preprocess::cuda::host::HostKernels;
        let image = decode_image_file(Path::new(PHOTOS[0])).expect("fixture photo");
        let mut pipeline = pipeline();
        let mut kernels = HostKernels::default();
        kernels.refuse_at = Some(2);
        pipeline.use_gpu(Box::new(kernels));
        for sequence in 0..4u64 {
            let frame = image.frame(PHOTOS[0], sequence, 0, sequence == 0);
            let result = pipeline.process(&frame).map(|(faces, _)| faces.len());
            if sequence == 1 {
                let error = result.expect_err("the kernels refused the second upload");
                assert!(format!("{error:#}").contains("injected refusal of frame 1"), "{error:#}");
            } else {
                assert!(result.expect("frame") > 0, "frame {sequence} was processed");
            }
            assert!(pipeline.take_gpu_failure().is_none(), "frame {sequence}: not a GPU loss");
            assert!(pipeline.gpu().is_some(), "frame {sequence}: the GPU path stays in use");
        }
    }
}
