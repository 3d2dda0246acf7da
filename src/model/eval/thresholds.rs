//! Decision thresholds chosen on dev: one best global value, one per label, and the rule in
//! between (per-label values shrunk toward the global one by dev support, with a precision
//! floor) whose strength is chosen by cross-validation on dev. Never tuned on test.

use crate::model::eval::scores::{evaluate, label_counts, Counts};
use serde::{Deserialize, Serialize};

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

/// How far each label's own threshold is pulled toward the global one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Shrinkage {
    /// Each label keeps its own best threshold on dev.
    None,
    /// `t = w·t_label + (1−w)·t_global` with `w = n/(n+k)`, n the label's dev support: a label
    /// with few dev examples, whose own best threshold is mostly noise, stays near the global one.
    TowardGlobal { k: f64 },
    /// Every label takes the global threshold.
    Global,
}

impl Shrinkage {
    /// The candidates cross-validation chooses among, from none to all the way.
    pub(crate) const CANDIDATES: [Shrinkage; 9] = [
        Shrinkage::None,
        Shrinkage::TowardGlobal { k: 5.0 },
        Shrinkage::TowardGlobal { k: 10.0 },
        Shrinkage::TowardGlobal { k: 20.0 },
        Shrinkage::TowardGlobal { k: 50.0 },
        Shrinkage::TowardGlobal { k: 100.0 },
        Shrinkage::TowardGlobal { k: 200.0 },
        Shrinkage::TowardGlobal { k: 500.0 },
        Shrinkage::Global,
    ];

    /// The weight of the label's own threshold for a label with `support` dev positives.
    fn own_weight(&self, support: usize) -> f64 {
        match *self {
            Shrinkage::None => 1.0,
            Shrinkage::TowardGlobal { k } => support as f64 / (support as f64 + k),
            Shrinkage::Global => 0.0,
        }
    }
}

impl std::fmt::Display for Shrinkage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shrinkage::None => write!(f, "none (per label)"),
            Shrinkage::TowardGlobal { k } => write!(f, "toward global, k = {k}"),
            Shrinkage::Global => write!(f, "all the way (global)"),
        }
    }
}

/// A rule for thresholds: shrinkage, then a floor on each label's precision on the data the
/// thresholds are tuned on (a label must not fire mostly wrongly where it can do better).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdRule {
    pub shrinkage: Shrinkage,
    pub min_precision: f64,
}

impl ThresholdRule {
    /// Each label's own best threshold, nothing else (how cards were tuned before rules).
    pub const PER_LABEL: ThresholdRule = ThresholdRule {
        shrinkage: Shrinkage::None,
        min_precision: 0.0,
    };
}

/// The threshold of a label that is off: a score reaches 1.0 only when its logit passes ~17 in
/// f32, which a calibrated score of a label too unreliable to fire does not.
pub const OFF: f32 = 1.0;

/// The smallest grid threshold at or above `t` where label `j`'s precision reaches `floor`;
/// where none does, `OFF`: a label that is wrong more often than the floor allows at every
/// threshold on dev would only put false alarms on a moderator's screen.
pub(crate) fn raise_to_precision(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    j: usize,
    t: f32,
    floor: f64,
) -> f32 {
    let ok = |c: Counts| c.tp > 0 && c.precision() >= floor;
    if floor <= 0.0 || ok(label_counts(scores, targets, j, t)) {
        return t;
    }
    grid()
        .into_iter()
        .filter(|&g| g > t)
        .find(|&g| ok(label_counts(scores, targets, j, g)))
        .unwrap_or(OFF)
}

/// Thresholds tuned by a rule: the pieces it started from and the result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tuned {
    /// The one threshold with the best macro-F1.
    pub(crate) global: f32,
    /// Each label's threshold with its best F1, before shrinkage.
    pub(crate) own: Vec<f32>,
    /// What the rule makes of them: shrunk, then raised to the precision floor.
    pub(crate) per_label: Vec<f32>,
}

/// `own` thresholds pulled toward `global` by `shrinkage`, each by its label's support.
pub(crate) fn blend(global: f32, own: &[f32], support: &[usize], shrinkage: Shrinkage) -> Vec<f32> {
    own.iter()
        .zip(support)
        .map(|(&t, &n)| {
            let w = shrinkage.own_weight(n);
            (w * t as f64 + (1.0 - w) * global as f64) as f32
        })
        .collect()
}

/// Each label's number of positives.
pub(crate) fn supports(targets: &[Vec<bool>], num_labels: usize) -> Vec<usize> {
    (0..num_labels)
        .map(|j| targets.iter().filter(|t| t[j]).count())
        .collect()
}

/// `rule` applied to the bests tuned on (scores, targets): each label's `own` threshold shrunk
/// toward `global` by its support, then raised where needed to the precision floor.
fn apply_rule(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    global: f32,
    own: &[f32],
    rule: &ThresholdRule,
) -> Vec<f32> {
    let shrunk = blend(global, own, &supports(targets, own.len()), rule.shrinkage);
    shrunk
        .iter()
        .enumerate()
        .map(|(j, &t)| raise_to_precision(scores, targets, j, t, rule.min_precision))
        .collect()
}

/// Thresholds by `rule` tuned on (scores, targets): the global best, each label's best, the
/// shrunk blend of the two, raised where needed to the precision floor.
pub(crate) fn by_rule(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    num_labels: usize,
    rule: &ThresholdRule,
) -> Tuned {
    let (global, _) = best_global(scores, targets, num_labels);
    let own = best_per_label(scores, targets, num_labels, global);
    let per_label = apply_rule(scores, targets, global, &own, rule);
    Tuned {
        global,
        own,
        per_label,
    }
}

/// Out-of-fold macro-F1 of each of `rules`: for each fold, thresholds tuned on the other folds
/// decide the held-out comments; the decisions of all folds are pooled before F1 is taken (a
/// fold of dev holds only two or three examples of the rarest labels, too few for a per-fold
/// F1). The global and per-label bests are tuned once per fold; only the rules differ.
/// `folds[i]` is comment i's fold, `0..n_folds`.
fn cross_validated(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    num_labels: usize,
    rules: &[ThresholdRule],
    folds: &[usize],
    n_folds: usize,
) -> Vec<f64> {
    let mut pooled = vec![vec![Counts::default(); num_labels]; rules.len()];
    for f in 0..n_folds {
        let pick = |held: bool| -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
            folds
                .iter()
                .enumerate()
                .filter(|&(_, &k)| (k == f) == held)
                .map(|(i, _)| (scores[i].clone(), targets[i].clone()))
                .unzip()
        };
        let (fit_s, fit_t) = pick(false);
        let (held_s, held_t) = pick(true);
        let (global, _) = best_global(&fit_s, &fit_t, num_labels);
        let own = best_per_label(&fit_s, &fit_t, num_labels, global);
        for (rule, counts) in rules.iter().zip(&mut pooled) {
            let th = apply_rule(&fit_s, &fit_t, global, &own, rule);
            for (j, c) in counts.iter_mut().enumerate() {
                let h = label_counts(&held_s, &held_t, j, th[j]);
                c.tp += h.tp;
                c.fp += h.fp;
                c.fn_ += h.fn_;
            }
        }
    }
    pooled
        .iter()
        .map(|c| c.iter().map(Counts::f1).sum::<f64>() / num_labels as f64)
        .collect()
}

/// The shrinkage with the best out-of-fold macro-F1, averaged over several fold assignments
/// (`folds[r][i]`: comment i's fold in repeat r), each candidate with `min_precision`; ties go to
/// the stronger shrinkage. Returns the rule and every candidate's mean out-of-fold macro-F1.
pub(crate) fn choose_rule(
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
    num_labels: usize,
    min_precision: f64,
    folds: &[Vec<usize>],
    n_folds: usize,
) -> (ThresholdRule, Vec<(Shrinkage, f64)>) {
    let rules: Vec<ThresholdRule> = Shrinkage::CANDIDATES
        .iter()
        .map(|&shrinkage| ThresholdRule {
            shrinkage,
            min_precision,
        })
        .collect();
    let mut sum = vec![0.0; rules.len()];
    for f in folds {
        let got = cross_validated(scores, targets, num_labels, &rules, f, n_folds);
        sum.iter_mut().zip(got).for_each(|(s, g)| *s += g);
    }
    let cv: Vec<(Shrinkage, f64)> = rules
        .iter()
        .zip(sum)
        .map(|(r, s)| (r.shrinkage, s / folds.len() as f64))
        .collect();
    let best = cv
        .iter()
        .fold(cv[0], |b, &c| if c.1 >= b.1 - 1e-12 { c } else { b });
    (
        ThresholdRule {
            shrinkage: best.0,
            min_precision,
        },
        cv,
    )
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

    /// label 0: positives score 0.8, negatives 0.3 (own best threshold 0.31..0.80); label 1:
    /// positives 0.45, negatives 0.05 — `support` positives each out of 100 comments.
    fn two_labels(support: usize) -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
        (0..100)
            .map(|i| {
                let p = i < support;
                (
                    vec![if p { 0.8 } else { 0.3 }, if p { 0.45 } else { 0.05 }],
                    vec![p, p],
                )
            })
            .unzip()
    }

    #[test]
    fn shrinkage_blends_own_and_global_thresholds_by_support() {
        let (s, t) = two_labels(20);
        let none = by_rule(
            &s,
            &t,
            2,
            &ThresholdRule {
                shrinkage: Shrinkage::None,
                min_precision: 0.0,
            },
        );
        let (g, own) = (none.global, none.per_label);
        for k in [5.0, 20.0, 80.0] {
            let Tuned {
                global: g2,
                per_label: per,
                ..
            } = by_rule(
                &s,
                &t,
                2,
                &ThresholdRule {
                    shrinkage: Shrinkage::TowardGlobal { k },
                    min_precision: 0.0,
                },
            );
            assert_eq!(g, g2);
            let w = 20.0 / (20.0 + k);
            for j in 0..2 {
                let want = (w * own[j] as f64 + (1.0 - w) * g as f64) as f32;
                assert!((per[j] - want).abs() < 1e-6, "k {k} label {j}: {per:?}");
            }
        }
        let all = by_rule(
            &s,
            &t,
            2,
            &ThresholdRule {
                shrinkage: Shrinkage::Global,
                min_precision: 0.0,
            },
        );
        assert_eq!(all.per_label, vec![g, g]);
    }

    #[test]
    fn precision_floor_raises_a_threshold_until_the_label_fires_rightly_enough() {
        // One positive at 0.9, negatives at 0.1 (x50) and 0.5 (x3): best F1 at 0.51..0.9 already
        // has precision 1; a floor matters when shrinkage pulls the threshold down to 0.3.
        let mut s = vec![vec![0.9f32]];
        let mut t = vec![vec![true]];
        for i in 0..53 {
            s.push(vec![if i < 3 { 0.5 } else { 0.1 }]);
            t.push(vec![false]);
        }
        assert_eq!(raise_to_precision(&s, &t, 0, 0.3, 0.0), 0.3);
        // At 0.3: 1 tp, 3 fp, precision 0.25: a 0.2 floor keeps it, a 0.5 floor lifts it past 0.5.
        assert_eq!(raise_to_precision(&s, &t, 0, 0.3, 0.2), 0.3);
        let lifted = raise_to_precision(&s, &t, 0, 0.3, 0.5);
        assert!(lifted > 0.5 && lifted <= 0.9, "{lifted}");
        // A label right less often than the floor at every threshold is turned off.
        let mut s = vec![vec![0.6f32], vec![0.2]];
        let mut t = vec![vec![true], vec![true]];
        for _ in 0..10 {
            s.push(vec![0.7]);
            t.push(vec![false]);
        }
        assert_eq!(raise_to_precision(&s, &t, 0, 0.3, 0.2), OFF);
    }

    /// A tiny deterministic generator for synthetic scores (xorshift64*, Box-Muller).
    struct Noise(u64);
    impl Noise {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.unit(), self.unit());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    /// (positive rate, positives' mean logit, negatives' mean logit) of six labels: three common
    /// ones whose best thresholds differ, three rare ones (about 14 positives in 2,000) whose
    /// best thresholds sit near the global one, so a rare label's own dev-best is mostly noise.
    const LABELS: [(f64, f64, f64); L] = [
        (0.25, 0.0, -2.5),
        (0.25, 1.0, -1.5),
        (0.25, 2.0, -0.5),
        (RATE, RARE.0, RARE.1),
        (RATE, RARE.0, RARE.1),
        (RATE, RARE.0, RARE.1),
        (RATE, RARE.0, RARE.1),
        (RATE, RARE.0, RARE.1),
        (RATE, RARE.0, RARE.1),
    ];
    const L: usize = 9;
    const RARE: (f64, f64) = (0.0, -3.0);
    const RATE: f64 = 0.006;

    fn synthetic(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
        let mut r = Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        (0..n)
            .map(|_| {
                LABELS
                    .iter()
                    .map(|&(rate, pos, neg)| {
                        let p = r.unit() < rate;
                        let z = r.normal() + if p { pos } else { neg };
                        ((1.0 / (1.0 + (-z).exp())) as f32, p)
                    })
                    .unzip::<f32, bool, Vec<f32>, Vec<bool>>()
            })
            .unzip()
    }

    #[test]
    fn cross_validation_chooses_partial_shrinkage_that_beats_both_extremes_on_fresh_data() {
        // The known answer: on a large fresh sample of this distribution, thresholds tuned on a
        // 2,000-comment dev do best with partial shrinkage (the rare labels' own dev-best
        // thresholds are noise, the common labels' are not).
        let (dev_s, dev_t) = synthetic(2000, 1);
        let (test_s, test_t) = synthetic(200_000, 2);
        let names: Vec<String> = (0..L).map(|j| j.to_string()).collect();
        let on_test = |shrinkage| {
            let rule = ThresholdRule {
                shrinkage,
                min_precision: 0.0,
            };
            let th = by_rule(&dev_s, &dev_t, L, &rule).per_label;
            evaluate(&test_s, &test_t, &th, &names).macro_f1
        };
        let fresh: Vec<(Shrinkage, f64)> = Shrinkage::CANDIDATES
            .iter()
            .map(|&sh| (sh, on_test(sh)))
            .collect();
        eprintln!("fresh data: {fresh:?}");
        let truth = fresh
            .iter()
            .fold(fresh[0], |b, &c| if c.1 > b.1 { c } else { b });
        assert!(
            matches!(truth.0, Shrinkage::TowardGlobal { .. }),
            "{fresh:?}"
        );

        // Cross-validation on dev alone (three shuffles into five folds) finds partial
        // shrinkage too, and it beats both extremes on the fresh sample by a clear margin.
        let mut r = Noise(7);
        let folds: Vec<Vec<usize>> = (0..3)
            .map(|_| {
                let mut order: Vec<usize> = (0..dev_s.len()).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, (r.unit() * (i + 1) as f64) as usize);
                }
                let mut f = vec![0; order.len()];
                order.iter().enumerate().for_each(|(k, &i)| f[i] = k % 5);
                f
            })
            .collect();
        let (rule, cv) = choose_rule(&dev_s, &dev_t, L, 0.0, &folds, 5);
        eprintln!("cross-validated on dev: {cv:?} -> {:?}", rule.shrinkage);
        assert!(
            matches!(rule.shrinkage, Shrinkage::TowardGlobal { .. }),
            "{cv:?}"
        );
        let chosen = on_test(rule.shrinkage);
        let (none, global) = (on_test(Shrinkage::None), on_test(Shrinkage::Global));
        assert!(
            chosen >= truth.1 - 0.002,
            "CV's choice is near the best: {chosen} vs {truth:?}"
        );
        assert!(
            chosen > none + 0.01 && chosen > global + 0.01,
            "fresh macro-F1: chosen {chosen:.4}, per-label {none:.4}, global {global:.4}"
        );
    }
}
