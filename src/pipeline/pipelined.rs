//! Frame pipelining on two threads (`[runtime] threads = 2`): while the caller's thread decodes frame n + 1 and
//! runs the letterbox, the detector and its decoding, a worker thread the pipeline owns (spawned once, named
//! `deepgate-judge`, ended on drop) makes frame n's crops (on the CPU path; the GPU path's crops stay on the
//! caller's thread, where the GPU context lives), measures their quality and runs the classifier. Frame n's
//! results come back one call later (`push`), and the decision takes them in frame order on the caller's thread,
//! so the same frames give the same results and verdicts as with one thread.
//!
//! Two frame slots, allocated at start, take turns: each holds a copy of its frame (consumers of the results
//! see that frame, whose caller's buffer is gone by then), its faces, its crops and its results. The caller
//! hands a slot to the worker, with the classifier, through a mutex and a condition variable: nothing is
//! allocated per frame. A frame that fails on the caller's side never reaches the worker; its error comes back
//! in its turn, as its results would have. A worker that panics ends the process under `deepgate run` (its
//! panic hook); elsewhere each later frame reports that the worker has ended.
#![forbid(unsafe_code)]

use super::crops::Crops;
use super::{FaceResult, Models, Pipeline, QUALITY_CROP};
use crate::align::Alignment;
use crate::classify::Classifier;
use crate::codec::{decode_mjpeg, DecodedImage};
use crate::decide::{Observation, Verdict};
use crate::detect::{Face, MAX_FACES};
use crate::frame::{Frame, PixelFormat};
use crate::manifest::InputSpec;
use crate::preprocess::work::CpuWork;
use crate::preprocess::RgbImage;
use crate::quality::QualitySettings;
use crate::timing::Stage;
use anyhow::{anyhow, Context, Result};
use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The worker thread's name (in `top -H`, panics and logs).
pub const WORKER_NAME: &str = "deepgate-judge";

/// Stage times the worker records for one frame: the crops, and per face its quality and its classifier.
const WORKER_TIMES: usize = 2 * MAX_FACES + 1;

thread_local! {
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is a pipeline's worker (the allocation test counts that thread's allocations too).
pub fn on_worker_thread() -> bool {
    ON_WORKER.with(Cell::get)
}

/// A frame's outcome, in frame order: the frame (as the caller gave it) and its faces and verdict, or the error
/// that failed it.
pub struct Completed<'p> {
    pub frame: Frame<'p>,
    pub outcome: Result<(&'p [FaceResult], Option<Verdict>)>,
}

/// What a frame's timing and identity were, kept with its copied bytes.
#[derive(Clone, Copy)]
struct Meta {
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
    sequence: u64,
    timestamp_ns: u64,
    discontinuity: bool,
}

/// One frame between the two threads: a copy of it, what the caller's side found, what the worker adds.
struct Slot {
    meta: Meta,
    bytes: Vec<u8>,
    source: String,
    /// The decoded pixels of an MJPEG frame.
    decoded: Option<DecodedImage>,
    faces: heapless::Vec<Face, MAX_FACES>,
    crops: Crops,
    /// Whether the caller's side made the crops (the GPU path); else the worker makes them.
    crops_made: bool,
    results: heapless::Vec<FaceResult, MAX_FACES>,
    times: heapless::Vec<(Stage, Duration), WORKER_TIMES>,
    error: Option<anyhow::Error>,
}

impl Slot {
    fn new(crop_size: (usize, usize)) -> Box<Slot> {
        Box::new(Slot {
            meta: Meta {
                format: PixelFormat::Rgb24,
                width: 0,
                height: 0,
                stride: 0,
                sequence: 0,
                timestamp_ns: 0,
                discontinuity: false,
            },
            bytes: Vec::new(),
            source: String::new(),
            decoded: None,
            faces: heapless::Vec::new(),
            crops: Crops::new(crop_size),
            crops_made: false,
            results: heapless::Vec::new(),
            times: heapless::Vec::new(),
            error: None,
        })
    }

    /// Copies `frame` in (its storage reused: no allocation once a frame of this size was seen).
    fn copy(&mut self, frame: &Frame) {
        self.meta = Meta {
            format: frame.format,
            width: frame.width,
            height: frame.height,
            stride: frame.stride,
            sequence: frame.sequence,
            timestamp_ns: frame.timestamp_ns,
            discontinuity: frame.discontinuity,
        };
        self.bytes.clear();
        self.bytes.extend_from_slice(frame.data);
        self.source.clear();
        self.source.push_str(frame.source);
        self.decoded = None;
        self.faces.clear();
        self.results.clear();
        self.times.clear();
        self.crops_made = false;
        self.error = None;
    }

    /// The frame as the caller gave it.
    fn frame(&self) -> Frame<'_> {
        let meta = self.meta;
        Frame {
            format: meta.format,
            width: meta.width,
            height: meta.height,
            stride: meta.stride,
            data: &self.bytes,
            source: &self.source,
            sequence: meta.sequence,
            timestamp_ns: meta.timestamp_ns,
            discontinuity: meta.discontinuity,
        }
    }
}

/// The frame's pixels: decoded when it came as MJPEG (a function of the fields, so that the crops can be
/// borrowed mutably beside it).
fn pixels<'a>(meta: Meta, bytes: &'a [u8], decoded: &'a Option<DecodedImage>, source: &'a str) -> Frame<'a> {
    match decoded {
        Some(image) => image.frame(source, meta.sequence, meta.timestamp_ns, meta.discontinuity),
        None => Frame {
            format: meta.format,
            width: meta.width,
            height: meta.height,
            stride: meta.stride,
            data: bytes,
            source,
            sequence: meta.sequence,
            timestamp_ns: meta.timestamp_ns,
            discontinuity: meta.discontinuity,
        },
    }
}

/// A slot on its way to the worker and back, with the classifier, which goes where the frame is judged.
struct Job {
    slot: Box<Slot>,
    classifier: Option<Classifier>,
}

/// What the two threads share, under one mutex.
#[derive(Default)]
struct Handoff {
    job: Option<Job>,
    done: Option<Job>,
    stop: bool,
    /// The worker has returned (asked to stop) or is unwinding from a panic.
    ended: bool,
}

struct Shared {
    handoff: Mutex<Handoff>,
    changed: Condvar,
}

impl Shared {
    /// The handoff; a poisoned mutex (a panic elsewhere while holding it) leaves plain data that stays valid.
    fn lock(&self) -> MutexGuard<'_, Handoff> {
        self.handoff.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the worker thread owns: its own CPU pixel work and quality crop.
struct Worker {
    alignment: Alignment,
    pixels: CpuWork,
    quality: QualitySettings,
    quality_crop: RgbImage,
    /// The spec for crops without tensors (no classifier configured).
    detector_spec: InputSpec,
}

impl Worker {
    /// Frame's crops (unless made), each face's quality and fake probability, into the slot.
    fn judge(&mut self, job: &mut Job) {
        let Slot { meta, bytes, source, decoded, faces, crops, crops_made, results, times, error } =
            &mut *job.slot;
        let frame = pixels(*meta, bytes, decoded, source);
        let mut record = |stage, elapsed| {
            let _ = times.push((stage, elapsed));
        };
        let classifier = job.classifier.as_mut();
        let judged = (|| {
            if !*crops_made {
                let spec = classifier.as_ref().map_or(&self.detector_spec, |c| &c.entry().input);
                let classify = classifier.is_some();
                crops.make(&mut self.pixels, &frame, faces, &self.alignment, spec, classify, &mut record)?;
            }
            let size = (frame.width, frame.height);
            crops.judge(size, faces, &self.quality, &mut self.quality_crop, classifier, results, &mut record)
        })();
        if let Err(failure) = judged {
            *error = Some(failure);
        }
    }

    fn run(mut self, shared: Arc<Shared>) {
        ON_WORKER.with(|flag| flag.set(true));
        // Tells the caller's side when this thread ends, by return or by panic.
        let _ended = Ended(&shared);
        crate::health::debug_panic_point(WORKER_NAME);
        loop {
            let mut job = {
                let mut handoff = shared.lock();
                loop {
                    if handoff.stop {
                        return;
                    }
                    if let Some(job) = handoff.job.take() {
                        break job;
                    }
                    handoff = shared.changed.wait(handoff).unwrap_or_else(PoisonError::into_inner);
                }
            };
            self.judge(&mut job);
            shared.lock().done = Some(job);
            shared.changed.notify_all();
        }
    }
}

struct Ended<'a>(&'a Shared);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.lock().ended = true;
        self.0.changed.notify_all();
    }
}

/// Where the frame after the completed one is.
enum InFlight {
    Nothing,
    OnWorker,
    /// Failed on the caller's side; its error waits in the slot for its turn.
    Failed(Box<Slot>),
}

/// The worker and the slots: `Pipeline`'s state when it runs on two threads.
pub(super) struct Pipelined {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Slots free to fill (two at start; at most one is ever elsewhere). Boxed, so that handing one over
    /// moves a pointer.
    idle: heapless::Vec<Box<Slot>, 2>,
    /// The slot of the frame whose results the last call returned.
    output: Option<Box<Slot>>,
    in_flight: InFlight,
    /// Whether the caller's side makes the crops (the pixel work is on the GPU).
    pub crops_here: bool,
    /// The spec of the crops' tensors: the classifier's input (None: no classifier, no tensors). Kept here
    /// because the classifier itself travels with the frame it judges.
    classifier_spec: Option<InputSpec>,
}

impl Pipelined {
    /// Spawns the worker with what it needs from `models`.
    pub fn start(models: &Models, quality: QualitySettings, crop_size: (usize, usize)) -> Result<Pipelined> {
        let worker = Worker {
            alignment: models.alignment.clone(),
            pixels: CpuWork::with_sizes(&[(QUALITY_CROP, QUALITY_CROP), crop_size]),
            quality,
            quality_crop: RgbImage::new(QUALITY_CROP, QUALITY_CROP),
            detector_spec: models.detector.entry.input.clone(),
        };
        let shared = Arc::new(Shared { handoff: Mutex::new(Handoff::default()), changed: Condvar::new() });
        let for_worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(WORKER_NAME.into())
            .spawn(move || worker.run(for_worker))
            .context("starting the pipeline's worker thread")?;
        Ok(Pipelined {
            shared,
            thread: Some(thread),
            idle: [Slot::new(crop_size), Slot::new(crop_size)].into_iter().collect(),
            output: None,
            in_flight: InFlight::Nothing,
            crops_here: false,
            classifier_spec: models.classifier.as_ref().map(|classifier| classifier.entry().input.clone()),
        })
    }

    pub fn in_flight(&self) -> bool {
        !matches!(self.in_flight, InFlight::Nothing)
    }

    fn ended(&self) -> bool {
        self.shared.lock().ended
    }

    /// Hands `job` to the worker.
    fn send(&mut self, job: Job) {
        self.shared.lock().job = Some(job);
        self.shared.changed.notify_all();
        self.in_flight = InFlight::OnWorker;
    }

    /// Waits for the worker's job, or learns that it has ended.
    fn wait(&self) -> Option<Job> {
        let mut handoff = self.shared.lock();
        loop {
            if let Some(job) = handoff.done.take() {
                return Some(job);
            }
            if handoff.ended {
                return None;
            }
            handoff = self.shared.changed.wait(handoff).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // A worker that panicked has said so through the panic hook already.
            let _ = thread.join();
        }
    }
}

impl Pipeline {
    /// How many threads judge frames: 1 (each frame start to finish in `process`) or 2 (`push`).
    pub fn threads(&self) -> usize {
        if self.pipelined.is_some() {
            2
        } else {
            1
        }
    }

    /// Judges frames on `threads` threads from now on (the board's `[runtime] threads`; `deepgate bench`
    /// compares both in one run). Refused while a frame is in flight (`flush` first), and with held detections
    /// (`[detector] redetect_every` > 1 needs the crops before its decision to detect).
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        anyhow::ensure!(
            !self.in_flight(),
            "a frame is in flight: flush the pipeline before changing threads"
        );
        match threads {
            1 => self.pipelined = None,
            2 if self.pipelined.is_some() => {}
            2 => {
                anyhow::ensure!(
                    self.hold.redetect_every() == 1,
                    "runtime.threads = 2 needs detector.redetect_every = 1 (a held frame's crops decide \
                     whether to detect again, on the same thread)"
                );
                let mut pipelined = Pipelined::start(&self.models, self.quality, self.crops.size)?;
                pipelined.crops_here = self.pixels_on_gpu;
                self.pipelined = Some(pipelined);
            }
            other => anyhow::bail!("runtime.threads = {other}: 1 or 2"),
        }
        Ok(())
    }

    /// Whether a frame pushed has not come back yet.
    pub fn in_flight(&self) -> bool {
        self.pipelined.as_ref().is_some_and(Pipelined::in_flight)
    }

    /// Takes `frame` and returns the outcome of the frame completed by this call, in frame order: with one
    /// thread, `frame`'s own (`process`); with two, the previous frame's (none at the first), `frame` staying in
    /// flight until the next `push` or `flush`.
    pub fn push<'s>(&'s mut self, frame: &Frame<'s>) -> Option<Completed<'s>> {
        if self.pipelined.is_none() {
            let outcome = self.process(frame);
            return Some(Completed { frame: *frame, outcome });
        }
        let start = Instant::now();
        let mut slot = self.take_slot()?;
        slot.copy(frame);
        let prepared = self.prepare(&mut slot);
        let previous = self.complete();
        let pipelined = self.pipelined.as_mut()?;
        let worker_ended = pipelined.ended();
        match prepared {
            Ok(()) if !worker_ended => {
                let classifier = self.models.classifier.take();
                pipelined.send(Job { slot, classifier });
            }
            Ok(()) => {
                slot.error =
                    Some(anyhow!("the pipeline's worker thread has ended (it panicked): not judged"));
                pipelined.in_flight = InFlight::Failed(slot);
            }
            Err(error) => {
                slot.error = Some(error);
                pipelined.in_flight = InFlight::Failed(slot);
            }
        }
        self.times.record(Stage::Frame, start.elapsed());
        self.output(previous?)
    }

    /// The outcome of the frame still in flight, if any (two threads): when no next frame is coming now (a live
    /// source without a frame, a discontinuity, the end of the input, a stop).
    pub fn flush(&mut self) -> Option<Completed<'_>> {
        let completed = self.complete()?;
        self.output(completed)
    }

    /// A slot to fill: the one whose results the last call returned, else a fresh one.
    fn take_slot(&mut self) -> Option<Box<Slot>> {
        let size = self.crops.size;
        let pipelined = self.pipelined.as_mut()?;
        if let Some(output) = pipelined.output.take() {
            // (Full only after a worker panic made a third slot: that one is let go.)
            let _ = pipelined.idle.push(output);
        }
        // Two slots take turns; a third is made only if the worker panicked with one.
        Some(pipelined.idle.pop().unwrap_or_else(|| Slot::new(size)))
    }

    /// The caller's side of a frame: checks, MJPEG decoding, detection, and the crops if the GPU makes them.
    fn prepare(&mut self, slot: &mut Slot) -> Result<()> {
        let start = Instant::now();
        let frame = slot.frame();
        frame.validate()?;
        if frame.format == PixelFormat::Mjpeg {
            let image = decode_mjpeg(&frame)?;
            slot.decoded = Some(image);
            self.times.record(Stage::Decode, start.elapsed());
        }
        let Slot { meta, bytes, source, decoded, faces, crops, crops_made, .. } = slot;
        let frame = pixels(*meta, bytes, decoded, source);
        self.detect(&frame)?;
        faces.clone_from(&self.faces);
        let Some(pipelined) = self.pipelined.as_ref() else { return Ok(()) };
        if pipelined.crops_here {
            // (The classifier itself may be on the worker with the frame before.)
            let spec = pipelined.classifier_spec.as_ref();
            let times = &mut self.times;
            crops.make(
                &mut self.pixels,
                &frame,
                faces,
                &self.models.alignment,
                spec.unwrap_or(&self.models.detector.entry.input),
                spec.is_some(),
                &mut |stage, elapsed| times.record(stage, elapsed),
            )?;
            *crops_made = true;
        }
        Ok(())
    }

    /// The frame in flight, back: its stage times recorded, then, if it was judged, its main face chosen and
    /// observed by the decision, in frame order. `None`: nothing was in flight.
    fn complete(&mut self) -> Option<(Box<Slot>, Option<Verdict>)> {
        let pipelined = self.pipelined.as_mut()?;
        let mut slot = match std::mem::replace(&mut pipelined.in_flight, InFlight::Nothing) {
            InFlight::Nothing => return None,
            InFlight::Failed(slot) => slot,
            InFlight::OnWorker => match pipelined.wait() {
                Some(job) => {
                    self.models.classifier = job.classifier;
                    job.slot
                }
                None => {
                    // Its slot went with the worker, and that frame with it: a slot made now reports the loss
                    // (an allocation, on a path that `deepgate run` never takes: its panic hook ends it).
                    let mut slot = Slot::new(self.crops.size);
                    slot.source.push_str(WORKER_NAME);
                    slot.error = Some(anyhow!(
                        "the pipeline's worker thread ended (it panicked) while judging a frame"
                    ));
                    slot
                }
            },
        };
        for &(stage, elapsed) in &slot.times {
            self.times.record(stage, elapsed);
        }
        if slot.error.is_some() {
            return Some((slot, None));
        }
        let mark = Instant::now();
        let main = self.decider.select_main(&slot.faces);
        if let Some(result) = main.and_then(|index| slot.results.get_mut(index)) {
            result.main = true;
        }
        let observation = main.and_then(|index| slot.results.get(index)).map(|result| Observation {
            bbox: result.face.bbox,
            issue: result.issue,
            fake_probability: result.fake_probability,
        });
        let verdict = self.decider.observe(slot.meta.sequence, observation.as_ref());
        self.times.record(Stage::Decision, mark.elapsed());
        Some((slot, verdict))
    }

    /// Keeps the completed slot as the output and lends its frame and results.
    fn output(&mut self, (slot, verdict): (Box<Slot>, Option<Verdict>)) -> Option<Completed<'_>> {
        let pipelined = self.pipelined.as_mut()?;
        // The slot returned before (a flush after a push) is free again.
        if let Some(previous) = pipelined.output.take() {
            let _ = pipelined.idle.push(previous);
        }
        let slot = pipelined.output.insert(slot);
        let outcome = match slot.error.take() {
            Some(error) => Err(error),
            None => Ok(verdict),
        };
        let slot: &Slot = slot;
        Some(Completed { frame: slot.frame(), outcome: outcome.map(|verdict| (&slot.results[..], verdict)) })
    }
}

/// Two threads with the GPU path (the host build of the kernels standing in for the GPU): the crops stay on the
/// caller's thread, and a GPU path that fails mid-stream is reported once and loses nothing, exactly as with one
/// thread (`super::fallback`, whose `play` drives frames through `push` and `flush` for both).
#[cfg(all(test, deepgate_host_kernels))]
mod tests {
    use super::super::fallback::{pipeline, play, FRAMES};
    use crate::preprocess::cuda::host::HostKernels;

    #[test]
    fn two_threads_with_the_gpu_path_give_the_same_results_and_survive_its_failure() {
        let (reference, _) = play(&mut pipeline());
        assert!(reference.iter().any(|line| line.contains("Some(")), "faces were judged: {reference:#?}");

        let mut working = pipeline();
        working.use_gpu(Box::new(HostKernels::default()));
        working.set_threads(2).expect("two threads");
        assert!(working.pipelined.as_ref().is_some_and(|pipelined| pipelined.crops_here));
        let (lines, failures) = play(&mut working);
        assert!(failures.is_empty());
        assert!(working.gpu().is_some(), "the path stayed in use");
        assert_eq!(lines, reference);

        let mut failing = pipeline();
        let fail_from = FRAMES as u64 + 2;
        let mut kernels = HostKernels::default();
        kernels.fail_from = Some(fail_from);
        failing.use_gpu(Box::new(kernels));
        failing.set_threads(2).expect("two threads");
        let (lines, failures) = play(&mut failing);
        assert_eq!(failures, vec![fail_from as usize], "one report, at the failing frame");
        assert!(failing.gpu().is_none(), "the failed path is not used again");
        assert!(
            !failing.pipelined.as_ref().is_some_and(|pipelined| pipelined.crops_here),
            "the worker crops now"
        );
        assert_eq!(lines, reference);
    }
}
