//! Micro-batching: tokenizes comments as they arrive and closes a batch at `max_batch_size`
//! messages, `max_batch_tokens` tokens or `max_wait_ms` after its first message, whichever
//! comes first. Runs on the async runtime while inference of the previous batch runs on the
//! worker threads, so tokenizing batch n+1 overlaps inference of batch n.
//! Each batch is tokenized by the active model generation at its start; a swap closes the open
//! batch at once, so the swap waits for no more than the batch being filled.

use crate::backend::generation::Generation;
use crate::daemon::config::BatchingSettings;
use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::{Admitted, Batch, Entry, Item, Rejection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Tokenizes a comment into the batch; a rejected message (or one the tokenizer refuses) keeps
/// its place in the batch as a rejection.
fn add(batch: &mut Batch, admitted: Admitted) {
    let entry = match admitted {
        Ok(p) => match batch.model.text.encode(&p.text) {
            Ok(e) => {
                batch.comments += 1;
                batch.tokens += e.ids.len();
                Entry::Comment(Item {
                    id: p.id,
                    text: p.text,
                    ids: e.ids,
                    truncated: e.truncated,
                    origin: p.origin,
                })
            }
            Err(err) => Entry::Rejected(Rejection {
                reason: Reason::InferenceError,
                detail: format!("tokenizer: {err:#}"),
                origin: p.origin,
            }),
        },
        Err(rejected) => Entry::Rejected(rejected),
    };
    batch.entries.push(entry);
}

/// Runs until `rx` closes, then flushes what it holds and returns.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Admitted>,
    tx: mpsc::Sender<Batch>,
    mut active: watch::Receiver<Arc<Generation>>,
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
        // Comments fill a batch; rejects ride along in their place without counting.
        while batch.comments < cfg.max_batch_size && batch.tokens < cfg.max_batch_tokens {
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
        metrics::histogram!("emostream_batch_size").record(batch.comments as f64);
        metrics::histogram!("emostream_batch_tokens").record(batch.tokens as f64);
        if tx.send(batch).await.is_err() || closed {
            return;
        }
    }
}
