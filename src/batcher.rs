//! Micro-batching: tokenizes comments as they arrive and closes a batch at `max_batch_size`
//! messages, `max_batch_tokens` tokens or `max_wait_ms` after its first message, whichever
//! comes first. Runs on the async runtime while inference of the previous batch runs on the
//! worker threads, so tokenizing batch n+1 overlaps inference of batch n.
//! Each batch is tokenized by the active model generation at its start; a swap closes the open
//! batch at once, so the swap waits for no more than the batch being filled.

use crate::config::BatchingSettings;
use crate::pipeline::{Batch, Item, Pending};
use crate::serving::ServingModel;
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

/// Splits a length-sorted batch into sub-batches so each pads little: a sub-batch closes when
/// adding the next (longer) row would make padding exceed a quarter of its tokens.
pub fn sub_batches(lengths_sorted: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut real = 0usize;
    for (i, &len) in lengths_sorted.iter().enumerate() {
        let rows = i + 1 - start;
        if rows > 1 && (len * rows) as f64 > 1.25 * (real + len) as f64 && rows > 4 {
            out.push(start..i);
            start = i;
            real = 0;
        }
        real += len;
    }
    if start < lengths_sorted.len() {
        out.push(start..lengths_sorted.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_batches_cover_all_and_limit_padding() {
        let lens = vec![3, 3, 4, 4, 5, 5, 6, 20, 21, 22, 60];
        let parts = sub_batches(&lens);
        assert_eq!(parts.first().unwrap().start, 0);
        assert_eq!(parts.last().unwrap().end, lens.len());
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(parts.len() >= 2, "{parts:?}");
        let padded: usize = parts.iter().map(|r| r.len() * lens[r.end - 1]).sum();
        assert!(
            padded < lens.len() * 60,
            "sub-batching should pad less than one batch"
        );
    }
}
