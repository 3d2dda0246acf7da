//! Inference workers: dedicated threads that take batches, run each on the model generation
//! that tokenized it (length-sorted sub-batches padded to their own longest row), and turn
//! scores into label events. Off the async runtime, so polling and producing continue during
//! inference. A shadow candidate, when one is under evaluation, sees a sample of the batches.

use crate::config::OutputSettings;
use crate::decode::Reason;
use crate::event;
use crate::pipeline::{Batch, Outcome};
use crate::shadow::Shadow;
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Mutex};

/// Labels one batch; every message of the batch yields exactly one outcome, in batch order.
pub fn label_batch(
    worker: usize,
    batch: Batch,
    out: &OutputSettings,
    shadow: Option<&Shadow>,
) -> Vec<Outcome> {
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
    let model = batch.model.clone();
    let rows: Vec<&[u32]> = batch.items.iter().map(|i| i.ids.as_slice()).collect();
    let started = Instant::now();
    let scored = model.score(worker, &rows);
    metrics::histogram!("emostream_inference_seconds").record(started.elapsed().as_secs_f64());
    match scored {
        Ok(scores) => {
            if let Some(sh) = shadow {
                sh.observe(worker, &model, &batch.items, &scores);
            }
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

/// Starts `n` worker threads sharing one batch queue; worker `w` runs session `w` of each
/// batch's model generation. The threads end when the batch queue closes.
pub fn spawn(
    n: usize,
    batches: mpsc::Receiver<Batch>,
    outcomes: mpsc::Sender<Outcome>,
    out: OutputSettings,
    shadow: Option<Arc<Shadow>>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let batches = Arc::new(Mutex::new(batches));
    let mut handles = Vec::new();
    for w in 0..n {
        let shadow = shadow.clone();
        let batches = batches.clone();
        let outcomes = outcomes.clone();
        let out = out.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("inference-{w}"))
                .spawn(move || loop {
                    let next = batches.blocking_lock().blocking_recv();
                    let Some(batch) = next else { return };
                    for o in label_batch(w, batch, &out, shadow.as_deref()) {
                        if outcomes.blocking_send(o).is_err() {
                            return;
                        }
                    }
                })?,
        );
    }
    Ok(handles)
}
