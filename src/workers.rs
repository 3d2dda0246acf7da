//! Inference workers: dedicated threads that take batches, run the model backend on
//! length-sorted sub-batches (padded to their own longest row), and turn scores into label
//! events. Off the async runtime, so polling and producing continue during inference.

use crate::batcher::sub_batches;
use crate::config::OutputSettings;
use crate::decode::Reason;
use crate::event::{self, ModelRef};
use crate::model::OrtModel;
use crate::model_dir::ModelDir;
use crate::pipeline::{Batch, Outcome};
use crate::tokenize::PaddedBatch;
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Mutex};

/// A model ready to serve: the ONNX session plus what events need from its card.
pub struct LoadedModel {
    pub session: OrtModel,
    pub model_ref: ModelRef,
    pub labels: Vec<String>,
    pub thresholds: Vec<f32>,
    pub pad_id: u32,
}

impl LoadedModel {
    pub fn new(dir: &ModelDir, session: OrtModel, pad_id: u32) -> LoadedModel {
        let c = &dir.card;
        LoadedModel {
            session,
            model_ref: ModelRef {
                name: c.name.clone(),
                version: c.version.clone(),
                sha256: c.model_sha256.clone(),
            },
            labels: c.labels.names().to_vec(),
            thresholds: c.thresholds.resolved(c.labels.len()),
            pad_id,
        }
    }

    /// Sigmoid scores for rows, run in length-sorted sub-batches; returned in input order.
    pub fn score(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let lens: Vec<usize> = order.iter().map(|&i| rows[i].len()).collect();
        let l = self.labels.len();
        let mut out = vec![Vec::new(); rows.len()];
        for r in sub_batches(&lens) {
            let part: Vec<&[u32]> = order[r.clone()].iter().map(|&i| rows[i]).collect();
            let logits = self.session.logits(&PaddedBatch::new(&part, self.pad_id))?;
            for (k, &i) in order[r].iter().enumerate() {
                out[i] = logits[k * l..(k + 1) * l]
                    .iter()
                    .map(|&x| crate::metrics::sigmoid(x))
                    .collect();
            }
        }
        Ok(out)
    }
}

/// Labels one batch; every message of the batch yields exactly one outcome, in batch order.
pub fn label_batch(model: &mut LoadedModel, batch: Batch, out: &OutputSettings) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(batch.items.len() + batch.failed.len());
    for (origin, detail) in batch.failed {
        outcomes.push(Outcome::Rejected {
            reason: Reason::InferenceError,
            detail: format!("tokenizer: {detail}"),
            origin,
        });
    }
    if batch.items.is_empty() {
        return outcomes;
    }
    let rows: Vec<&[u32]> = batch.items.iter().map(|i| i.ids.as_slice()).collect();
    let started = Instant::now();
    let scored = model.score(&rows);
    metrics::histogram!("emostream_inference_seconds").record(started.elapsed().as_secs_f64());
    match scored {
        Ok(scores) => {
            for (item, s) in batch.items.into_iter().zip(scores) {
                if s.iter().any(|x| !x.is_finite()) {
                    outcomes.push(Outcome::Rejected {
                        reason: Reason::InferenceError,
                        detail: "model produced a non-finite score".into(),
                        origin: item.origin,
                    });
                    continue;
                }
                let ev = event::build(
                    &item.id,
                    &s,
                    &model.labels,
                    &model.thresholds,
                    out.scores,
                    out.top_k,
                    &model.model_ref,
                    &item.origin.source,
                    item.truncated,
                );
                match serde_json::to_vec(&ev) {
                    Ok(bytes) => outcomes.push(Outcome::Labelled {
                        id: item.id,
                        event: bytes,
                        origin: item.origin,
                    }),
                    Err(e) => outcomes.push(Outcome::Rejected {
                        reason: Reason::InferenceError,
                        detail: format!("serialising event: {e}"),
                        origin: item.origin,
                    }),
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), size = batch.items.len(), "inference failed; batch goes to the dead-letter topic");
            for item in batch.items {
                outcomes.push(Outcome::Rejected {
                    reason: Reason::InferenceError,
                    detail: format!("{e:#}"),
                    origin: item.origin,
                });
            }
        }
    }
    outcomes
}

/// Starts `n` worker threads sharing one batch queue. Each loads its own session with `load`.
/// The threads end when the batch queue closes.
pub fn spawn(
    n: usize,
    batches: mpsc::Receiver<Batch>,
    outcomes: mpsc::Sender<Outcome>,
    out: OutputSettings,
    load: Arc<dyn Fn() -> Result<LoadedModel> + Send + Sync>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let batches = Arc::new(Mutex::new(batches));
    let mut handles = Vec::new();
    for w in 0..n {
        let mut model = load()?;
        let batches = batches.clone();
        let outcomes = outcomes.clone();
        let out = out.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("inference-{w}"))
                .spawn(move || loop {
                    let next = batches.blocking_lock().blocking_recv();
                    let Some(batch) = next else { return };
                    for o in label_batch(&mut model, batch, &out) {
                        if outcomes.blocking_send(o).is_err() {
                            return;
                        }
                    }
                })?,
        );
    }
    Ok(handles)
}
