"""Presentation-attack metrics (ISO/IEC 30107-3 vocabulary), written to match the runtime's
`src/eval/metrics.rs` so that the Python numbers and `deepgate eval` can be compared one to one.

Label 1 is an attack (fake), 0 bona fide (genuine); a higher score means "more likely fake".
APCER: attacks accepted as genuine (score below the threshold). BPCER: genuine faces rejected.
"""

from __future__ import annotations

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random attack scores above a random genuine face,
    ties counting one half (the Mann-Whitney statistic)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    attacks, genuine = scores[labels], scores[~labels]
    if len(attacks) == 0 or len(genuine) == 0:
        raise ValueError("AUC needs both genuine and attack samples")
    order = np.argsort(np.concatenate([genuine, attacks]), kind="mergesort")
    ranked = np.concatenate([genuine, attacks])[order]
    ranks = np.empty(len(ranked))
    i = 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j + 1 < len(ranked) and ranked[j + 1] == ranked[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    is_attack = np.concatenate([np.zeros(len(genuine)), np.ones(len(attacks))])[order].astype(bool)
    rank_sum = ranks[is_attack].sum()
    return float((rank_sum - len(attacks) * (len(attacks) + 1) / 2) / (len(attacks) * len(genuine)))


def error_rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(APCER, BPCER) when a face is called fake at score >= threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    apcer = float(np.mean(scores[labels] < threshold))
    bpcer = float(np.mean(scores[~labels] >= threshold))
    return apcer, bpcer


def _candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    unique = np.unique(np.asarray(scores, dtype=np.float64))
    return np.concatenate([unique, [np.inf]])


def roc(scores: np.ndarray, labels: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, APCER, BPCER) from threshold +inf down through every distinct score, as the runtime's `roc`."""
    points = []
    for threshold in _candidate_thresholds(scores)[::-1]:
        apcer, bpcer = error_rates(scores, labels, threshold)
        points.append((float(threshold), apcer, bpcer))
    return points


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate: where APCER = BPCER, linearly interpolated between the two ROC points that bracket
    the crossing (the runtime's definition)."""
    points = roc(scores, labels)
    for (_, upper_apcer, upper_bpcer), (_, lower_apcer, lower_bpcer) in zip(points, points[1:]):
        upper_gap, lower_gap = upper_apcer - upper_bpcer, lower_apcer - lower_bpcer
        if lower_gap > 0:
            continue
        if lower_gap == 0:
            return float(lower_apcer)
        fraction = upper_gap / (upper_gap - lower_gap)
        return float(upper_apcer + fraction * (lower_apcer - upper_apcer))
    raise ValueError("the ROC never crosses APCER = BPCER")


def bpcer_at_apcer(scores: np.ndarray, labels: np.ndarray, apcer_target: float) -> float:
    """The lowest BPCER over thresholds whose APCER is at most `apcer_target`."""
    best = 1.0
    for threshold in _candidate_thresholds(scores):
        apcer, bpcer = error_rates(scores, labels, threshold)
        if apcer <= apcer_target + 1e-12:
            best = min(best, bpcer)
    return float(best)


def report(scores, labels) -> dict:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    return {
        "genuine": int((labels == 0).sum()),
        "attacks": int((labels == 1).sum()),
        "auc": auc(scores, labels),
        "eer": eer(scores, labels),
        "bpcer_at_apcer_1": bpcer_at_apcer(scores, labels, 0.01),
        "bpcer_at_apcer_5": bpcer_at_apcer(scores, labels, 0.05),
        "bpcer_at_apcer_10": bpcer_at_apcer(scores, labels, 0.10),
    }


def eer_threshold(scores, labels) -> float:
    """The score at which the genuine rejection rate (genuine ≥ t) and the attack acceptance rate (attack < t)
    are closest: the equal-error operating point, as a threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    genuine, attacks = scores[labels == 0], scores[labels == 1]
    candidates = np.unique(scores)
    gaps = [abs((genuine >= t).mean() - (attacks < t).mean()) for t in candidates]
    return float(candidates[int(np.argmin(gaps))])
