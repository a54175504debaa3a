//! Detector scheduling: when a frame may be judged on the last detection's faces instead of running the
//! detector again (`[detector] redetect_every`, `hold_min_score`, `hold_max_change`).
//!
//! A held frame still makes every face's crops from its own pixels and classifies them: only the detector and
//! its decoding are skipped, and the faces (box, score, keypoints) are the last detection's, unchanged, so the
//! decision sees the same face tracked (its box overlaps itself fully). What keeps a hold sound is the motion
//! test: each held face's quality crop, made at the held geometry, is compared with the crop made at the same
//! geometry on the frame the detector last ran on. A face that moved, turned, or was swapped for another person
//! or a mask changes that crop; a mean absolute difference above `hold_max_change` makes the detector run again
//! on that same frame, before anything is judged, so a swap is never judged on a stale box. Comparing with the
//! detection's crop rather than the previous frame's also catches slow drift, which frame-to-frame differences
//! would miss. Nothing is held across a discontinuity, a change of frame size, a frame that failed, the end
//! of a session, a face too weak (`hold_min_score`) or one that cannot be aligned, nor when no face was found:
//! with nothing to track the detector runs on every frame.
#![forbid(unsafe_code)]

use crate::detect::{DetectorSettings, Face, MAX_FACES};
use crate::frame::Frame;

/// Whether frames may be held, and the reference crops the motion test compares with.
pub struct Hold {
    redetect_every: u32,
    min_score: f32,
    max_change: f32,
    /// Frames judged on the held detection since the detector last ran; `None`: nothing may be held.
    held_for: Option<u32>,
    /// The size of the frame the detector last ran on.
    frame_size: (u32, u32),
    /// The quality crops (8-bit RGB, one per aligned face, in slot order) of the frame the detector last ran on.
    reference: Vec<u8>,
    /// How many of `reference`'s crops are in use.
    crops: usize,
    /// Frames the detector ran on, frames held, and held frames the motion test sent back to the detector.
    pub counts: HoldCounts,
}

/// What the scheduling did since the pipeline started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HoldCounts {
    pub detected: u64,
    pub held: u64,
    pub moved: u64,
}

impl Hold {
    /// Storage for `MAX_FACES` quality crops of `crop_len` bytes, reserved once.
    pub fn new(settings: &DetectorSettings, crop_len: usize) -> Hold {
        Hold {
            redetect_every: settings.redetect_every,
            min_score: settings.hold_min_score,
            max_change: settings.hold_max_change,
            held_for: None,
            frame_size: (0, 0),
            reference: vec![0; MAX_FACES * crop_len],
            crops: 0,
            counts: HoldCounts::default(),
        }
    }

    /// Sets how often the detector must run (1: every frame; `deepgate bench` compares settings in one run).
    pub fn set_redetect_every(&mut self, redetect_every: u32) {
        self.redetect_every = redetect_every.max(1);
        self.reset();
    }

    /// How often the detector must run (1: every frame).
    pub fn redetect_every(&self) -> u32 {
        self.redetect_every
    }

    /// Forgets the held detection: the next frame runs the detector.
    pub fn reset(&mut self) {
        self.held_for = None;
    }

    /// Whether `frame` may be judged on the held faces (before its motion test).
    pub fn may_hold(&self, frame: &Frame) -> bool {
        match self.held_for {
            Some(held_for) => {
                !frame.discontinuity
                    && held_for + 1 < self.redetect_every
                    && (frame.width, frame.height) == self.frame_size
            }
            None => false,
        }
    }

    /// The detector ran on `frame` and found `faces`; `slots` says which quality crop in `crops` (`crop_len`
    /// bytes each) is each face's. Keeps the crops as the reference when the detection may be held.
    pub fn detected(
        &mut self,
        frame: &Frame,
        faces: &[Face],
        slots: &[Option<usize>],
        crops: &[u8],
        crop_len: usize,
    ) {
        self.counts.detected += 1;
        let holdable = !faces.is_empty()
            && faces.iter().all(|face| face.score >= self.min_score)
            && slots.iter().all(Option::is_some);
        let aligned = slots.len();
        let used = aligned * crop_len;
        if !holdable || used > self.reference.len() || used > crops.len() {
            self.held_for = None;
            return;
        }
        self.reference[..used].copy_from_slice(&crops[..used]);
        self.crops = aligned;
        self.frame_size = (frame.width, frame.height);
        self.held_for = Some(0);
    }

    /// The motion test of a held frame, whose crops (`crop_len` bytes each) were made at the held geometry:
    /// true when some face's crop differs from its reference by more than `hold_max_change` on average (the
    /// detector must run again on this frame); false counts the frame as held.
    pub fn moved(&mut self, crops: &[u8], crop_len: usize) -> bool {
        let moved = (0..self.crops).any(|slot| {
            let range = slot * crop_len..(slot + 1) * crop_len;
            match (crops.get(range.clone()), self.reference.get(range)) {
                (Some(now), Some(then)) => mean_absolute_difference(now, then) > self.max_change,
                _ => true,
            }
        });
        if moved {
            self.counts.moved += 1;
            self.held_for = None;
        } else {
            self.counts.held += 1;
            self.held_for = self.held_for.map(|held_for| held_for + 1);
        }
        moved
    }
}

/// Mean absolute difference of two equally long byte slices, in 8-bit levels.
pub fn mean_absolute_difference(a: &[u8], b: &[u8]) -> f32 {
    if a.is_empty() {
        return 0.0;
    }
    // Sums per chunk in u32 (at most 4096 × 255) so that the loop vectorises; the total in u64.
    let total: u64 = a
        .chunks(4096)
        .zip(b.chunks(4096))
        .map(|(a, b)| a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y) as u32).sum::<u32>() as u64)
        .sum();
    total as f32 / a.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;

    const CROP: usize = 12;

    fn settings(redetect_every: u32) -> DetectorSettings {
        DetectorSettings {
            score_threshold: 0.5,
            min_face_px: 0.0,
            nms_iou: 0.3,
            redetect_every,
            hold_min_score: 0.9,
            hold_max_change: 6.0,
        }
    }

    fn face(score: f32) -> Face {
        Face { bbox: [10.0, 10.0, 50.0, 50.0], score, ..Face::default() }
    }

    #[test]
    fn a_still_confident_face_is_held_for_n_minus_one_frames_then_detected() {
        let data = [0u8; 64 * 64 * 3];
        let frame = Frame::still(PixelFormat::Rgb24, 64, 64, 64 * 3, &data, "test");
        let crops = [100u8; CROP];
        let mut hold = Hold::new(&settings(3), CROP);
        assert!(!hold.may_hold(&frame), "nothing detected yet");
        hold.detected(&frame, &[face(0.95)], &[Some(0)], &crops, CROP);
        for _ in 0..2 {
            assert!(hold.may_hold(&frame));
            assert!(!hold.moved(&crops, CROP));
        }
        assert!(!hold.may_hold(&frame), "the third frame after a detection runs the detector");
        assert_eq!(hold.counts, HoldCounts { detected: 1, held: 2, moved: 0 });
    }

    #[test]
    fn every_frame_weak_faces_no_face_unaligned_faces_and_cuts_are_never_held() {
        let data = [0u8; 64 * 64 * 3];
        let mut frame = Frame::still(PixelFormat::Rgb24, 64, 64, 64 * 3, &data, "test");
        let crops = [100u8; 2 * CROP];
        let mut every = Hold::new(&settings(1), CROP);
        every.detected(&frame, &[face(0.99)], &[Some(0)], &crops, CROP);
        assert!(!every.may_hold(&frame), "redetect_every = 1 runs the detector on every frame");

        let mut hold = Hold::new(&settings(5), CROP);
        hold.detected(&frame, &[face(0.95), face(0.8)], &[Some(0), Some(1)], &crops, CROP);
        assert!(!hold.may_hold(&frame), "one weak face makes the detection unheld");
        hold.detected(&frame, &[], &[], &crops, CROP);
        assert!(!hold.may_hold(&frame), "no face: nothing to track");
        hold.detected(&frame, &[face(0.95), face(0.95)], &[Some(0), None], &crops, CROP);
        assert!(!hold.may_hold(&frame), "a face that cannot be aligned has no motion test");

        hold.detected(&frame, &[face(0.95)], &[Some(0)], &crops, CROP);
        assert!(hold.may_hold(&frame));
        frame.discontinuity = true;
        assert!(!hold.may_hold(&frame), "a discontinuity");
        frame.discontinuity = false;
        frame.width = 32;
        assert!(!hold.may_hold(&frame), "another frame size");
        frame.width = 64;
        hold.reset();
        assert!(!hold.may_hold(&frame), "the end of a session");
    }

    #[test]
    fn a_crop_that_changed_more_than_the_bound_ends_the_hold_and_noise_does_not() {
        let data = [0u8; 64 * 64 * 3];
        let frame = Frame::still(PixelFormat::Rgb24, 64, 64, 64 * 3, &data, "test");
        let reference: Vec<u8> = (0..2 * CROP).map(|i| (i * 7) as u8).collect();
        let mut hold = Hold::new(&settings(10), CROP);
        hold.detected(&frame, &[face(0.95), face(0.95)], &[Some(0), Some(1)], &reference, CROP);
        // Noise of ±5 levels on every byte of both faces: mean 5, under the bound of 6.
        let noisy: Vec<u8> =
            reference.iter().enumerate().map(|(i, &v)| if i % 2 == 0 { v + 5 } else { v - 5 }).collect();
        assert!(!hold.moved(&noisy, CROP));
        // The second face alone changed a lot (another person in its box): the detector runs again.
        let mut swapped = reference.clone();
        for value in &mut swapped[CROP..] {
            *value = value.wrapping_add(128);
        }
        assert!(hold.moved(&swapped, CROP));
        assert!(!hold.may_hold(&frame), "after a move nothing is held until the next detection");
        assert_eq!(hold.counts, HoldCounts { detected: 1, held: 1, moved: 1 });
    }

    #[test]
    fn mean_absolute_difference_is_exact_over_long_slices() {
        let a = vec![0u8; 10_000];
        let b = vec![255u8; 10_000];
        assert_eq!(mean_absolute_difference(&a, &b), 255.0);
        assert_eq!(mean_absolute_difference(&b, &a), 255.0);
        assert_eq!(mean_absolute_difference(&a, &a), 0.0);
        assert_eq!(mean_absolute_difference(&[], &[]), 0.0);
    }
}
