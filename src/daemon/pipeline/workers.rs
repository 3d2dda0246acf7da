//! Inference workers: dedicated threads that take batches, run each on the model generation
//! that tokenized it (length-sorted sub-batches padded to their own longest row), and turn
//! scores into label events. Off the async runtime, so polling and producing continue during
//! inference. Outcomes leave in batch order however many workers there are. A shadow
//! candidate, when one is under evaluation, sees a sample of the batches.

use crate::backend::generation::Generation;
use crate::daemon::config::OutputSettings;
use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::event;
use crate::daemon::pipeline::{Batch, Entry, Item, Outcome, Rejection};
use crate::daemon::swap::shadow::Shadow;
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Mutex};

/// Labels one batch; every message of the batch yields exactly one outcome, in batch order.
fn label_batch(
    worker: usize,
    batch: Batch,
    out: &OutputSettings,
    shadow: Option<&Shadow>,
) -> Vec<Outcome> {
    let mut slots: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let (mut items, mut at) = (Vec::new(), Vec::new());
    for entry in batch.entries {
        match entry {
            Entry::Comment(item) => {
                at.push(slots.len());
                items.push(item);
                slots.push(None);
            }
            Entry::Rejected(r) => slots.push(Some(Outcome::Rejected(r))),
        }
    }
    if !items.is_empty() {
        let labelled = label_items(worker, &batch.model, items, out, shadow);
        for (i, o) in at.into_iter().zip(labelled) {
            slots[i] = Some(o);
        }
    }
    slots.into_iter().flatten().collect()
}

/// Scores the comments of a batch on `model` and builds their events (or rejections).
fn label_items(
    worker: usize,
    model: &Generation,
    items: Vec<Item>,
    out: &OutputSettings,
    shadow: Option<&Shadow>,
) -> Vec<Outcome> {
    let rows: Vec<&[u32]> = items.iter().map(|i| i.ids.as_slice()).collect();
    let started = Instant::now();
    let scored = model.score(worker, &rows);
    metrics::histogram!("emostream_inference_seconds").record(started.elapsed().as_secs_f64());
    let reject = |origin, detail: String| {
        Outcome::Rejected(Rejection {
            reason: Reason::InferenceError,
            detail,
            origin,
        })
    };
    let scores = match scored {
        Ok(scores) => scores,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), size = items.len(), "inference failed; batch goes to the dead-letter topic");
            return items
                .into_iter()
                .map(|item| reject(item.origin, format!("{e:#}")))
                .collect();
        }
    };
    if let Some(sh) = shadow {
        sh.observe(worker, model, &items, &scores);
    }
    items
        .into_iter()
        .zip(scores)
        .map(|(item, s)| {
            if s.iter().any(|x| !x.is_finite()) {
                return reject(item.origin, "model produced a non-finite score".into());
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
                Ok(event) => Outcome::Labelled {
                    event,
                    origin: item.origin,
                },
                Err(e) => reject(item.origin, format!("serialising event: {e}")),
            }
        })
        .collect()
}

/// Batches taken from the queue are numbered in queue order; whichever worker finishes,
/// outcomes leave in that order, so several workers never reorder a key's messages.
struct InOrder {
    taken: u64,
    next: u64,
    held: BTreeMap<u64, Vec<Outcome>>,
}

/// Starts `n` worker threads sharing one batch queue; worker `w` runs session `w` of each
/// batch's model generation. The threads end when the batch queue closes.
pub(crate) fn spawn(
    n: usize,
    batches: mpsc::Receiver<Batch>,
    outcomes: mpsc::Sender<Outcome>,
    out: OutputSettings,
    shadow: Option<Arc<Shadow>>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let batches = Arc::new(Mutex::new(batches));
    let order = Arc::new(std::sync::Mutex::new(InOrder {
        taken: 0,
        next: 0,
        held: BTreeMap::new(),
    }));
    let mut handles = Vec::new();
    for w in 0..n {
        let shadow = shadow.clone();
        let batches = batches.clone();
        let order = order.clone();
        let outcomes = outcomes.clone();
        let out = out.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("inference-{w}"))
                .spawn(move || loop {
                    let (seq, batch) = {
                        let mut queue = batches.blocking_lock();
                        let Some(batch) = queue.blocking_recv() else {
                            return;
                        };
                        // Numbered while the queue is held: sequence = queue order.
                        let mut o = order.lock().unwrap_or_else(|p| p.into_inner());
                        o.taken += 1;
                        (o.taken - 1, batch)
                    };
                    let labelled = label_batch(w, batch, &out, shadow.as_deref());
                    let mut o = order.lock().unwrap_or_else(|p| p.into_inner());
                    o.held.insert(seq, labelled);
                    loop {
                        let next = o.next;
                        let Some(ready) = o.held.remove(&next) else {
                            break;
                        };
                        o.next += 1;
                        for x in ready {
                            if outcomes.blocking_send(x).is_err() {
                                return;
                            }
                        }
                    }
                })?,
        );
    }
    Ok(handles)
}
