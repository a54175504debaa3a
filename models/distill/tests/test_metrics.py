import unittest

import numpy as np

from distill import metrics


class Metrics(unittest.TestCase):
    def test_perfect_separation(self):
        scores, labels = [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]
        report = metrics.report(scores, labels)
        self.assertEqual(report["auc"], 1.0)
        self.assertEqual(report["eer"], 0.0)
        self.assertEqual(report["bpcer_at_apcer_1"], 0.0)

    def test_auc_counts_ties_as_half(self):
        self.assertEqual(metrics.auc([0.5, 0.5], [0, 1]), 0.5)
        # 3 attacks x 2 genuine = 6 pairs; the attack at 0.3 loses to the genuine 0.4: 5/6.
        self.assertAlmostEqual(metrics.auc([0.1, 0.4, 0.3, 0.6, 0.9], [0, 0, 1, 1, 1]), 5 / 6)

    def test_auc_matches_pair_counting_on_random_scores(self):
        rng = np.random.default_rng(1)
        scores = rng.integers(0, 20, 200) / 20
        labels = rng.integers(0, 2, 200)
        pairs = [(a > g) + 0.5 * (a == g) for a in scores[labels == 1] for g in scores[labels == 0]]
        self.assertAlmostEqual(metrics.auc(scores, labels), float(np.mean(pairs)))

    def test_eer_interpolates_where_the_rates_cross(self):
        # At 0.6: APCER 1/2, BPCER 0 (gap +1/2); at 0.4: APCER 0, BPCER 1/2 (gap -1/2). Halfway: 1/4.
        self.assertAlmostEqual(metrics.eer([0.2, 0.4, 0.4, 0.6], [0, 0, 1, 1]), 0.25)
        # The runtime's example (src/eval/metrics.rs): APCER-BPCER goes +1/2 -> -1/2 between two points.
        self.assertAlmostEqual(metrics.eer([0.1, 0.7, 0.3, 0.9], [0, 0, 1, 1]), 0.5)

    def test_bpcer_at_apcer_takes_the_best_allowed_threshold(self):
        scores = [0.1, 0.2, 0.3, 0.35, 0.5, 0.9]
        labels = [0, 0, 0, 1, 1, 1]
        self.assertEqual(metrics.bpcer_at_apcer(scores, labels, 0.0), 0.0)
        self.assertEqual(metrics.bpcer_at_apcer([0.1, 0.6, 0.5, 0.9], [0, 0, 1, 1], 0.0), 0.5)

    def test_eer_threshold_balances_the_two_errors(self):
        self.assertEqual(metrics.eer_threshold([0.1, 0.2, 0.3, 0.6, 0.7, 0.8], [0, 0, 0, 1, 1, 1]), 0.6)
        # One genuine above and one attack below: the balanced point rejects one of each.
        threshold = metrics.eer_threshold([0.1, 0.5, 0.3, 0.6, 0.2, 0.8], [0, 0, 0, 1, 1, 1])
        self.assertEqual(metrics.error_rates(np.array([0.1, 0.5, 0.3, 0.6, 0.2, 0.8]), np.array([0, 0, 0, 1, 1, 1]),
                                             threshold), (1 / 3, 1 / 3))

    def test_one_class_is_an_error(self):
        with self.assertRaises(ValueError):
            metrics.auc([0.1, 0.2], [1, 1])


if __name__ == "__main__":
    unittest.main()
