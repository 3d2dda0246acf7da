//! The inference core every entry point shares: a pending queue → the batcher → the inference
//! workers → an outcome queue. `emostream run` puts the Kafka source in front and the sink
//! behind, `serve` the classify API in front (outcomes answer requests), the stdin mode a
//! line reader in front and stdout behind; the core knows none of them.

use crate::backend::generation::Generation;
use crate::daemon::config::BatchingSettings;
use crate::daemon::pipeline::lanes::Lanes;
use crate::daemon::pipeline::workers::{self, Labelling, Observers, WorkerClock};
use crate::daemon::pipeline::{batcher, Admitted, Batch, Outcome};
use crate::daemon::supervise::Faults;
use anyhow::Result;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the core is built with.
pub(crate) struct CoreSettings {
    pub(crate) batching: BatchingSettings,
    pub(crate) labelling: Labelling,
    /// Inference worker threads (the stdin mode runs one, which keeps its output in order).
    pub(crate) workers: usize,
    /// Outcomes the workers may finish ahead of whoever takes them.
    pub(crate) outcome_buffer: usize,
    /// Comments the interactive lane holds before its senders wait.
    pub(crate) interactive_queue: usize,
}

/// The running core: feed `pending`, take `outcomes`.
pub(crate) struct Core {
    /// Into the batcher; when every sender is gone the batcher flushes and ends, then the
    /// workers end.
    pub(crate) pending: mpsc::Sender<Admitted>,
    /// Into the interactive lane (comments posted to the HTTP API), whose batches the workers
    /// take before the stream's (pipeline/lanes.rs). Its batcher ends when every sender is gone.
    pub(crate) interactive: mpsc::Sender<Admitted>,
    /// Every admitted message's outcome, except those that answer an API request.
    pub(crate) outcomes: mpsc::Receiver<Outcome>,
    pub(crate) clock: Arc<WorkerClock>,
    pub(crate) batcher: JoinHandle<()>,
    /// The worker threads: they end once the batcher has (join them then).
    pub(crate) workers: Vec<std::thread::JoinHandle<()>>,
}

impl Core {
    /// Starts the batcher on the runtime and the workers on their threads; batches are
    /// tokenized and labelled by the generation `active` holds when each batch starts.
    pub(crate) fn start(
        settings: CoreSettings,
        active: watch::Receiver<Arc<Generation>>,
        observers: Observers,
        faults: Arc<Faults>,
    ) -> Result<Core> {
        let (pending, pending_rx) = mpsc::channel::<Admitted>(settings.batching.backlog_window);
        let (batch_tx, batch_rx) = mpsc::channel::<Batch>(settings.workers);
        let (interactive, interactive_rx) = mpsc::channel::<Admitted>(settings.interactive_queue);
        let (lane_tx, lane_rx) = mpsc::channel::<Batch>(1);
        let (outcome_tx, outcomes) = mpsc::channel::<Outcome>(settings.outcome_buffer);
        let lanes = Lanes::new(batch_rx, lane_rx, tokio::runtime::Handle::current());
        let (workers, clock) = workers::spawn(
            settings.workers,
            lanes,
            outcome_tx,
            settings.batching.call_limits(),
            settings.labelling,
            observers,
            faults,
        )?;
        // Ends on its own once every interactive sender is gone, or the workers are.
        tokio::spawn(batcher::run_interactive(
            interactive_rx,
            lane_tx,
            active.clone(),
            settings.batching.max_batch_size,
        ));
        let batcher = tokio::spawn(batcher::run(
            pending_rx,
            batch_tx,
            active,
            clock.clone(),
            settings.batching,
        ));
        Ok(Core {
            pending,
            interactive,
            outcomes,
            clock,
            batcher,
            workers,
        })
    }
}

/// Joins worker threads that have ended or are about to (their batch queue is closed).
pub(crate) fn join_workers(workers: Vec<std::thread::JoinHandle<()>>) {
    for h in workers {
        let _ = h.join();
    }
}
