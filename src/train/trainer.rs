//! The fine-tuning loop: epochs of length-bucketed batches, BCE loss, AdamW, dev macro-F1 each
//! epoch with the best epoch kept, and checkpoints that resume bit-for-bit.
//!
//! Run directory layout:
//!   train.json            hyper-parameters and data hashes (fixed for the run)
//!   config.json, tokenizer.json   the encoder's Hugging Face config (with labels) and tokenizer
//!   checkpoint/           latest state: state.json, params.safetensors, optimizer.safetensors
//!   best/                 params of the best dev epoch (model.safetensors + config + tokenizer)

use super::batches::epoch_plan;
use super::loss::{asymmetric_with_logits, bce_with_logits, LossConfig};
use super::optim::{AdamW, AdamWConfig};
use super::predict;
use crate::model::eval::dataset::Split;
use crate::model::eval::scores::evaluate;
use crate::model::eval::thresholds;
use crate::model::labels::LabelSet;
use crate::model::tokenize::{PaddedBatch, TextEncoder};
use crate::train::encoder::{names, Encoder, EncoderConfig, Params, Pooling};
use crate::train::rng::SplitMix64;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Hyper-parameters of a run; written once to `train.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub base_model: String,
    pub train_path: PathBuf,
    pub dev_path: PathBuf,
    pub train_sha256: String,
    pub dev_sha256: String,
    pub epochs: u64,
    pub batch_size: usize,
    pub max_len: usize,
    pub seed: u64,
    pub freeze_embeddings: bool,
    /// Per-label positive weights for the BCE loss, if any.
    pub pos_weight: Option<Vec<f32>>,
    /// The loss (runs before it: BCE).
    #[serde(default)]
    pub loss: LossConfig,
    /// Evaluate on dev every this many steps as well as at each epoch's end.
    pub eval_every_steps: Option<u64>,
    pub checkpoint_every_steps: u64,
    /// Each batch is split into this many shards computed on parallel threads. Part of the run's
    /// definition: dropout streams and summation order depend on it.
    #[serde(default = "one")]
    pub shards: usize,
    pub optimizer: AdamWConfig,
    /// Use only the first N training examples (smoke runs).
    #[serde(default)]
    pub limit_train_examples: Option<usize>,
    /// How the head reads the sequence (set on the run's encoder config at creation).
    #[serde(default)]
    pub pooling: Pooling,
    /// Start the classifier bias at each label's log prior odds on train, so the first
    /// hundreds of steps are not spent learning label frequencies.
    #[serde(default)]
    pub prior_bias: bool,
    /// Set when the training set mixes a team's imported rows with GoEmotions replay
    /// (`train_path` is then the mixed file in the run directory).
    #[serde(default)]
    pub mix: Option<super::mix::MixRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DevPoint {
    pub(crate) step: u64,
    pub(crate) epoch: f64,
    pub(crate) macro_f1_at_0_5: f64,
    pub(crate) best_global_threshold: f32,
    pub(crate) macro_f1_best_global: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TrainState {
    pub step: u64,
    pub epoch: u64,
    pub(crate) batch_in_epoch: usize,
    /// (step, mean training loss since the previous point)
    pub loss_curve: Vec<(u64, f64)>,
    pub dev_curve: Vec<DevPoint>,
    pub(crate) best: Option<DevPoint>,
    pub(crate) train_seconds: f64,
    pub(crate) finished: bool,
    /// Loss sum and count since the last loss-curve point.
    #[serde(default)]
    pub(crate) pending_loss: (f64, u64),
}

pub struct Trainer {
    pub dir: PathBuf,
    pub(crate) cfg: TrainConfig,
    pub encoder: Encoder,
    pub params: Params,
    pub(crate) optim: AdamW,
    pub state: TrainState,
    pub(crate) labels: LabelSet,
    device: Device,
    pad_id: u32,
    train_rows: Vec<Vec<u32>>,
    train_targets: Vec<Vec<f32>>,
    dev_rows: Vec<Vec<u32>>,
    dev_targets: Vec<Vec<bool>>,
}

fn one() -> usize {
    1
}

const LOSS_POINT_EVERY: u64 = 20;

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

impl Trainer {
    /// Starts a new run in `dir` from a Hugging Face checkpoint directory `base`.
    pub fn create(
        dir: &Path,
        base: &Path,
        cfg: TrainConfig,
        labels: LabelSet,
        device: Device,
    ) -> Result<Trainer> {
        if dir.join("checkpoint/state.json").exists() {
            bail!("{} already holds a run; use `train resume`", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut enc_cfg = EncoderConfig::from_dir(base, labels.len())?;
        enc_cfg.pooling = cfg.pooling;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&enc_cfg.to_hf(labels.names()))?,
        )?;
        std::fs::copy(base.join("tokenizer.json"), dir.join("tokenizer.json"))
            .with_context(|| format!("copying {}/tokenizer.json", base.display()))?;
        write_json(&dir.join("train.json"), &cfg)?;
        let params = Params::load_safetensors(
            &enc_cfg,
            &base.join("model.safetensors"),
            DType::F32,
            &device,
            cfg.seed,
        )?;
        if cfg.prior_bias {
            let train = Split::read(&cfg.train_path, labels.len())?;
            let n = train.examples.len().max(1) as f64;
            let mut pos = vec![0usize; labels.len()];
            for e in &train.examples {
                e.labels.iter().for_each(|&i| pos[i] += 1);
            }
            let bias: Vec<f32> = pos
                .iter()
                .map(|&c| {
                    let p = (c as f64 + 1.0) / (n + 2.0);
                    (p / (1.0 - p)).ln() as f32
                })
                .collect();
            let name = format!("{}.bias", names::head(enc_cfg.arch).out);
            let var = params
                .var(&name)
                .with_context(|| format!("no parameter {name}"))?;
            var.set(&Tensor::from_vec(bias, labels.len(), &device)?.to_dtype(var.dtype())?)?;
        }
        Self::assemble(
            dir,
            cfg,
            enc_cfg,
            params,
            TrainState::default(),
            labels,
            device,
            None,
        )
    }

    /// Reopens the run in `dir` at its latest checkpoint.
    pub fn resume(dir: &Path, device: Device) -> Result<Trainer> {
        let cfg: TrainConfig = read_json(&dir.join("train.json"))?;
        let hf: serde_json::Value = read_json(&dir.join("config.json"))?;
        let labels = LabelSet::from_hf(&hf)?;
        let enc_cfg = EncoderConfig::from_hf(&hf, labels.len())?;
        let ck = dir.join("checkpoint");
        let state: TrainState =
            read_json(&ck.join("state.json")).context("no checkpoint to resume from")?;
        let params = Params::load_safetensors(
            &enc_cfg,
            &ck.join("params.safetensors"),
            DType::F32,
            &device,
            cfg.seed,
        )?;
        let opt = candle_core::safetensors::load(ck.join("optimizer.safetensors"), &Device::Cpu)
            .with_context(|| format!("loading {}/optimizer.safetensors", ck.display()))?;
        Self::assemble(dir, cfg, enc_cfg, params, state, labels, device, Some(opt))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        cfg: TrainConfig,
        enc_cfg: EncoderConfig,
        mut params: Params,
        state: TrainState,
        labels: LabelSet,
        device: Device,
        optimizer_state: Option<std::collections::HashMap<String, Tensor>>,
    ) -> Result<Trainer> {
        if cfg.freeze_embeddings {
            let e = crate::train::encoder::names::embeddings(enc_cfg.arch);
            params.freeze(&format!("{}.weight", e.word));
        }
        let text = TextEncoder::from_file(&dir.join("tokenizer.json"), cfg.max_len)?;
        let train = Split::read(&cfg.train_path, labels.len())?;
        let dev = Split::read(&cfg.dev_path, labels.len())?;
        if train.sha256 != cfg.train_sha256 || dev.sha256 != cfg.dev_sha256 {
            bail!("training data changed since the run started (sha256 differs from train.json)");
        }
        let mut examples = train.examples;
        if let Some(n) = cfg.limit_train_examples {
            examples.truncate(n);
        }
        let train_rows: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| text.encode(&e.text).map(|x| x.ids))
            .collect::<Result<_>>()?;
        let train_targets = examples
            .iter()
            .map(|e| {
                let mut r = vec![0f32; labels.len()];
                e.labels.iter().for_each(|&i| r[i] = 1.0);
                r
            })
            .collect();
        let dev_rows = dev
            .examples
            .iter()
            .map(|e| text.encode(&e.text).map(|x| x.ids))
            .collect::<Result<_>>()?;
        let dev_targets = dev.targets(labels.len());
        let mut optim = AdamW::new(cfg.optimizer.clone());
        if let Some(t) = optimizer_state {
            optim.load_state_tensors(t, state.step)?;
        }
        Ok(Trainer {
            dir: dir.to_path_buf(),
            encoder: Encoder::new(enc_cfg),
            params,
            optim,
            state,
            labels,
            device,
            pad_id: text.pad_id(),
            train_rows,
            train_targets,
            dev_rows,
            dev_targets,
            cfg,
        })
    }

    fn batches_per_epoch(&self) -> usize {
        self.train_rows.len().div_ceil(self.cfg.batch_size)
    }

    /// Schedule length for `epochs` over `n` examples.
    pub fn total_steps(n: usize, batch_size: usize, epochs: u64) -> u64 {
        n.div_ceil(batch_size) as u64 * epochs
    }

    /// Forward and backward of one shard of a batch. The shard's loss is scaled by its share of
    /// the batch, so shard gradients add up to the gradient of the whole batch's mean loss.
    fn shard_grads(
        &self,
        idx: &[usize],
        batch_len: usize,
        shard: u64,
    ) -> Result<(f64, candle_core::backprop::GradStore)> {
        let rows: Vec<&[u32]> = idx.iter().map(|&i| self.train_rows[i].as_slice()).collect();
        let batch = PaddedBatch::new(&rows, self.pad_id);
        let l = self.labels.len();
        let tgt: Vec<f32> = idx
            .iter()
            .flat_map(|&i| self.train_targets[i].iter().copied())
            .collect();
        let targets = Tensor::from_vec(tgt, (idx.len(), l), &self.device)?;
        // Dropout masks come from (seed, step, shard): a resumed run draws the same ones.
        let stream = SplitMix64::derive(self.cfg.seed, self.state.step, 3 + shard);
        let mut drop = crate::train::encoder::layers::DropoutRng::new(stream);
        let logits = self
            .encoder
            .forward(&self.params, &batch, &self.device, Some(&mut drop))?;
        let pw = match &self.cfg.pos_weight {
            Some(w) => Some(Tensor::from_slice(w, w.len(), &self.device)?),
            None => None,
        };
        let share = idx.len() as f64 / batch_len as f64;
        let loss = match self.cfg.loss {
            LossConfig::Bce => bce_with_logits(&logits, &targets, pw.as_ref())?,
            LossConfig::Asymmetric {
                gamma_pos,
                gamma_neg,
                clip,
            } => asymmetric_with_logits(&logits, &targets, gamma_pos, gamma_neg, clip)?,
        };
        let loss = (loss * share)?;
        let grads = loss.backward()?;
        Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, grads))
    }

    /// One optimisation step on the given example indices; returns the batch loss.
    /// The batch is cut into `cfg.shards` contiguous shards run on parallel threads (candle's
    /// element-wise kernels are single-threaded, so this is how a step uses every core).
    pub(crate) fn step(&mut self, idx: &[usize]) -> Result<f64> {
        let shards = self.cfg.shards.clamp(1, idx.len().max(1));
        let per = idx.len().div_ceil(shards);
        let parts: Vec<&[usize]> = idx.chunks(per).collect();
        let results: Vec<Result<(f64, candle_core::backprop::GradStore)>> = if parts.len() == 1 {
            vec![self.shard_grads(parts[0], idx.len(), 0)]
        } else {
            let this = &*self;
            std::thread::scope(|s| {
                let handles: Vec<_> = parts
                    .iter()
                    .enumerate()
                    .map(|(k, p)| s.spawn(move || this.shard_grads(p, idx.len(), k as u64)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("training shard thread panicked"))
                    .collect()
            })
        };
        let mut v = 0.0;
        let mut grads = Vec::with_capacity(results.len());
        for r in results {
            let (l, g) = r?;
            v += l;
            grads.push(g);
        }
        if !v.is_finite() {
            bail!("training loss is {v} at step {}", self.state.step + 1);
        }
        self.optim.step(&self.params, &grads)?;
        self.state.step += 1;
        self.state.pending_loss.0 += v;
        self.state.pending_loss.1 += 1;
        if self.state.step % LOSS_POINT_EVERY == 0 {
            self.state.loss_curve.push((
                self.state.step,
                self.state.pending_loss.0 / self.state.pending_loss.1 as f64,
            ));
            self.state.pending_loss = (0.0, 0);
        }
        Ok(v)
    }

    /// Dev scores with the current parameters.
    fn dev_scores(&self) -> Result<Vec<Vec<f32>>> {
        predict::scores(
            &self.encoder,
            &self.params,
            &self.dev_rows,
            self.pad_id,
            64,
            &self.device,
        )
    }

    fn evaluate_dev(&mut self) -> Result<DevPoint> {
        let scores = self.dev_scores()?;
        let l = self.labels.len();
        let at_half = evaluate(
            &scores,
            &self.dev_targets,
            &vec![0.5; l],
            self.labels.names(),
        )
        .macro_f1;
        let (t, f) = thresholds::best_global(&scores, &self.dev_targets, l);
        let bpe = self.batches_per_epoch() as f64;
        let p = DevPoint {
            step: self.state.step,
            epoch: self.state.step as f64 / bpe,
            macro_f1_at_0_5: at_half,
            best_global_threshold: t,
            macro_f1_best_global: f,
        };
        self.state.dev_curve.push(p.clone());
        let better = self
            .state
            .best
            .as_ref()
            .is_none_or(|b| f > b.macro_f1_best_global);
        if better {
            self.state.best = Some(p.clone());
            self.save_best()?;
        }
        tracing::info!(
            step = p.step,
            epoch = format!("{:.2}", p.epoch),
            dev_macro_f1 = format!("{f:.4}"),
            threshold = t,
            at_0_5 = format!("{at_half:.4}"),
            best = better,
            "dev evaluation"
        );
        Ok(p)
    }

    fn save_best(&self) -> Result<()> {
        let best = self.dir.join("best");
        let tmp = self.dir.join("best.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        self.params
            .save_safetensors(&tmp.join("model.safetensors"))?;
        std::fs::copy(self.dir.join("config.json"), tmp.join("config.json"))?;
        std::fs::copy(self.dir.join("tokenizer.json"), tmp.join("tokenizer.json"))?;
        let _ = std::fs::remove_dir_all(&best);
        std::fs::rename(&tmp, &best)?;
        Ok(())
    }

    /// Writes the latest state atomically (a temporary directory renamed over the old one).
    fn save_checkpoint(&self) -> Result<()> {
        let ck = self.dir.join("checkpoint");
        let tmp = self.dir.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        self.params
            .save_safetensors(&tmp.join("params.safetensors"))?;
        candle_core::safetensors::save(
            &self.optim.state_tensors(&Device::Cpu)?,
            tmp.join("optimizer.safetensors"),
        )?;
        write_json(&tmp.join("state.json"), &self.state)?;
        let old = self.dir.join("checkpoint.old");
        let _ = std::fs::remove_dir_all(&old);
        if ck.exists() {
            std::fs::rename(&ck, &old)?;
        }
        std::fs::rename(&tmp, &ck)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Trains until all epochs are done or `stop_at_step` is reached, checkpointing as it goes.
    pub fn run(&mut self, stop_at_step: Option<u64>, progress: bool) -> Result<()> {
        let bpe = self.batches_per_epoch();
        let total = self.cfg.epochs * bpe as u64;
        let lengths: Vec<usize> = self.train_rows.iter().map(Vec::len).collect();
        let bar = if progress {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position(self.state.step);
        let mut window = (Instant::now(), 0usize);
        while self.state.epoch < self.cfg.epochs {
            let plan = epoch_plan(
                &lengths,
                self.cfg.batch_size,
                self.cfg.seed,
                self.state.epoch,
            );
            while self.state.batch_in_epoch < plan.len() {
                if stop_at_step.is_some_and(|s| self.state.step >= s) {
                    self.save_checkpoint()?;
                    bar.abandon();
                    return Ok(());
                }
                let started = Instant::now();
                let idx = plan[self.state.batch_in_epoch].clone();
                let loss = self.step(&idx)?;
                self.state.batch_in_epoch += 1;
                self.state.train_seconds += started.elapsed().as_secs_f64();
                window.1 += idx.len();
                let secs = window.0.elapsed().as_secs_f64();
                bar.set_position(self.state.step);
                bar.set_message(format!(
                    "epoch {} loss {loss:.4} {:.1} ex/s",
                    self.state.epoch + 1,
                    window.1 as f64 / secs.max(1e-9)
                ));
                if self.state.step % 50 == 0 {
                    tracing::info!(
                        step = self.state.step,
                        epoch = self.state.epoch + 1,
                        loss = format!("{loss:.4}"),
                        ex_per_s = format!("{:.1}", window.1 as f64 / secs),
                        "training"
                    );
                    window = (Instant::now(), 0);
                }
                if self
                    .cfg
                    .eval_every_steps
                    .is_some_and(|e| self.state.step % e == 0)
                    && self.state.batch_in_epoch < plan.len()
                {
                    self.evaluate_dev()?;
                }
                if self.state.step % self.cfg.checkpoint_every_steps == 0 {
                    self.save_checkpoint()?;
                }
            }
            self.evaluate_dev()?;
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.save_checkpoint()?;
        }
        self.state.finished = true;
        self.save_checkpoint()?;
        bar.finish();
        Ok(())
    }
}
