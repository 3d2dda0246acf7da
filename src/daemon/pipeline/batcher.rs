//! Micro-batching: tokenizes comments as they arrive and closes a batch at `max_batch_size`
//! messages, `max_batch_tokens` tokens or `max_wait_ms` after its first message, whichever
//! comes first. Runs on the async runtime while inference of the previous batch runs on the
//! worker threads, so tokenizing batch n+1 overlaps inference of batch n.
//! Each batch is tokenized by the active model generation at its start; a swap closes the open
//! batch at once, so the swap waits for no more than the batch being filled.

use crate::backend::generation::ServingModel;
use crate::daemon::config::BatchingSettings;
use crate::daemon::pipeline::{Batch, Item, Pending};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

fn add(batch: &mut Batch, p: Pending) {
    match batch.model.text.encode(&p.text) {
        Ok(e) => {
            batch.tokens += e.ids.len();
            batch.items.push(Item {
                id: p.id,
                text: p.text,
                ids: e.ids,
                truncated: e.truncated,
                origin: p.origin,
            });
        }
        Err(err) => batch.failed.push((p.origin, format!("{err:#}"))),
    }
}

/// Runs until `rx` closes, then flushes what it holds and returns.
pub async fn run(
    mut rx: mpsc::Receiver<Pending>,
    tx: mpsc::Sender<Batch>,
    mut active: watch::Receiver<Arc<ServingModel>>,
    cfg: BatchingSettings,
) {
    let wait = Duration::from_millis(cfg.max_wait_ms);
    let mut watching = true;
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = Batch::new(active.borrow_and_update().clone());
        add(&mut batch, first);
        let deadline = Instant::now() + wait;
        let mut closed = false;
        while batch.len() < cfg.max_batch_size && batch.tokens < cfg.max_batch_tokens {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(p) => add(&mut batch, p),
                    None => { closed = true; break; }
                },
                _ = tokio::time::sleep_until(deadline) => break,
                // A new generation: this batch closes on the old one; the next starts on the new.
                changed = active.changed(), if watching => match changed {
                    Ok(()) => break,
                    // Nobody can swap any more: keep serving the generation we have.
                    Err(_) => watching = false,
                },
            }
        }
        metrics::histogram!("emostream_batch_size").record(batch.items.len() as f64);
        metrics::histogram!("emostream_batch_tokens").record(batch.tokens as f64);
        if tx.send(batch).await.is_err() || closed {
            return;
        }
    }
}
