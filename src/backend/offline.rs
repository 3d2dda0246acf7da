//! A loaded model directory scoring whole lists of texts on one session: tokenizer + ONNX
//! Runtime session + card. For offline work (`train evaluate`/`calibrate`, `check-model`, the
//! benches); the daemon serves through `generation` instead.

use crate::backend::batching::{in_length_order, Cut};
use crate::backend::ort::{OrtSession, RuntimeOptions};
use crate::model::dir::ModelDir;
use crate::model::eval::scores::sigmoid;
use crate::model::tokenize::{Encoded, PaddedBatch, TextEncoder};
use anyhow::{Context, Result};
use std::path::Path;

pub struct OfflineModel {
    pub dir: ModelDir,
    pub text: TextEncoder,
    pub model: OrtSession,
}

impl OfflineModel {
    pub fn load(dir: &Path, runtime: &RuntimeOptions, verify_sha256: bool) -> Result<OfflineModel> {
        let dir = ModelDir::load(dir, verify_sha256)?;
        let text = TextEncoder::from_file(&dir.tokenizer_path(), dir.card.max_sequence_length)?;
        let model = OrtSession::load(&dir.onnx_path(), runtime)?;
        if model.num_labels() != dir.card.labels.len() {
            anyhow::bail!(
                "{}: model.onnx outputs {} labels but the card lists {}",
                dir.dir.display(),
                model.num_labels(),
                dir.card.labels.len()
            );
        }
        Ok(OfflineModel { dir, text, model })
    }

    pub fn encode(&self, text: &str) -> Result<Encoded> {
        self.text.encode(text)
    }

    /// Logits for one batch of token id rows (padded to the longest row).
    fn logit_rows(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let batch = PaddedBatch::new(rows, self.text.pad_id());
        let logits = self.model.logits(&batch)?;
        Ok(logits
            .chunks(self.model.num_labels())
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Sigmoid scores for one batch of token id rows (padded to the longest row).
    pub fn score_rows(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        Ok(sigmoid_rows(self.logit_rows(rows)?))
    }

    /// Logits for many texts, in length-sorted batches of `batch_size`; output in input order.
    /// (Calibration is fitted to these: sigmoid scores lose the digits near 0 and 1.)
    pub fn logits_texts(&mut self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let enc: Vec<Encoded> = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<_>>()
            .context("tokenizing")?;
        let rows: Vec<&[u32]> = enc.iter().map(|e| e.ids.as_slice()).collect();
        in_length_order(&rows, Cut::Every(batch_size), |part| self.logit_rows(part))
    }

    /// Scores for many texts, in length-sorted batches of `batch_size`; output in input order.
    pub fn score_texts(&mut self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        Ok(sigmoid_rows(self.logits_texts(texts, batch_size)?))
    }
}

fn sigmoid_rows(logits: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    logits
        .into_iter()
        .map(|r| r.into_iter().map(sigmoid).collect())
        .collect()
}
