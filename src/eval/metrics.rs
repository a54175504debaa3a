//! Presentation-attack detection metrics in ISO/IEC 30107-3 terms over scored, labelled samples: the ROC, its
//! area, the equal error rate, BPCER at a fixed APCER, and the error rates at one threshold.
//!
//! A sample is classified as an attack when its score (fake probability) is at or above the threshold. APCER is
//! the fraction of attacks classified bona fide; BPCER is the fraction of bona fide classified as attacks.
#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::fmt::Write;

/// One scored, labelled presentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The classifier's fake probability: higher means more likely an attack.
    pub score: f64,
    /// The ground truth: true for an attack presentation, false for a bona fide one.
    pub attack: bool,
}

/// One operating point of the ROC.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RocPoint {
    /// Scores at or above this are classified as attacks; +∞ for the point where nothing is.
    pub threshold: f64,
    /// Attack presentation classification error rate: attacks scored below the threshold.
    pub apcer: f64,
    /// Bona fide presentation classification error rate: bona fide scored at or above the threshold.
    pub bpcer: f64,
}

/// The APCER targets of the standard BPCER100, BPCER20 and BPCER10 figures.
pub const APCER_TARGETS: [f64; 3] = [0.01, 0.05, 0.10];

/// How many samples of each class; both are non-zero once `check` accepted the samples.
struct Counts {
    bona_fide: usize,
    attacks: usize,
}

/// Rejects inputs on which the rates are undefined or the score order is meaningless.
fn check(samples: &[Sample]) -> Result<Counts> {
    ensure!(!samples.is_empty(), "no samples to evaluate");
    if let Some((index, sample)) = samples.iter().enumerate().find(|(_, sample)| !sample.score.is_finite()) {
        bail!("sample {index} has score {}: scores must be finite", sample.score);
    }
    let attacks = samples.iter().filter(|sample| sample.attack).count();
    let bona_fide = samples.len() - attacks;
    ensure!(attacks > 0, "no attack samples among {}: APCER is undefined", samples.len());
    ensure!(bona_fide > 0, "no bona fide samples among {}: BPCER is undefined", samples.len());
    Ok(Counts { bona_fide, attacks })
}

/// The ROC from threshold +∞ (everything bona fide: APCER 1, BPCER 0) down through every distinct score to the
/// lowest (everything an attack: APCER 0, BPCER 1). Tied scores move together, so they make one step.
pub fn roc(samples: &[Sample]) -> Result<Vec<RocPoint>> {
    let counts = check(samples)?;
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut points = Vec::with_capacity(sorted.len() + 1);
    points.push(RocPoint { threshold: f64::INFINITY, apcer: 1.0, bpcer: 0.0 });
    let (mut attacks_flagged, mut bona_fide_flagged) = (0usize, 0usize);
    // `==` rather than the sort's total order groups -0.0 with 0.0, as the threshold comparison does.
    for group in sorted.chunk_by(|a, b| a.score == b.score) {
        let Some(first) = group.first() else { continue };
        let attacks = group.iter().filter(|sample| sample.attack).count();
        attacks_flagged += attacks;
        bona_fide_flagged += group.len() - attacks;
        points.push(RocPoint {
            threshold: first.score,
            apcer: (counts.attacks - attacks_flagged) as f64 / counts.attacks as f64,
            bpcer: bona_fide_flagged as f64 / counts.bona_fide as f64,
        });
    }
    Ok(points)
}

/// Area under the ROC with x = BPCER and y = 1 − APCER: the probability that an attack scores above a bona
/// fide sample, ties counting one half (the Mann–Whitney statistic). Computed from ranks in O(n log n).
pub fn auc(samples: &[Sample]) -> Result<f64> {
    let counts = check(samples)?;
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    let mut attack_rank_sum = 0.0;
    let mut start = 0usize;
    for group in sorted.chunk_by(|a, b| a.score == b.score) {
        let end = start + group.len();
        // Tied samples share the mean of ranks start+1..=end, which scores each attack/bona fide tie as half
        // a win.
        let mid_rank = (start + 1 + end) as f64 / 2.0;
        attack_rank_sum += mid_rank * group.iter().filter(|sample| sample.attack).count() as f64;
        start = end;
    }
    let (attacks, bona_fide) = (counts.attacks as f64, counts.bona_fide as f64);
    // Subtracting the smallest possible rank sum leaves the number of (attack, bona fide) pairs the attack wins.
    let wins = attack_rank_sum - attacks * (attacks + 1.0) / 2.0;
    Ok(wins / (attacks * bona_fide))
}

/// The equal error rate and its threshold: where APCER = BPCER, linearly interpolated between the two ROC points
/// that bracket the crossing. Returns (EER, threshold).
pub fn eer(samples: &[Sample]) -> Result<(f64, f64)> {
    eer_on(&roc(samples)?)
}

fn eer_on(points: &[RocPoint]) -> Result<(f64, f64)> {
    // APCER − BPCER falls strictly at every step (each flags at least one more sample), from +1 at the first
    // point to −1 at the last, so it crosses zero exactly once.
    for (upper, lower) in points.iter().zip(points.iter().skip(1)) {
        let upper_gap = upper.apcer - upper.bpcer;
        let lower_gap = lower.apcer - lower.bpcer;
        if lower_gap > 0.0 {
            continue;
        }
        if lower_gap == 0.0 {
            return Ok((lower.apcer, lower.threshold));
        }
        let fraction = upper_gap / (upper_gap - lower_gap);
        let rate = upper.apcer + fraction * (lower.apcer - upper.apcer);
        // No finite threshold lies "between" +∞ and the top score; the top score is the nearest one.
        let threshold = if upper.threshold.is_finite() {
            upper.threshold + fraction * (lower.threshold - upper.threshold)
        } else {
            lower.threshold
        };
        return Ok((rate, threshold));
    }
    bail!("the ROC never crosses APCER = BPCER (it must start at APCER 1 and end at BPCER 1)")
}

/// The lowest BPCER among operating points with APCER at or below `max_apcer` (the "BPCER@APCER" figure), and
/// its threshold. No interpolation: the figure is one a real threshold achieves. Returns (BPCER, threshold).
pub fn bpcer_at_apcer(samples: &[Sample], max_apcer: f64) -> Result<(f64, f64)> {
    bpcer_at_apcer_on(&roc(samples)?, max_apcer)
}

fn bpcer_at_apcer_on(points: &[RocPoint], max_apcer: f64) -> Result<(f64, f64)> {
    ensure!((0.0..=1.0).contains(&max_apcer), "APCER target {max_apcer} must lie between 0 and 1");
    // BPCER only grows as the threshold falls, so the first point within the bound is the best.
    points
        .iter()
        .find(|point| point.apcer <= max_apcer)
        .map(|point| (point.bpcer, point.threshold))
        .context("no ROC point reaches APCER 0 (the ROC must end at the lowest score)")
}

/// APCER and BPCER when scores at or above `threshold` are classified as attacks. Returns (APCER, BPCER).
pub fn rates_at(samples: &[Sample], threshold: f64) -> Result<(f64, f64)> {
    ensure!(!threshold.is_nan(), "threshold is NaN");
    let counts = check(samples)?;
    let missed = samples.iter().filter(|sample| sample.attack && sample.score < threshold).count();
    let rejected = samples.iter().filter(|sample| !sample.attack && sample.score >= threshold).count();
    Ok((missed as f64 / counts.attacks as f64, rejected as f64 / counts.bona_fide as f64))
}

/// The metrics `deepgate eval` prints or writes as JSON. Rates are fractions in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Number of bona fide samples.
    pub bona_fide: usize,
    /// Number of attack samples.
    pub attacks: usize,
    /// Area under the ROC (x = BPCER, y = 1 − APCER).
    pub auc: f64,
    /// Equal error rate.
    pub eer: f64,
    /// Threshold at the equal error rate (interpolated).
    pub eer_threshold: f64,
    /// (APCER target, lowest BPCER with APCER at or below it, its threshold) for 1 %, 5 % and 10 %.
    pub bpcer_at_apcer: [(f64, f64, f64); 3],
    /// The configured operating threshold.
    pub threshold: f64,
    /// APCER at the configured threshold.
    pub apcer_at_threshold: f64,
    /// BPCER at the configured threshold.
    pub bpcer_at_threshold: f64,
}

/// All metrics of `samples`, with the error rates at the configured `threshold`.
pub fn report(samples: &[Sample], threshold: f64) -> Result<Report> {
    let counts = check(samples)?;
    let points = roc(samples)?;
    let (equal_error_rate, eer_threshold) = eer_on(&points)?;
    let mut at_targets = [(0.0, 0.0, 0.0); 3];
    for (slot, target) in at_targets.iter_mut().zip(APCER_TARGETS) {
        let (bpcer, at) = bpcer_at_apcer_on(&points, target)?;
        *slot = (target, bpcer, at);
    }
    let (apcer_at_threshold, bpcer_at_threshold) = rates_at(samples, threshold)?;
    Ok(Report {
        bona_fide: counts.bona_fide,
        attacks: counts.attacks,
        auc: auc(samples)?,
        eer: equal_error_rate,
        eer_threshold,
        bpcer_at_apcer: at_targets,
        threshold,
        apcer_at_threshold,
        bpcer_at_threshold,
    })
}

impl Report {
    /// A table for people: counts, AUC, and rates as percentages with the threshold each one holds at.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, so the results are ignored.
        let _ = writeln!(text, "{:<44}{:>9}", "bona fide presentations", self.bona_fide);
        let _ = writeln!(text, "{:<44}{:>9}", "attack presentations", self.attacks);
        let _ = writeln!(text, "{:<44}{:>9.4}", "AUC (x = BPCER, y = 1 - APCER)", self.auc);
        let _ = writeln!(
            text,
            "{:<44}{:>7.2} %  threshold {:.4}",
            "EER (APCER = BPCER)",
            100.0 * self.eer,
            self.eer_threshold
        );
        for (target, bpcer, threshold) in self.bpcer_at_apcer {
            let name = format!("BPCER{:.0} (lowest with APCER <= {:.2} %)", 1.0 / target, 100.0 * target);
            let _ = writeln!(text, "{name:<44}{:>7.2} %  threshold {threshold:.4}", 100.0 * bpcer);
        }
        let _ = writeln!(text, "at the configured threshold {:.4}:", self.threshold);
        let _ = writeln!(
            text,
            "{:<44}{:>7.2} %",
            "  APCER (attacks accepted as bona fide)",
            100.0 * self.apcer_at_threshold
        );
        let _ = write!(
            text,
            "{:<44}{:>7.2} %",
            "  BPCER (bona fide rejected as attacks)",
            100.0 * self.bpcer_at_threshold
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(bona_fide: &[f64], attacks: &[f64]) -> Vec<Sample> {
        let bona_fide = bona_fide.iter().map(|&score| Sample { score, attack: false });
        bona_fide.chain(attacks.iter().map(|&score| Sample { score, attack: true })).collect()
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-12, "{actual} != {expected}");
    }

    /// Marsaglia's xorshift64: deterministic test data without a dependency.
    use crate::testing::XorShift;

    /// Uniform in [0, 1) on a grid of `levels` values, so that ties are common.
    fn level(random: &mut XorShift, levels: u64) -> f64 {
        (random.next_u64() % levels) as f64 / levels as f64
    }

    fn random_samples(seed: u64, count: usize, levels: u64) -> Vec<Sample> {
        let mut random = XorShift(seed);
        (0..count)
            .map(|_| {
                let attack = random.next_u64().is_multiple_of(3);
                // Attacks score higher on average, as a useful classifier's would.
                let score = (level(&mut random, levels) + if attack { 0.3 } else { 0.0 }).min(1.0);
                Sample { score, attack }
            })
            .collect()
    }

    fn trapezoid_area(points: &[RocPoint]) -> f64 {
        points
            .iter()
            .zip(points.iter().skip(1))
            .map(|(a, b)| (b.bpcer - a.bpcer) * ((1.0 - a.apcer) + (1.0 - b.apcer)) / 2.0)
            .sum()
    }

    fn pairwise_auc(samples: &[Sample]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for attack in samples.iter().filter(|sample| sample.attack) {
            for bona_fide in samples.iter().filter(|sample| !sample.attack) {
                pairs += 1.0;
                if attack.score > bona_fide.score {
                    wins += 1.0;
                } else if attack.score == bona_fide.score {
                    wins += 0.5;
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn perfect_separation() -> Result<()> {
        let data = samples(&[0.1, 0.2], &[0.8, 0.9]);
        assert_close(auc(&data)?, 1.0);
        assert_eq!(eer(&data)?, (0.0, 0.8));
        assert_eq!(bpcer_at_apcer(&data, 0.0)?, (0.0, 0.8));
        Ok(())
    }

    #[test]
    fn fully_inverted() -> Result<()> {
        let data = samples(&[0.8, 0.9], &[0.1, 0.2]);
        assert_close(auc(&data)?, 0.0);
        assert_eq!(eer(&data)?, (1.0, 0.8));
        assert_eq!(bpcer_at_apcer(&data, 0.01)?, (1.0, 0.1));
        Ok(())
    }

    #[test]
    fn all_ties_are_one_step() -> Result<()> {
        let data = samples(&[0.5, 0.5, 0.5], &[0.5, 0.5]);
        let points = roc(&data)?;
        assert_eq!(points.len(), 2);
        assert_eq!(points[1], RocPoint { threshold: 0.5, apcer: 0.0, bpcer: 1.0 });
        assert_close(auc(&data)?, 0.5);
        let (rate, threshold) = eer(&data)?;
        assert_close(rate, 0.5);
        assert_eq!(threshold, 0.5);
        Ok(())
    }

    /// Bona fide 0.1, 0.2, 0.3, 0.6; attacks 0.4, 0.8. By hand, from the top:
    /// +∞ (APCER 1, BPCER 0), 0.8 (1/2, 0), 0.6 (1/2, 1/4), 0.4 (0, 1/4), 0.3 (0, 1/2), 0.2 (0, 3/4), 0.1 (0, 1).
    /// APCER − BPCER goes 1/4 → −1/4 between 0.6 and 0.4: halfway, so EER = 1/4 at threshold 0.5.
    /// AUC: 0.8 beats all four, 0.4 beats three: 7/8.
    #[test]
    fn six_samples_by_hand() -> Result<()> {
        let data = samples(&[0.1, 0.2, 0.3, 0.6], &[0.4, 0.8]);
        let expected = [
            (f64::INFINITY, 1.0, 0.0),
            (0.8, 0.5, 0.0),
            (0.6, 0.5, 0.25),
            (0.4, 0.0, 0.25),
            (0.3, 0.0, 0.5),
            (0.2, 0.0, 0.75),
            (0.1, 0.0, 1.0),
        ]
        .map(|(threshold, apcer, bpcer)| RocPoint { threshold, apcer, bpcer });
        assert_eq!(roc(&data)?, expected);
        assert_close(auc(&data)?, 0.875);
        let (rate, threshold) = eer(&data)?;
        assert_close(rate, 0.25);
        assert_close(threshold, 0.5);
        assert_eq!(bpcer_at_apcer(&data, 0.5)?, (0.0, 0.8));
        assert_eq!(bpcer_at_apcer(&data, 0.1)?, (0.25, 0.4));
        assert_eq!(bpcer_at_apcer(&data, 1.0)?, (0.0, f64::INFINITY));
        assert_eq!(rates_at(&data, 0.5)?, (0.5, 0.25));
        assert_eq!(rates_at(&data, 0.4)?, (0.0, 0.25));
        Ok(())
    }

    #[test]
    fn random_data_is_consistent() -> Result<()> {
        for (seed, count, levels) in [(1, 50, 10), (7, 300, 20), (99, 1000, 1000), (12345, 17, 3)] {
            let data = random_samples(seed, count, levels);
            let points = roc(&data)?;
            let area = auc(&data)?;
            assert!((area - trapezoid_area(&points)).abs() < 1e-9, "seed {seed}: rank AUC vs trapezoid");
            assert!((area - pairwise_auc(&data)).abs() < 1e-9, "seed {seed}: rank AUC vs pairwise count");

            for pair in points.windows(2) {
                assert!(pair[1].threshold < pair[0].threshold);
                assert!(pair[1].apcer <= pair[0].apcer && pair[1].bpcer >= pair[0].bpcer);
            }
            for point in &points[1..] {
                assert_eq!(rates_at(&data, point.threshold)?, (point.apcer, point.bpcer));
            }

            let (rate, threshold) = eer(&data)?;
            assert!((0.0..=1.0).contains(&rate) && threshold.is_finite());
            // The EER lies between the rates of the bracketing points: rates at any threshold cannot both be
            // below it or both above it.
            for point in &points {
                assert!(
                    point.apcer.min(point.bpcer) <= rate + 1e-12
                        && point.apcer.max(point.bpcer) >= rate - 1e-12
                );
            }

            for target in APCER_TARGETS {
                let (bpcer, at) = bpcer_at_apcer(&data, target)?;
                let best = points
                    .iter()
                    .filter(|point| point.apcer <= target)
                    .map(|point| point.bpcer)
                    .fold(f64::INFINITY, f64::min);
                assert_eq!(bpcer, best);
                let (apcer_there, bpcer_there) = rates_at(&data, at)?;
                assert!(apcer_there <= target);
                assert_eq!(bpcer_there, bpcer);
            }
        }
        Ok(())
    }

    #[test]
    fn rejects_undefined_inputs() {
        assert!(roc(&[]).is_err());
        assert!(auc(&samples(&[0.1, 0.2], &[])).is_err());
        assert!(eer(&samples(&[], &[0.1, 0.2])).is_err());
        assert!(roc(&samples(&[f64::NAN], &[0.5])).is_err());
        assert!(auc(&samples(&[0.5], &[f64::INFINITY])).is_err());
        assert!(report(&samples(&[0.5], &[f64::NEG_INFINITY]), 0.5).is_err());
        let data = samples(&[0.1], &[0.9]);
        assert!(bpcer_at_apcer(&data, f64::NAN).is_err());
        assert!(bpcer_at_apcer(&data, -0.1).is_err());
        assert!(bpcer_at_apcer(&data, 1.5).is_err());
        assert!(rates_at(&data, f64::NAN).is_err());
        assert!(rates_at(&[], 0.5).is_err());
    }

    #[test]
    fn report_collects_the_figures() -> Result<()> {
        let data = samples(&[0.1, 0.2, 0.3, 0.6], &[0.4, 0.8]);
        let summary = report(&data, 0.5)?;
        assert_eq!((summary.bona_fide, summary.attacks), (4, 2));
        assert_close(summary.auc, 0.875);
        assert_close(summary.eer, 0.25);
        assert_close(summary.eer_threshold, 0.5);
        // With two attacks APCER moves in halves, so every target below 50 % needs APCER 0.
        assert_eq!(summary.bpcer_at_apcer, [(0.01, 0.25, 0.4), (0.05, 0.25, 0.4), (0.10, 0.25, 0.4)]);
        assert_eq!((summary.apcer_at_threshold, summary.bpcer_at_threshold), (0.5, 0.25));

        let text = summary.to_text();
        for expected in
            ["bona fide presentations", "0.8750", "EER", "25.00 %", "BPCER100", "BPCER20", "BPCER10"]
        {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        let apcer_line = text.lines().find(|line| line.contains("APCER (attacks accepted as bona fide)"));
        assert!(apcer_line.is_some_and(|line| line.ends_with(" 50.00 %")), "{text}");

        let json = serde_json::to_value(&summary)?;
        assert_eq!(json["attacks"], 2);
        assert_eq!(json["bpcer_at_apcer"][2][1], 0.25);
        Ok(())
    }
}
