//! Bootstrap 95% intervals for macro-F1 and each label's F1 on an evaluation split: the
//! comments are resampled with replacement, so a label seen six times shows how little its F1
//! says.

use crate::model::eval::scores::{Counts, Metrics};
use crate::train::rng::SplitMix64;

pub(crate) const RESAMPLES: usize = 1000;
const SEED: u64 = 0x5EED_B007;

/// The `q` quantile (0..=1) of sorted values, linearly interpolated.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// Each comment's outcome per label at `thresholds`: 0 nothing, 1 tp, 2 fp, 3 fn.
fn outcomes(scores: &[Vec<f32>], thresholds: &[f32], targets: &[Vec<bool>]) -> Vec<Vec<u8>> {
    scores
        .iter()
        .zip(targets)
        .map(|(s, t)| {
            (0..thresholds.len())
                .map(|j| match (s[j] >= thresholds[j], t[j]) {
                    (true, true) => 1,
                    (true, false) => 2,
                    (false, true) => 3,
                    _ => 0,
                })
                .collect()
        })
        .collect()
}

/// Per-label F1 of the comments `picks` (with repeats) given their outcomes.
fn f1_of(outcome: &[Vec<u8>], picks: &[usize]) -> Vec<f64> {
    let labels = outcome.first().map_or(0, Vec::len);
    let mut c = vec![Counts::default(); labels];
    for &i in picks {
        for (j, &o) in outcome[i].iter().enumerate() {
            match o {
                1 => c[j].tp += 1,
                2 => c[j].fp += 1,
                3 => c[j].fn_ += 1,
                _ => {}
            }
        }
    }
    c.iter().map(Counts::f1).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// `RESAMPLES` draws of `n` comment indices with replacement, from the fixed seed.
fn resamples(n: usize) -> impl Iterator<Item = Vec<usize>> {
    let mut rng = SplitMix64::new(SEED);
    (0..RESAMPLES).map(move |_| (0..n).map(|_| rng.below(n)).collect())
}

/// The 2.5th and 97.5th percentiles.
fn interval(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(f64::total_cmp);
    [quantile(&v, 0.025), quantile(&v, 0.975)]
}

/// Test macro-F1 of a new model minus an old one, with a paired bootstrap 95% interval: both
/// models' decisions on the same resampled comments, so the comments both get right or wrong
/// cancel out (two unpaired intervals overlap far more than the difference is uncertain).
pub(crate) fn paired_macro_f1_difference(
    new: (&[Vec<f32>], &[f32]),
    old: (&[Vec<f32>], &[f32]),
    targets: &[Vec<bool>],
) -> (f64, [f64; 2]) {
    paired_difference(new, old, targets, |o, p| mean(&f1_of(o, p)))
}

/// The same for micro-F1 (every comment × label decision pooled): the measure for a handful
/// of held-out corrections, where most labels have no example at all.
pub(crate) fn paired_micro_f1_difference(
    new: (&[Vec<f32>], &[f32]),
    old: (&[Vec<f32>], &[f32]),
    targets: &[Vec<bool>],
) -> (f64, [f64; 2]) {
    paired_difference(new, old, targets, micro_f1_of)
}

fn paired_difference(
    new: (&[Vec<f32>], &[f32]),
    old: (&[Vec<f32>], &[f32]),
    targets: &[Vec<bool>],
    stat: impl Fn(&[Vec<u8>], &[usize]) -> f64,
) -> (f64, [f64; 2]) {
    let (a, b) = (
        outcomes(new.0, new.1, targets),
        outcomes(old.0, old.1, targets),
    );
    let all: Vec<usize> = (0..targets.len()).collect();
    let diff = stat(&a, &all) - stat(&b, &all);
    let draws = resamples(targets.len())
        .map(|p| stat(&a, &p) - stat(&b, &p))
        .collect();
    (diff, interval(draws))
}

/// Micro-F1 of the comments `picks`: every label's counts pooled.
fn micro_f1_of(outcome: &[Vec<u8>], picks: &[usize]) -> f64 {
    let mut c = Counts::default();
    for &i in picks {
        for &o in &outcome[i] {
            match o {
                1 => c.tp += 1,
                2 => c.fp += 1,
                3 => c.fn_ += 1,
                _ => {}
            }
        }
    }
    c.f1()
}

/// Fills `metrics`' intervals (percentile bootstrap, `RESAMPLES` resamples, fixed seed so a
/// card is reproducible) for `scores` against `targets` at `metrics`' own thresholds.
pub(crate) fn add_intervals(metrics: &mut Metrics, scores: &[Vec<f32>], targets: &[Vec<bool>]) {
    let labels = metrics.per_label.len();
    if scores.is_empty() {
        return;
    }
    let thresholds: Vec<f32> = metrics.per_label.iter().map(|l| l.threshold).collect();
    let outcome = outcomes(scores, &thresholds, targets);
    let mut per_label: Vec<Vec<f64>> = vec![Vec::with_capacity(RESAMPLES); labels];
    let mut macro_f1 = Vec::with_capacity(RESAMPLES);
    for picks in resamples(scores.len()) {
        let f1 = f1_of(&outcome, &picks);
        macro_f1.push(mean(&f1));
        for (v, f) in per_label.iter_mut().zip(f1) {
            v.push(f);
        }
    }
    metrics.macro_f1_ci95 = Some(interval(macro_f1));
    for (m, v) in metrics.per_label.iter_mut().zip(per_label) {
        m.f1_ci95 = Some(interval(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::eval::scores::evaluate;

    #[test]
    fn a_rare_label_gets_a_wide_interval_and_a_common_one_a_narrow_one() {
        // 2,000 comments: label 0 on for half (90% caught), label 1 on for 6 (3 caught, 3 false alarms).
        let n = 2000;
        let (mut scores, mut targets) = (Vec::new(), Vec::new());
        for i in 0..n {
            let common = i % 2 == 0;
            let rare = i < 6;
            scores.push(vec![
                if common && i % 20 != 0 { 0.9 } else { 0.1 },
                if (rare && i < 3) || (6..9).contains(&i) {
                    0.9
                } else {
                    0.1
                },
            ]);
            targets.push(vec![common, rare]);
        }
        let names = vec!["common".to_string(), "rare".to_string()];
        let mut m = evaluate(&scores, &targets, &[0.5, 0.5], &names);
        add_intervals(&mut m, &scores, &targets);
        let [clo, chi] = m.per_label[0].f1_ci95.unwrap();
        let [rlo, rhi] = m.per_label[1].f1_ci95.unwrap();
        eprintln!(
            "common {:.3} [{clo:.3}, {chi:.3}], rare {:.3} [{rlo:.3}, {rhi:.3}]",
            m.per_label[0].f1, m.per_label[1].f1
        );
        assert!(clo <= m.per_label[0].f1 && m.per_label[0].f1 <= chi);
        assert!(rlo <= m.per_label[1].f1 && m.per_label[1].f1 <= rhi);
        assert!(chi - clo < 0.05, "common label's interval is narrow");
        assert!(rhi - rlo > 0.4, "rare label's interval is wide");
        let [mlo, mhi] = m.macro_f1_ci95.unwrap();
        assert!(mlo <= m.macro_f1 && m.macro_f1 <= mhi);
        // Same inputs, same interval: the seed is fixed so a card reproduces.
        let mut again = evaluate(&scores, &targets, &[0.5, 0.5], &names);
        add_intervals(&mut again, &scores, &targets);
        assert_eq!(again.macro_f1_ci95, m.macro_f1_ci95);

        // Paired: a model that also catches the rare label's 3 missed comments is better on
        // every resample that holds one of them, and equal otherwise.
        let mut better = scores.clone();
        for s in better.iter_mut().take(6) {
            s[1] = 0.9;
        }
        let th = [0.5f32, 0.5];
        let (d, [lo, hi]) = paired_macro_f1_difference((&better, &th), (&scores, &th), &targets);
        eprintln!("paired difference {d:.4} [{lo:.4}, {hi:.4}]");
        assert!(d > 0.0 && lo >= 0.0 && hi >= d, "{d} [{lo}, {hi}]");
        let (same, ci) = paired_macro_f1_difference((&scores, &th), (&scores, &th), &targets);
        assert_eq!(
            (same, ci),
            (0.0, [0.0, 0.0]),
            "a model against itself differs by nothing"
        );
    }
}
