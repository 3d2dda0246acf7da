//! Supervision. Every stage's task or thread is watched: a stage that panics or ends while the
//! daemon is not shutting down, or a fatal Kafka client error, is a fault. The daemon does not
//! restart stages in place (a worker that panicked may have left a hole in the ordering
//! sequence, a source that died holds a consumer the group may have fenced): it commits what
//! was acknowledged and exits non-zero, so the orchestrator restarts a clean process and the
//! unacknowledged messages are read again. docs/delivery.md lists the faults.

use std::sync::Mutex;
use tokio::sync::Notify;

/// The first fatal fault, for whoever waits on it (the daemon's main task) and `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    first: Mutex<Option<String>>,
    raised: Notify,
}

impl Faults {
    /// Records a fatal fault (the first one wins) and wakes the waiter. Callable from any
    /// thread, including librdkafka's callbacks and panicking workers.
    pub(crate) fn fatal(&self, cause: impl Into<String>) {
        let cause = cause.into();
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::error!(cause = %cause, "fatal fault: committing what was acknowledged and exiting");
            metrics::counter!("emostream_fatal_faults_total").increment(1);
            *first = Some(cause);
            // A stored permit: the waiter sees it even if it starts waiting later.
            self.raised.notify_one();
        }
    }

    /// The fault, once one was raised.
    pub(crate) fn cause(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the first fault.
    pub(crate) async fn wait(&self) -> String {
        loop {
            if let Some(c) = self.cause() {
                return c;
            }
            self.raised.notified().await;
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// What a stage task's end means when nobody asked it to stop.
pub(crate) fn stage_ended(stage: &str, r: Result<(), tokio::task::JoinError>) -> String {
    match r {
        Ok(()) => format!("stage {stage} ended unexpectedly"),
        Err(e) if e.is_panic() => {
            format!(
                "stage {stage} panicked: {}",
                panic_message(&*e.into_panic())
            )
        }
        Err(e) => format!("stage {stage} was cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_fault_wins_and_a_late_waiter_still_sees_it() {
        let f = Faults::default();
        f.fatal("worker 1 panicked");
        f.fatal("sink ended");
        assert_eq!(f.wait().await, "worker 1 panicked");
        assert_eq!(f.cause().as_deref(), Some("worker 1 panicked"));
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_message() {
        let h = tokio::spawn(async { panic!("boom at offset 7") });
        let msg = stage_ended("batcher", h.await);
        assert_eq!(msg, "stage batcher panicked: boom at offset 7");
    }
}
