//! The source: a Kafka consumer-group member that reads the input topics, decodes each message
//! and hands it on, tracks every offset until the sink acknowledges it, pauses its partitions
//! when too much is in flight, and commits only acknowledged offsets (periodically, on revoke
//! and at shutdown).

use crate::daemon::ack::OffsetTracker;
use crate::daemon::config::Settings;
use crate::daemon::kafka::client::client_config;
use crate::daemon::pipeline::event::Source as SourceRef;
use crate::daemon::pipeline::{admit, Origin, Outcome, Pending};
use crate::daemon::telemetry::InFlight;
use anyhow::{Context, Result};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

/// Rebalance and statistics callbacks.
pub struct SourceContext {
    pub tracker: Arc<Mutex<OffsetTracker>>,
    pub assigned: AtomicBool,
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
            {
                let mut t = self.tracker.lock().expect("offset tracker lock");
                for e in tpl.elements() {
                    if let Some(o) = t.remove(&(e.topic().to_string(), e.partition())) {
                        let _ = commit.add_partition_offset(
                            e.topic(),
                            e.partition(),
                            Offset::Offset(o),
                        );
                    }
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

pub type KafkaConsumer = StreamConsumer<SourceContext>;

pub fn consumer(s: &Settings, tracker: Arc<Mutex<OffsetTracker>>) -> Result<Arc<KafkaConsumer>> {
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
        tracker,
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
pub fn commit(
    consumer: &KafkaConsumer,
    tracker: &Mutex<OffsetTracker>,
    mode: CommitMode,
) -> Result<()> {
    let points = tracker.lock().expect("offset tracker lock").commit_points();
    if points.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), o) in points {
        tpl.add_partition_offset(&topic, p, Offset::Offset(o))?;
    }
    consumer.commit(&tpl, mode).context("committing offsets")
}

pub struct SourceStage {
    pub consumer: Arc<KafkaConsumer>,
    pub settings: Settings,
    pub tracker: Arc<Mutex<OffsetTracker>>,
    pub in_flight: Arc<InFlight>,
    pub pending_tx: mpsc::Sender<Pending>,
    pub outcome_tx: mpsc::Sender<Outcome>,
    pub stop: Arc<Notify>,
}

impl SourceStage {
    fn origin(msg: &BorrowedMessage<'_>) -> Origin {
        Origin {
            source: SourceRef {
                topic: msg.topic().to_string(),
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp_ms: msg.timestamp().to_millis(),
            },
            key: msg.key().map(<[u8]>::to_vec),
            headers: msg.headers().map(|h| h.detach()),
            payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            received: Instant::now(),
        }
    }

    fn set_paused(&self, pause: bool) {
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
                let was = self.in_flight.paused.swap(pause, Ordering::SeqCst);
                if pause && !was {
                    metrics::counter!("emostream_source_pauses_total").increment(1);
                }
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

    /// Reads until `stop` is notified or the downstream closes.
    pub async fn run(self) {
        let bp = &self.settings.backpressure;
        loop {
            if self.in_flight.paused.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = self.stop.notified() => return,
                    _ = self.in_flight.released.notified() => {
                        if self.in_flight.drained(bp.max_in_flight_messages, bp.max_in_flight_bytes) {
                            self.set_paused(false);
                        }
                        continue;
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                        if self.in_flight.drained(bp.max_in_flight_messages, bp.max_in_flight_bytes) {
                            self.set_paused(false);
                        } else {
                            // Partitions assigned while paused start unpaused: pause them too.
                            self.set_paused(true);
                        }
                        continue;
                    }
                }
            }
            let msg = tokio::select! {
                _ = self.stop.notified() => return,
                m = self.consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            metrics::counter!("emostream_consumed_total").increment(1);
            let origin = Self::origin(&msg);
            drop(msg);
            self.tracker.lock().expect("offset tracker lock").track(
                &(origin.source.topic.clone(), origin.source.partition),
                origin.source.offset,
            );
            self.in_flight.acquire(origin.payload.len());
            let sent = match admit(origin, &self.settings.input) {
                Ok(p) => self.pending_tx.send(p).await.is_ok(),
                Err(rejected) => self.outcome_tx.send(rejected).await.is_ok(),
            };
            if !sent {
                return;
            }
            if self
                .in_flight
                .over(bp.max_in_flight_messages, bp.max_in_flight_bytes)
            {
                self.set_paused(true);
            }
        }
    }
}
