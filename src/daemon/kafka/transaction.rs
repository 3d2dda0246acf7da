//! Exactly-once delivery (`kafka.delivery = "exactly_once"`): the events, the dead letters and
//! the input offsets they answer for commit in one Kafka transaction, so a `read_committed`
//! reader sees each input message's outcome exactly once, whatever crashes or rebalances.
//!
//! The source drives it; nothing stops for a commit. A message is acknowledged at the moment
//! its record enters the producer's open transaction (under the gate, below), so at a boundary
//! the acknowledged messages are exactly the transaction's records. Outcomes reach the sink in
//! input order per partition, so each partition's acknowledged messages are a prefix of what
//! it consumed, and its commit point — the first message not acknowledged yet — is exactly
//! where the transaction's records of it end: the source commits those points while it goes on
//! reading, and the workers go on labelling. Records finished while a commit is under way wait
//! in the sink (held) for the next transaction. When the acknowledged messages are not a prefix
//! (a stage dropped one), or a record failed, or the commit is abortable, the transaction
//! aborts instead: the partitions go back to their committed offsets and are labelled again.
//! A fenced producer (another process took this transactional id, or the group moved on) is
//! fatal.
//!
//! Sends and transaction boundaries exclude each other (`gate`): a record is either in the
//! transaction being committed or in the next one, and after an abort a message from before
//! it (its token is stale) is dropped rather than sent into the next transaction.

use crate::daemon::kafka::client::{KafkaProducer, TransactionSettings};
use anyhow::{Context, Result};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::TopicPartitionList;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// Test builds only (`--features fault-injection`): `EMOSTREAM_FAULT_ABORT_EVERY=N` aborts
/// every Nth transaction that holds records, so the tests see aborts and rewinds happen.
#[cfg(feature = "fault-injection")]
fn injected_abort() -> bool {
    static SETTLED: AtomicU64 = AtomicU64::new(0);
    let every = std::env::var("EMOSTREAM_FAULT_ABORT_EVERY")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0);
    every.is_some_and(|n| (SETTLED.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(n))
}

/// Test builds only: `EMOSTREAM_FAULT_SETTLE_PAUSE_MS=D` pauses D ms inside every boundary that
/// ends a transaction holding records — after the offsets are sent and before the commit, or
/// before the abort — with the gate closed, so records finished meanwhile are held for the
/// next transaction. The log line it writes lets a test time a `kill -9` inside a commit.
#[cfg(feature = "fault-injection")]
fn injected_pause(what: &str, generation: u64) {
    let Some(d) = std::env::var("EMOSTREAM_FAULT_SETTLE_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    tracing::warn!(
        generation,
        pause_ms = d,
        "fault injection: pausing inside the transaction {what}"
    );
    std::thread::sleep(Duration::from_millis(d));
}

/// Test builds only: `EMOSTREAM_FAULT_COMMIT_FAILS_FOR_MS=D` makes commits fail with a retriable
/// error for D ms from the first commit that holds records (a coordinator that keeps timing
/// out), so the tests see readiness and health while a transaction call retries.
#[cfg(feature = "fault-injection")]
fn injected_commit_failure() -> bool {
    static FIRST: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let Some(d) = std::env::var("EMOSTREAM_FAULT_COMMIT_FAILS_FOR_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return false;
    };
    FIRST.get_or_init(Instant::now).elapsed() < Duration::from_millis(d)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 200 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((200u64 << attempt.min(5)).min(5000))
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Committed with its offsets (or there was nothing to commit).
    Committed,
    /// Aborted: the partitions must go back to their committed offsets.
    Aborted(String),
}

pub(crate) struct Transactions {
    producer: KafkaProducer,
    timeout: Duration,
    gate: RwLock<()>,
    /// Which transaction is open: a failure reported for an older one is ignored.
    generation: AtomicU64,
    /// Why the open transaction must abort (a record of it failed), if it must.
    failed: Mutex<Option<String>>,
    /// Records sent in the open transaction.
    sent: AtomicU64,
    /// Aborted since the last commit; the source then rewinds before reading on.
    rewind: AtomicBool,
    consecutive_aborts: AtomicU64,
    /// Why the last transaction aborted (health quotes it).
    last_abort: Mutex<Option<String>>,
    /// When a commit last carried records, or the source was last seen idle: health's
    /// committed-progress clock (aborts in between do not move it).
    progressed: Mutex<Instant>,
    /// A transaction call (commit, abort) retrying since when, and why: readiness is 503
    /// meanwhile.
    call_retrying: Mutex<Option<(Instant, String)>>,
    /// Counters (labels fired, events, dead letters) of the open transaction's records,
    /// incremented when it commits: an aborted transaction's outcomes are labelled again and
    /// must not count twice.
    counts: Mutex<Vec<metrics::Counter>>,
    /// Signalled when a boundary is over and the next transaction open (the sink sends what
    /// it held meanwhile).
    opened: tokio::sync::Notify,
}

impl Transactions {
    /// Fences any earlier producer with this transactional id (aborting its open transaction)
    /// and opens the first transaction.
    pub(crate) fn start(producer: KafkaProducer, s: &TransactionSettings) -> Result<Transactions> {
        let timeout = s.timeout;
        producer
            .init_transactions(timeout)
            .with_context(|| format!("initialising transactions (transactional.id {:?}; kafka.delivery = \"exactly_once\")", s.transactional_id))?;
        producer
            .begin_transaction()
            .context("beginning the first transaction")?;
        Ok(Transactions {
            producer,
            timeout,
            gate: RwLock::new(()),
            generation: AtomicU64::new(1),
            failed: Mutex::new(None),
            sent: AtomicU64::new(0),
            rewind: AtomicBool::new(false),
            consecutive_aborts: AtomicU64::new(0),
            last_abort: Mutex::new(None),
            progressed: Mutex::new(Instant::now()),
            call_retrying: Mutex::new(None),
            counts: Mutex::new(Vec::new()),
            opened: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn producer(&self) -> &KafkaProducer {
        &self.producer
    }

    /// Held while a record is handed to the producer: no transaction boundary meanwhile.
    /// Returns the open transaction's generation; `None` while a boundary holds the gate (the
    /// caller waits asynchronously: a commit retrying through an outage must not pin a
    /// runtime thread).
    pub(crate) fn try_sending(&self) -> Option<(RwLockReadGuard<'_, ()>, u64)> {
        let g = match self.gate.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some((g, self.generation.load(Ordering::SeqCst)))
    }

    /// Whether a boundary (commit or abort) holds the gate now: records wait for the next
    /// transaction.
    pub(crate) fn boundary_under_way(&self) -> bool {
        matches!(
            self.gate.try_read(),
            Err(std::sync::TryLockError::WouldBlock)
        )
    }

    /// A record was handed to the producer in the open transaction (call under `sending`).
    pub(crate) fn record_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves once no boundary is under way (at once when none is). The wake-up is armed
    /// before the gate is looked at, so a boundary ending in between is not missed.
    pub(crate) async fn boundary_over(&self) {
        let opened = self.opened.notified();
        tokio::pin!(opened);
        opened.as_mut().enable();
        if self.boundary_under_way() {
            opened.await;
        }
    }

    /// The open transaction's generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Counters to increment once the open transaction commits (its records' labels, events
    /// and dead letters); dropped if it aborts. Call under the gate (`try_sending`), in the step
    /// that sends the record: no boundary can come between the two.
    pub(crate) fn count_on_commit(&self, counters: impl IntoIterator<Item = metrics::Counter>) {
        lock(&self.counts).extend(counters);
    }

    /// A record of transaction `generation` failed: that transaction must abort.
    pub(crate) fn fail(&self, generation: u64, reason: String) {
        // Compared under the lock `begin` bumps the generation under: a failure of the
        // transaction just aborted cannot mark the next one.
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if generation != self.generation.load(Ordering::SeqCst) {
            return; // purged by an abort already
        }
        if f.is_none() {
            tracing::warn!(reason = %reason, "a record of the open transaction failed; it will abort");
            *f = Some(reason);
        }
    }

    pub(crate) fn must_abort(&self) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Set by an abort: the source must rewind its partitions before reading on.
    pub(crate) fn rewind_requested(&self) -> bool {
        self.rewind.load(Ordering::SeqCst)
    }

    /// The source went back to the committed offsets; `redo` says whether it had read past
    /// them (the abort threw work away that is now read again). Nothing to redo (e.g. the
    /// aborted records were all of partitions revoked since) leaves nothing pending: health
    /// must not wait for a commit that has nothing to carry.
    pub(crate) fn rewind_done(&self, redo: bool) {
        if !redo {
            self.progress();
        }
        self.rewind.store(false, Ordering::SeqCst);
    }

    /// Records in the open transaction (or the one committing).
    pub(crate) fn uncommitted_records(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Health's view: how long since a commit carried records (or the source was idle), when
    /// that is over `limit` while transactions keep aborting, with the aborts' count and
    /// the last reason. An empty settle between aborts does not count as progress.
    pub(crate) fn without_committed_progress(&self, limit: Duration) -> Option<String> {
        let aborts = self.consecutive_aborts.load(Ordering::SeqCst);
        let since = lock(&self.progressed).elapsed();
        if aborts == 0 || since <= limit {
            return None;
        }
        let why = lock(&self.last_abort).clone().unwrap_or_default();
        Some(format!(
            "no committed progress for {since:.1?} (over {limit:?}): {aborts} transactions aborted in a row; last: {why}"
        ))
    }

    /// Whether nothing has committed for longer than `limit` (used with work in flight).
    pub(crate) fn committed_longer_ago_than(&self, limit: Duration) -> Option<Duration> {
        let since = lock(&self.progressed).elapsed();
        (since > limit).then_some(since)
    }

    /// Readiness's view: a transaction call retrying for now, and its last error.
    pub(crate) fn call_retrying(&self) -> Option<String> {
        lock(&self.call_retrying)
            .as_ref()
            .map(|(since, e)| format!("{e} (retrying for {:.1?})", since.elapsed()))
    }

    fn retrying_call(&self, what: &str, e: &impl std::fmt::Display) {
        let mut r = lock(&self.call_retrying);
        let since = r.as_ref().map_or_else(Instant::now, |(s, _)| *s);
        *r = Some((since, format!("transaction {what}: {e}")));
    }

    fn call_done(&self) {
        *lock(&self.call_retrying) = None;
    }

    /// Ends the open transaction and opens the next. `offsets` (run under the gate, so no
    /// record enters meanwhile) gives the commit points, which must end exactly where the
    /// transaction's records do, or why they cannot (the transaction then aborts). `forget`
    /// runs under the gate after an abort, so no stale message is sent into the next
    /// transaction. Blocking; records finished meanwhile wait for the next transaction. Errors
    /// are fatal (fenced, or the producer is unusable).
    pub(crate) fn settle(
        &self,
        offsets: impl FnOnce() -> std::result::Result<TopicPartitionList, String>,
        group: Option<ConsumerGroupMetadata>,
        forget: impl FnOnce(),
    ) -> Result<Settled> {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let outcome = self.end(offsets, group, forget);
        drop(_gate);
        self.opened.notify_waiters();
        outcome
    }

    /// The boundary itself, under the gate.
    fn end(
        &self,
        offsets: impl FnOnce() -> std::result::Result<TopicPartitionList, String>,
        group: Option<ConsumerGroupMetadata>,
        forget: impl FnOnce(),
    ) -> Result<Settled> {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        #[cfg(feature = "fault-injection")]
        let failed = failed.or_else(|| {
            (self.sent.load(Ordering::Relaxed) > 0 && injected_abort())
                .then(|| "injected abort (EMOSTREAM_FAULT_ABORT_EVERY)".to_string())
        });
        // Every consumed message sends a record before it is acknowledged: none sent, no
        // offset moved.
        if failed.is_none() && self.sent.load(Ordering::Relaxed) == 0 {
            // An idle source is not a stalled one. After an abort it is not idle but about to
            // re-read what the abort threw away (`rewind_done` says when there was nothing to
            // redo).
            if self.consecutive_aborts.load(Ordering::SeqCst) == 0 {
                self.progress();
            }
            return Ok(Settled::Committed);
        }
        let outcome = match (failed, group) {
            (Some(reason), _) => Settled::Aborted(reason),
            (None, None) => Settled::Aborted("no consumer group metadata".into()),
            (None, Some(group)) => match offsets() {
                Ok(offsets) => self.commit(&offsets, &group)?,
                Err(reason) => Settled::Aborted(reason),
            },
        };
        match &outcome {
            Settled::Aborted(reason) => {
                #[cfg(feature = "fault-injection")]
                injected_pause("abort", self.generation());
                self.abort(reason)?;
                *lock(&self.last_abort) = Some(reason.clone());
                forget();
                self.rewind.store(true, Ordering::SeqCst);
            }
            Settled::Committed => {
                self.progress();
                for c in lock(&self.counts).drain(..) {
                    c.increment(1);
                }
            }
        }
        self.begin()?;
        Ok(outcome)
    }

    fn progress(&self) {
        self.consecutive_aborts.store(0, Ordering::SeqCst);
        *lock(&self.progressed) = Instant::now();
    }

    /// Sends the offsets and commits; retriable errors are retried, abortable ones abort.
    fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<Settled> {
        let started = std::time::Instant::now();
        let mut offsets_sent = offsets.count() == 0;
        for attempt in 1u32.. {
            #[cfg(feature = "fault-injection")]
            if injected_commit_failure() {
                tracing::warn!(
                    attempt,
                    "transaction commit: injected retriable failure; retrying"
                );
                self.retrying_call(
                    "commit",
                    &"injected retriable failure (EMOSTREAM_FAULT_COMMIT_FAILS_FOR_MS)",
                );
                std::thread::sleep(backoff(attempt));
                continue;
            }
            let r = if offsets_sent {
                Ok(())
            } else {
                self.producer
                    .send_offsets_to_transaction(offsets, group, self.timeout)
            }
            .map(|()| {
                #[cfg(feature = "fault-injection")]
                if !offsets_sent {
                    injected_pause("commit (offsets sent)", self.generation());
                }
                offsets_sent = true
            })
            .and_then(|()| {
                self.wait_delivered();
                self.producer.commit_transaction(self.timeout)
            });
            match r {
                Ok(()) => {
                    self.call_done();
                    metrics::counter!("emostream_transactions_total", "result" => "committed")
                        .increment(1);
                    metrics::histogram!("emostream_transaction_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(Settled::Committed);
                }
                Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                    self.call_done();
                    return Ok(Settled::Aborted(format!("commit: {e}")));
                }
                // E.g. the coordinator is unreachable: retry for as long as that lasts
                // (readiness is 503 meanwhile, naming the call).
                Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                    tracing::warn!(error = %e, attempt, "transaction commit: retrying");
                    self.retrying_call("commit", &e);
                    std::thread::sleep(backoff(attempt));
                }
                // rust-rdkafka flushes before committing; a flush that timed out has not
                // touched the transaction, so the commit is simply tried again.
                Err(KafkaError::Flush(e)) => {
                    tracing::warn!(error = %e, attempt, "transaction commit: flush timed out; retrying");
                    self.retrying_call("commit (flush)", &e);
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => {
                    self.call_done();
                    return Err(e).context("committing the transaction (fenced or fatal: another process may own this transactional.id, or the group moved on)");
                }
            }
        }
        unreachable!()
    }

    fn abort(&self, reason: &str) -> Result<()> {
        tracing::warn!(
            reason,
            "aborting the transaction; its partitions are read again from their committed offsets"
        );
        metrics::counter!("emostream_transactions_total", "result" => "aborted").increment(1);
        self.consecutive_aborts.fetch_add(1, Ordering::SeqCst);
        // Let what was sent reach the broker first (or fail): an abort that catches the
        // producer still registering the transaction's partitions (retrying while the previous
        // abort's markers are written) was answered INVALID_TXN_STATE, a fatal error, when
        // transactions aborted back to back. The flushed records are aborted with the rest.
        if !self.wait_delivered() {
            tracing::warn!("flush before the abort did not finish; aborting anyway");
        }
        lock(&self.counts).clear();
        for attempt in 1u32.. {
            match self.producer.abort_transaction(self.timeout) {
                Ok(()) => {
                    self.call_done();
                    return Ok(());
                }
                Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                    tracing::warn!(error = %e, attempt, "transaction abort: retrying");
                    self.retrying_call("abort", &e);
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => {
                    self.call_done();
                    return Err(e).context("aborting the transaction");
                }
            }
        }
        unreachable!()
    }

    /// Waits (up to the transaction timeout) until the producer has nothing outstanding;
    /// whether it got there. rust-rdkafka's own flush, which `commit_transaction` starts with,
    /// waits in steps of 100 ms while a background thread takes the delivery reports: measured,
    /// half the commits at 100 ms intervals took 100–250 ms instead of under 10 ms. Once this
    /// returns, that flush finds nothing to wait for.
    fn wait_delivered(&self) -> bool {
        let deadline = Instant::now() + self.timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn begin(&self) -> Result<()> {
        {
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            *f = None;
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.sent.store(0, Ordering::Relaxed);
        self.producer
            .begin_transaction()
            .context("beginning a transaction")
    }

    /// Leaving after a fatal fault: abort what is open (best effort), so `read_committed`
    /// readers need not wait for the transaction timeout.
    pub(crate) fn abandon(&self) {
        // A commit may be retrying through an outage with the gate held: give up after a while
        // rather than hold the exit (the broker aborts the transaction on its timeout).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let _gate = loop {
            match self.gate.try_write() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        tracing::warn!("a transaction boundary is still in progress; leaving its transaction to the broker's timeout");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        if let Err(e) = self.producer.abort_transaction(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "aborting the open transaction on exit failed");
        }
    }
}
