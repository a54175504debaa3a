//! Steady state is allocation-free: after warm-up, processing a frame allocates nothing on the heap outside
//! tract's inference call (which allocates its tensors on every run; counted and reported separately), for
//! every raw camera pixel format, with faces found, aligned, classified and decided, and verdicts encoded.
//! Reporting a verdict to the TCP gate (stored and synced in its spool) allocates nothing either. Nor does a
//! frame on which the detector is skipped (`[detector] redetect_every`), held or sent back by the motion test.
//!
//! With two threads (`[runtime] threads = 2`) the same holds on both: the caller's and the pipeline's worker,
//! whose frames are handed over in slots allocated at start.
//!
//! A counting global allocator sees every allocation of this test process; the test runs its frames on one
//! thread and counts only that thread's allocations, and those of pipeline worker threads while it measures
//! (only the two-thread test makes one).

mod common;

use deepgate::config::BoardConfig;
use deepgate::frame::{Frame, PixelFormat};
use deepgate::gate::{encode_line, Line, VerdictMessage};
use deepgate::pipeline::{Models, Pipeline};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static OURS: Cell<u64> = const { Cell::new(0) };
    static INFERENCE: Cell<u64> = const { Cell::new(0) };
}

/// Whether allocations on pipeline worker threads are counted (into the two atomics below).
static COUNTING_WORKERS: AtomicBool = AtomicBool::new(false);
static WORKER_OURS: AtomicU64 = AtomicU64::new(0);
static WORKER_INFERENCE: AtomicU64 = AtomicU64::new(0);

fn count() {
    if COUNTING_WORKERS.load(Ordering::Relaxed) && deepgate::pipeline::pipelined::on_worker_thread() {
        let counter = if deepgate::infer::in_inference() { &WORKER_INFERENCE } else { &WORKER_OURS };
        counter.fetch_add(1, Ordering::Relaxed);
    } else if COUNTING.with(Cell::get) {
        if deepgate::infer::in_inference() {
            INFERENCE.with(|c| c.set(c.get() + 1));
        } else {
            OURS.with(|c| c.set(c.get() + 1));
        }
    }
}

// SAFETY: forwards to the system allocator unchanged; counting touches only atomics and const-initialised
// thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        count();
        System.realloc(pointer, layout, size)
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Counts (pipeline's own, inside inference) allocations made by `work` on this thread.
fn allocations(work: impl FnOnce()) -> (u64, u64) {
    OURS.with(|c| c.set(0));
    INFERENCE.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    work();
    COUNTING.with(|c| c.set(false));
    (OURS.with(Cell::get), INFERENCE.with(Cell::get))
}

/// A pipeline on `backend`. The stand-in classifier makes the classifier path run too; a short decision budget
/// makes verdicts come out during the measured frames.
fn pipeline(backend: &str) -> Pipeline {
    pipeline_detecting_every(backend, 1)
}

/// As `pipeline`, running the detector at least every `redetect_every` frames.
fn pipeline_detecting_every(backend: &str, redetect_every: u32) -> Pipeline {
    pipeline_with(backend, redetect_every, 1)
}

/// As `pipeline`, judging frames on `threads` threads.
fn pipeline_with(backend: &str, redetect_every: u32, threads: usize) -> Pipeline {
    let board = common::board(
        Some("stand_in"),
        &[],
        &[
            ("decision.max_frames", "3"),
            ("decision.max_session_frames", "4"),
            ("runtime.backend", &format!("\"{backend}\"")),
            ("detector.redetect_every", &redetect_every.to_string()),
            // The bundled photo's face scores below the shipped bound; this test is about allocations.
            ("detector.hold_min_score", "0.75"),
            ("runtime.threads", &threads.to_string()),
        ],
    );
    let config = BoardConfig::load(&board).unwrap();
    Pipeline::new(&config, Models::load(&config).unwrap()).unwrap()
}

#[test]
fn steady_state_frames_allocate_nothing_outside_inference() {
    let mut pipeline = pipeline("cpu");
    steady_state_frames_allocate_nothing(&mut pipeline);
}

/// The same with the detector skipped on held frames: the motion test's comparison and its reference crops
/// use storage reserved at start.
#[test]
fn held_frames_allocate_nothing_outside_inference() {
    let mut pipeline = pipeline_detecting_every("cpu", 3);
    steady_state_frames_allocate_nothing(&mut pipeline);
    let counts = pipeline.hold_counts();
    assert!(counts.held >= 12, "frames were held: {counts:?}");
}

/// The same on two threads: the caller's detection of frame n + 1 beside the worker's crops, quality and
/// classifier of frame n, both threads' allocations counted; frames handed over in slots allocated at start.
#[test]
fn pipelined_frames_on_two_threads_allocate_nothing_outside_inference() {
    let mut pipeline = pipeline_with("cpu", 1, 2);
    assert_eq!(pipeline.threads(), 2);
    steady_state_frames_allocate_nothing(&mut pipeline);
    assert!(WORKER_INFERENCE.load(Ordering::Relaxed) > 0, "the worker's classifier runs were seen");
}

/// The same with the pixel work on the GPU: uploads, launches (raw `cuLaunchKernel`, not cudarc's builder,
/// which collects its arguments in a `Vec`) and read-backs into buffers allocated at start.
#[test]
fn steady_state_frames_on_the_gpu_allocate_nothing_outside_inference() {
    let mut pipeline = pipeline("auto");
    let Some(gpu) = pipeline.gpu() else {
        common::skip(common::Need::Gpu, "no GPU path here");
        return;
    };
    eprintln!("pixel work on {gpu}");
    steady_state_frames_allocate_nothing(&mut pipeline);
    assert!(pipeline.gpu().is_some(), "the GPU path did all the frames");
}

fn steady_state_frames_allocate_nothing(pipeline: &mut Pipeline) {
    let photo = image::open(common::fixture("faces/obama2.jpg")).unwrap().to_rgb8();
    let (width, height) = photo.dimensions();
    let mut line = Line::new();
    let formats = PixelFormat::RAW;
    for format in formats {
        let stride = format.min_stride(width) + 32;
        let data = deepgate::capture::synthetic::camera_frame(photo.as_raw(), width, height, format, stride)
            .unwrap();
        let mut frame = Frame::still(format, width, height, stride, &data, "allocation-test");
        // Warm-up: first frames may size buffers inside tract.
        for sequence in 0..3 {
            frame.sequence = sequence;
            if let Some(completed) = pipeline.push(&frame) {
                completed.outcome.unwrap();
            }
        }
        if let Some(completed) = pipeline.flush() {
            completed.outcome.unwrap();
        }
        // Start a new person session so that a verdict falls within the measured frames.
        pipeline.finish();
        WORKER_OURS.store(0, Ordering::Relaxed);
        COUNTING_WORKERS.store(pipeline.threads() == 2, Ordering::Relaxed);
        let mut faces_seen = 0;
        let mut verdicts = 0;
        let mut inference_per_frame = Vec::with_capacity(16);
        for sequence in 3..15 {
            frame.sequence = sequence;
            let (ours, inference) = allocations(|| {
                // One thread: this frame's results; two: the previous frame's (none at the first).
                let Some(completed) = pipeline.push(&frame) else { return };
                let (faces, verdict) = completed.outcome.unwrap();
                faces_seen += faces.len();
                if let Some(verdict) = verdict {
                    verdicts += 1;
                    let message = VerdictMessage::new(frame.source, &verdict);
                    encode_line(&message, &mut line).unwrap();
                }
            });
            assert_eq!(
                ours,
                0,
                "{}: frame {sequence} made {ours} heap allocations outside inference",
                format.name()
            );
            inference_per_frame.push(inference);
        }
        // Two threads: the last frame's results come with the flush.
        if let Some(completed) = pipeline.flush() {
            let (faces, verdict) = completed.outcome.unwrap();
            faces_seen += faces.len();
            verdicts += usize::from(verdict.is_some());
        }
        COUNTING_WORKERS.store(false, Ordering::Relaxed);
        let worker = WORKER_OURS.load(Ordering::Relaxed);
        assert_eq!(worker, 0, "{}: the worker thread made {worker} heap allocations", format.name());
        assert!(faces_seen >= 12, "{}: the face must be found on every measured frame", format.name());
        assert!(verdicts >= 1, "{}: the measured frames must include a verdict", format.name());
        // tract's own allocations are steady too: the same count on every frame, nothing accumulating.
        inference_per_frame.sort_unstable();
        eprintln!(
            "{}: tract inference allocations per frame (detector + classifier): {:?}",
            format.name(),
            inference_per_frame
        );
        // (With the detector skipped on some frames, two counts: with and without the detector's.)
        inference_per_frame.dedup();
        let expected = if pipeline.hold_counts().held > 0 { 2 } else { 1 };
        assert!(inference_per_frame.len() <= expected, "{}: {inference_per_frame:?}", format.name());
        pipeline.finish();
    }
}

#[test]
fn reporting_to_the_tcp_gate_allocates_nothing() {
    use deepgate::decide::Decision;
    use deepgate::gate::tcp::{TcpGate, TcpGateSettings};
    use deepgate::gate::Gate;
    // No controller: every verdict stays in the spool, the case where reporting does the most work (short of
    // a full spool, whose drops now and then rewrite the file).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spool = common::temp_dir("allocation-spool").join("gate.spool");
    let mut gate = TcpGate::start(TcpGateSettings::new(&format!("127.0.0.1:{port}"), &spool, 64)).unwrap();
    let message = |index: u64| VerdictMessage {
        first_frame: index,
        last_frame: index + 3,
        ..VerdictMessage::sample("allocation-test", Decision::Genuine)
    };
    gate.report(&message(0)).unwrap();
    for index in 1..=20 {
        let (ours, _) = allocations(|| gate.report(&message(index)).unwrap());
        assert_eq!(ours, 0, "report {index} made {ours} heap allocations");
    }
    assert_eq!(gate.stats().queued, 21);
}
