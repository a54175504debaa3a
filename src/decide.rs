//! The decision, per person rather than per frame: follow the main face across frames, keep only frames that
//! pass the quality gates, and accumulate their evidence in a sequential probability ratio test (Wald) until it
//! says genuine or fake, or the frame budget runs out (uncertain: ask the person to retry).
#![forbid(unsafe_code)]

use crate::detect::{iou, Face};
use crate::quality::QualityIssue;
use crate::settings::in_range;
use anyhow::{ensure, Result};
use core::fmt::Write;
use serde::{Deserialize, Serialize};

/// What the runtime concluded about one person session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Genuine,
    Fake,
    /// Not enough usable evidence: the person should retry (or no classifier is configured).
    Uncertain,
    NoFace,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Genuine => "genuine",
            Decision::Fake => "fake",
            Decision::Uncertain => "uncertain",
            Decision::NoFace => "no_face",
        }
    }
}

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
    /// Refuses settings the sequential test cannot work with, naming the key.
    pub fn validate(&self) -> Result<()> {
        in_range("decision.frame_threshold", self.frame_threshold, 0.01, 0.99)?;
        in_range("decision.max_false_accept", self.max_false_accept, 1e-6, 0.5)?;
        in_range("decision.max_false_reject", self.max_false_reject, 1e-6, 0.5)?;
        in_range("decision.evidence_weight", self.evidence_weight, 0.01, 1.0)?;
        in_range("decision.max_frame_evidence", self.max_frame_evidence, 0.1, 20.0)?;
        in_range("decision.track_iou", self.track_iou, 0.01, 1.0)?;
        ensure!(self.min_frames >= 1, "decision.min_frames must be at least 1");
        ensure!(
            self.max_frames >= self.min_frames && self.max_frames as usize <= MAX_SCORES,
            "decision.max_frames ({}) must be at least decision.min_frames ({}) and at most {}",
            self.max_frames,
            self.min_frames,
            MAX_SCORES
        );
        ensure!(
            self.max_session_frames >= self.max_frames && self.max_session_frames <= 100_000,
            "decision.max_session_frames must be between decision.max_frames and 100000"
        );
        ensure!((1..=1000).contains(&self.lost_frames), "decision.lost_frames must be 1 to 1000");
        Ok(())
    }

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
mod tests;
