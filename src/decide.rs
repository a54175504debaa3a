//! The decision, per person rather than per frame: follow the main face across frames, keep only frames that
//! pass the quality gates, and accumulate their evidence in a sequential probability ratio test (Wald) until it
//! says genuine or fake, or the frame budget runs out (uncertain: ask the person to retry).
#![forbid(unsafe_code)]

use crate::detect::{iou, Face};
use crate::gate::Decision;
use crate::quality::QualityIssue;
use core::fmt::Write;
use serde::{Deserialize, Serialize};

/// The board config's `[decision]` section.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecisionSettings {
    /// Fake probability at which one frame's evidence is neutral: the classifier's calibrated operating point.
    pub frame_threshold: f32,
    /// Wald's β: the accepted rate of fakes let through as genuine (the APCER the test is built for).
    pub max_false_accept: f32,
    /// Wald's α: the accepted rate of genuine people rejected as fake (the BPCER the test is built for).
    pub max_false_reject: f32,
    /// Weight of each frame's log-likelihood ratio, below 1 because consecutive frames are correlated and
    /// would otherwise count as independent evidence.
    pub evidence_weight: f32,
    /// Cap on one frame's |log-likelihood ratio| before weighting, so a single outlier frame cannot decide.
    pub max_frame_evidence: f32,
    /// Usable frames needed before any decision.
    pub min_frames: u32,
    /// Usable frames after which an undecided session ends as uncertain.
    pub max_frames: u32,
    /// Frames seen (usable or not) after which an undecided session ends as uncertain.
    pub max_session_frames: u32,
    /// Overlap with the previous box needed to call a face the same person.
    pub track_iou: f32,
    /// Consecutive frames without the tracked face after which the person has left.
    pub lost_frames: u32,
}

impl DecisionSettings {
    /// Wald's thresholds on the accumulated log-likelihood ratio (fake versus genuine): (genuine at or below,
    /// fake at or above).
    pub fn thresholds(&self) -> (f32, f32) {
        let alpha = self.max_false_reject;
        let beta = self.max_false_accept;
        ((beta / (1.0 - alpha)).ln(), ((1.0 - beta) / alpha).ln())
    }
}

/// What the pipeline learned about the main face in one frame.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub bbox: [f32; 4],
    /// The first failed quality gate; None when the frame is usable.
    pub issue: Option<QualityIssue>,
    /// None when no classifier is configured (or the face was not classified).
    pub fake_probability: Option<f32>,
}

/// Most per-frame scores a verdict carries (the board config keeps `max_frames` within it).
pub const MAX_SCORES: usize = 256;

/// The fake probabilities of the frames a verdict used, in order.
pub type Scores = heapless::Vec<f32, MAX_SCORES>;

/// Room for a verdict's reason: a sentence with a few numbers.
pub type Reason = heapless::String<192>;

/// The decision about one person session.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    /// Mean fake probability of the frames used; None when none was classified.
    pub fake_probability: Option<f32>,
    pub frames_used: u32,
    pub frames_seen: u32,
    pub first_frame: u64,
    pub last_frame: u64,
    /// Accumulated log-likelihood ratio (fake versus genuine).
    pub evidence: f32,
    pub reason: Reason,
    /// The fake probability of every frame used, for the audit receipt.
    pub scores: Scores,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nobody tracked.
    Idle,
    /// A person is tracked and evidence is being gathered.
    Collecting,
    /// A verdict was given for the tracked person; wait for them to leave before starting again.
    Decided,
}

const ISSUES: [QualityIssue; 8] = [
    QualityIssue::TooSmall,
    QualityIssue::OutsideFrame,
    QualityIssue::Blurred,
    QualityIssue::Turned,
    QualityIssue::Tilted,
    QualityIssue::TooDark,
    QualityIssue::TooBright,
    QualityIssue::Clipped,
];

/// The sequential decision. Holds no heap memory.
pub struct Decider {
    settings: DecisionSettings,
    genuine_at: f32,
    fake_at: f32,
    phase: Phase,
    tracked: [f32; 4],
    lost: u32,
    /// Frames since the last reset (start of stream or end of a session), faces or not.
    frames_seen: u32,
    first_frame: u64,
    last_frame: u64,
    frames_used: u32,
    evidence: f32,
    probability_sum: f32,
    /// Frames whose face passed the gates but had no fake probability (no classifier).
    unjudged: u32,
    rejected: [u32; ISSUES.len()],
    scores: Scores,
    /// Whether any person session began since the last `finish`: a stream that had one is not `no_face`.
    had_session: bool,
}

impl Decider {
    pub fn new(settings: DecisionSettings) -> Decider {
        let (genuine_at, fake_at) = settings.thresholds();
        Decider {
            settings,
            genuine_at,
            fake_at,
            phase: Phase::Idle,
            tracked: [0.0; 4],
            lost: 0,
            frames_seen: 0,
            first_frame: 0,
            last_frame: 0,
            frames_used: 0,
            evidence: 0.0,
            probability_sum: 0.0,
            unjudged: 0,
            rejected: [0; ISSUES.len()],
            had_session: false,
            scores: Scores::new(),
        }
    }

    /// Which of this frame's faces belongs to the session: the tracked person if one is tracked (best overlap
    /// at or above `track_iou`), otherwise the largest face.
    pub fn select_main(&self, faces: &[Face]) -> Option<usize> {
        let best = |key: &dyn Fn(&Face) -> f32| {
            faces
                .iter()
                .enumerate()
                .map(|(index, face)| (index, key(face)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
        };
        if self.phase == Phase::Idle {
            best(&|face: &Face| face.area()).map(|(index, _)| index)
        } else {
            best(&|face: &Face| iou(&self.tracked, &face.bbox))
                .filter(|&(_, overlap)| overlap >= self.settings.track_iou)
                .map(|(index, _)| index)
        }
    }

    /// Takes one frame's observation of the main face (None: not present) and returns a verdict when the
    /// session is decided.
    pub fn observe(&mut self, sequence: u64, main: Option<&Observation>) -> Option<Verdict> {
        self.frames_seen = self.frames_seen.saturating_add(1);
        if self.frames_seen == 1 {
            self.first_frame = sequence;
        }
        self.last_frame = sequence;
        let Some(observation) = main else {
            if self.phase == Phase::Idle {
                return None;
            }
            self.lost += 1;
            if self.lost < self.settings.lost_frames {
                return None;
            }
            let verdict = (self.phase == Phase::Collecting).then(|| self.undecided("the person left"));
            self.reset();
            return verdict;
        };
        if self.phase == Phase::Idle {
            self.begin(sequence);
        }
        self.lost = 0;
        self.tracked = observation.bbox;
        if self.phase == Phase::Decided {
            return None;
        }
        match (observation.issue, observation.fake_probability) {
            (Some(issue), _) => {
                if let Some(slot) = ISSUES.iter().position(|known| *known == issue) {
                    self.rejected[slot] += 1;
                }
            }
            (None, Some(probability)) => self.add_evidence(probability),
            (None, None) => self.unjudged += 1,
        }
        let verdict = self.conclusion();
        if verdict.is_some() {
            self.phase = Phase::Decided;
        }
        verdict
    }

    /// Ends the session at the end of a stream or a discontinuity: an undecided person gets their verdict, a
    /// session that never saw a face gets `no_face`. The decider is then ready for a new stream.
    pub fn finish(&mut self) -> Option<Verdict> {
        let verdict = match self.phase {
            Phase::Collecting => Some(self.undecided("the input ended")),
            Phase::Idle if self.frames_seen > 0 && !self.had_session => {
                let mut verdict = self.verdict(Decision::NoFace);
                let _ = write!(verdict.reason, "no face found in {} frame(s)", self.frames_seen);
                Some(verdict)
            }
            _ => None,
        };
        self.reset();
        self.had_session = false;
        verdict
    }

    fn begin(&mut self, sequence: u64) {
        self.phase = Phase::Collecting;
        self.had_session = true;
        self.first_frame = sequence;
        // Frames before the face appeared are not part of this person's session.
        self.frames_seen = 1;
    }

    /// Forgets the person, keeping only whether a session happened in this stream.
    fn reset(&mut self) {
        *self = Decider { had_session: self.had_session, ..Decider::new(self.settings) };
    }

    fn add_evidence(&mut self, probability: f32) {
        let logit = |p: f32| {
            let p = p.clamp(1e-6, 1.0 - 1e-6);
            (p / (1.0 - p)).ln()
        };
        let cap = self.settings.max_frame_evidence;
        let ratio = (logit(probability) - logit(self.settings.frame_threshold)).clamp(-cap, cap);
        self.evidence += self.settings.evidence_weight * ratio;
        self.probability_sum += probability;
        // The config keeps max_frames within MAX_SCORES, so no score is lost.
        let _ = self.scores.push(probability);
        self.frames_used += 1;
    }

    /// A verdict if the evidence or the budget says so now.
    fn conclusion(&self) -> Option<Verdict> {
        let settings = &self.settings;
        if self.frames_used >= settings.min_frames {
            if self.evidence >= self.fake_at {
                let mut verdict = self.verdict(Decision::Fake);
                let _ = write!(
                    verdict.reason,
                    "evidence {:.2} reached the fake threshold {:.2} after {} frame(s)",
                    self.evidence, self.fake_at, self.frames_used
                );
                return Some(verdict);
            }
            if self.evidence <= self.genuine_at {
                let mut verdict = self.verdict(Decision::Genuine);
                let _ = write!(
                    verdict.reason,
                    "evidence {:.2} reached the genuine threshold {:.2} after {} frame(s)",
                    self.evidence, self.genuine_at, self.frames_used
                );
                return Some(verdict);
            }
        }
        if self.unjudged >= settings.min_frames.max(1) {
            let mut verdict = self.verdict(Decision::Uncertain);
            let _ = write!(verdict.reason, "no classifier configured: face found but not judged");
            return Some(verdict);
        }
        if self.frames_used >= settings.max_frames || self.frames_seen >= settings.max_session_frames {
            return Some(self.undecided("the frame budget ran out"));
        }
        None
    }

    /// The uncertain verdict of a session that ends without reaching a threshold, with the most useful reason.
    fn undecided(&self, why: &str) -> Verdict {
        let mut verdict = self.verdict(Decision::Uncertain);
        let reason = &mut verdict.reason;
        let _ = if self.unjudged > 0 && self.frames_used == 0 {
            write!(reason, "no classifier configured: face found but not judged")
        } else if self.frames_used == 0 {
            let (slot, count) =
                self.rejected.iter().enumerate().max_by_key(|(_, count)| **count).unwrap_or((0, &0));
            write!(
                reason,
                "{why}: no usable frame ({} in {count} of {} frame(s)); please retry",
                ISSUES[slot].describe(),
                self.frames_seen
            )
        } else {
            write!(
                reason,
                "{why} before a decision: evidence {:.2} after {} usable frame(s) (genuine at {:.2}, fake at {:.2}); please retry",
                self.evidence, self.frames_used, self.genuine_at, self.fake_at
            )
        };
        verdict
    }

    fn verdict(&self, decision: Decision) -> Verdict {
        Verdict {
            decision,
            fake_probability: (self.frames_used > 0).then(|| self.probability_sum / self.frames_used as f32),
            frames_used: self.frames_used,
            frames_seen: self.frames_seen,
            first_frame: self.first_frame,
            last_frame: self.last_frame,
            evidence: self.evidence,
            reason: Reason::new(),
            scores: self.scores.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A camera board's settings: correlated frames count half, one frame's ratio is capped.
    fn camera() -> DecisionSettings {
        DecisionSettings {
            frame_threshold: 0.5,
            max_false_accept: 0.01,
            max_false_reject: 0.05,
            evidence_weight: 0.5,
            max_frame_evidence: 3.0,
            min_frames: 3,
            max_frames: 30,
            max_session_frames: 90,
            track_iou: 0.3,
            lost_frames: 3,
        }
    }

    const BOX: [f32; 4] = [100.0, 80.0, 120.0, 150.0];

    fn frame(fake_probability: f32) -> Observation {
        Observation { bbox: BOX, issue: None, fake_probability: Some(fake_probability) }
    }

    fn rejected(issue: QualityIssue, fake_probability: f32) -> Observation {
        Observation { bbox: BOX, issue: Some(issue), fake_probability: Some(fake_probability) }
    }

    fn unjudged() -> Observation {
        Observation { bbox: BOX, issue: None, fake_probability: None }
    }

    /// One frame's weighted evidence for `probability` under `settings`, computed independently in f64.
    fn frame_evidence(settings: &DecisionSettings, probability: f64) -> f64 {
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let cap = settings.max_frame_evidence as f64;
        let ratio = (logit(probability) - logit(settings.frame_threshold as f64)).clamp(-cap, cap);
        settings.evidence_weight as f64 * ratio
    }

    /// Frames of constant `probability` needed to reach `threshold`, never fewer than `min_frames`.
    fn frames_to_reach(settings: &DecisionSettings, probability: f64, threshold: f64) -> u32 {
        let per_frame = frame_evidence(settings, probability);
        let exact = threshold / per_frame;
        // Keep the test away from a tie that f32 accumulation could break either way.
        assert!((exact - exact.round()).abs() > 1e-3, "{exact} frames is too close to a whole number");
        (exact.ceil() as u32).max(settings.min_frames)
    }

    /// Feeds `observation` from `sequence` on until a verdict comes; returns it with its frame's sequence.
    fn run_until_verdict(
        decider: &mut Decider,
        first_sequence: u64,
        limit: u32,
        observation: impl Fn(u32) -> Observation,
    ) -> Option<(u64, Verdict)> {
        (0..limit).find_map(|index| {
            let sequence = first_sequence + index as u64;
            decider.observe(sequence, Some(&observation(index))).map(|verdict| (sequence, verdict))
        })
    }

    fn face(bbox: [f32; 4]) -> Face {
        Face { bbox, score: 0.9, ..Face::default() }
    }

    #[test]
    fn thresholds_are_walds() {
        let (genuine_at, fake_at) = camera().thresholds();
        assert!((genuine_at - (0.01f32 / 0.95).ln()).abs() < 1e-5, "genuine at {genuine_at}");
        assert!((fake_at - (0.99f32 / 0.05).ln()).abs() < 1e-5, "fake at {fake_at}");
    }

    #[test]
    fn consistently_fake_person_is_decided_fake_after_the_computed_frame_count() {
        let settings = camera();
        let (_, fake_at) = settings.thresholds();
        let expected = frames_to_reach(&settings, 0.95, fake_at as f64);
        let mut decider = Decider::new(settings);
        // Frames before the person appears are not part of their session.
        for sequence in 10..15 {
            assert_eq!(decider.observe(sequence, None), None);
        }
        let (sequence, verdict) =
            run_until_verdict(&mut decider, 15, 100, |_| frame(0.95)).expect("a fake person must be decided");
        assert_eq!(verdict.decision, Decision::Fake, "{}", verdict.reason);
        assert_eq!(verdict.frames_used, expected);
        assert_eq!(verdict.frames_seen, expected);
        assert_eq!(verdict.first_frame, 15);
        assert_eq!(verdict.last_frame, sequence);
        assert_eq!(sequence, 15 + expected as u64 - 1);
        assert!(verdict.evidence >= fake_at);
        let mean = verdict.fake_probability.expect("classified frames have a mean");
        assert!((mean - 0.95).abs() < 1e-5, "mean {mean}");
    }

    #[test]
    fn consistently_genuine_person_is_decided_genuine_after_the_computed_frame_count() {
        let settings = camera();
        let (genuine_at, _) = settings.thresholds();
        let expected = frames_to_reach(&settings, 0.05, genuine_at as f64);
        // The genuine threshold is further from zero than the fake one: more frames are needed.
        assert!(expected > settings.min_frames);
        let mut decider = Decider::new(settings);
        let (sequence, verdict) = run_until_verdict(&mut decider, 0, 100, |_| frame(0.05))
            .expect("a genuine person must be decided");
        assert_eq!(verdict.decision, Decision::Genuine, "{}", verdict.reason);
        assert_eq!((verdict.frames_used, verdict.frames_seen), (expected, expected));
        assert_eq!((verdict.first_frame, verdict.last_frame), (0, sequence));
        assert!(verdict.evidence <= genuine_at);
    }

    #[test]
    fn no_decision_before_min_frames_even_when_the_evidence_is_already_there() {
        let settings = DecisionSettings { min_frames: 6, ..camera() };
        let (_, fake_at) = settings.thresholds();
        // Without min_frames the evidence would cross after fewer frames.
        assert!(frames_to_reach(&DecisionSettings { min_frames: 1, ..settings }, 0.95, fake_at as f64) < 6);
        let mut decider = Decider::new(settings);
        let (sequence, verdict) = run_until_verdict(&mut decider, 0, 100, |_| frame(0.95)).expect("decided");
        assert_eq!(verdict.decision, Decision::Fake);
        assert_eq!((sequence, verdict.frames_used), (5, 6));
    }

    #[test]
    fn evidence_that_never_crosses_ends_uncertain_at_max_frames() {
        let settings = DecisionSettings { max_frames: 10, ..camera() };
        let mut decider = Decider::new(settings);
        let alternating = |index: u32| frame(if index.is_multiple_of(2) { 0.9 } else { 0.1 });
        let (sequence, verdict) =
            run_until_verdict(&mut decider, 0, 100, alternating).expect("budget ends it");
        assert_eq!(verdict.decision, Decision::Uncertain);
        assert_eq!((sequence, verdict.frames_used), (9, 10));
        assert!(verdict.reason.contains("frame budget"), "{}", verdict.reason);
        assert!(verdict.reason.contains("retry"), "{}", verdict.reason);
        let mean = verdict.fake_probability.expect("classified frames have a mean");
        assert!((mean - 0.5).abs() < 1e-5, "mean {mean}");
    }

    #[test]
    fn max_session_frames_ends_a_session_of_unusable_frames_naming_the_commonest_issue() {
        let settings = DecisionSettings { max_session_frames: 12, ..camera() };
        let mut decider = Decider::new(settings);
        // Two dark frames for every blurred one, each with a confident fake probability that must be ignored.
        let issue = |index: u32| {
            rejected(
                if index.is_multiple_of(3) { QualityIssue::Blurred } else { QualityIssue::TooDark },
                0.99,
            )
        };
        let (sequence, verdict) = run_until_verdict(&mut decider, 0, 100, issue).expect("budget ends it");
        assert_eq!(verdict.decision, Decision::Uncertain);
        assert_eq!(sequence, 11);
        assert_eq!((verdict.frames_used, verdict.frames_seen), (0, 12));
        assert_eq!(verdict.fake_probability, None);
        assert!(verdict.reason.contains("frame budget"), "{}", verdict.reason);
        assert!(verdict.reason.contains(QualityIssue::TooDark.describe()), "{}", verdict.reason);
        assert!(verdict.reason.contains("8 of 12"), "{}", verdict.reason);
    }

    #[test]
    fn every_quality_issue_can_be_the_reason() {
        let settings = DecisionSettings { max_session_frames: 5, ..camera() };
        // Listed here rather than taken from ISSUES, so a variant missing there is caught.
        let all = [
            QualityIssue::TooSmall,
            QualityIssue::OutsideFrame,
            QualityIssue::Blurred,
            QualityIssue::Turned,
            QualityIssue::Tilted,
            QualityIssue::TooDark,
            QualityIssue::TooBright,
            QualityIssue::Clipped,
        ];
        for issue in all {
            let mut decider = Decider::new(settings);
            let verdict =
                run_until_verdict(&mut decider, 0, 100, |_| rejected(issue, 0.5)).expect("budget ends it").1;
            assert!(verdict.reason.contains(issue.describe()), "{issue:?}: {}", verdict.reason);
            assert!(verdict.reason.contains("5 of 5"), "{issue:?}: {}", verdict.reason);
        }
    }

    #[test]
    fn one_outlier_frame_cannot_decide_alone_when_capped() {
        let settings = DecisionSettings { min_frames: 1, ..camera() };
        let (_, fake_at) = settings.thresholds();
        assert!(settings.max_frame_evidence * settings.evidence_weight < fake_at);
        let mut decider = Decider::new(settings);
        assert_eq!(decider.observe(0, Some(&frame(0.999999))), None);
        // Neutral frames afterwards add nothing: the outlier's capped weight is all there is.
        let verdict = run_until_verdict(&mut decider, 1, 100, |_| frame(0.5)).expect("budget ends it").1;
        assert_eq!(verdict.decision, Decision::Uncertain);
        let capped = settings.max_frame_evidence * settings.evidence_weight;
        assert!((verdict.evidence - capped).abs() < 1e-4, "evidence {}", verdict.evidence);

        // The same frame without a useful cap decides at once: the cap is what held it back.
        let mut uncapped = Decider::new(DecisionSettings { max_frame_evidence: 20.0, ..settings });
        let verdict = uncapped.observe(0, Some(&frame(0.999999))).expect("decided by one frame");
        assert_eq!(verdict.decision, Decision::Fake);
    }

    #[test]
    fn quality_rejected_frames_are_not_evidence() {
        let settings = camera();
        let (genuine_at, _) = settings.thresholds();
        let expected = frames_to_reach(&settings, 0.05, genuine_at as f64);
        let mut decider = Decider::new(settings);
        // Every other frame is blurred and claims to be fake; only the usable genuine frames count.
        let mixed = |index: u32| {
            if index.is_multiple_of(2) {
                rejected(QualityIssue::Blurred, 0.999)
            } else {
                frame(0.05)
            }
        };
        let (_, verdict) = run_until_verdict(&mut decider, 0, 100, mixed).expect("decided");
        assert_eq!(verdict.decision, Decision::Genuine, "{}", verdict.reason);
        assert_eq!(verdict.frames_used, expected);
        assert_eq!(verdict.frames_seen, 2 * expected);
        let mean = verdict.fake_probability.expect("classified frames have a mean");
        assert!((mean - 0.05).abs() < 1e-5, "mean {mean}");
    }

    #[test]
    fn without_a_classifier_the_verdict_is_uncertain_after_min_frames() {
        let settings = camera();
        let mut decider = Decider::new(settings);
        let (sequence, verdict) = run_until_verdict(&mut decider, 0, 100, |_| unjudged()).expect("ends");
        assert_eq!(sequence, settings.min_frames as u64 - 1);
        assert_eq!(verdict.decision, Decision::Uncertain);
        assert!(verdict.reason.starts_with("no classifier configured"), "{}", verdict.reason);
        assert_eq!((verdict.frames_used, verdict.fake_probability), (0, None));
    }

    #[test]
    fn a_person_leaving_before_a_decision_is_uncertain() {
        let settings = camera();
        let mut decider = Decider::new(settings);
        assert_eq!(decider.observe(0, Some(&frame(0.5))), None);
        assert_eq!(decider.observe(1, Some(&frame(0.5))), None);
        for sequence in 2..1 + settings.lost_frames as u64 {
            assert_eq!(
                decider.observe(sequence, None),
                None,
                "frame {sequence} is too soon to call them gone"
            );
        }
        let verdict = decider.observe(1 + settings.lost_frames as u64, None).expect("the person left");
        assert_eq!(verdict.decision, Decision::Uncertain);
        assert!(verdict.reason.starts_with("the person left"), "{}", verdict.reason);
        assert_eq!((verdict.frames_used, verdict.first_frame), (2, 0));
        // Nothing is left to finish: the session was already reported.
        assert_eq!(decider.finish(), None);
    }

    #[test]
    fn a_brief_absence_does_not_end_the_session() {
        let settings = camera();
        let (_, fake_at) = settings.thresholds();
        let expected = frames_to_reach(&settings, 0.95, fake_at as f64);
        let mut decider = Decider::new(settings);
        assert_eq!(decider.observe(0, Some(&frame(0.95))), None);
        for sequence in 1..settings.lost_frames as u64 {
            assert_eq!(decider.observe(sequence, None), None);
        }
        let (_, verdict) = run_until_verdict(&mut decider, settings.lost_frames as u64, 100, |_| frame(0.95))
            .expect("decided");
        assert_eq!(verdict.decision, Decision::Fake);
        assert_eq!((verdict.frames_used, verdict.first_frame), (expected, 0));
    }

    #[test]
    fn one_verdict_per_person_and_a_new_one_for_the_next_person() {
        let settings = camera();
        let mut decider = Decider::new(settings);
        let (sequence, first) = run_until_verdict(&mut decider, 0, 100, |_| frame(0.95)).expect("decided");
        assert_eq!(first.decision, Decision::Fake);
        // The same person staying, with any evidence, for longer than a whole session's budget: no second verdict.
        for index in 1..=2 * settings.max_session_frames as u64 {
            assert_eq!(decider.observe(sequence + index, Some(&frame(0.05))), None);
        }
        let mut sequence = sequence + 2 * settings.max_session_frames as u64;
        // They leave: no verdict for a session already decided.
        for _ in 0..settings.lost_frames {
            sequence += 1;
            assert_eq!(decider.observe(sequence, None), None);
        }
        let (_, second) =
            run_until_verdict(&mut decider, sequence + 1, 100, |_| frame(0.05)).expect("decided");
        assert_eq!(second.decision, Decision::Genuine);
        assert_eq!(second.first_frame, sequence + 1);
        assert_eq!(second.frames_seen, second.frames_used);
        // The stream had people in it: finishing it is not a no-face verdict.
        assert_eq!(decider.finish(), None);
    }

    #[test]
    fn finish_on_a_stream_without_faces_is_no_face() {
        let mut decider = Decider::new(camera());
        for sequence in 0..7 {
            assert_eq!(decider.observe(sequence, None), None);
        }
        let verdict = decider.finish().expect("a stream without a face has a verdict");
        assert_eq!(verdict.decision, Decision::NoFace);
        assert_eq!((verdict.frames_seen, verdict.frames_used), (7, 0));
        assert!(verdict.reason.contains("7 frame(s)"), "{}", verdict.reason);
        assert_eq!(decider.finish(), None, "finishing twice gives nothing more");
        // The decider starts over for the next stream.
        assert_eq!(decider.observe(0, None), None);
        assert_eq!(decider.finish().map(|verdict| verdict.decision), Some(Decision::NoFace));
    }

    #[test]
    fn finish_after_a_decided_person_left_is_silent() {
        let settings = camera();
        let mut decider = Decider::new(settings);
        let (sequence, verdict) = run_until_verdict(&mut decider, 0, 100, |_| frame(0.95)).expect("decided");
        assert_eq!(verdict.decision, Decision::Fake);
        for index in 1..=settings.lost_frames as u64 + 5 {
            assert_eq!(decider.observe(sequence + index, None), None);
        }
        assert_eq!(decider.finish(), None);
    }

    #[test]
    fn finish_with_an_undecided_person_is_uncertain() {
        let mut decider = Decider::new(camera());
        assert_eq!(decider.observe(4, Some(&frame(0.9))), None);
        assert_eq!(decider.observe(5, Some(&frame(0.9))), None);
        let verdict = decider.finish().expect("the undecided person gets a verdict");
        assert_eq!(verdict.decision, Decision::Uncertain);
        assert!(verdict.reason.starts_with("the input ended"), "{}", verdict.reason);
        assert_eq!((verdict.frames_used, verdict.first_frame, verdict.last_frame), (2, 4, 5));
        assert_eq!(decider.finish(), None, "finishing twice gives nothing more");
    }

    #[test]
    fn select_main_takes_the_largest_face_when_idle() {
        let decider = Decider::new(camera());
        assert_eq!(decider.select_main(&[]), None);
        let faces =
            [face([0.0, 0.0, 50.0, 50.0]), face([300.0, 0.0, 90.0, 90.0]), face([100.0, 200.0, 60.0, 60.0])];
        assert_eq!(decider.select_main(&faces), Some(1));
    }

    #[test]
    fn select_main_follows_the_tracked_person_over_a_larger_face() {
        let mut decider = Decider::new(camera());
        assert_eq!(decider.observe(0, Some(&frame(0.5))), None);
        // The tracked person moved a little; a bigger face walked into view.
        let moved = [BOX[0] + 10.0, BOX[1] + 5.0, BOX[2], BOX[3]];
        assert!(iou(&BOX, &moved) >= camera().track_iou);
        let faces = [face([400.0, 0.0, 300.0, 300.0]), face(moved)];
        assert_eq!(decider.select_main(&faces), Some(1));
        // Nobody overlapping the tracked box enough: no main face, rather than a stranger.
        let far = [BOX[0] + 100.0, BOX[1], BOX[2], BOX[3]];
        assert!(iou(&BOX, &far) < camera().track_iou);
        assert_eq!(decider.select_main(&[face([400.0, 0.0, 300.0, 300.0]), face(far)]), None);
    }
}
