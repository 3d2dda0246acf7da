//! The per-label losses `train fit` minimises: binary cross-entropy with logits, in the form
//! that stays finite for any logit (`max(x,0) - x·y + log(1 + e^{-|x|})`), with optional
//! per-label positive weights; and the asymmetric loss (ASL, Ridnik et al., ICCV 2021), which
//! down-weights easy negatives (focusing γ-) and discards the negatives the model already
//! scores below a margin (probability clipping m) — the many-negatives problem of 28 labels.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which loss a run minimises (part of its `train.json`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossConfig {
    /// Binary cross-entropy (with the run's `pos_weight`, if any).
    #[default]
    Bce,
    /// Asymmetric loss: positives weighted by `(1-p)^gamma_pos`, negatives by `p_m^gamma_neg`
    /// with `p_m = max(p - clip, 0)` in place of `p`.
    Asymmetric {
        gamma_pos: f64,
        gamma_neg: f64,
        clip: f64,
    },
}

/// `ln(1 + e^x)` without overflow: `max(x, 0) + ln(1 + e^{-|x|})`.
fn softplus(x: &Tensor) -> Result<Tensor> {
    (x.abs()?.neg()?.exp()? + 1.0)?.log()?.add(&x.relu()?)
}

/// Mean over all elements of the asymmetric loss. With `gamma_pos = gamma_neg = clip = 0` it is
/// binary cross-entropy.
///
/// Per element, with `p = σ(x)`: positives `-(1-p)^γ+ · ln p`, negatives `-p_m^γ- · ln(1-p_m)`.
/// Written through softplus (`ln p = -softplus(-x)`, `ln(1-p) = -softplus(x)`) so it stays
/// finite at any logit; with clipping, `1 - p_m >= clip`, so its log is finite too.
pub fn asymmetric_with_logits(
    logits: &Tensor,
    targets: &Tensor,
    gamma_pos: f64,
    gamma_neg: f64,
    clip: f64,
) -> Result<Tensor> {
    let sp_pos = softplus(logits)?; // -ln(1-p)
    let sp_neg = softplus(&logits.neg()?)?; // -ln p
    let pos = if gamma_pos > 0.0 {
        // (1-p)^γ+ = e^{-γ+ · softplus(x)}
        sp_pos.affine(-gamma_pos, 0.0)?.exp()?.mul(&sp_neg)?
    } else {
        sp_neg.clone()
    };
    let neg = if clip > 0.0 {
        let p_m = sigmoid(logits)?.affine(1.0, -clip)?.relu()?;
        let nll = p_m.affine(-1.0, 1.0)?.log()?.neg()?; // -ln(1 - p_m), 1 - p_m >= clip
        if gamma_neg > 0.0 {
            // p_m^γ- (0 where p_m = 0: e^{γ- ln 0} = e^{-inf})
            p_m.powf(gamma_neg)?.mul(&nll)?
        } else {
            nll
        }
    } else if gamma_neg > 0.0 {
        // p^γ- = e^{-γ- · softplus(-x)}
        sp_neg.affine(-gamma_neg, 0.0)?.exp()?.mul(&sp_pos)?
    } else {
        sp_pos
    };
    let per = targets
        .mul(&pos)?
        .add(&targets.affine(-1.0, 1.0)?.mul(&neg)?)?;
    per.mean_all()
}

/// `σ(x) = 1 / (1 + e^{-x})`, finite for any `x`.
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    softplus(&x.neg()?)?.neg()?.exp()
}

/// Mean over all elements of per-label BCE. `targets` is 0/1 with the logits' shape and dtype;
/// `pos_weight` (`[num_labels]`) scales the positive term as in PyTorch's `BCEWithLogitsLoss`.
pub fn bce_with_logits(
    logits: &Tensor,
    targets: &Tensor,
    pos_weight: Option<&Tensor>,
) -> Result<Tensor> {
    // softplus(-x) = max(x, 0) - x + log(1 + e^{-|x|}), computed without overflow. Written with
    // relu(x) rather than relu(-x) so the sub-gradients at x = 0 (relu'(0) = 1, |x|'(0) = 1)
    // combine to the true derivative σ(0) - 1.
    let softplus_neg = (logits.abs()?.neg()?.exp()? + 1.0)?
        .log()?
        .add(&logits.relu()?.sub(logits)?)?;
    let neg_part = targets.affine(-1.0, 1.0)?.mul(logits)?; // (1 - y) · x
    let per = match pos_weight {
        None => neg_part.add(&softplus_neg)?,
        Some(pw) => {
            // weight on the log-sigmoid term: 1 + (pw - 1)·y
            let w = targets
                .broadcast_mul(&pw.affine(1.0, -1.0)?)?
                .affine(1.0, 1.0)?;
            neg_part.add(&w.mul(&softplus_neg)?)?
        }
    };
    per.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn reference(x: f64, y: f64) -> f64 {
        // -(y log σ(x) + (1-y) log(1-σ(x))) evaluated in f64 where it is safe
        let s = 1.0 / (1.0 + (-x).exp());
        -(y * s.ln() + (1.0 - y) * (1.0 - s).ln())
    }

    #[test]
    fn finite_and_correct_at_extreme_logits() -> Result<()> {
        let d = Device::Cpu;
        let xs = [-100.0f32, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0];
        for &y in &[0.0f32, 1.0] {
            let x = Var::from_tensor(&Tensor::new(&xs, &d)?)?;
            let t = Tensor::new(&[y; 7], &d)?;
            let l = bce_with_logits(x.as_tensor(), &t, None)?;
            let v = l.to_scalar::<f32>()?;
            assert!(v.is_finite(), "loss {v} for y={y}");
            let g = l.backward()?;
            let gx = g.get(x.as_tensor()).unwrap().to_vec1::<f32>()?;
            assert!(gx.iter().all(|v| v.is_finite()), "{gx:?}");
            // gradient of mean BCE is (σ(x) - y)/n
            for (xi, gi) in xs.iter().zip(&gx) {
                let s = crate::model::eval::scores::sigmoid(*xi);
                assert!((gi - (s - y) / 7.0).abs() < 1e-6, "x={xi} y={y} g={gi}");
            }
            // match the textbook formula where it does not overflow
            for &xi in &[-20.0f32, -1.0, 0.0, 1.0, 20.0] {
                let one = bce_with_logits(&Tensor::new(&[xi], &d)?, &Tensor::new(&[y], &d)?, None)?
                    .to_scalar::<f32>()?;
                assert!(
                    (one as f64 - reference(xi as f64, y as f64)).abs() < 1e-4,
                    "x={xi} y={y}"
                );
            }
        }
        // ±100 with the wrong target: loss ≈ 100, not inf
        let l = bce_with_logits(
            &Tensor::new(&[100.0f32], &d)?,
            &Tensor::new(&[0.0f32], &d)?,
            None,
        )?
        .to_scalar::<f32>()?;
        assert!((l - 100.0).abs() < 1e-3);
        Ok(())
    }

    /// ASL in f64 from its textbook form, with p and 1 - p each taken from its own softplus
    /// (1 - p computed as a difference loses the digits the finite differences need at |x| = 30).
    fn asl_reference(x: f64, y: f64, gp: f64, gn: f64, m: f64) -> f64 {
        let sp = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
        let (p, one_minus_p) = ((-sp(-x)).exp(), (-sp(x)).exp());
        if y == 1.0 {
            -one_minus_p.powf(gp) * -sp(-x)
        } else if m > 0.0 {
            let pm = (p - m).max(0.0);
            -pm.powf(gn) * (1.0 - pm).ln()
        } else {
            -p.powf(gn) * -sp(x)
        }
    }

    #[test]
    fn asymmetric_loss_matches_its_formula_and_its_gradient_matches_finite_differences(
    ) -> Result<()> {
        let d = Device::Cpu;
        // Logits away from the clipping kink (σ(x) = m) and in the saturated tails.
        let xs = [-30.0f64, -4.0, -1.3, -0.2, 0.4, 1.7, 5.0, 30.0];
        let n = xs.len() as f64;
        for &(gp, gn, m) in &[
            (0.0, 4.0, 0.05),
            (1.0, 4.0, 0.05),
            (1.0, 2.0, 0.0),
            (0.0, 0.0, 0.0),
        ] {
            for &y in &[0.0f64, 1.0] {
                let x = Var::from_tensor(&Tensor::new(&xs, &d)?)?;
                let t = Tensor::new(&[y; 8], &d)?;
                let l = asymmetric_with_logits(x.as_tensor(), &t, gp, gn, m)?;
                let v = l.to_scalar::<f64>()?;
                let want: f64 = xs
                    .iter()
                    .map(|&xi| asl_reference(xi, y, gp, gn, m))
                    .sum::<f64>()
                    / n;
                assert!(
                    (v - want).abs() < 1e-9 * want.abs().max(1.0),
                    "γ+={gp} γ-={gn} m={m} y={y}: {v} vs {want}"
                );
                let g = l.backward()?;
                let gx = g.get(x.as_tensor()).unwrap().to_vec1::<f64>()?;
                for (i, &xi) in xs.iter().enumerate() {
                    let h = 1e-6;
                    let fd = (asl_reference(xi + h, y, gp, gn, m)
                        - asl_reference(xi - h, y, gp, gn, m))
                        / (2.0 * h)
                        / n;
                    assert!(
                        gx[i].is_finite(),
                        "γ+={gp} γ-={gn} m={m} y={y} x={xi}: {}",
                        gx[i]
                    );
                    assert!(
                        (gx[i] - fd).abs() < 1e-6 * fd.abs().max(1e-3),
                        "γ+={gp} γ-={gn} m={m} y={y} x={xi}: autograd {} vs finite difference {fd}",
                        gx[i]
                    );
                }
            }
        }
        // With no focusing and no clipping it is BCE.
        let x = Tensor::new(&[[0.3f32, -0.7, 2.0]], &d)?;
        let y = Tensor::new(&[[1.0f32, 0.0, 0.0]], &d)?;
        let asl = asymmetric_with_logits(&x, &y, 0.0, 0.0, 0.0)?.to_scalar::<f32>()?;
        let bce = bce_with_logits(&x, &y, None)?.to_scalar::<f32>()?;
        assert!((asl - bce).abs() < 1e-6);
        // Clipping drops a negative scored under the margin entirely, and keeps the loss finite
        // for a confident wrong negative.
        let low = asymmetric_with_logits(
            &Tensor::new(&[-4.0f64], &d)?,
            &Tensor::new(&[0.0f64], &d)?,
            1.0,
            4.0,
            0.05,
        )?;
        assert_eq!(low.to_scalar::<f64>()?, 0.0);
        let high = asymmetric_with_logits(
            &Tensor::new(&[60.0f64], &d)?,
            &Tensor::new(&[0.0f64], &d)?,
            1.0,
            4.0,
            0.05,
        )?;
        assert!(high.to_scalar::<f64>()?.is_finite());
        Ok(())
    }

    #[test]
    fn pos_weight_scales_positive_term_only() -> Result<()> {
        let d = Device::Cpu;
        let x = Tensor::new(&[[0.3f32, -0.7]], &d)?;
        let y = Tensor::new(&[[1.0f32, 0.0]], &d)?;
        let pw = Tensor::new(&[3.0f32, 3.0], &d)?;
        let plain = bce_with_logits(&x, &y, None)?.to_scalar::<f32>()? as f64;
        let weighted = bce_with_logits(&x, &y, Some(&pw))?.to_scalar::<f32>()? as f64;
        let pos = reference(0.3, 1.0);
        let neg = reference(-0.7, 0.0);
        assert!((plain - (pos + neg) / 2.0).abs() < 1e-5);
        assert!((weighted - (3.0 * pos + neg) / 2.0).abs() < 1e-5);
        Ok(())
    }
}
