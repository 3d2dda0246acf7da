//! Binary cross-entropy with logits, in the form that stays finite for any logit
//! (`max(x,0) - x·y + log(1 + e^{-|x|})`), with optional per-label positive weights.

use candle_core::{Result, Tensor};

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
