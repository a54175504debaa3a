//! What a camera run counts (frames delivered, dropped, defective, time-outs, re-opens), how dropped frames
//! are found from the driver's sequence numbers, and the re-open back-off schedule. Pure logic.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

/// The camera's counters for one run, across re-opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Frames handed to the pipeline.
    pub delivered: u64,
    /// Frames the driver skipped, from gaps in its sequence numbers.
    pub dropped: u64,
    /// Raw frames with fewer bytes than the format needs (dropped).
    pub short: u64,
    /// MJPEG frames that are not a whole JPEG (dropped).
    pub corrupt: u64,
    /// Buffers the driver flagged V4L2_BUF_FLAG_ERROR (dropped).
    pub errors: u64,
    /// Waits for a frame that ran past the time-out.
    pub timeouts: u64,
    /// Successful re-opens after the camera was lost.
    pub reopens: u64,
    /// Frames withheld because they repeat the frame before byte for byte (no new evidence).
    pub repeated: u64,
    /// Times the picture froze (`source.frozen_frames` repeats in a row).
    pub frozen: u64,
    /// Buffer timestamps earlier than the one before (the camera was then re-opened).
    pub clock_backwards: u64,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames delivered, {} dropped (sequence gaps), {} short, {} corrupt MJPEG, {} error-flagged, \
             {} time-outs, {} re-opens, {} repeated (withheld), {} frozen, {} timestamps backwards",
            self.delivered,
            self.dropped,
            self.short,
            self.corrupt,
            self.errors,
            self.timeouts,
            self.reopens,
            self.repeated,
            self.frozen,
            self.clock_backwards
        )
    }
}

/// Finds frames the driver dropped from gaps in `v4l2_buffer.sequence`. The count restarts at every
/// STREAMON (`reset`). A sequence that does not advance (v4l2loopback leaves it at 0) counts nothing; a
/// 32-bit wrap is a step of one like any other; a jump backwards (a driver restarting its count) is a new
/// start, not 4 billion drops.
#[derive(Clone, Copy, Debug, Default)]
pub struct SequenceTracker {
    last: Option<u32>,
}

impl SequenceTracker {
    /// Notes the sequence number of a dequeued buffer; returns how many frames were skipped before it.
    pub fn observe(&mut self, sequence: u32) -> u64 {
        let skipped = match self.last {
            None => 0,
            Some(last) => {
                let step = sequence.wrapping_sub(last);
                // Half the number space: forward steps are small, a "step" of more is a restart.
                if step == 0 || step > u32::MAX / 2 {
                    0
                } else {
                    u64::from(step - 1)
                }
            }
        };
        self.last = Some(sequence);
        skipped
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Exponential back-off for re-opening a lost camera: `first`, doubling, at most `cap`; `reset` after a
/// successful open.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

/// The first wait before re-opening a lost camera.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between re-open attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(FIRST_RETRY, MAX_RETRY)
    }
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { first, cap, next: first.min(cap) }
    }

    /// The wait before the next attempt; each call doubles the one after, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.first.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(sequences: &[u32]) -> Vec<u64> {
        let mut tracker = SequenceTracker::default();
        sequences.iter().map(|&sequence| tracker.observe(sequence)).collect()
    }

    #[test]
    fn gaps_in_the_sequence_are_dropped_frames() {
        assert_eq!(gaps(&[0, 1, 2, 3]), [0, 0, 0, 0]);
        assert_eq!(gaps(&[0, 1, 4, 5, 9]), [0, 0, 2, 0, 3]);
        assert_eq!(gaps(&[7, 8]), [0, 0], "a stream may start at any number");
    }

    #[test]
    fn a_sequence_stuck_at_zero_counts_no_drops() {
        // v4l2loopback never fills in the sequence.
        assert_eq!(gaps(&[0, 0, 0, 0, 0]), [0, 0, 0, 0, 0]);
    }

    #[test]
    fn the_sequence_wraps_and_restarts_without_phantom_drops() {
        assert_eq!(gaps(&[u32::MAX - 1, u32::MAX, 0, 1]), [0, 0, 0, 0]);
        assert_eq!(gaps(&[u32::MAX, 2]), [0, 2]);
        assert_eq!(gaps(&[1000, 3, 4]), [0, 0, 0], "a jump backwards is a restart");
    }

    #[test]
    fn reset_forgets_the_last_number() {
        let mut tracker = SequenceTracker::default();
        tracker.observe(500);
        tracker.reset();
        assert_eq!(tracker.observe(0), 0, "after STREAMON the count starts again");
        assert_eq!(tracker.observe(3), 2);
    }

    #[test]
    fn back_off_doubles_from_a_quarter_second_to_five_and_resets() {
        let mut backoff = Backoff::default();
        let schedule: Vec<u64> = (0..8).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert_eq!(schedule, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(250));
        let mut tiny = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(tiny.next_delay(), Duration::from_secs(1), "the cap holds from the first wait");
    }

    #[test]
    fn counters_print_as_one_summary() {
        let counters = Counters { delivered: 30, dropped: 2, timeouts: 1, ..Counters::default() };
        let text = counters.to_string();
        assert!(text.starts_with("30 frames delivered, 2 dropped"), "{text}");
        assert!(text.contains("1 time-outs, 0 re-opens"), "{text}");
    }
}
