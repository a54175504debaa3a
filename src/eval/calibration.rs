//! Site calibration: from the fake probabilities a site's own genuine faces get, the decision's
//! `frame_threshold` that meets a target BPCER, with the score distribution it rests on.
//!
//! Definitions (the ones `deepgate eval` uses): a frame is flagged as an attack when its score is at or above
//! the threshold, so a genuine frame scoring exactly the threshold counts against the BPCER (ties are
//! flagged). With n genuine scores and a target b, at most k = ⌊b·n⌋ of them may be flagged: the threshold is
//! the smallest value with 4 decimals (as a board config states it) strictly above the (k+1)-th highest
//! score. Tied scores move together, so the share flagged can be below b. The estimate needs scores above the
//! threshold to rest on: fewer than ⌈1/b⌉ scores (k = 0) are refused, and the one-sided 95 % Clopper–Pearson
//! upper bound of the BPCER says how far the true rate may be from the one measured on a small sample.
#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Result};
use serde::Serialize;

/// The range `[decision] frame_threshold` accepts (src/config.rs).
pub const THRESHOLD_RANGE: (f64, f64) = (0.01, 0.99);

/// Histogram bins over [0, 1].
pub const BINS: usize = 20;

/// The quantile levels reported.
pub const QUANTILES: [f64; 7] = [0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99];

/// The scores' distribution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Distribution {
    pub count: usize,
    pub min: f64,
    pub mean: f64,
    /// (level, value) for each of `QUANTILES`, interpolated linearly between order statistics.
    pub quantiles: Vec<(f64, f64)>,
    pub max: f64,
    /// Counts in `BINS` equal bins over [0, 1]; a score of exactly 1 falls in the last.
    pub histogram: Vec<u64>,
}

/// The threshold chosen for a target BPCER.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibration {
    pub target_bpcer: f64,
    pub samples: usize,
    /// ⌊target · samples⌋: how many genuine scores may lie at or above the threshold.
    pub allowed: usize,
    /// The frame threshold, 4 decimals, within `THRESHOLD_RANGE`.
    pub frame_threshold: f64,
    /// Genuine scores at or above it, and their share (the BPCER measured on the calibration set).
    pub flagged: usize,
    pub bpcer: f64,
    /// One-sided 95 % upper confidence bound of the true BPCER at this threshold (Clopper–Pearson).
    pub bpcer_upper_95: f64,
    /// Whether the threshold the scores asked for was outside `THRESHOLD_RANGE` and was moved to its edge.
    pub clamped: bool,
}

/// Checks that every score is a probability.
fn check_scores(scores: &[f64]) -> Result<()> {
    if let Some((index, score)) = scores.iter().enumerate().find(|(_, s)| !(0.0..=1.0).contains(*s)) {
        bail!("score {index} is {score}: scores must be probabilities in [0, 1]");
    }
    Ok(())
}

/// The smallest number of samples that can support `target`: ⌈1/target⌉ (below it no score may be flagged).
pub fn minimum_samples(target: f64) -> usize {
    // The small margin keeps 1/0.05 at 20 whatever the last bit of the division.
    (1.0 / target - 1e-9).ceil().max(1.0) as usize
}

/// The distribution of `scores` (at least one, each in [0, 1]).
pub fn distribution(scores: &[f64]) -> Result<Distribution> {
    ensure!(!scores.is_empty(), "no scores");
    check_scores(scores)?;
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let quantile = |level: f64| {
        let position = (sorted.len() - 1) as f64 * level;
        let below = position.floor() as usize;
        let above = (below + 1).min(sorted.len() - 1);
        sorted[below] + (position - below as f64) * (sorted[above] - sorted[below])
    };
    let mut histogram = vec![0u64; BINS];
    for score in &sorted {
        histogram[((score * BINS as f64) as usize).min(BINS - 1)] += 1;
    }
    Ok(Distribution {
        count: sorted.len(),
        min: sorted[0],
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        quantiles: QUANTILES.iter().map(|&level| (level, quantile(level))).collect(),
        max: sorted[sorted.len() - 1],
        histogram,
    })
}

/// How many of `scores` a frame threshold flags, compared as the runtime compares them: a frame's f32 fake
/// probability against the config's f32 threshold.
pub fn flagged_at(scores: &[f64], threshold: f64) -> usize {
    let threshold = threshold as f32;
    scores.iter().filter(|&&score| score as f32 >= threshold).count()
}

/// The frame threshold that meets `target` BPCER on genuine `scores` (module documentation); an error when
/// there are fewer than `minimum_samples(target)` scores.
pub fn calibrate(scores: &[f64], target: f64) -> Result<Calibration> {
    ensure!(target > 0.0 && target <= 0.5, "the target BPCER {target} must be in (0, 0.5]");
    check_scores(scores)?;
    let needed = minimum_samples(target);
    ensure!(
        scores.len() >= needed,
        "{} usable genuine face(s) cannot support a target BPCER of {target}: at least {needed} (1/target) are \
         needed, and ten times that for a stable estimate; capture more genuine people",
        scores.len()
    );
    let mut descending = scores.to_vec();
    descending.sort_by(|a, b| b.total_cmp(a));
    let allowed = (target * scores.len() as f64 + 1e-9).floor() as usize;
    // The highest score that must stay below the threshold; the threshold is the next 4-decimal value above.
    let highest_kept = descending[allowed];
    let mut steps = (highest_kept * 1e4).floor() + 1.0;
    // Compared in f32 as the runtime does, a value a hair above can still round onto the score: step on.
    while steps < 1e4 && flagged_at(scores, steps / 1e4) > allowed {
        steps += 1.0;
    }
    let wanted = steps / 1e4;
    let threshold = wanted.clamp(THRESHOLD_RANGE.0, THRESHOLD_RANGE.1);
    let flagged = flagged_at(scores, threshold);
    Ok(Calibration {
        target_bpcer: target,
        samples: scores.len(),
        allowed,
        frame_threshold: threshold,
        flagged,
        bpcer: flagged as f64 / scores.len() as f64,
        bpcer_upper_95: binomial_upper_bound(flagged, scores.len(), 0.05),
        clamped: threshold != wanted,
    })
}

/// The one-sided (1 − `alpha`) Clopper–Pearson upper bound of a rate seen `successes` times in `trials`: the
/// rate p at which seeing at most `successes` has probability `alpha`.
pub fn binomial_upper_bound(successes: usize, trials: usize, alpha: f64) -> f64 {
    if trials == 0 || successes >= trials {
        return 1.0;
    }
    let (mut low, mut high) = (successes as f64 / trials as f64, 1.0);
    // P(X ≤ successes) falls as p rises: bisect for the p where it equals alpha.
    for _ in 0..100 {
        let middle = (low + high) / 2.0;
        if binomial_cdf(successes, trials, middle) > alpha {
            low = middle;
        } else {
            high = middle;
        }
    }
    high
}

/// P(X ≤ `successes`) for X ~ Binomial(`trials`, `p`), summed in log space so that large `trials` do not
/// underflow.
fn binomial_cdf(successes: usize, trials: usize, p: f64) -> f64 {
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return if successes >= trials { 1.0 } else { 0.0 };
    }
    let n = trials as f64;
    let mut log_term = n * (1.0 - p).ln();
    let mut logs = Vec::with_capacity(successes + 1);
    logs.push(log_term);
    for i in 0..successes.min(trials) {
        log_term += ((n - i as f64) / (i as f64 + 1.0)).ln() + (p / (1.0 - p)).ln();
        logs.push(log_term);
    }
    let largest = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (largest + logs.iter().map(|log| (log - largest).exp()).sum::<f64>().ln()).exp().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_flags_at_most_the_target_share_and_is_the_lowest_that_does() -> Result<()> {
        // 100 scores 0.000, 0.010, …, 0.990; 5 % may be flagged: 0.95…0.99, so 0.94 must stay below.
        let scores: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let result = calibrate(&scores, 0.05)?;
        assert_eq!(result.allowed, 5);
        assert_eq!(result.frame_threshold, 0.9401);
        assert_eq!((result.flagged, result.bpcer), (5, 0.05));
        assert_eq!(flagged_at(&scores, result.frame_threshold - 1e-4), 6, "one step lower flags more");
        assert!(!result.clamped);
        // Upper bound of 5 in 100 at 95 %: 10.23 % (the p with P(X <= 5) = 0.05, by exact summation in Python).
        assert!((result.bpcer_upper_95 - 0.102253).abs() < 1e-5, "{}", result.bpcer_upper_95);
        Ok(())
    }

    #[test]
    fn ties_at_the_boundary_move_together_so_fewer_may_be_flagged() -> Result<()> {
        // 20 scores, 1 may be flagged; the two highest tie at 0.8, so the threshold goes above both.
        let mut scores = vec![0.1; 18];
        scores.extend([0.8, 0.8]);
        let result = calibrate(&scores, 0.05)?;
        assert_eq!(result.frame_threshold, 0.8001);
        assert_eq!(result.flagged, 0);
        // A score exactly at the threshold is flagged (the runtime's `>=`).
        assert_eq!(flagged_at(&[0.8001], 0.8001), 1);
        Ok(())
    }

    #[test]
    fn too_few_scores_are_refused_and_the_config_range_is_kept() -> Result<()> {
        let error = calibrate(&[0.1; 19], 0.05).expect_err("19 < 1/0.05");
        assert!(format!("{error:#}").contains("at least 20"), "{error:#}");
        assert_eq!(minimum_samples(0.05), 20);
        assert_eq!(minimum_samples(0.1), 10);
        assert_eq!(minimum_samples(0.3), 4);
        // Scores near 0: the asked-for threshold 0.0001 is below the config's 0.01.
        let low = calibrate(&[0.0; 20], 0.05)?;
        assert_eq!((low.frame_threshold, low.clamped, low.flagged), (0.01, true, 0));
        // Every genuine score near 1: the highest accepted threshold still flags them; said, not hidden.
        let high = calibrate(&[0.999; 20], 0.05)?;
        assert_eq!((high.frame_threshold, high.clamped, high.flagged), (0.99, true, 20));
        assert_eq!(high.bpcer_upper_95, 1.0);
        assert!(calibrate(&[0.5; 20], 0.0).is_err());
        assert!(calibrate(&[1.5; 20], 0.05).is_err());
        assert!(calibrate(&[f64::NAN; 20], 0.05).is_err());
        Ok(())
    }

    #[test]
    fn the_distribution_has_interpolated_quantiles_and_a_histogram_over_zero_to_one() -> Result<()> {
        let scores = [0.0, 0.25, 0.5, 1.0, 0.75];
        let found = distribution(&scores)?;
        assert_eq!((found.count, found.min, found.max, found.mean), (5, 0.0, 1.0, 0.5));
        let median = found.quantiles.iter().find(|(level, _)| *level == 0.5).map(|(_, value)| *value);
        assert_eq!(median, Some(0.5));
        let ninety = found.quantiles.iter().find(|(level, _)| *level == 0.9).map(|(_, value)| *value);
        assert!((ninety.unwrap_or(0.0) - 0.9).abs() < 1e-12);
        assert_eq!(found.histogram.len(), BINS);
        assert_eq!(found.histogram.iter().sum::<u64>(), 5);
        assert_eq!((found.histogram[0], found.histogram[5], found.histogram[BINS - 1]), (1, 1, 1));
        assert!(distribution(&[]).is_err());
        Ok(())
    }

    #[test]
    fn the_upper_bound_matches_the_closed_form_when_nothing_was_flagged() {
        // With 0 of n: 1 − alpha^(1/n).
        for n in [20usize, 100, 5000] {
            let expected = 1.0 - 0.05f64.powf(1.0 / n as f64);
            assert!((binomial_upper_bound(0, n, 0.05) - expected).abs() < 1e-9, "n {n}");
        }
        assert_eq!(binomial_upper_bound(3, 3, 0.05), 1.0);
    }
}
