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

/// Fills `metrics`' intervals (percentile bootstrap, `RESAMPLES` resamples, fixed seed so a
/// card is reproducible) for `scores` against `targets` at `metrics`' own thresholds.
pub(crate) fn add_intervals(metrics: &mut Metrics, scores: &[Vec<f32>], targets: &[Vec<bool>]) {
    let labels = metrics.per_label.len();
    let n = scores.len();
    if n == 0 {
        return;
    }
    // Each comment's outcome per label: 0 nothing, 1 tp, 2 fp, 3 fn.
    let outcome: Vec<Vec<u8>> = scores
        .iter()
        .zip(targets)
        .map(|(s, t)| {
            (0..labels)
                .map(|j| match (s[j] >= metrics.per_label[j].threshold, t[j]) {
                    (true, true) => 1,
                    (true, false) => 2,
                    (false, true) => 3,
                    _ => 0,
                })
                .collect()
        })
        .collect();
    let mut rng = SplitMix64::new(SEED);
    let mut per_label: Vec<Vec<f64>> = vec![Vec::with_capacity(RESAMPLES); labels];
    let mut macro_f1 = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        let mut c = vec![Counts::default(); labels];
        for _ in 0..n {
            for (j, &o) in outcome[rng.below(n)].iter().enumerate() {
                match o {
                    1 => c[j].tp += 1,
                    2 => c[j].fp += 1,
                    3 => c[j].fn_ += 1,
                    _ => {}
                }
            }
        }
        let f1: Vec<f64> = c.iter().map(Counts::f1).collect();
        macro_f1.push(f1.iter().sum::<f64>() / labels as f64);
        for (v, f) in per_label.iter_mut().zip(f1) {
            v.push(f);
        }
    }
    let interval = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        [quantile(&v, 0.025), quantile(&v, 0.975)]
    };
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
    }
}
