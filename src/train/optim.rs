//! AdamW with linear warm-up then linear decay, global-norm gradient clipping, and state
//! (moments, step) that a checkpoint saves and restores exactly.

use crate::train::encoder::Params;
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// Layer-wise learning-rate decay (LLRD): the head trains at the scheduled rate, encoder
    /// layer i (0-based, of `num_layers`) at `layer_decay^(num_layers - i)` times it, the
    /// embeddings at `layer_decay^(num_layers + 1)` times it — lower layers hold general
    /// features and move less. 1 (the default, and every run before it): one rate for all.
    #[serde(default = "no_layer_decay")]
    pub layer_decay: f64,
    /// The encoder's layer count, for `layer_decay`.
    #[serde(default)]
    pub num_layers: usize,
}

fn no_layer_decay() -> f64 {
    1.0
}

/// The layer a parameter belongs to, counted from the bottom: 0 the embeddings, `i + 1`
/// encoder layer `i`, `num_layers + 1` everything above (pooler, classifier).
fn layer_of(name: &str, num_layers: usize) -> usize {
    if name.contains("embeddings.") {
        return 0;
    }
    let layer = name
        .split_once(".layer.")
        .and_then(|(_, rest)| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    match layer {
        Some(i) if i < num_layers => i + 1,
        _ => num_layers + 1,
    }
}

/// LLRD: the multiplier of the scheduled learning rate for parameter `name`.
pub(crate) fn layer_scale(cfg: &AdamWConfig, name: &str) -> f64 {
    if cfg.layer_decay == 1.0 {
        return 1.0;
    }
    let depth_below_head = cfg.num_layers + 1 - layer_of(name, cfg.num_layers);
    cfg.layer_decay.powi(depth_below_head as i32)
}

/// Learning rate at `step` (1-based): linear warm-up to `lr`, then linear decay to 0.
fn lr_at(cfg: &AdamWConfig, step: u64) -> f64 {
    if step <= cfg.warmup_steps && cfg.warmup_steps > 0 {
        return cfg.lr * step as f64 / cfg.warmup_steps as f64;
    }
    let rest = cfg.total_steps.saturating_sub(cfg.warmup_steps).max(1);
    let done = step.saturating_sub(cfg.warmup_steps);
    cfg.lr * (1.0 - done as f64 / rest as f64).max(0.0)
}

/// Biases and LayerNorm weights are not decayed (the Hugging Face convention).
fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

pub(crate) struct AdamW {
    pub(crate) cfg: AdamWConfig,
    pub(crate) step: u64,
    m: BTreeMap<String, Vec<f32>>,
    v: BTreeMap<String, Vec<f32>>,
}

impl AdamW {
    pub(crate) fn new(cfg: AdamWConfig) -> Self {
        AdamW {
            cfg,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// Applies one update to every trainable parameter from the sum of `grads`
    /// (one store per batch shard).
    pub(crate) fn step(&mut self, params: &Params, grads: &[GradStore]) -> Result<()> {
        let mut collected: Vec<(&String, &candle_core::Var, Vec<f32>)> = Vec::new();
        let mut sq = 0f64;
        for (name, var) in params.trainable() {
            let mut g = vec![0.0f32; var.elem_count()];
            for store in grads {
                if let Some(t) = store.get(var.as_tensor()) {
                    let t = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    g.iter_mut().zip(&t).for_each(|(a, b)| *a += b);
                }
            }
            sq += g.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>();
            collected.push((name, var, g));
        }
        let grad_norm = sq.sqrt();
        let clip = if self.cfg.max_grad_norm > 0.0 && grad_norm > self.cfg.max_grad_norm {
            (self.cfg.max_grad_norm / (grad_norm + 1e-6)) as f32
        } else {
            1.0
        };
        self.step += 1;
        let lr = lr_at(&self.cfg, self.step);
        let (b1, b2, eps) = (
            self.cfg.beta1 as f32,
            self.cfg.beta2 as f32,
            self.cfg.eps as f32,
        );
        let bc1 = 1.0 - self.cfg.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.cfg.beta2.powi(self.step as i32);
        let bc2_sqrt = bc2.sqrt() as f32;
        for (name, var, g) in collected {
            let lr = lr * layer_scale(&self.cfg, name);
            let step_size = (lr / bc1) as f32;
            let t = var.as_tensor();
            let dtype = t.dtype();
            let mut p = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let m = self
                .m
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; p.len()]);
            let v = self
                .v
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; p.len()]);
            let decay = if decays(name) {
                (1.0 - lr * self.cfg.weight_decay) as f32
            } else {
                1.0
            };
            let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
                for i in 0..p.len() {
                    let gi = g[i] * clip;
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    p[i] = p[i] * decay - step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
                }
            };
            // Element-wise, so splitting across two threads changes no result.
            if p.len() >= 1 << 16 {
                let h = p.len() / 2;
                let (p0, p1) = p.split_at_mut(h);
                let (m0, m1) = m.split_at_mut(h);
                let (v0, v1) = v.split_at_mut(h);
                let (g0, g1) = g.split_at(h);
                std::thread::scope(|s| {
                    s.spawn(|| update(p0, m0, v0, g0));
                    update(p1, m1, v1, g1);
                });
            } else {
                update(&mut p, m, v, &g);
            }
            let new = Tensor::from_vec(p, t.shape(), t.device())?.to_dtype(dtype)?;
            var.set(&new)?;
        }
        Ok(())
    }

    /// Moments as tensors `m.<param>` / `v.<param>` for a safetensors checkpoint.
    pub(crate) fn state_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (k, m) in &self.m {
            out.insert(format!("m.{k}"), Tensor::from_slice(m, m.len(), device)?);
        }
        for (k, v) in &self.v {
            out.insert(format!("v.{k}"), Tensor::from_slice(v, v.len(), device)?);
        }
        Ok(out)
    }

    pub(crate) fn load_state_tensors(
        &mut self,
        tensors: HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        self.m.clear();
        self.v.clear();
        for (k, t) in tensors {
            let data = t
                .to_vec1::<f32>()
                .with_context(|| format!("optimizer tensor {k}"))?;
            if let Some(name) = k.strip_prefix("m.") {
                self.m.insert(name.to_string(), data);
            } else if let Some(name) = k.strip_prefix("v.") {
                self.v.insert(name.to_string(), data);
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let c = AdamWConfig {
            lr: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            layer_decay: 1.0,
            num_layers: 0,
        };
        assert!((lr_at(&c, 5) - 0.5).abs() < 1e-12);
        assert!((lr_at(&c, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 60) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(&c, 110), 0.0);
        assert_eq!(lr_at(&c, 200), 0.0);
    }

    #[test]
    fn layer_wise_decay_gives_each_layer_its_rate_and_the_step_applies_it() -> Result<()> {
        use crate::train::encoder::Params;
        use candle_core::Var;
        let cfg = AdamWConfig {
            lr: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-12,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
            warmup_steps: 0,
            total_steps: 1_000_000,
            layer_decay: 0.8,
            num_layers: 2,
        };
        let names = [
            ("bert.embeddings.word_embeddings.weight", 0.8f64.powi(3)),
            ("bert.embeddings.LayerNorm.bias", 0.8f64.powi(3)),
            (
                "bert.encoder.layer.0.attention.self.query.weight",
                0.8f64.powi(2),
            ),
            ("bert.encoder.layer.1.output.dense.bias", 0.8),
            ("bert.pooler.dense.weight", 1.0),
            ("classifier.weight", 1.0),
        ];
        for (n, want) in names {
            assert!((layer_scale(&cfg, n) - want).abs() < 1e-12, "{n}");
        }
        // DistilBERT's layers are under transformer.layer; a 12-layer RoBERTa at 0.9.
        let mut c12 = cfg.clone();
        c12.num_layers = 12;
        c12.layer_decay = 0.9;
        assert!(
            (layer_scale(&c12, "roberta.encoder.layer.11.intermediate.dense.weight") - 0.9).abs()
                < 1e-12
        );
        assert!(
            (layer_scale(&c12, "roberta.encoder.layer.0.intermediate.dense.weight")
                - 0.9f64.powi(12))
            .abs()
                < 1e-12
        );
        assert!(
            (layer_scale(&c12, "roberta.embeddings.position_embeddings.weight") - 0.9f64.powi(13))
                .abs()
                < 1e-12
        );
        assert!(
            (layer_scale(&cfg, "distilbert.transformer.layer.1.ffn.lin1.weight") - 0.8).abs()
                < 1e-12
        );
        // Off: every parameter at the scheduled rate.
        let mut off = cfg.clone();
        off.layer_decay = 1.0;
        assert_eq!(
            layer_scale(&off, "bert.embeddings.word_embeddings.weight"),
            1.0
        );

        // One Adam step from 0 with gradient 1 moves each parameter by (almost exactly) its rate.
        let d = Device::Cpu;
        let vars: BTreeMap<String, Var> = names
            .iter()
            .map(|(n, _)| {
                Ok((
                    n.to_string(),
                    Var::from_tensor(&Tensor::zeros(1, DType::F32, &d)?)?,
                ))
            })
            .collect::<Result<_>>()?;
        let mut loss = Tensor::zeros(1, DType::F32, &d)?;
        for v in vars.values() {
            loss = (loss + v.as_tensor())?;
        }
        let grads = loss.sum_all()?.backward()?;
        let params = Params::from_vars(vars);
        let mut opt = AdamW::new(cfg);
        opt.step(&params, &[grads])?;
        for (n, want) in names {
            let moved = -params.get(n)?.to_vec1::<f32>()?[0] as f64;
            assert!(
                (moved - want).abs() < 1e-4,
                "{n}: moved {moved}, want {want}"
            );
        }
        Ok(())
    }
}
