//! Score calibration: per-label Platt scaling fitted on dev logits, and how far scores are
//! from the rates they claim (expected calibration error, reliability bins).

use crate::model::eval::scores::sigmoid;
use serde::{Deserialize, Serialize};

/// One label's Platt scaling: the calibrated score is `sigmoid(scale * logit + shift)`.
/// `scale > 0`, so the order of scores, and with it every threshold's decisions, is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Platt {
    pub(crate) scale: f64,
    pub(crate) shift: f64,
}

impl Platt {
    pub(crate) const IDENTITY: Platt = Platt {
        scale: 1.0,
        shift: 0.0,
    };

    #[cfg(test)]
    fn logit(&self, z: f32) -> f32 {
        (self.scale * z as f64 + self.shift) as f32
    }

    /// The calibrated threshold that makes the same decisions as `t` on raw scores.
    pub(crate) fn map_threshold(&self, t: f32) -> f32 {
        let z = (t as f64 / (1.0 - t as f64)).ln();
        sigmoid((self.scale * z + self.shift) as f32)
    }
}

/// Negative log-likelihood of `targets` under `sigmoid(a*z + b)`, and its gradient and Hessian
/// in (a, b).
fn nll(logits: &[f32], targets: &[f64], a: f64, b: f64) -> (f64, [f64; 2], [f64; 3]) {
    let (mut f, mut g, mut h) = (0.0, [0.0; 2], [0.0; 3]);
    for (&z, &y) in logits.iter().zip(targets) {
        let z = z as f64;
        let s = a * z + b;
        // log(1 + e^s) without overflow.
        let softplus = if s > 0.0 {
            s + (-s).exp().ln_1p()
        } else {
            s.exp().ln_1p()
        };
        f += softplus - y * s;
        let p = 1.0 / (1.0 + (-s).exp());
        let (d, w) = (p - y, p * (1.0 - p));
        g[0] += d * z;
        g[1] += d;
        h[0] += w * z * z;
        h[1] += w * z;
        h[2] += w;
    }
    (f, g, h)
}

/// Fits Platt scaling for one label by Newton's method with backtracking on the negative
/// log-likelihood. Targets are Platt's smoothed ones ((N₊+1)/(N₊+2) and 1/(N₋+2)), which keeps
/// a label with a handful of positives from being fitted to certainty. Falls back to the
/// identity when the fit does not give a positive scale (no signal to calibrate).
pub(crate) fn fit_platt(logits: &[f32], positive: &[bool]) -> Platt {
    let pos = positive.iter().filter(|&&p| p).count() as f64;
    let neg = positive.len() as f64 - pos;
    let (hi, lo) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
    let targets: Vec<f64> = positive.iter().map(|&p| if p { hi } else { lo }).collect();
    let (mut a, mut b) = (1.0, 0.0);
    let (mut f, mut g, mut h) = nll(logits, &targets, a, b);
    for _ in 0..100 {
        // Newton step on the 2x2 system, with a tiny ridge so a flat direction cannot blow up.
        let (h00, h01, h11) = (h[0] + 1e-9, h[1], h[2] + 1e-9);
        let det = h00 * h11 - h01 * h01;
        if det <= 0.0 || !det.is_finite() {
            break;
        }
        let da = (h11 * g[0] - h01 * g[1]) / det;
        let db = (h00 * g[1] - h01 * g[0]) / det;
        let mut step = 1.0;
        let mut moved = false;
        while step > 1e-10 {
            let (na, nb) = (a - step * da, b - step * db);
            let (nf, ng, nh) = nll(logits, &targets, na, nb);
            if nf < f - 1e-12 * f.abs() {
                (a, b, f, g, h, moved) = (na, nb, nf, ng, nh, true);
                break;
            }
            step /= 2.0;
        }
        if !moved || (da.abs() < 1e-10 && db.abs() < 1e-10) {
            break;
        }
    }
    if a > 0.0 && a.is_finite() && b.is_finite() {
        Platt { scale: a, shift: b }
    } else {
        Platt::IDENTITY
    }
}

/// Reliability of one score range: how many (comment, label) pairs scored in it, their mean
/// score and the share of them that were labelled so.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_score: f64,
    pub positive_rate: f64,
}

/// Number of equal-width score bins for ECE and the reliability diagram.
pub(crate) const BINS: usize = 15;

/// Scores `[n][L]` against multi-hot targets, every (comment, label) pair pooled, in `BINS`
/// equal-width bins over [0, 1].
pub fn reliability(scores: &[Vec<f32>], targets: &[Vec<bool>]) -> Vec<ReliabilityBin> {
    let mut sum = [0f64; BINS];
    let mut pos = [0usize; BINS];
    let mut count = [0usize; BINS];
    for (s, t) in scores.iter().zip(targets) {
        for (&x, &y) in s.iter().zip(t) {
            let k = ((x as f64 * BINS as f64) as usize).min(BINS - 1);
            sum[k] += x as f64;
            count[k] += 1;
            pos[k] += y as usize;
        }
    }
    (0..BINS)
        .map(|k| ReliabilityBin {
            lo: k as f64 / BINS as f64,
            hi: (k + 1) as f64 / BINS as f64,
            count: count[k],
            mean_score: if count[k] == 0 {
                0.0
            } else {
                sum[k] / count[k] as f64
            },
            positive_rate: if count[k] == 0 {
                0.0
            } else {
                pos[k] as f64 / count[k] as f64
            },
        })
        .collect()
}

/// Expected calibration error of reliability bins: the count-weighted mean of
/// |mean score − positive rate|.
pub fn ece(bins: &[ReliabilityBin]) -> f64 {
    let total: usize = bins.iter().map(|b| b.count).sum();
    if total == 0 {
        return 0.0;
    }
    bins.iter()
        .map(|b| b.count as f64 * (b.mean_score - b.positive_rate).abs())
        .sum::<f64>()
        / total as f64
}

/// Mean over labels of each label's own ECE: the pooled ECE is dominated by the many easy
/// negatives near 0, this one weighs a rare label like a common one.
pub(crate) fn classwise_ece(scores: &[Vec<f32>], targets: &[Vec<bool>], labels: usize) -> f64 {
    (0..labels)
        .map(|j| {
            let s: Vec<Vec<f32>> = scores.iter().map(|r| vec![r[j]]).collect();
            let t: Vec<Vec<bool>> = targets.iter().map(|r| vec![r[j]]).collect();
            ece(&reliability(&s, &t))
        })
        .sum::<f64>()
        / labels as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits on a grid, each repeated `m` times with exactly round(m * p) positives, where p
    /// is the true calibrated probability sigmoid(a*z + b): the fit must find (a, b).
    fn exact_sample(a: f64, b: f64, m: usize) -> (Vec<f32>, Vec<bool>) {
        let (mut z, mut y) = (Vec::new(), Vec::new());
        for i in -40..=40 {
            let x = i as f32 / 8.0;
            let p = 1.0 / (1.0 + (-(a * x as f64 + b)).exp());
            let k = (p * m as f64).round() as usize;
            for r in 0..m {
                z.push(x);
                y.push(r < k);
            }
        }
        (z, y)
    }

    #[test]
    fn platt_fit_recovers_a_known_scale_and_shift() {
        for (a, b) in [(0.6, -1.2), (1.7, 0.8), (1.0, 0.0)] {
            let (z, y) = exact_sample(a, b, 400);
            let p = fit_platt(&z, &y);
            assert!(
                (p.scale - a).abs() < 0.02 && (p.shift - b).abs() < 0.02,
                "true ({a}, {b}), fitted ({}, {})",
                p.scale,
                p.shift
            );
        }
    }

    #[test]
    fn platt_fit_makes_overconfident_scores_honest() {
        // Raw logits twice as confident as the truth: ECE falls once calibrated.
        let (z, y) = exact_sample(0.5, -0.5, 200);
        let p = fit_platt(&z, &y);
        let raw: Vec<Vec<f32>> = z.iter().map(|&x| vec![sigmoid(x)]).collect();
        let cal: Vec<Vec<f32>> = z.iter().map(|&x| vec![sigmoid(p.logit(x))]).collect();
        let t: Vec<Vec<bool>> = y.iter().map(|&v| vec![v]).collect();
        let (before, after) = (ece(&reliability(&raw, &t)), ece(&reliability(&cal, &t)));
        assert!(after < before / 4.0, "ECE {before} -> {after}");
        assert!(after < 0.01, "ECE after {after}");
    }

    #[test]
    fn a_label_without_signal_keeps_the_identity() {
        // Positives and negatives at the same logits in reverse proportion: no positive scale fits.
        let z = vec![-1.0, -1.0, 1.0, 1.0, 1.0, -1.0];
        let y = vec![true, true, false, false, false, true];
        assert_eq!(fit_platt(&z, &y), Platt::IDENTITY);
    }

    #[test]
    fn mapped_threshold_makes_the_same_decisions() {
        let p = Platt {
            scale: 0.8,
            shift: -0.4,
        };
        for t in [0.02f32, 0.15, 0.5, 0.9] {
            let mt = p.map_threshold(t);
            for i in -300..300 {
                let z = i as f32 / 50.0;
                let raw_on = sigmoid(z) >= t;
                let cal_on = sigmoid(p.logit(z)) >= mt;
                // Exactly at the threshold float rounding may differ; nowhere else.
                if ((sigmoid(z) - t).abs()) > 1e-5 {
                    assert_eq!(raw_on, cal_on, "t {t} z {z}");
                }
            }
        }
    }

    #[test]
    fn ece_of_a_perfectly_calibrated_bin_is_zero_and_of_a_wrong_one_its_gap() {
        let scores = vec![vec![0.1f32]; 10];
        let mut targets = vec![vec![false]; 10];
        targets[0][0] = true;
        assert!(ece(&reliability(&scores, &targets)).abs() < 1e-7);
        let all_on = vec![vec![true]; 10];
        assert!((ece(&reliability(&scores, &all_on)) - 0.9).abs() < 1e-6);
    }
}
