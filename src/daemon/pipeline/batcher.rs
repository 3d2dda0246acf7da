//! Micro-batching: tokenizes comments as they arrive and hands the inference workers batches.
//! A batch closes as soon as a worker is free to run it and nothing else is waiting (a light
//! stream is not held back), once it holds `max_batch_size` comments (or `max_batch_tokens`
//! tokens) and nothing else is waiting, or `max_wait_ms` after its first message. When
//! comments are already waiting (a backlog), the batch takes them at once, up to
//! `backlog_window`, so the worker can sort a large window by length into well-filled calls
//! (backend/batching.rs); outcomes still leave in input order. A burst that arrives while
//! several workers are free is shared out among them instead.
//! Runs on the async runtime while inference of the previous batch runs on the worker threads,
//! so tokenizing batch n+1 overlaps inference of batch n. Each batch is tokenized by the active
//! model generation at its start; a swap closes the open batch at once, so the swap waits for
//! no more than the batch being filled.

use crate::backend::generation::Generation;
use crate::daemon::config::BatchingSettings;
use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::workers::WorkerClock;
use crate::daemon::pipeline::{Admitted, Batch, Entry, Item, Rejection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Tokenizes a comment into the batch; a rejected message (or one the tokenizer refuses) keeps
/// its place in the batch as a rejection. A posted comment whose request gave up is dropped
/// here, before any inference is spent on it.
fn add(batch: &mut Batch, admitted: Admitted) {
    let admitted = match admitted {
        Ok(p) if p.origin.is_abandoned() => return p.origin.abandon(),
        Err(r) if r.origin.is_abandoned() => return r.origin.abandon(),
        a => a,
    };
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
    workers: Arc<WorkerClock>,
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
        loop {
            // Workers with nothing queued for them: this batch would start at once.
            let free = workers
                .idle()
                .saturating_sub(tx.max_capacity() - tx.capacity());
            // What is already waiting joins at once, up to the window; with several workers
            // free, a burst is shared out among them rather than run on one.
            let limit = if free > 1 {
                (batch.comments + rx.len())
                    .div_ceil(free)
                    .clamp(1, cfg.backlog_window)
            } else {
                cfg.backlog_window
            };
            while batch.comments < limit {
                match rx.try_recv() {
                    Ok(p) => add(&mut batch, p),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let full = batch.comments >= cfg.max_batch_size || batch.tokens >= cfg.max_batch_tokens;
            if closed || full || free > 0 || batch.comments >= limit {
                break;
            }
            tokio::select! {
                next = rx.recv() => match next {
                    Some(p) => add(&mut batch, p),
                    None => { closed = true; break; }
                },
                _ = tokio::time::sleep_until(deadline) => break,
                // Check again: the batch may go now.
                _ = workers.freed() => {}
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

/// The interactive lane's batcher: comments posted to the HTTP API, batched as soon as they
/// arrive (what waits joins, up to `max_batch_size`) by the active model generation, for the
/// workers to take before the stream's next batch (pipeline/lanes.rs). Ends when `rx` closes
/// or the workers are gone.
pub(crate) async fn run_interactive(
    mut rx: mpsc::Receiver<Admitted>,
    tx: mpsc::Sender<Batch>,
    active: watch::Receiver<Arc<Generation>>,
    max_batch_size: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::new(active.borrow().clone());
        add(&mut batch, first);
        while batch.comments < max_batch_size {
            match rx.try_recv() {
                Ok(p) => add(&mut batch, p),
                Err(_) => break,
            }
        }
        if batch.entries.is_empty() {
            continue;
        }
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::generation::Expectations;
    use crate::backend::ort::RuntimeOptions;
    use crate::daemon::ack::Ledger;
    use crate::daemon::pipeline::{Origin, Pending};
    use std::sync::OnceLock;

    /// The shipped model, loaded once for these tests (real tokenizer and ONNX Runtime).
    fn model() -> Arc<Generation> {
        static M: OnceLock<Arc<Generation>> = OnceLock::new();
        M.get_or_init(|| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/goemotions-minilm-l6");
            let runtime = RuntimeOptions {
                intra_threads: 1,
                ..Default::default()
            };
            Arc::new(Generation::load(&dir, &runtime, 1, &Expectations::default()).unwrap())
        })
        .clone()
    }

    fn comment(ledger: &Arc<Ledger>, n: i64) -> Admitted {
        Ok(Pending {
            id: format!("c{n}"),
            text: format!("comment number {n}, and I love it"),
            origin: Origin::unkeyed(ledger, "t", n, None),
        })
    }

    /// The next batch, which must come within 5 s.
    async fn next_batch(b: &mut Running, why: &str) -> Batch {
        tokio::time::timeout(Duration::from_secs(5), b.batches.recv())
            .await
            .expect(why)
            .unwrap()
    }

    /// Sends comments `range` from a task of their own, `pause` apart.
    fn feed(
        b: &Running,
        range: std::ops::Range<i64>,
        pause: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (input, ledger) = (b.input.clone(), b.ledger.clone());
        tokio::spawn(async move {
            for n in range {
                input.send(comment(&ledger, n)).await.unwrap();
                tokio::time::sleep(pause).await;
            }
        })
    }

    struct Running {
        input: mpsc::Sender<Admitted>,
        batches: mpsc::Receiver<Batch>,
        workers: Arc<WorkerClock>,
        ledger: Arc<Ledger>,
        _active: watch::Sender<Arc<Generation>>,
    }

    /// A batcher over workers (`busy[w]`: whether worker w is running a batch) with
    /// `max_wait_ms` and `window`, started with comments 0..`waiting` already queued.
    fn start(max_wait_ms: u64, window: usize, busy: &[bool], waiting: i64) -> Running {
        let (input, rx) = mpsc::channel(window);
        let ledger = Arc::default();
        for n in 0..waiting {
            input.try_send(comment(&ledger, n)).unwrap();
        }
        let (tx, batches) = mpsc::channel(1);
        let (active, active_rx) = watch::channel(model());
        let workers = Arc::new(WorkerClock::new(busy.len()));
        for (w, &b) in busy.iter().enumerate() {
            workers.set(w, b);
        }
        let cfg = BatchingSettings {
            max_batch_size: 32,
            max_wait_ms,
            max_batch_tokens: 8192,
            backlog_window: window,
            inference_workers: busy.len(),
        };
        tokio::spawn(run(rx, tx, active_rx, workers.clone(), cfg));
        Running {
            input,
            batches,
            workers,
            ledger,
            _active: active,
        }
    }

    #[tokio::test]
    async fn a_backlog_is_taken_as_one_window_in_input_order() {
        let mut b = start(10_000, 512, &[true], 300);
        // All 300 were waiting when the first arrived: one batch, not ten of 32.
        let batch = b.batches.recv().await.unwrap();
        assert_eq!(batch.comments, 300);
        let offsets: Vec<i64> = batch
            .entries
            .iter()
            .map(|e| match e {
                Entry::Comment(i) => i.origin.position.offset,
                Entry::Rejected(r) => r.origin.position.offset,
            })
            .collect();
        assert_eq!(offsets, (0..300).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_window_never_exceeds_backlog_window() {
        let mut b = start(300, 64, &[true], 64);
        let feeder = feed(&b, 64..200, Duration::ZERO);
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < 200 {
            sizes.push(b.batches.recv().await.unwrap().comments);
        }
        feeder.await.unwrap();
        assert!(sizes.iter().all(|&s| s <= 64), "{sizes:?}");
        assert_eq!(sizes[0], 64, "{sizes:?}");
    }

    #[tokio::test]
    async fn a_light_stream_waits_at_most_max_wait_ms_while_workers_are_busy() {
        let mut b = start(150, 512, &[true], 0);
        let t = Instant::now();
        b.input.send(comment(&b.ledger, 0)).await.unwrap();
        let batch = b.batches.recv().await.unwrap();
        let waited = t.elapsed();
        assert_eq!(batch.comments, 1);
        assert!(
            waited >= Duration::from_millis(150),
            "closed after {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(1_500),
            "closed after {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_free_worker_gets_a_comment_at_once() {
        let mut b = start(60_000, 512, &[false], 0);
        b.input.send(comment(&b.ledger, 0)).await.unwrap();
        let batch = next_batch(&mut b, "a free worker should not wait for max_wait_ms").await;
        assert_eq!(batch.comments, 1);
    }

    #[tokio::test]
    async fn a_worker_freed_while_a_batch_waits_takes_it_at_once() {
        let mut b = start(60_000, 512, &[true], 0);
        b.input.send(comment(&b.ledger, 0)).await.unwrap();
        b.input.send(comment(&b.ledger, 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            b.batches.try_recv().is_err(),
            "closed while the worker was busy"
        );
        b.workers.set(0, false);
        let batch = next_batch(&mut b, "the freed worker should get the batch").await;
        assert_eq!(batch.comments, 2);
    }

    #[tokio::test]
    async fn a_full_batch_closes_when_nothing_else_waits() {
        let mut b = start(60_000, 512, &[true], 0);
        let feeder = feed(&b, 0..32, Duration::from_millis(2));
        let batch = next_batch(&mut b, "32 comments should close the batch").await;
        feeder.await.unwrap();
        assert_eq!(batch.comments, 32);
    }

    #[tokio::test]
    async fn a_burst_while_two_workers_are_free_is_shared_between_them() {
        let mut b = start(60_000, 512, &[false, false], 100);
        let first = b.batches.recv().await.unwrap();
        let second = b.batches.recv().await.unwrap();
        assert_eq!((first.comments, second.comments), (50, 50));
    }
}
