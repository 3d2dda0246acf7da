//! The encoder's parameters as named candle `Var`s: loaded from a Hugging Face checkpoint,
//! missing head weights initialised from a seed, saved back as safetensors in the same layout.

use super::config::EncoderConfig;
use super::names;
use crate::train::rng::SplitMix64;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

pub struct Params {
    vars: BTreeMap<String, Var>,
    frozen: BTreeSet<String>,
}

impl Params {
    /// Loads every parameter of `cfg`'s layout from tensors keyed by Hugging Face names.
    /// Head parameters missing from the checkpoint are drawn from N(0, 0.02) (biases 0) with `seed`;
    /// any other missing parameter is an error.
    fn from_tensors(
        cfg: &EncoderConfig,
        found: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let found: HashMap<String, Tensor> = found
            .into_iter()
            .map(|(k, v)| (names::normalize(cfg.arch, &k), v))
            .collect();
        let head = names::head(cfg.arch);
        let mut rng = SplitMix64::derive(seed, 0x4845_4144, 0);
        let mut vars = BTreeMap::new();
        for (name, shape) in names::all(cfg) {
            let t = match found.get(&name) {
                Some(t) => {
                    if t.dims() != shape.as_slice() {
                        bail!(
                            "checkpoint parameter {name} has shape {:?}, expected {:?}",
                            t.dims(),
                            shape
                        );
                    }
                    t.to_dtype(dtype)?.to_device(device)?
                }
                None if name.starts_with(&head.dense) || name.starts_with(&head.out) => {
                    let n: usize = shape.iter().product();
                    let data: Vec<f32> = if name.ends_with(".bias") {
                        vec![0.0; n]
                    } else {
                        (0..n).map(|_| (rng.normal() * 0.02) as f32).collect()
                    };
                    Tensor::from_vec(data, shape.as_slice(), device)?.to_dtype(dtype)?
                }
                None => bail!("checkpoint lacks parameter {name}"),
            };
            vars.insert(name, Var::from_tensor(&t)?);
        }
        Ok(Params {
            vars,
            frozen: BTreeSet::new(),
        })
    }

    /// Parameters as given (unit tests of what consumes them).
    #[cfg(test)]
    pub(crate) fn from_vars(vars: BTreeMap<String, Var>) -> Params {
        Params {
            vars,
            frozen: BTreeSet::new(),
        }
    }

    /// Loads `model.safetensors` from a Hugging Face checkpoint directory.
    pub fn load_safetensors(
        cfg: &EncoderConfig,
        path: &Path,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let found = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("loading weights {}", path.display()))?;
        Self::from_tensors(cfg, found, dtype, device, seed)
            .with_context(|| format!("in {}", path.display()))
    }

    pub(crate) fn save_safetensors(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&map, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Excludes a parameter from training: `get` returns it detached, so no gradient is built.
    pub(crate) fn freeze(&mut self, name: &str) {
        self.frozen.insert(name.to_string());
    }

    /// The parameter `name` (`prefix.weight` etc.) as a tensor in the autograd graph.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let v = self
            .vars
            .get(name)
            .with_context(|| format!("no parameter {name}"))?;
        Ok(if self.frozen.contains(name) {
            v.as_tensor().detach()
        } else {
            v.as_tensor().clone()
        })
    }

    pub fn var(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    /// Trainable parameters in name order.
    pub(crate) fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter().filter(|(k, _)| !self.frozen.contains(*k))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}
