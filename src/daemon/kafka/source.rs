//! The source: a Kafka consumer-group member that reads the input topics, decodes each message
//! and hands it on with its acknowledgement token, pauses its partitions when too much is in
//! flight, and is the only stage that commits: the ledger's commit points, periodically, on
//! revoke and at shutdown (after waiting, bounded, for what is in flight).

use crate::daemon::ack::Ledger;
use crate::daemon::config::Settings;
use crate::daemon::kafka::client::client_config;
use crate::daemon::pipeline::event::Source as SourceRef;
use crate::daemon::pipeline::{admit, Admitted, Origin};
use anyhow::{Context, Result};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Rebalance and statistics callbacks.
pub(crate) struct SourceContext {
    ledger: Arc<Ledger>,
    pub(crate) assigned: AtomicBool,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    metrics::gauge!("emostream_consumer_lag", "topic" => topic.clone(), "partition" => p.to_string()).set(part.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what was acknowledged on the partitions we are losing, then forget them:
            // late acknowledgements for them are ignored and the new owner re-reads the rest.
            let mut commit = TopicPartitionList::new();
            for e in tpl.elements() {
                let tp = (e.topic().to_string(), e.partition());
                if let Some(o) = self.ledger.revoke(&tp) {
                    let _ =
                        commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
                }
            }
            if commit.count() > 0 {
                if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                    tracing::warn!(error = %e, "commit on revoke failed");
                }
            }
            self.assigned.store(false, Ordering::SeqCst);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
            self.assigned.store(true, Ordering::SeqCst);
        }
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

/// The group member, subscribed to the input topics; its acknowledgements go to `ledger`.
pub(crate) fn consumer(s: &Settings, ledger: Arc<Ledger>) -> Result<Arc<KafkaConsumer>> {
    let mut c = client_config(s);
    c.set("group.id", &s.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000");
    for (k, v) in &s.kafka.consumer_properties {
        c.set(k, v);
    }
    let ctx = SourceContext {
        ledger,
        assigned: AtomicBool::new(false),
    };
    let consumer: KafkaConsumer = c
        .create_with_context(ctx)
        .context("creating Kafka consumer")?;
    let topics: Vec<&str> = s.kafka.input_topics.iter().map(String::as_str).collect();
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

pub(crate) struct SourceStage {
    pub(crate) consumer: Arc<KafkaConsumer>,
    pub(crate) settings: Settings,
    pub(crate) pending_tx: mpsc::Sender<Admitted>,
    pub(crate) stop: Arc<Notify>,
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
        let payload = msg.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let topic = msg.topic().to_string();
        let ack = self.ledger().issue(
            (topic.clone(), msg.partition()),
            msg.offset(),
            payload.len(),
        );
        Origin {
            source: SourceRef {
                topic,
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp_ms: msg.timestamp().to_millis(),
            },
            key: msg.key().map(<[u8]>::to_vec),
            headers: msg.headers().map(|h| h.detach()),
            payload,
            ack,
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

    /// Waits for the next thing to do: while paused, a released token or the recheck (to
    /// resume, or to pause partitions assigned meanwhile); otherwise the next message. The
    /// commit tick comes either way.
    async fn next_turn(
        &self,
        paused: &mut bool,
        tick: &mut tokio::time::Interval,
        recheck: &mut tokio::time::Interval,
    ) -> Turn {
        let bp = &self.settings.backpressure;
        let (max_messages, max_bytes) = (bp.max_in_flight_messages, bp.max_in_flight_bytes);
        if *paused {
            tokio::select! {
                _ = self.stop.notified() => Turn::Stop,
                _ = tick.tick() => Turn::Commit,
                _ = self.ledger().released() => {
                    if self.ledger().drained(max_messages, max_bytes) {
                        self.set_paused(paused, false);
                    }
                    Turn::Idle
                }
                // Its own interval, so neither the commit tick nor a stream of releases can
                // starve it (a release missed outside this select! would leave us paused).
                _ = recheck.tick() => {
                    // Partitions assigned while paused start unpaused: pause them too.
                    let resume = self.ledger().drained(max_messages, max_bytes);
                    self.set_paused(paused, !resume);
                    Turn::Idle
                }
            }
        } else {
            tokio::select! {
                _ = self.stop.notified() => Turn::Stop,
                _ = tick.tick() => Turn::Commit,
                m = self.consumer.recv() => match m {
                    Ok(msg) => {
                        metrics::counter!("emostream_consumed_total").increment(1);
                        Turn::Message(self.origin(&msg))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Turn::Idle
                    }
                },
            }
        }
    }

    /// Reads until `stop` is notified or the downstream closes; then lets the pipeline drain
    /// (bounded by `shutdown.timeout_ms`) and makes the final commit.
    pub(crate) async fn run(self) {
        let bp = &self.settings.backpressure;
        let every = Duration::from_millis(self.settings.kafka.commit_interval_ms);
        let mut tick = tokio::time::interval(every);
        let mut recheck = tokio::time::interval(Duration::from_millis(200));
        // Not polled while unpaused: no burst of missed rechecks when a pause begins.
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paused = false;
        loop {
            match self.next_turn(&mut paused, &mut tick, &mut recheck).await {
                Turn::Stop => break,
                Turn::Idle => {}
                Turn::Commit => self.periodic_commit(),
                Turn::Message(origin) => {
                    // A stop while the pipeline is full must still reach finish(): the message
                    // in hand is then dropped unacknowledged and read again after a restart.
                    let admitted = admit(origin, &self.settings.input);
                    let sent = tokio::select! {
                        r = self.pending_tx.send(admitted) => r.is_ok(),
                        _ = self.stop.notified() => false,
                    };
                    if !sent {
                        break;
                    }
                    if self
                        .ledger()
                        .over(bp.max_in_flight_messages, bp.max_in_flight_bytes)
                    {
                        self.set_paused(&mut paused, true);
                    }
                }
            }
        }
        self.finish().await;
    }

    fn periodic_commit(&self) {
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
    }

    /// Closes the pipeline's input, waits (bounded) until every token in flight resolves,
    /// commits what was acknowledged and leaves the group.
    async fn finish(self) {
        let SourceStage {
            consumer,
            settings,
            pending_tx,
            ..
        } = self;
        drop(pending_tx);
        let ledger = consumer.context().ledger.clone();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(settings.shutdown.timeout_ms);
        while ledger.in_flight() > 0 {
            tokio::select! {
                _ = ledger.released() => {}
                // A token may resolve between the check and the wait: look again soon.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let left = ledger.unacknowledged();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "shutdown: committing what was acknowledged; the rest will be re-read"
            );
        }
        if let Err(e) = commit(&consumer, CommitMode::Sync) {
            tracing::error!(error = %format!("{e:#}"), "final commit failed");
        }
        consumer.unsubscribe();
        tracing::info!(in_flight = left, "source stopped");
    }
}
