//! Per-stage timings of the pipeline, kept as samples in storage reserved at start-up, summarised as medians.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// MJPEG decoding.
    Decode,
    /// Colour conversion + letterbox resize + normalisation into the detector input.
    Letterbox,
    /// Detector inference.
    Detector,
    /// Anchor decoding and non-maximum suppression.
    Postprocess,
    /// Alignment crop and quality measurement, per face.
    Align,
    /// The classifier's aligned crop (warp from the frame), per face.
    ClassifierCrop,
    /// Classifier inference (normalisation into the input tensor, the model, the output's check), per face.
    Classifier,
    /// Tracking and the sequential decision.
    Decision,
    /// The whole frame.
    Frame,
}

pub const STAGES: [Stage; 9] = [
    Stage::Decode,
    Stage::Letterbox,
    Stage::Detector,
    Stage::Postprocess,
    Stage::Align,
    Stage::ClassifierCrop,
    Stage::Classifier,
    Stage::Decision,
    Stage::Frame,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "mjpeg_decode",
            Stage::Letterbox => "letterbox",
            Stage::Detector => "detector",
            Stage::Postprocess => "detector_decode_nms",
            Stage::Align => "align_quality",
            Stage::ClassifierCrop => "classifier_crop",
            Stage::Classifier => "classifier",
            Stage::Decision => "decision",
            Stage::Frame => "frame",
        }
    }
}

/// Samples per stage in microseconds, in a ring in storage reserved at start-up: once it is full, each new
/// sample replaces the oldest, so the summaries describe the most recent samples of a run of any length and the
/// hot path never allocates. An observer (`observe`; the metrics' histograms) sees every sample.
pub struct StageTimes {
    samples: [Vec<u32>; STAGES.len()],
    /// Where the next sample goes once a stage's ring is full.
    next: [usize; STAGES.len()],
    /// Samples recorded per stage since the start (or the last `clear`), kept or replaced.
    recorded: [u64; STAGES.len()],
    observer: Option<StageObserver>,
}

/// What sees every stage time recorded (it must not allocate: it runs on the hot path).
pub type StageObserver = Box<dyn FnMut(Stage, Duration) + Send>;

/// Median, minimum and maximum of one stage, in milliseconds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Summary {
    pub stage: &'static str,
    /// Samples summarised: the most recent ones, at most the ring's size.
    pub count: usize,
    /// Samples recorded in all, including those the ring has since replaced.
    pub recorded: u64,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl StageTimes {
    pub fn with_capacity(capacity: usize) -> StageTimes {
        StageTimes {
            samples: std::array::from_fn(|_| Vec::with_capacity(capacity)),
            next: [0; STAGES.len()],
            recorded: [0; STAGES.len()],
            observer: None,
        }
    }

    /// Every sample recorded from now on is also given to `observer`.
    pub fn observe(&mut self, observer: StageObserver) {
        self.observer = Some(observer);
    }

    pub fn record(&mut self, stage: Stage, elapsed: Duration) {
        if let Some(observer) = self.observer.as_mut() {
            observer(stage, elapsed);
        }
        let index = stage as usize;
        let sample = elapsed.as_micros().min(u32::MAX as u128) as u32;
        let samples = &mut self.samples[index];
        self.recorded[index] += 1;
        if samples.len() < samples.capacity() {
            samples.push(sample);
        } else if !samples.is_empty() {
            let next = self.next[index] % samples.len();
            samples[next] = sample;
            self.next[index] = next + 1;
        }
    }

    pub fn clear(&mut self) {
        self.samples.iter_mut().for_each(Vec::clear);
        self.next = [0; STAGES.len()];
        self.recorded = [0; STAGES.len()];
    }

    pub fn summary(&self) -> Vec<Summary> {
        STAGES
            .iter()
            .filter_map(|&stage| {
                let mut sorted = self.samples[stage as usize].clone();
                if sorted.is_empty() {
                    return None;
                }
                sorted.sort_unstable();
                let middle = sorted.len() / 2;
                let median = if sorted.len().is_multiple_of(2) {
                    (sorted[middle - 1] as f64 + sorted[middle] as f64) / 2.0
                } else {
                    sorted[middle] as f64
                };
                Some(Summary {
                    stage: stage.name(),
                    count: sorted.len(),
                    recorded: self.recorded[stage as usize],
                    median_ms: median / 1000.0,
                    min_ms: sorted[0] as f64 / 1000.0,
                    max_ms: sorted[sorted.len() - 1] as f64 / 1000.0,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_keeps_the_most_recent_samples_without_allocating() {
        let mut times = StageTimes::with_capacity(4);
        let size = times.samples[Stage::Frame as usize].capacity();
        // Twice the ring's size of 1 ms, then a ring's worth of 9 ms: only the recent ones remain.
        for _ in 0..2 * size {
            times.record(Stage::Frame, Duration::from_millis(1));
        }
        for _ in 0..size {
            times.record(Stage::Frame, Duration::from_millis(9));
        }
        assert_eq!(times.samples[Stage::Frame as usize].capacity(), size, "the ring never grows");
        let summary = times.summary();
        let frame = summary.iter().find(|s| s.stage == "frame").expect("frame summarised");
        assert_eq!((frame.count, frame.recorded), (size, 3 * size as u64));
        assert_eq!((frame.min_ms, frame.median_ms, frame.max_ms), (9.0, 9.0, 9.0));
        times.clear();
        assert!(times.summary().is_empty());
        times.record(Stage::Frame, Duration::from_millis(2));
        assert_eq!(times.summary()[0].recorded, 1);
    }

    #[test]
    fn without_storage_nothing_is_kept_and_nothing_panics() {
        let mut times = StageTimes::with_capacity(0);
        times.record(Stage::Letterbox, Duration::from_millis(1));
        assert!(times.summary().is_empty());
    }
}
