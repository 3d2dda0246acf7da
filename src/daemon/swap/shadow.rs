//! Shadow evaluation of a swap candidate: beside the active model, the candidate labels a sample
//! of live batches (one in `every`), and the agreement of the two label sets is measured before
//! the candidate is promoted. Its events go nowhere; the active model's are the only output.

use crate::backend::batching::CallLimits;
use crate::backend::generation::Generation;
use crate::daemon::pipeline::workers::BatchWatcher;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Agreement {
    pub(crate) batches: usize,
    pub(crate) comments: usize,
    /// Share of comments whose label sets are identical.
    pub(crate) exact_match: f64,
    /// Mean Jaccard similarity of the label sets (two empty sets agree fully).
    pub(crate) mean_jaccard: f64,
}

struct Run {
    candidate: Arc<Generation>,
    every: u64,
    seen: u64,
    target_batches: usize,
    batches: usize,
    comments: usize,
    exact: usize,
    jaccard: f64,
    done: Option<oneshot::Sender<Agreement>>,
}

impl Run {
    fn agreement(&self) -> Agreement {
        let n = self.comments.max(1) as f64;
        Agreement {
            batches: self.batches,
            comments: self.comments,
            exact_match: self.exact as f64 / n,
            mean_jaccard: self.jaccard / n,
        }
    }
}

/// The shadow slot the inference workers look at after each batch.
#[derive(Default)]
pub(crate) struct Shadow {
    slot: Mutex<Option<Run>>,
}

fn jaccard(a: &[usize], b: &[usize]) -> f64 {
    let inter = a.iter().filter(|x| b.contains(x)).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

impl Shadow {
    /// Starts shadowing `candidate` on one batch in `every` until `batches` were compared; the
    /// receiver gets the agreement then.
    pub(crate) fn start(
        &self,
        candidate: Arc<Generation>,
        batches: usize,
        every: u64,
    ) -> oneshot::Receiver<Agreement> {
        let (tx, rx) = oneshot::channel();
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Run {
            candidate,
            every: every.max(1),
            seen: 0,
            target_batches: batches.max(1),
            batches: 0,
            comments: 0,
            exact: 0,
            jaccard: 0.0,
            done: Some(tx),
        });
        rx
    }

    /// Ends the shadow run (if any) and returns what it measured so far.
    pub(crate) fn stop(&self) -> Option<Agreement> {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|r| r.agreement())
    }
}

impl BatchWatcher for Shadow {
    /// Called by worker `worker` after the active model scored `texts`.
    fn scored(
        &self,
        worker: usize,
        active: &Generation,
        texts: &[&str],
        active_scores: &[Vec<f32>],
        calls: CallLimits,
    ) {
        let candidate = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            let Some(run) = slot.as_mut() else { return };
            run.seen += 1;
            if run.seen % run.every != 0 {
                return;
            }
            run.candidate.clone()
        };
        // Inference outside the lock: the other workers keep going.
        let rows: Result<Vec<Vec<u32>>, _> = texts
            .iter()
            .map(|t| candidate.text.encode(t).map(|e| e.ids))
            .collect();
        let scored = rows.and_then(|rows| {
            let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
            candidate.score(worker, &refs, calls)
        });
        let cand_scores = match scored {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "shadow candidate failed on a live batch");
                return;
            }
        };
        let a = active.label_sets(active_scores);
        let c = candidate.label_sets(&cand_scores);
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        let Some(run) = slot.as_mut() else { return };
        if !Arc::ptr_eq(&run.candidate, &candidate) {
            return;
        }
        run.batches += 1;
        run.comments += a.len();
        for (x, y) in a.iter().zip(&c) {
            run.exact += usize::from(x == y);
            run.jaccard += jaccard(x, y);
        }
        if run.batches >= run.target_batches {
            let agreement = run.agreement();
            if let Some(tx) = run.done.take() {
                let _ = tx.send(agreement);
            }
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::jaccard;

    #[test]
    fn jaccard_of_label_sets() {
        assert_eq!(jaccard(&[], &[]), 1.0);
        assert_eq!(jaccard(&[1, 2], &[2, 3]), 1.0 / 3.0);
        assert_eq!(jaccard(&[4], &[4]), 1.0);
        assert_eq!(jaccard(&[4], &[]), 0.0);
    }
}
