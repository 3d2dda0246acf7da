//! Multi-label classification metrics: per-label precision/recall/F1, macro and micro F1.
//! Zero-support or never-predicted labels count as 0 (sklearn's `zero_division=0`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelMetrics {
    pub label: String,
    pub(crate) precision: f64,
    pub(crate) recall: f64,
    pub(crate) f1: f64,
    pub support: usize,
    pub threshold: f32,
    /// Comments predicted on that are (tp) and are not (fp) labelled so: with `support`, the
    /// whole confusion count, so a re-evaluation can tell how many predictions moved.
    /// (Absent in cards written before they were recorded.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp: Option<usize>,
    /// Bootstrap 95% interval of `f1` (test evaluations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_ci95: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub macro_f1: f64,
    pub micro_f1: f64,
    pub(crate) macro_precision: f64,
    pub(crate) macro_recall: f64,
    pub examples: usize,
    /// Bootstrap 95% interval of `macro_f1` (test evaluations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1_ci95: Option<[f64; 2]>,
    pub per_label: Vec<LabelMetrics>,
}

/// Counts of one label's outcomes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Counts {
    pub fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            0.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
    pub(crate) fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub(crate) fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Counts for label `j` when scores `>= threshold` are predicted on.
/// (A score equal to the threshold is on, so thresholds chosen from observed scores are exact.)
pub fn label_counts(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    j: usize,
    threshold: f32,
) -> Counts {
    let mut c = Counts::default();
    for (s, t) in scores.iter().zip(targets) {
        match (s[j] >= threshold, t[j]) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, true) => c.fn_ += 1,
            _ => {}
        }
    }
    c
}

/// Full metrics for sigmoid `scores` `[n][L]` against multi-hot `targets` with per-label thresholds.
pub fn evaluate(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    thresholds: &[f32],
    labels: &[String],
) -> Metrics {
    assert_eq!(
        scores.len(),
        targets.len(),
        "scores and targets differ in length"
    );
    let l = thresholds.len();
    let mut total = Counts::default();
    let mut per_label = Vec::with_capacity(l);
    for j in 0..l {
        let c = label_counts(scores, targets, j, thresholds[j]);
        total.tp += c.tp;
        total.fp += c.fp;
        total.fn_ += c.fn_;
        per_label.push(LabelMetrics {
            label: labels[j].clone(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            support: c.tp + c.fn_,
            threshold: thresholds[j],
            tp: Some(c.tp),
            fp: Some(c.fp),
            f1_ci95: None,
        });
    }
    let mean = |f: &dyn Fn(&LabelMetrics) -> f64| per_label.iter().map(f).sum::<f64>() / l as f64;
    Metrics {
        macro_f1: mean(&|m| m.f1),
        macro_precision: mean(&|m| m.precision),
        macro_recall: mean(&|m| m.recall),
        micro_f1: total.f1(),
        examples: scores.len(),
        macro_f1_ci95: None,
        per_label,
    }
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("l{i}")).collect()
    }

    #[test]
    fn hand_computed_macro_and_micro() {
        // label0: tp=1 fp=1 fn=0 -> f1 = 2/3 ; label1: tp=0 fp=0 fn=1 -> 0 ; label2: no support, no preds -> 0
        let scores = vec![vec![0.9, 0.1, 0.0], vec![0.8, 0.2, 0.0]];
        let targets = vec![vec![true, false, false], vec![false, true, false]];
        let m = evaluate(&scores, &targets, &[0.5; 3], &names(3));
        assert!((m.per_label[0].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_label[1].f1, 0.0);
        assert_eq!(m.per_label[2].f1, 0.0);
        assert_eq!(m.per_label[2].support, 0);
        assert!((m.macro_f1 - (2.0 / 3.0) / 3.0).abs() < 1e-12);
        // micro: tp=1 fp=1 fn=1 -> 2/4
        assert!((m.micro_f1 - 0.5).abs() < 1e-12);
        assert!((m.per_label[0].precision - 0.5).abs() < 1e-12);
        assert_eq!(m.per_label[0].recall, 1.0);
    }

    #[test]
    fn zero_support_label_with_false_positive_scores_zero() {
        let scores = vec![vec![0.9], vec![0.1]];
        let targets = vec![vec![false], vec![false]];
        let m = evaluate(&scores, &targets, &[0.5], &names(1));
        assert_eq!(m.per_label[0].f1, 0.0);
        assert_eq!(m.per_label[0].precision, 0.0);
    }

    #[test]
    fn threshold_is_inclusive() {
        let c = label_counts(&[vec![0.3]], &[vec![true]], 0, 0.3);
        assert_eq!(c.tp, 1);
    }

    #[test]
    fn sigmoid_is_finite_at_extremes() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
