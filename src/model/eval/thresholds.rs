//! Decision thresholds chosen on dev: one best global value, or one per label.
//! Never tuned on test.

use crate::model::eval::scores::{evaluate, label_counts};

/// Candidate thresholds: 0.01 .. 0.99 in steps of 0.01.
fn grid() -> Vec<f32> {
    (1..100).map(|i| i as f32 / 100.0).collect()
}

/// The single threshold that maximises macro-F1 on (scores, targets).
/// Ties go to the value closest to 0.5.
pub(crate) fn best_global(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    num_labels: usize,
) -> (f32, f64) {
    let names: Vec<String> = (0..num_labels).map(|i| i.to_string()).collect();
    let mut best = (0.5f32, f64::MIN);
    for t in grid() {
        let f = evaluate(scores, targets, &vec![t; num_labels], &names).macro_f1;
        if f > best.1 + 1e-12
            || ((f - best.1).abs() <= 1e-12 && (t - 0.5).abs() < (best.0 - 0.5).abs())
        {
            best = (t, f);
        }
    }
    best
}

/// Per label, the threshold maximising that label's F1; a label whose best F1 is 0
/// (no positives on dev) keeps `fallback`.
pub(crate) fn best_per_label(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    num_labels: usize,
    fallback: f32,
) -> Vec<f32> {
    (0..num_labels)
        .map(|j| {
            let mut best = (fallback, label_counts(scores, targets, j, fallback).f1());
            for t in grid() {
                let f = label_counts(scores, targets, j, t).f1();
                if f > best.1 + 1e-12
                    || ((f - best.1).abs() <= 1e-12
                        && (t - fallback).abs() < (best.0 - fallback).abs())
                {
                    best = (t, f);
                }
            }
            best.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_label_thresholds_separate_each_label() {
        // label0 positives score 0.3, negatives 0.1 ; label1 positives 0.8, negatives 0.6
        let scores = vec![
            vec![0.3, 0.8],
            vec![0.1, 0.6],
            vec![0.3, 0.8],
            vec![0.1, 0.6],
        ];
        let targets = vec![
            vec![true, true],
            vec![false, false],
            vec![true, true],
            vec![false, false],
        ];
        let th = best_per_label(&scores, &targets, 2, 0.5);
        assert!(th[0] > 0.1 && th[0] <= 0.3, "{th:?}");
        assert!(th[1] > 0.6 && th[1] <= 0.8, "{th:?}");
        let names = vec!["a".to_string(), "b".to_string()];
        assert_eq!(evaluate(&scores, &targets, &th, &names).macro_f1, 1.0);
        // one global threshold cannot separate both
        let (g, f) = best_global(&scores, &targets, 2);
        assert!(f < 1.0, "global {g} gave {f}");
    }

    #[test]
    fn label_without_positives_keeps_fallback() {
        let scores = vec![vec![0.2], vec![0.9]];
        let targets = vec![vec![false], vec![false]];
        assert_eq!(best_per_label(&scores, &targets, 1, 0.15), vec![0.15]);
    }
}
