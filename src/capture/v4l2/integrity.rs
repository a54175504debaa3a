//! Signs that frames do not come from a live camera: the same picture over and over (a frozen sensor, or an
//! injector replaying one still) and buffer timestamps that go backwards (a live camera stamps frames on the
//! kernel's monotonic clock, in order). Pure logic; nothing is allocated per frame.
#![forbid(unsafe_code)]

use std::hash::{BuildHasher, Hasher};

/// `source.frozen_frames` when the board says nothing: one second at 30 frames a second.
pub const DEFAULT_FROZEN_FRAMES: u32 = 30;

/// The sample that compares frames cheaply: this many runs of `SAMPLE_RUN` bytes spread evenly over the frame
/// (4 KiB in all), with the frame's length. A live camera's sensor noise changes the sample of every frame,
/// so the full comparison below is rarely paid for.
const SAMPLE_RUNS: usize = 256;
const SAMPLE_RUN: usize = 16;

/// One hasher, with a fixed seed: frames are compared with each other in this process only.
const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x6465_6570_6761_7465);

/// The hash of the evenly spread sample of `data` and its length.
fn sample_hash(data: &[u8]) -> u64 {
    let mut hasher = HASHER.build_hasher();
    hasher.write_usize(data.len());
    if data.len() <= SAMPLE_RUNS * SAMPLE_RUN {
        hasher.write(data);
    } else {
        let step = data.len() / SAMPLE_RUNS;
        for run in 0..SAMPLE_RUNS {
            let start = run * step;
            hasher.write(&data[start..start + SAMPLE_RUN]);
        }
    }
    hasher.finish()
}

/// The hash of every byte of `data`.
fn full_hash(data: &[u8]) -> u64 {
    let mut hasher = HASHER.build_hasher();
    hasher.write(data);
    hasher.finish()
}

/// What one frame says about a frozen picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Picture {
    /// The picture differs from the one before (or the check is off).
    Moving,
    /// The picture repeats the one before, `repeats` times in a row so far: not yet frozen.
    Repeating { repeats: u32 },
    /// This frame made `repeats` repeats in a row, the limit: the camera is frozen from now on.
    Froze { repeats: u32 },
    /// Still frozen.
    Frozen,
    /// The picture changed after `repeats` repeats in a row: the camera is live again.
    Thawed { repeats: u32 },
}

/// Finds a frozen picture: `limit` frames in a row that each repeat the frame before them byte for byte. Each
/// frame is compared by a 4 KiB sample first; only when the samples match is the whole frame hashed (64 bits)
/// and compared with the previous frame's whole hash. A frame is a repeat only when that whole comparison says
/// so: the first frame whose sample matches a changed frame's cannot be compared in full (the changed frame was
/// not hashed whole), so it is the reference, not a repeat, and a still is frozen at its `limit + 2`nd frame.
#[derive(Clone, Copy, Debug)]
pub struct FrozenDetector {
    limit: u32,
    sample: Option<u64>,
    full: Option<u64>,
    repeats: u32,
    frozen: bool,
}

impl FrozenDetector {
    /// `limit` repeats in a row make the camera frozen; 0 turns the check off.
    pub fn new(limit: u32) -> FrozenDetector {
        FrozenDetector { limit, sample: None, full: None, repeats: 0, frozen: false }
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Forgets the pictures seen (a new stream starts: after a re-open).
    pub fn reset(&mut self) {
        *self = FrozenDetector::new(self.limit);
    }

    /// Looks at one frame's bytes.
    pub fn observe(&mut self, data: &[u8]) -> Picture {
        if self.limit == 0 {
            return Picture::Moving;
        }
        let sample = sample_hash(data);
        let repeat = if self.sample == Some(sample) {
            let full = full_hash(data);
            let same = self.full == Some(full);
            self.full = Some(full);
            same
        } else {
            self.full = None;
            false
        };
        self.sample = Some(sample);
        if repeat {
            self.repeats = self.repeats.saturating_add(1);
            if self.frozen {
                Picture::Frozen
            } else if self.repeats >= self.limit {
                self.frozen = true;
                Picture::Froze { repeats: self.repeats }
            } else {
                Picture::Repeating { repeats: self.repeats }
            }
        } else {
            let repeats = std::mem::take(&mut self.repeats);
            // A frame whose sample matched but whose bytes differ starts the count again from itself: its whole
            // hash is the one the next frame is compared with.
            if std::mem::take(&mut self.frozen) {
                Picture::Thawed { repeats }
            } else {
                Picture::Moving
            }
        }
    }
}

/// A buffer timestamp earlier than the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backwards {
    pub previous_ns: u64,
    pub now_ns: u64,
}

/// Checks that the buffer timestamps of one stream never go backwards. Equal stamps are allowed (a coarse
/// clock); the check starts again at every STREAMON (`reset`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClockCheck {
    last: Option<u64>,
}

impl ClockCheck {
    /// Notes the timestamp of the next frame; an error when it is earlier than the last one.
    pub fn observe(&mut self, timestamp_ns: u64) -> Result<(), Backwards> {
        let previous = self.last.replace(timestamp_ns);
        match previous {
            Some(previous_ns) if timestamp_ns < previous_ns => {
                Err(Backwards { previous_ns, now_ns: timestamp_ns })
            }
            _ => Ok(()),
        }
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A YUYV-sized frame of noise that differs from `seed` to `seed`.
    fn noisy_frame(seed: u32, length: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect()
    }

    fn observe_all(detector: &mut FrozenDetector, frames: &[&[u8]]) -> Vec<Picture> {
        frames.iter().map(|frame| detector.observe(frame)).collect()
    }

    #[test]
    fn a_repeated_picture_freezes_after_the_limit_and_thaws_when_it_changes() {
        let still = noisy_frame(1, 640 * 480 * 2);
        let other = noisy_frame(2, still.len());
        let mut detector = FrozenDetector::new(3);
        let seen =
            observe_all(&mut detector, &[&other, &still, &still, &still, &still, &still, &still, &other]);
        assert_eq!(
            seen,
            [
                Picture::Moving,
                Picture::Moving,
                // Its sample matches; the whole frame is hashed, but the one before was not: the reference.
                Picture::Moving,
                Picture::Repeating { repeats: 1 },
                Picture::Repeating { repeats: 2 },
                Picture::Froze { repeats: 3 },
                Picture::Frozen,
                Picture::Thawed { repeats: 4 },
            ]
        );
        assert!(!detector.is_frozen());
        assert_eq!(detector.observe(&other), Picture::Moving, "counting starts again from a reference");
        assert_eq!(detector.observe(&other), Picture::Repeating { repeats: 1 });
    }

    #[test]
    fn a_change_the_sample_misses_is_found_by_the_full_comparison() {
        // One byte changed between two sampled runs: the samples match, the whole frames do not.
        let still = noisy_frame(3, 640 * 480 * 2);
        let step = still.len() / SAMPLE_RUNS;
        let mut changed = still.clone();
        changed[step + SAMPLE_RUN + 7] ^= 0xff;
        assert_eq!(sample_hash(&still), sample_hash(&changed), "the change is outside the sample");
        let mut detector = FrozenDetector::new(2);
        // The still frozen, then changed: its sample matches the still's, its whole hash does not.
        let seen = observe_all(&mut detector, &[&still, &still, &still, &still, &changed, &changed]);
        assert_eq!(
            seen,
            [
                Picture::Moving,
                Picture::Moving,
                Picture::Repeating { repeats: 1 },
                Picture::Froze { repeats: 2 },
                Picture::Thawed { repeats: 2 },
                Picture::Repeating { repeats: 1 },
            ]
        );
        // A frame that differs outside the sample from the frame before is never taken for a repeat.
        let mut detector = FrozenDetector::new(2);
        let alternating = [&still, &changed, &still, &changed, &still, &changed];
        assert_eq!(
            observe_all(&mut detector, &alternating.map(|frame| frame.as_slice())),
            [Picture::Moving; 6]
        );
    }

    #[test]
    fn frames_of_other_lengths_and_tiny_frames_are_compared_too() {
        let mut detector = FrozenDetector::new(2);
        let long = noisy_frame(4, 10_000);
        let short = long[..9_999].to_vec();
        assert_eq!(observe_all(&mut detector, &[&long, &short, &long]), [Picture::Moving; 3]);
        let tiny = [1u8, 2, 3];
        let mut detector = FrozenDetector::new(2);
        assert_eq!(
            observe_all(&mut detector, &[&tiny, &tiny, &tiny, &tiny]),
            [
                Picture::Moving,
                Picture::Moving,
                Picture::Repeating { repeats: 1 },
                Picture::Froze { repeats: 2 }
            ]
        );
        assert_eq!(
            detector.observe(&[]),
            Picture::Thawed { repeats: 2 },
            "an empty frame is a different one"
        );
    }

    #[test]
    fn a_live_stream_never_freezes_and_zero_turns_the_check_off() {
        let mut detector = FrozenDetector::new(2);
        for seed in 0..100 {
            assert_eq!(detector.observe(&noisy_frame(seed, 4096 * 5)), Picture::Moving);
        }
        let still = noisy_frame(9, 1000);
        let mut off = FrozenDetector::new(0);
        assert!((0..100).all(|_| off.observe(&still) == Picture::Moving));
        let mut detector = FrozenDetector::new(2);
        observe_all(&mut detector, &[&still, &still, &still, &still]);
        assert!(detector.is_frozen());
        detector.reset();
        assert!(!detector.is_frozen());
        assert_eq!(detector.observe(&still), Picture::Moving, "a new stream starts with nothing to repeat");
    }

    #[test]
    fn timestamps_may_stay_or_advance_but_not_go_backwards() {
        let mut clock = ClockCheck::default();
        for stamp in [1_000, 34_000_000, 34_000_000, 67_000_000] {
            assert_eq!(clock.observe(stamp), Ok(()), "{stamp}");
        }
        assert_eq!(clock.observe(50_000_000), Err(Backwards { previous_ns: 67_000_000, now_ns: 50_000_000 }));
        assert_eq!(clock.observe(60_000_000), Ok(()), "compared with the last stamp seen");
        clock.reset();
        assert_eq!(clock.observe(5), Ok(()), "after STREAMON the clock check starts again");
    }
}
