//! The encoder forward pass (BERT / RoBERTa / DistilBERT) with its Hugging Face classification
//! head, returning logits `[batch, num_labels]`. Dropout is active only when a `DropoutRng` is given.

use super::config::{Arch, EncoderConfig, Pooling};
use super::layers::{layer_norm, linear, maybe_dropout, softmax_last, DropoutRng};
use super::names;
use super::params::Params;
use crate::model::tokenize::PaddedBatch;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Additive attention bias for padded keys (the value ONNX Runtime's Attention op uses too).
pub(crate) const MASK_FILTER_VALUE: f64 = -10000.0;

/// Position ids for a padded batch: 0.. for BERT/DistilBERT; for RoBERTa, Hugging Face's
/// `create_position_ids_from_input_ids`: pad + cumulative count of non-pad tokens, pad for pads.
pub(crate) fn position_ids(cfg: &EncoderConfig, b: &PaddedBatch) -> Vec<u32> {
    let mut out = Vec::with_capacity(b.input_ids.len());
    for row in 0..b.batch {
        let ids = &b.input_ids[row * b.seq..(row + 1) * b.seq];
        let mut count = 0u32;
        for (i, &id) in ids.iter().enumerate() {
            match cfg.arch {
                Arch::Roberta => {
                    if id != cfg.pad_token_id {
                        count += 1;
                        out.push(cfg.pad_token_id + count);
                    } else {
                        out.push(cfg.pad_token_id);
                    }
                }
                _ => out.push(i as u32),
            }
        }
    }
    out
}

pub struct Encoder {
    pub cfg: EncoderConfig,
}

impl Encoder {
    pub fn new(cfg: EncoderConfig) -> Self {
        Encoder { cfg }
    }

    fn lin(&self, p: &Params, x: &Tensor, name: &str) -> Result<Tensor> {
        Ok(linear(
            x,
            &p.get(&format!("{name}.weight"))?,
            &p.get(&format!("{name}.bias"))?,
        )?)
    }

    fn norm(&self, p: &Params, x: &Tensor, name: &str) -> Result<Tensor> {
        Ok(layer_norm(
            x,
            &p.get(&format!("{name}.weight"))?,
            &p.get(&format!("{name}.bias"))?,
            self.cfg.layer_norm_eps,
        )?)
    }

    /// Logits `[batch, num_labels]` for a padded batch.
    pub fn forward(
        &self,
        p: &Params,
        batch: &PaddedBatch,
        device: &Device,
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let x = self.hidden_states(p, batch, device, dropout.as_deref_mut())?;
        self.head(p, batch, device, &x, dropout)
    }

    /// Last-layer hidden states `[batch * seq, hidden]` (row-major by batch, then position).
    pub fn hidden_states(
        &self,
        p: &Params,
        batch: &PaddedBatch,
        device: &Device,
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, s, h) = (batch.batch, batch.seq, cfg.hidden_size);
        let (nh, hd) = (cfg.num_heads, cfg.head_dim());
        let dtype = p
            .get(&format!("{}.weight", names::embeddings(cfg.arch).norm))?
            .dtype();

        // Embeddings: word + position (+ token type 0), then LayerNorm and dropout.
        let e = names::embeddings(cfg.arch);
        let ids = Tensor::from_slice(&batch.input_ids, b * s, device)?;
        let pos = Tensor::from_vec(position_ids(cfg, batch), b * s, device)?;
        let mut x = p
            .get(&format!("{}.weight", e.word))?
            .index_select(&ids, 0)?;
        x = x.add(
            &p.get(&format!("{}.weight", e.position))?
                .index_select(&pos, 0)?,
        )?;
        if let Some(tt) = &e.token_type {
            // Single-sequence input: every token has type 0.
            x = x.broadcast_add(&p.get(&format!("{tt}.weight"))?.narrow(0, 0, 1)?)?;
        }
        x = self.norm(p, &x, &e.norm)?;
        x = maybe_dropout(&x, cfg.hidden_dropout, &mut dropout)?;

        let mask: Vec<f32> = batch
            .attention_mask
            .iter()
            .map(|&m| {
                if m == 1 {
                    0.0
                } else {
                    MASK_FILTER_VALUE as f32
                }
            })
            .collect();
        let mask_bias = Tensor::from_vec(mask, (b, 1, 1, s), device)?.to_dtype(dtype)?;
        let scale = 1.0 / (hd as f64).sqrt();

        for i in 0..cfg.num_layers {
            let l = names::layer(cfg.arch, i);
            let heads = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, s, nh, hd))?.transpose(1, 2)?.contiguous()
            };
            let q = heads(self.lin(p, &x, &l.query)?)?;
            let k = heads(self.lin(p, &x, &l.key)?)?;
            let v = heads(self.lin(p, &x, &l.value)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask_bias)?;
            let probs = softmax_last(&scores)?;
            let probs = maybe_dropout(&probs, cfg.attention_dropout, &mut dropout)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * s, h))?;
            let attn = self.lin(p, &ctx, &l.attn_out)?;
            let attn = maybe_dropout(&attn, cfg.hidden_dropout, &mut dropout)?;
            x = self.norm(p, &attn.add(&x)?, &l.attn_norm)?;

            let f = self.lin(p, &x, &l.ffn_in)?.gelu_erf()?;
            let f = self.lin(p, &f, &l.ffn_out)?;
            let f = maybe_dropout(&f, cfg.hidden_dropout, &mut dropout)?;
            x = self.norm(p, &f.add(&x)?, &l.ffn_norm)?;
        }
        Ok(x)
    }

    /// The classification head over the hidden states.
    fn head(
        &self,
        p: &Params,
        batch: &PaddedBatch,
        device: &Device,
        x: &Tensor,
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, s) = (batch.batch, batch.seq);
        let head = names::head(cfg.arch);
        if cfg.pooling == Pooling::Mean {
            let mask: Vec<f32> = batch.attention_mask.iter().map(|&m| m as f32).collect();
            let m = Tensor::from_vec(mask, (b, s, 1), device)?.to_dtype(x.dtype())?;
            let x = x.reshape((b, s, cfg.hidden_size))?;
            let mean = x.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
            let pooled = maybe_dropout(&mean, cfg.classifier_dropout, &mut dropout)?;
            return self.lin(p, &pooled, &head.out);
        }
        // First token of each row ([CLS] / <s>).
        let first: Vec<u32> = (0..b as u32).map(|r| r * s as u32).collect();
        let cls = x.index_select(&Tensor::from_vec(first, b, device)?, 0)?;
        let pooled = match cfg.arch {
            // BertForSequenceClassification: pooler(tanh) -> dropout -> classifier
            Arch::Bert => self.lin(p, &cls, &head.dense)?.tanh()?,
            // RobertaClassificationHead: dropout -> dense -> tanh ; DistilBERT: pre_classifier -> relu
            Arch::Roberta => {
                let c = maybe_dropout(&cls, cfg.classifier_dropout, &mut dropout)?;
                self.lin(p, &c, &head.dense)?.tanh()?
            }
            Arch::Distilbert => self.lin(p, &cls, &head.dense)?.relu()?,
        };
        let pooled = maybe_dropout(&pooled, cfg.classifier_dropout, &mut dropout)?;
        self.lin(p, &pooled, &head.out)
    }
}
