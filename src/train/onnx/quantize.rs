//! Symmetric int8 quantisation of weights: per output column for matrices fed to
//! `MatMulIntegerToFloat` (activations are quantised per token in the graph), per row for
//! embedding tables.

/// `w` is `[k, n]` row-major (the MatMul right operand). Returns int8 `[k, n]` and scales `[n]`.
/// Codes are the integers -levels..=levels.
pub(crate) fn per_column_levels(w: &[f32], k: usize, n: usize, levels: f32) -> (Vec<i8>, Vec<f32>) {
    let mut scales = vec![0f32; n];
    for r in 0..k {
        for c in 0..n {
            scales[c] = scales[c].max(w[r * n + c].abs());
        }
    }
    scales
        .iter_mut()
        .for_each(|s| *s = if *s > 0.0 { *s / levels } else { 1.0 });
    let q = (0..k * n)
        .map(|i| (w[i] / scales[i % n]).round().clamp(-levels, levels) as i8)
        .collect();
    (q, scales)
}

/// `t` is `[rows, d]`. Returns int8 `[rows, d]` and scales `[rows]`.
pub(crate) fn per_row(t: &[f32], rows: usize, d: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(rows * d);
    let mut scales = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &t[r * d..(r + 1) * d];
        let m = row.iter().fold(0f32, |a, x| a.max(x.abs()));
        let s = if m > 0.0 { m / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(
            row.iter()
                .map(|x| (x / s).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip_error_is_within_half_a_step() {
        let w: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let (q, s) = per_column_levels(&w, 8, 8, 127.0);
        for i in 0..64 {
            assert!((q[i] as f32 * s[i % 8] - w[i]).abs() <= s[i % 8] / 2.0 + 1e-6);
        }
        let (q, s) = per_row(&w, 8, 8);
        for i in 0..64 {
            assert!((q[i] as f32 * s[i / 8] - w[i]).abs() <= s[i / 8] / 2.0 + 1e-6);
        }
    }
}
