//! The decision checked: Wald's thresholds and the frame counts they imply, quality-rejected frames, budgets,
//! people leaving and coming, `finish`, and the choice of the main face.

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
    let (sequence, verdict) =
        run_until_verdict(&mut decider, 0, 100, |_| frame(0.05)).expect("a genuine person must be decided");
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
    let (sequence, verdict) = run_until_verdict(&mut decider, 0, 100, alternating).expect("budget ends it");
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
        rejected(if index.is_multiple_of(3) { QualityIssue::Blurred } else { QualityIssue::TooDark }, 0.99)
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
        assert_eq!(decider.observe(sequence, None), None, "frame {sequence} is too soon to call them gone");
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
    let (_, verdict) =
        run_until_verdict(&mut decider, settings.lost_frames as u64, 100, |_| frame(0.95)).expect("decided");
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
    let (_, second) = run_until_verdict(&mut decider, sequence + 1, 100, |_| frame(0.05)).expect("decided");
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
