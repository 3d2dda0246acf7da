//! Differentiable building blocks written with plain candle ops (candle's fused layer_norm and
//! softmax kernels have no backward pass), plus dropout driven by our own seeded generator.

use crate::train::rng::SplitMix64;
use candle_core::{DType, Result, Tensor, D};

/// `x @ w^T + b` for 2-D `x` `[n, in]`, `w` `[out, in]`.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)?.broadcast_add(b)
}

/// Layer normalisation over the last dimension.
pub(crate) fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// Softmax over the last dimension. The max is detached: subtracting any constant leaves
/// softmax unchanged, so the gradient is exact.
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Source of dropout masks; `None` in evaluation.
pub struct DropoutRng {
    rng: SplitMix64,
}

impl DropoutRng {
    pub(crate) fn new(rng: SplitMix64) -> Self {
        DropoutRng { rng }
    }

    /// Inverted dropout: zeroes each element with probability `p`, scales the rest by 1/(1-p).
    fn apply(&mut self, x: &Tensor, p: f32) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let n = x.elem_count();
        let keep = 1.0 / (1.0 - p as f64);
        // Compare 24-bit uniforms against p: cheap and exact enough for a mask.
        let cut = (p as f64 * (1u64 << 24) as f64) as u64;
        let mut data = Vec::with_capacity(n);
        let mut bits = 0u64;
        let mut left = 0;
        for _ in 0..n {
            if left == 0 {
                bits = self.rng.next_u64();
                left = 2;
            }
            let u = bits & 0xFF_FFFF;
            bits >>= 32;
            left -= 1;
            data.push(if u >= cut { keep as f32 } else { 0.0 });
        }
        let mask = Tensor::from_vec(data, x.shape(), x.device())?;
        let mask = if x.dtype() == DType::F32 {
            mask
        } else {
            mask.to_dtype(x.dtype())?
        };
        x.mul(&mask)
    }
}

pub(crate) fn maybe_dropout(
    x: &Tensor,
    p: f32,
    rng: &mut Option<&mut DropoutRng>,
) -> Result<Tensor> {
    match rng {
        Some(r) => r.apply(x, p),
        None => Ok(x.clone()),
    }
}
