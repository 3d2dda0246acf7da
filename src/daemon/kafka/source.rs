//! The source: a Kafka consumer-group member that reads the input topics, decodes each message
//! and hands it on with its acknowledgement token, pauses its partitions when too much is in
//! flight, and is the only stage that commits: the ledger's commit points, periodically, on
//! revoke and at shutdown (after waiting, bounded, for what is in flight).

use crate::daemon::ack::Ledger;
use crate::daemon::config::{BackpressureSettings, InputSettings, Settings};
use crate::daemon::kafka::client::{client_config, ClientHooks, ClientSettings};
use crate::daemon::kafka::headers;
use crate::daemon::kafka::transaction::{Settled, Transactions};
use crate::daemon::pipeline::event::Position;
use crate::daemon::pipeline::{Admitted, Origin};
use crate::daemon::schemas::input::InputSchemas;
use anyhow::{Context, Result};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Rebalance, error and statistics callbacks.
pub(crate) struct SourceContext {
    ledger: Arc<Ledger>,
    hooks: ClientHooks,
    /// How long a revoke waits for the revoked partitions' in-flight messages.
    revoke_wait: Duration,
    pub(crate) assigned: AtomicBool,
    /// Leaving (after a fatal fault, or at shutdown once the in-flight wait is done): a revoke
    /// commits at once instead of waiting again.
    pub(crate) abandoning: AtomicBool,
    /// Exactly-once mode: offsets commit inside the producer's transactions.
    pub(crate) txn: Option<Arc<Transactions>>,
    /// Consumer lag of the partitions this member holds, from the last statistics; revoked
    /// partitions leave it at once (a stale series would page someone about a partition that
    /// another replica is reading). Rendered on /metrics as `emostream_consumer_lag`.
    pub(crate) lag: std::sync::Mutex<std::collections::BTreeMap<(String, i32), i64>>,
    /// The partitions assigned now (statistics keep reporting revoked ones for a while).
    held: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
}

impl SourceContext {
    /// The lag gauge lines for /metrics (Prometheus text format).
    pub(crate) fn lag_metrics(&self) -> String {
        use std::fmt::Write;
        let lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from("# HELP emostream_consumer_lag Consumer lag per assigned partition (librdkafka statistics)\n# TYPE emostream_consumer_lag gauge\n");
        for ((topic, p), l) in lag.iter() {
            let _ = writeln!(
                out,
                "emostream_consumer_lag{{topic=\"{topic}\",partition=\"{p}\"}} {l}"
            );
        }
        out
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        self.hooks.on_stats(&stats);
        let mut lag = std::collections::BTreeMap::new();
        {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            for (topic, t) in &stats.topics {
                for (p, part) in &t.partitions {
                    let tp = (topic.clone(), *p);
                    if part.consumer_lag >= 0 && held.contains(&tp) {
                        lag.insert(tp, part.consumer_lag);
                    }
                }
            }
        }
        *self.lag.lock().unwrap_or_else(|p| p.into_inner()) = lag;
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.hooks.on_error(&error, reason)
    }
}

/// The (topic, partition) pairs of a list.
fn partitions(tpl: &TopicPartitionList) -> impl Iterator<Item = (String, i32)> + '_ {
    tpl.elements()
        .into_iter()
        .map(|e| (e.topic().to_string(), e.partition()))
}

/// Runs a blocking wait from inside a librdkafka callback: on the multi-threaded runtime the
/// worker's other tasks (the sink delivering the messages waited for) move to another thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl SourceContext {
    /// Exactly-once: ends the open transaction — committed with the commit points when they
    /// end exactly where its records do, else aborted (the source then rewinds) — and opens
    /// the next. Reading and labelling go on meanwhile. A fenced or broken producer is a fatal
    /// fault.
    fn settle_transaction<C: Consumer<SourceContext>>(&self, consumer: &C, txn: &Transactions) {
        // Run under the transaction gate. A message is acknowledged in the step that puts its
        // record into the transaction, so the acknowledged messages are the records; outcomes
        // reach the sink in input order, so on each partition they are the first ones consumed
        // and the commit point (the first message not acknowledged) is where its records end.
        // A message left behind with later ones acknowledged (a stage dropped it) breaks that:
        // its offset cannot commit while theirs would, so the transaction aborts. Tokens of
        // partitions an abort forgot may still be in the pipeline; they are dropped before the
        // producer and do not count.
        let offsets = || {
            if !self.ledger.acknowledged_are_a_prefix() {
                return Err("a message was acknowledged after one that was not (a stage dropped a message): the commit points cannot end where the records do".to_string());
            }
            let mut tpl = TopicPartitionList::new();
            for ((topic, p), o) in self.ledger.commit_points() {
                let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(o));
            }
            Ok(tpl)
        };
        match txn.settle(offsets, consumer.group_metadata(), || {
            self.ledger.forget_all_until_rewound()
        }) {
            Ok(Settled::Committed) => {}
            Ok(Settled::Aborted(reason)) => {
                tracing::warn!(
                    reason,
                    "transaction aborted; rewinding to the committed offsets"
                )
            }
            Err(e) => self.hooks.faults.fatal(format!("Kafka transaction: {e:#}")),
        }
    }

    /// Waits (up to `revoke_wait`) until the partitions have nothing in flight; what is left.
    fn drain(&self, partitions: &[(String, i32)]) -> usize {
        let deadline = std::time::Instant::now() + self.revoke_wait;
        loop {
            let left = self.ledger.in_flight_on(partitions);
            // No token outstanding anywhere: what is left was dropped unacknowledged (a stage
            // ended) and will never resolve; waiting longer gains nothing.
            if left == 0 || self.ledger.in_flight() == 0 || std::time::Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Let the revoked partitions' in-flight messages reach their topic first (bounded),
            // so the new owner does not label them again; then commit what was acknowledged
            // and forget the partitions: late acknowledgements are ignored and the new owner
            // re-reads the rest.
            let revoked: Vec<(String, i32)> = partitions(tpl).collect();
            let in_flight = self.ledger.in_flight_on(&revoked);
            tracing::info!(partitions = revoked.len(), in_flight, "partitions revoked");
            {
                let mut lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
                for tp in &revoked {
                    lag.remove(tp);
                }
            }
            if in_flight > 0
                && self.ledger.in_flight() > 0
                && !self.abandoning.load(Ordering::SeqCst)
            {
                metrics::counter!("emostream_revoked_in_flight_total").increment(in_flight as u64);
                let started = std::time::Instant::now();
                let left = blocking(|| self.drain(&revoked));
                metrics::counter!("emostream_revoked_unfinished_total").increment(left as u64);
                tracing::info!(in_flight, left, waited_ms = started.elapsed().as_millis() as u64,
                    "revoke: waited for in-flight messages of the revoked partitions (the new owner re-reads any left)");
            }
            // librdkafka keeps the application's pause on a partition across reassignment: a
            // partition paused here and handed back later would never be read again.
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "clearing the pause of revoked partitions failed");
            }
            if let Some(txn) = &self.txn {
                // The transaction holds records of every partition: it commits (or aborts) as
                // a whole before the revoked ones go, with their commit points where their
                // records end (the other partitions' work in flight goes into the next one).
                // When leaving, it was settled at shutdown already, or abandoned after a fault.
                if !self.abandoning.load(Ordering::SeqCst) {
                    blocking(|| self.settle_transaction(consumer, txn));
                }
                for tp in &revoked {
                    self.ledger.revoke(tp);
                }
                return;
            }
            let mut commit = TopicPartitionList::new();
            for tp in &revoked {
                if let Some(o) = self.ledger.revoke(tp) {
                    let _ = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(o));
                }
            }
            if commit.count() > 0 {
                if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                    tracing::warn!(error = %e, "commit on revoke failed");
                }
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
            // The group coordinator answered.
            self.hooks.cluster.seen_up();
        }
        // Cooperative rebalances add and remove partitions a few at a time: ask what is held.
        let held: std::collections::HashSet<(String, i32)> = consumer
            .assignment()
            .map_or_else(|_| Default::default(), |a| partitions(&a).collect());
        self.assigned.store(!held.is_empty(), Ordering::SeqCst);
        self.lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tp, _| held.contains(tp));
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

pub(crate) type KafkaConsumer = StreamConsumer<SourceContext>;

/// What the source stage is built with: the group, its topics and consumer properties, the
/// commit and rebalance timings, the in-flight budget, the input rules admission applies, and
/// the limits of its waits.
#[derive(Debug, Clone)]
pub(crate) struct SourceSettings {
    pub(crate) client: ClientSettings,
    /// `kafka.group_id`.
    pub(crate) group_id: String,
    /// `kafka.input_topics`.
    pub(crate) topics: Vec<String>,
    /// `kafka.consumer_properties`.
    pub(crate) consumer_properties: BTreeMap<String, String>,
    /// `kafka.revoke_wait_ms`.
    pub(crate) revoke_wait: Duration,
    /// `kafka.commit_interval_ms`.
    pub(crate) commit_interval: Duration,
    /// `kafka.transaction_max_messages`.
    pub(crate) transaction_max_messages: u64,
    pub(crate) backpressure: BackpressureSettings,
    pub(crate) input: InputSettings,
    /// `shutdown.timeout_ms`: the wait for acknowledgements before the final commit.
    pub(crate) shutdown_timeout: Duration,
}

impl SourceSettings {
    pub(crate) fn from_settings(s: &Settings) -> SourceSettings {
        SourceSettings {
            client: ClientSettings::from_settings(s),
            group_id: s.kafka.group_id.clone(),
            topics: s.kafka.input_topics.clone(),
            consumer_properties: s.kafka.consumer_properties.clone(),
            revoke_wait: Duration::from_millis(s.kafka.revoke_wait_ms),
            commit_interval: s.kafka.commit_interval(),
            transaction_max_messages: s.kafka.transaction_max_messages,
            backpressure: s.backpressure.clone(),
            input: s.input.clone(),
            shutdown_timeout: Duration::from_millis(s.shutdown.timeout_ms),
        }
    }
}

/// The group member, subscribed to the input topics; its acknowledgements go to `ledger`.
pub(crate) fn consumer(
    s: &SourceSettings,
    ledger: Arc<Ledger>,
    hooks: ClientHooks,
    txn: Option<Arc<Transactions>>,
) -> Result<Arc<KafkaConsumer>> {
    let mut c = client_config(&s.client);
    c.set("group.id", &s.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A rebalance moves only the partitions that change owner; the others keep flowing.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", "2000")
        // Prefetch 4 MiB (about 20 s of comments at full speed), not librdkafka's 64 MiB: the
        // daemon already holds up to backpressure.max_in_flight_* itself, and a backlog
        // should wait in Kafka, not in memory (30 MiB less RSS on a 1M backlog, BENCHMARKS.md).
        .set("queued.max.messages.kbytes", "4096");
    for (k, v) in &s.consumer_properties {
        c.set(k, v);
    }
    if txn.is_some() {
        // Exactly-once needs read_committed: it also makes a new owner's offset fetch wait for
        // a transaction still committing offsets (no pre-commit offsets, no duplicates).
        c.set("isolation.level", "read_committed");
    }
    let ctx = SourceContext {
        ledger,
        hooks,
        revoke_wait: s.revoke_wait,
        assigned: AtomicBool::new(false),
        abandoning: AtomicBool::new(false),
        txn,
        lag: Default::default(),
        held: Default::default(),
    };
    let consumer: KafkaConsumer = c
        .create_with_context(ctx)
        .context("creating Kafka consumer")?;
    let topics: Vec<&str> = s.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {topics:?}"))?;
    Ok(Arc::new(consumer))
}

/// Commits every tracked partition's commit point.
fn commit(consumer: &KafkaConsumer, mode: CommitMode) -> Result<()> {
    let points = consumer.context().ledger.commit_points();
    if points.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), o) in points {
        tpl.add_partition_offset(&topic, p, Offset::Offset(o))?;
    }
    consumer.commit(&tpl, mode).context("committing offsets")
}

/// After a fatal fault: commits what was acknowledged and leaves the group (bounded), so the
/// partitions move to another member now rather than after the session times out.
pub(crate) async fn abandon(consumer: &KafkaConsumer) {
    consumer.context().abandoning.store(true, Ordering::SeqCst);
    if let Some(txn) = &consumer.context().txn {
        // Whatever the fault left half-done is not committed: the open transaction aborts and
        // the next owner reads from the last committed offsets.
        tokio::task::block_in_place(|| txn.abandon());
    } else if let Err(e) = commit(consumer, CommitMode::Sync) {
        tracing::error!(error = %format!("{e:#}"), "commit after a fatal fault failed");
    }
    consumer.unsubscribe();
    // The source task, if alive, serves the revoke (and its commit) on its next poll.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while consumer.context().assigned.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

pub(crate) struct SourceStage {
    pub(crate) consumer: Arc<KafkaConsumer>,
    pub(crate) settings: SourceSettings,
    pub(crate) pending_tx: mpsc::Sender<Admitted>,
    pub(crate) stop: Arc<Notify>,
    /// input.format = "schema_registry": the decoder of framed values.
    pub(crate) schemas: Option<Arc<InputSchemas>>,
}

/// Exactly-once: the transaction boundary running on a blocking thread, if any. The source keeps
/// polling meanwhile (a commit retrying through a coordinator outage does not cost the group
/// membership: the budget fills, the partitions pause, the consumer is still polled).
#[derive(Default)]
pub(super) struct Settling(Option<tokio::task::JoinHandle<()>>);

impl Settling {
    /// Starts a boundary unless one is under way; whether it started one.
    fn start(&mut self, consumer: &Arc<KafkaConsumer>, txn: &Arc<Transactions>) -> bool {
        if self.0.as_ref().is_some_and(|h| !h.is_finished()) {
            return false;
        }
        let (consumer, txn) = (consumer.clone(), txn.clone());
        self.0 = Some(tokio::task::spawn_blocking(move || {
            let c = &*consumer;
            let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.context().settle_transaction(c, &txn)
            }));
            // A boundary that panicked left its transaction in an unknown state.
            if let Err(p) = settled {
                let why = crate::daemon::supervise::panic_message(&*p);
                let faults = &c.context().hooks.faults;
                faults.fatal(format!("the transaction boundary panicked: {why}"));
            }
        }));
        true
    }

    /// Waits for the boundary under way to end.
    async fn wait(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.await;
        }
    }
}

/// What became of a consumed message at admission (kafka/framed_input.rs).
pub(super) enum Admission {
    Admitted(Admitted),
    /// An abort (exactly-once) came while the message waited: it is read again after the
    /// rewind, so it goes no further now.
    Stale,
    /// Stop came while the message waited: it goes unacknowledged and is read again later.
    Stop,
}

/// What one turn of the source's loop got.
enum Turn {
    Stop,
    Commit,
    Message(Origin),
    /// Nothing to hand on (a released token, a consumer error, a paused tick).
    Idle,
}

impl SourceStage {
    fn ledger(&self) -> &Arc<Ledger> {
        &self.consumer.context().ledger
    }

    fn origin(&self, msg: &BorrowedMessage<'_>) -> Origin {
        let payload = msg.payload().map(<[u8]>::to_vec);
        let key = msg.key().map(<[u8]>::to_vec);
        let headers = msg.headers().map(|h| h.detach());
        let header_summary = headers::summary(headers.as_ref());
        let topic = msg.topic().to_string();
        // Everything the message holds in memory counts toward the in-flight budget.
        let bytes = payload.as_ref().map_or(0, Vec::len)
            + key.as_ref().map_or(0, Vec::len)
            + header_summary.bytes;
        let ack = self
            .ledger()
            .issue((topic.clone(), msg.partition()), msg.offset(), bytes);
        Origin {
            position: Position {
                topic,
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp_ms: msg.timestamp().to_millis(),
            },
            key,
            headers,
            header_summary,
            payload,
            decoded: None,
            ack,
            reply: None,
        }
    }

    fn set_paused(&self, paused: &mut bool, pause: bool) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let r = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match r {
            Ok(()) => {
                if pause && !*paused {
                    metrics::counter!("emostream_source_pauses_total").increment(1);
                }
                *paused = pause;
                metrics::gauge!("emostream_source_paused").set(if pause { 1.0 } else { 0.0 });
                tracing::debug!(
                    pause,
                    "partitions {}",
                    if pause { "paused" } else { "resumed" }
                );
            }
            Err(e) => tracing::warn!(error = %e, pause, "pause/resume failed"),
        }
    }

    /// Waits for the next thing to do. The consumer is polled whether paused or not: paused
    /// partitions deliver nothing, but the poll serves rebalances and keeps this member inside
    /// `max.poll.interval.ms`. While paused, a released token or the recheck may resume (or
    /// pause partitions assigned meanwhile). The commit tick comes either way.
    async fn next_turn(
        &self,
        paused: &mut bool,
        tick: &mut tokio::time::Interval,
        recheck: &mut tokio::time::Interval,
    ) -> Turn {
        let bp = &self.settings.backpressure;
        let (max_messages, max_bytes) = (bp.max_in_flight_messages, bp.max_in_flight_bytes);
        let is_paused = *paused;
        tokio::select! {
            _ = self.stop.notified() => Turn::Stop,
            _ = tick.tick() => Turn::Commit,
            _ = self.ledger().released(), if is_paused => {
                if self.ledger().drained(max_messages, max_bytes) {
                    self.set_paused(paused, false);
                }
                Turn::Idle
            }
            // Its own interval, so neither the commit tick nor a stream of releases can
            // starve it (a release missed outside this select! would leave us paused).
            _ = recheck.tick(), if is_paused => {
                // Partitions assigned while paused start unpaused: pause them too.
                let resume = self.ledger().drained(max_messages, max_bytes);
                self.set_paused(paused, !resume);
                Turn::Idle
            }
            m = self.consumer.recv() => match m {
                Ok(msg) => {
                    metrics::counter!("emostream_consumed_total").increment(1);
                    self.consumer.context().hooks.cluster.seen_up();
                    Turn::Message(self.origin(&msg))
                }
                Err(KafkaError::MessageConsumptionFatal(code)) => {
                    self.consumer.context().hooks.faults.fatal(format!("Kafka consumer fatal error: {code}"));
                    Turn::Stop
                }
                Err(e) => {
                    let code = e.rdkafka_error_code().map_or_else(|| "other".to_string(), |c| format!("{c:?}"));
                    metrics::counter!("emostream_consumer_errors_total", "code" => code).increment(1);
                    tracing::warn!(error = %e, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Turn::Idle
                }
            },
        }
    }

    /// Reads until `stop` is notified or the downstream closes; then lets the pipeline drain
    /// (bounded by `shutdown.timeout_ms`) and makes the final commit.
    pub(crate) async fn run(self) {
        let bp = &self.settings.backpressure;
        let every = self.settings.commit_interval;
        let mut tick = tokio::time::interval(every);
        let mut recheck = tokio::time::interval(Duration::from_millis(200));
        // Not polled while unpaused: no burst of missed rechecks when a pause begins.
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paused = false;
        let mut since_commit: u64 = 0;
        let txn_max = self.settings.transaction_max_messages;
        // Exactly-once: the transaction boundary under way, on a blocking thread.
        let mut settling = Settling::default();
        loop {
            if !self.rewound().await {
                continue;
            }
            match self.next_turn(&mut paused, &mut tick, &mut recheck).await {
                Turn::Stop => break,
                Turn::Idle => {}
                Turn::Commit => {
                    if self.periodic_commit(&mut settling) {
                        since_commit = 0;
                    }
                }
                // An abort during the poll (a revoke): this message is read again after the
                // rewind; handing it on now would label it twice.
                Turn::Message(_) if self.rewind_pending() => {}
                Turn::Message(origin) => {
                    // A stop while the pipeline is full (or while the schema registry is
                    // waited for) must still reach finish(): the message in hand is then
                    // dropped unacknowledged and read again after a restart.
                    let admitted = match self.admission(origin, &mut tick, &mut settling).await {
                        Admission::Admitted(a) => a,
                        Admission::Stale => continue,
                        Admission::Stop => break,
                    };
                    // Wait for room downstream, committing on the tick meanwhile: on a backlog
                    // the pipeline is full most of the time, and commits would otherwise wait
                    // for the next batch to leave. (Exactly-once too: this message is not
                    // acknowledged and nothing after it was consumed, so its partition's
                    // commit point stops before it.)
                    let room = loop {
                        tokio::select! {
                            p = self.pending_tx.reserve() => break p.ok(),
                            _ = tick.tick() => {
                                if self.periodic_commit(&mut settling) {
                                    since_commit = 0;
                                }
                            }
                            _ = self.stop.notified() => break None,
                        }
                    };
                    let Some(room) = room else { break };
                    room.send(admitted);
                    if self
                        .ledger()
                        .over(bp.max_in_flight_messages, bp.max_in_flight_bytes)
                    {
                        self.set_paused(&mut paused, true);
                    }
                    since_commit += 1;
                    // Exactly-once: commit early when the transaction is full, abort at once
                    // when one of its records failed (whatever follows would be thrown away).
                    let txn = self.consumer.context().txn.as_ref();
                    if txn.is_some_and(|t| since_commit >= txn_max || t.must_abort())
                        && self.periodic_commit(&mut settling)
                    {
                        since_commit = 0;
                    }
                }
            }
        }
        settling.wait().await;
        self.finish().await;
    }

    pub(super) fn rewind_pending(&self) -> bool {
        self.consumer
            .context()
            .txn
            .as_ref()
            .is_some_and(|t| t.rewind_requested())
    }

    /// Exactly-once, after an abort: every assigned partition goes back to its committed
    /// offset (the beginning when none) before anything more is handed on. False while that
    /// fails (e.g. the coordinator is unreachable); the abort stays pending and is retried.
    async fn rewound(&self) -> bool {
        let Some(txn) = &self.consumer.context().txn else {
            return true;
        };
        if !txn.rewind_requested() {
            return true;
        }
        let consumer = &self.consumer;
        let r = blocking(|| -> Result<(usize, bool)> {
            let assignment = consumer.assignment().context("reading the assignment")?;
            let committed = consumer
                .committed_offsets(assignment, Duration::from_secs(10))
                .context("reading committed offsets")?;
            // Read past a committed offset: the abort threw that work away, to be redone.
            let position = consumer.position().context("reading the positions")?;
            let mut redo = false;
            let mut seek = TopicPartitionList::new();
            for e in committed.elements() {
                // A partition whose committed offset could not be read is not "no offset":
                // retry rather than read it from the beginning.
                e.error().with_context(|| {
                    format!("committed offset of {}/{}", e.topic(), e.partition())
                })?;
                let to = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::Beginning,
                };
                let at = position.find_partition(e.topic(), e.partition());
                redo |= match (at.map(|p| p.offset()), to) {
                    (Some(Offset::Offset(at)), Offset::Offset(c)) => at > c,
                    (Some(Offset::Offset(_)), _) => true,
                    _ => false,
                };
                seek.add_partition_offset(e.topic(), e.partition(), to)?;
            }
            let n = seek.count();
            if n > 0 {
                let done = consumer
                    .seek_partitions(seek, Duration::from_secs(10))
                    .context("seeking to the committed offsets")?;
                // A partition whose seek failed would keep its position and skip the span
                // the abort threw away.
                for e in done.elements() {
                    e.error()
                        .with_context(|| format!("seeking {}/{}", e.topic(), e.partition()))?;
                }
            }
            Ok((n, redo))
        });
        match r {
            Ok((n, redo)) => {
                // Anything consumed before the seek is stale; what is read from here is not.
                self.ledger().rewound();
                txn.rewind_done(redo);
                metrics::counter!("emostream_transaction_rewinds_total").increment(1);
                tracing::info!(
                    partitions = n,
                    redo,
                    "rewound to the committed offsets after an abort"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "rewind after an abort failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                false
            }
        }
    }

    /// Commits (exactly-once: starts settling the transaction on a blocking thread, unless a
    /// boundary is under way already; reading goes on meanwhile). Whether it did.
    pub(super) fn periodic_commit(&self, settling: &mut Settling) -> bool {
        if let Some(txn) = &self.consumer.context().txn {
            return settling.start(&self.consumer, txn);
        }
        // While no broker answers, each async commit would only queue up and fail together
        // when the cluster returns; the next tick after that commits the same points.
        if !self.consumer.context().hooks.cluster.reachable() {
            return true;
        }
        if let Err(e) = commit(&self.consumer, CommitMode::Async) {
            tracing::warn!(error = %format!("{e:#}"), "periodic commit failed");
        }
        for ((topic, p), o) in self.ledger().stalled(Duration::from_secs(60)) {
            tracing::warn!(
                topic,
                partition = p,
                offset = o,
                "oldest in-flight message is over 60 s old"
            );
        }
        true
    }

    /// Waits until every token in flight resolves, or `deadline`.
    async fn wait_in_flight(&self, deadline: tokio::time::Instant) {
        let ledger = self.ledger();
        while ledger.in_flight() > 0 {
            tokio::select! {
                _ = ledger.released() => {}
                // A token may resolve between the check and the wait: look again soon.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    /// Closes the pipeline's input, waits (bounded) until every token in flight resolves,
    /// commits what was acknowledged (exactly-once: settles the transaction) and leaves the
    /// group.
    async fn finish(mut self) {
        // Closing the input lets the batcher flush its last partial batch.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.pending_tx, closed));
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        self.wait_in_flight(deadline).await;
        let consumer = self.consumer.clone();
        let ledger = consumer.context().ledger.clone();
        let left = ledger.unacknowledged();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "shutdown: committing what was acknowledged; the rest will be re-read"
            );
        }
        if let Some(txn) = &consumer.context().txn {
            let c = &*consumer;
            blocking(|| c.context().settle_transaction(c, txn));
        } else if let Err(e) = commit(&consumer, CommitMode::Sync) {
            tracing::error!(error = %format!("{e:#}"), "final commit failed");
        }
        // The in-flight wait is done: the revoke that leaving triggers commits at once.
        consumer.context().abandoning.store(true, Ordering::SeqCst);
        consumer.unsubscribe();
        tracing::info!(in_flight = left, "source stopped");
    }
}
