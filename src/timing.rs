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

/// Samples per stage in microseconds; recording stops (silently) when the reserved storage is full, so the
/// hot path never allocates. An observer (`observe`; the metrics' histograms) sees every sample, also after.
pub struct StageTimes {
    samples: [Vec<u32>; STAGES.len()],
    observer: Option<StageObserver>,
}

/// What sees every stage time recorded (it must not allocate: it runs on the hot path).
pub type StageObserver = Box<dyn FnMut(Stage, Duration) + Send>;

/// Median, minimum and maximum of one stage, in milliseconds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Summary {
    pub stage: &'static str,
    pub count: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl StageTimes {
    pub fn with_capacity(capacity: usize) -> StageTimes {
        StageTimes { samples: std::array::from_fn(|_| Vec::with_capacity(capacity)), observer: None }
    }

    /// Every sample recorded from now on is also given to `observer`.
    pub fn observe(&mut self, observer: StageObserver) {
        self.observer = Some(observer);
    }

    pub fn record(&mut self, stage: Stage, elapsed: Duration) {
        if let Some(observer) = self.observer.as_mut() {
            observer(stage, elapsed);
        }
        let samples = &mut self.samples[stage as usize];
        if samples.len() < samples.capacity() {
            samples.push(elapsed.as_micros().min(u32::MAX as u128) as u32);
        }
    }

    pub fn clear(&mut self) {
        self.samples.iter_mut().for_each(Vec::clear);
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
                    median_ms: median / 1000.0,
                    min_ms: sorted[0] as f64 / 1000.0,
                    max_ms: sorted[sorted.len() - 1] as f64 / 1000.0,
                })
            })
            .collect()
    }
}
