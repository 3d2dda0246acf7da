//! The sink: produces label events to the output topic (keyed like the input, input headers
//! carried over) and rejections to the dead-letter topic, then acknowledges the source offset.
//!
//! Transient is not permanent: a produce error that retrying can fix (broker down, leader
//! moving, request timeout, unknown topic, ...) is retried with capped backoff for as long as it
//! lasts — the message stays in flight, so the source pauses at its budget and readiness shows
//! the outage — and never sends a good comment to the dead-letter topic. Only errors retrying
//! cannot fix (record too large, invalid record, not authorised) dead-letter an event. A
//! dead-letter record always fits: its payload and headers are cut to the admitted limits, and
//! cut further if the topic still refuses its size. docs/delivery.md has the whole table.

use crate::daemon::config::Settings;
use crate::daemon::kafka::client::{Cluster, KafkaProducer};
use crate::daemon::kafka::headers;
use crate::daemon::kafka::topic_limits::{record_size, TopicLimits};
use crate::daemon::kafka::transaction::Transactions;
use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::{Origin, Outcome};
use crate::daemon::supervise::{stage_ended, Faults};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What a produce error means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Retrying can fix it: the cluster is down, moving or slow, or the topic is missing.
    Transient,
    /// The record is larger than the producer or the topic accepts.
    TooLarge,
    /// Retrying cannot fix it (invalid record, not authorised, refused by policy).
    Permanent,
}

/// Which side of the line a librdkafka produce error falls on (docs/delivery.md lists them).
pub(crate) fn fault_of(e: &KafkaError) -> Fault {
    use RDKafkaErrorCode::*;
    match e.rdkafka_error_code() {
        Some(MessageSizeTooLarge | MessageBatchTooLarge | InvalidMessageSize) => Fault::TooLarge,
        Some(
            InvalidMessage
            | InvalidRecord
            | BadMessage
            | InvalidArgument
            | InvalidTopic
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | PolicyViolation
            | UnsupportedForMessageFormat,
        ) => Fault::Permanent,
        // Timeouts, transport failures, leader changes, unknown topic or partition, not enough
        // replicas, a purged queue, a cancelled delivery (the producer is closing): retry.
        _ => Fault::Transient,
    }
}

/// An event record's headers: the input's, carried over, and `extra` (CloudEvents binary
/// mode), which replaces the input's CloudEvents attributes (every `ce_*` header and
/// `content-type`: an input that was itself a CloudEvent must not lend the event its subject).
fn event_headers(origin: &Origin, extra: &[(&'static str, String)]) -> Option<OwnedHeaders> {
    if extra.is_empty() {
        return origin.headers.clone();
    }
    let mut out = Some(OwnedHeaders::new_with_capacity(extra.len() + 4));
    if let Some(h) = &origin.headers {
        headers::for_each(h.as_borrowed(), |k, v| {
            if !(k.starts_with(b"ce_") || k.eq_ignore_ascii_case(b"content-type")) {
                out = out.take().map(|o| headers::add(o, k, v));
            }
        });
    }
    let mut out = out.expect("the list is put back after each header");
    for (name, value) in extra {
        out = out.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    Some(out)
}

/// How much of the original message a dead-letter record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Key, input headers and payload, each within the admitted limits.
    Full,
    /// The topic refused Full's size: the first 16 KiB of the payload, no key, no input headers.
    Cut,
    /// Refused again: the emostream headers only.
    Bare,
}

const CUT_PAYLOAD_BYTES: usize = 16 * 1024;
/// Room kept for the truncation headers when a cut payload is sized to the topic's limit.
const TRUNCATION_HEADERS_BYTES: usize = 256;
/// The detail header's cap (an error text can embed input).
const MAX_DETAIL_BYTES: usize = 2048;

pub(crate) struct Sink {
    producer: KafkaProducer,
    output_topic: String,
    dead_letter_topic: String,
    backoff: Duration,
    max_backoff: Duration,
    /// A dead-letter record's payload and input headers are cut to these.
    max_payload: usize,
    max_headers: usize,
    cluster: Arc<Cluster>,
    /// Messages waiting out a transient fault right now (readiness reports them).
    retrying: AtomicUsize,
    /// Messages refused by both topics for good right now (the partition cannot commit past).
    undeliverable: AtomicUsize,
    /// A delivery task that panics is a fault of the sink stage.
    faults: Arc<Faults>,
    /// Exactly-once mode: records go into the open transaction, and a message is acknowledged
    /// once its record is in it (a failed record aborts the transaction instead of retrying).
    txn: Option<Arc<Transactions>>,
    /// What size of record each topic takes: a record is made to fit before it is sent
    /// (exactly-once cannot learn it from a refusal without aborting).
    limits: Arc<TopicLimits>,
}

/// Which of the sink's topics a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Output,
    DeadLetter,
}

/// What handing a record to the transactional producer gave.
enum Sent {
    /// In the open transaction (its generation); the delivery to watch, the record's topic
    /// and size.
    Queued(rdkafka::producer::DeliveryFuture, u64, Target, usize),
    /// The message's partition was rewound or revoked since it was consumed: not sent.
    Stale,
    /// Refused before it left (e.g. too large for the producer).
    Refused(KafkaError, u64),
}

/// Where the sink writes and how it retries.
#[derive(Debug, Clone)]
pub(crate) struct SinkSettings {
    /// `kafka.output_topic`.
    pub(crate) output_topic: String,
    /// `kafka.dead_letter_topic`.
    pub(crate) dead_letter_topic: String,
    /// `kafka.produce_backoff_ms` and `kafka.produce_backoff_max_ms`.
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    /// `input.max_message_bytes` and `input.max_header_bytes`: a dead-letter record's payload
    /// and input headers are cut to what admission allowed.
    pub(crate) max_payload: usize,
    pub(crate) max_headers: usize,
}

impl SinkSettings {
    pub(crate) fn from_settings(s: &Settings) -> SinkSettings {
        SinkSettings {
            output_topic: s.kafka.output_topic.clone(),
            dead_letter_topic: s.kafka.dead_letter_topic.clone(),
            backoff: Duration::from_millis(s.kafka.produce_backoff_ms),
            max_backoff: Duration::from_millis(s.kafka.produce_backoff_max_ms),
            max_payload: s.input.max_message_bytes,
            max_headers: s.input.max_header_bytes,
        }
    }
}

impl Sink {
    pub(crate) fn new(
        producer: KafkaProducer,
        s: SinkSettings,
        cluster: Arc<Cluster>,
        faults: Arc<Faults>,
        txn: Option<Arc<Transactions>>,
        limits: Arc<TopicLimits>,
    ) -> Sink {
        Sink {
            producer,
            output_topic: s.output_topic,
            dead_letter_topic: s.dead_letter_topic,
            backoff: s.backoff,
            max_backoff: s.max_backoff,
            max_payload: s.max_payload,
            max_headers: s.max_headers,
            cluster,
            retrying: AtomicUsize::new(0),
            undeliverable: AtomicUsize::new(0),
            faults,
            txn,
            limits,
        }
    }

    /// Messages refused for good by both the output and the dead-letter topic right now.
    pub(crate) fn undeliverable(&self) -> usize {
        self.undeliverable.load(Ordering::SeqCst)
    }

    /// Messages waiting out a transient produce fault right now.
    pub(crate) fn retrying(&self) -> usize {
        self.retrying.load(Ordering::SeqCst)
    }

    /// Consumes outcomes until the channel closes, then waits for every delivery to finish.
    pub(crate) async fn run(self: Arc<Self>, rx: mpsc::Receiver<Outcome>) {
        if let Some(txn) = self.txn.clone() {
            return self.run_transactional(&txn, rx).await;
        }
        let mut rx = rx;
        let mut tasks = JoinSet::new();
        while let Some(o) = rx.recv().await {
            // Enqueue in arrival order (per-key order), then await delivery concurrently.
            let sink = self.clone();
            match o {
                Outcome::Labelled {
                    event,
                    origin,
                    fired,
                    headers,
                } => {
                    let first = sink
                        .enqueue(
                            &sink.output_topic,
                            origin.key.as_deref(),
                            Some(&event),
                            event_headers(&origin, &headers),
                        )
                        .await;
                    let record = (event, headers);
                    tasks.spawn(
                        async move { sink.deliver_event(record, origin, fired, first).await },
                    );
                }
                Outcome::Rejected(r) => {
                    tasks
                        .spawn(async move { sink.dead_letter(r.reason, r.detail, r.origin).await });
                }
            }
            while let Some(done) = tasks.try_join_next() {
                self.check(done);
            }
        }
        while let Some(done) = tasks.join_next().await {
            self.check(done);
        }
    }

    /// Exactly-once: outcomes enter the open transaction in arrival order. While a transaction
    /// boundary is under way, those that arrive are held here, in order, and enter the next
    /// transaction once it opens: the workers never wait for a commit.
    async fn run_transactional(
        self: &Arc<Self>,
        txn: &Arc<Transactions>,
        mut rx: mpsc::Receiver<Outcome>,
    ) {
        let mut tasks = JoinSet::new();
        let mut held = Held::default();
        let mut open = true;
        loop {
            let o = match held.pop() {
                Some(o) => o,
                None if !open => break,
                None => match rx.recv().await {
                    Some(o) => o,
                    None => break,
                },
            };
            if txn.boundary_under_way() {
                held.push_front(o);
                let over = txn.boundary_over();
                tokio::pin!(over);
                loop {
                    tokio::select! {
                        _ = &mut over => break,
                        o = rx.recv(), if open => match o {
                            Some(o) => held.push_back(o),
                            None => open = false,
                        },
                    }
                }
                continue;
            }
            self.transactional(txn, o, &mut tasks).await;
            while let Some(done) = tasks.try_join_next() {
                self.check(done);
            }
        }
        while let Some(done) = tasks.join_next().await {
            self.check(done);
        }
    }

    /// A delivery task that panicked dropped its message's token: the offset is held and the
    /// process must restart to read it again.
    fn check(&self, done: Result<(), tokio::task::JoinError>) {
        if let Err(e) = done {
            self.faults.fatal(stage_ended("sink", Err(e)));
        }
    }

    /// Hands a record to librdkafka (waiting while its queue is full); the delivery to await.
    async fn enqueue(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        let mut rec = record(topic, key, payload, headers);
        loop {
            // A full queue hands the record back: retry with it, no copy of its headers.
            match self.producer.send_result(rec) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Exactly-once mode: puts the outcome's record into the open transaction, acknowledging
    /// the message in the same step (the commit delivers the record or fails); a delivery that
    /// fails later marks the transaction for abort. A record too large for the producer is
    /// dead-lettered (cut if need be) as in at-least-once mode; any other refusal aborts.
    async fn transactional(
        self: &Arc<Self>,
        txn: &Arc<Transactions>,
        o: Outcome,
        tasks: &mut JoinSet<()>,
    ) {
        let (reason, detail, origin, event, fired) = match o {
            Outcome::Labelled {
                event,
                origin,
                fired,
                headers,
            } => (None, String::new(), origin, Some((event, headers)), fired),
            Outcome::Rejected(r) => (Some(r.reason), r.detail, r.origin, None, Vec::new()),
        };
        let record = event.as_ref().map(|(e, h)| (e.as_slice(), h.as_slice()));
        let sent = self
            .send_fitting(txn, record, fired, reason, detail, &origin)
            .await;
        match sent {
            Sent::Queued(delivery, generation, topic, size) => {
                end_to_end(&origin.position);
                self.watch_delivery(txn, delivery, generation, (topic, size), tasks);
            }
            // Its partition is read again (or by another member): nothing to answer for.
            Sent::Stale => drop(origin),
            Sent::Refused(e, generation) => {
                metrics::counter!("emostream_produce_errors_total", "topic" => "transaction", "fault" => "refused").increment(1);
                // Unacknowledged: the next commit aborts and the partition is read again.
                txn.fail(generation, format!("the producer refused a record: {e}"));
                drop(origin);
            }
        }
    }

    /// Hands the outcome's record to the open transaction: the event (with `fired`, the
    /// counters of its labels), or (`reason` set, or the event too large for the producer or
    /// the output topic) a dead letter, cut then bare while it is too large. A record over the
    /// topic's known limit is not sent at all: the broker would refuse it after the fact and
    /// fail the whole transaction. Returns what became of it.
    async fn send_fitting(
        &self,
        txn: &Transactions,
        event: Option<(&[u8], &[(&'static str, String)])>,
        mut fired: Vec<metrics::Counter>,
        mut reason: Option<Reason>,
        mut detail: String,
        origin: &Origin,
    ) -> Sent {
        let mut shape = Shape::Full;
        loop {
            // What the record counts once its transaction commits (an aborted one's messages
            // are labelled again and count then).
            let (target, key, payload, headers, counters) = match (event, reason) {
                (Some((event, extra)), None) => {
                    // Tried once as an event: a refusal makes it a dead letter, which counts
                    // otherwise.
                    let mut counters = std::mem::take(&mut fired);
                    counters.push(metrics::counter!("emostream_labelled_total"));
                    let headers = event_headers(origin, extra);
                    let key = origin.key.as_deref();
                    (Target::Output, key, Some(event), headers, counters)
                }
                (_, reason) => {
                    let reason = reason.unwrap_or(Reason::ProduceFailed);
                    let (key, payload, headers) =
                        self.dead_letter_record(reason, &detail, origin, shape);
                    let counted = metrics::counter!("emostream_dead_lettered_total", "reason" => reason.as_str());
                    (
                        Target::DeadLetter,
                        key,
                        payload,
                        Some(headers),
                        vec![counted],
                    )
                }
            };
            let topic = self.topic(target);
            let size = record_size(key, payload, headers.as_ref());
            let sent = if self.limits.fits(topic, size) {
                let rec = record(topic, key, payload, headers);
                self.send_in_transaction(txn, rec, (target, size), &origin.ack, counters)
                    .await
            } else {
                let limit = self.limits.limit(topic).unwrap_or_default();
                tracing::debug!(
                    topic,
                    size,
                    limit,
                    "record over the topic's size limit; not sent"
                );
                Sent::Refused(too_large(), txn.generation())
            };
            match sent {
                Sent::Refused(e, generation) if fault_of(&e) == Fault::TooLarge => {
                    match (reason, shape) {
                        (None, _) => {
                            reason = Some(Reason::ProduceFailed);
                            detail =
                                format!("output topic {}: {e} ({size} bytes)", self.output_topic);
                        }
                        (Some(_), Shape::Full) => shape = Shape::Cut,
                        (Some(_), Shape::Cut) => shape = Shape::Bare,
                        (Some(_), Shape::Bare) => return Sent::Refused(e, generation),
                    }
                }
                other => return other,
            }
        }
    }

    fn topic(&self, target: Target) -> &str {
        match target {
            Target::Output => &self.output_topic,
            Target::DeadLetter => &self.dead_letter_topic,
        }
    }

    /// Watches a record's delivery in the background: one that fails (not purged by an abort
    /// already under way) marks its transaction for abort; one refused for its size also
    /// lowers the topic's known limit, so the message fits when it is read again.
    fn watch_delivery(
        self: &Arc<Self>,
        txn: &Arc<Transactions>,
        delivery: rdkafka::producer::DeliveryFuture,
        generation: u64,
        (target, size): (Target, usize),
        tasks: &mut JoinSet<()>,
    ) {
        let (sink, txn) = (self.clone(), txn.clone());
        tasks.spawn(async move {
            match sink.settle(Ok(delivery)).await {
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight,
                )) => {}
                Err(e) => {
                    if fault_of(&e) == Fault::TooLarge {
                        sink.limits.refused(sink.topic(target), size);
                    }
                    txn.fail(generation, format!("a record was not delivered: {e}"))
                }
                Ok(()) => {}
            }
        });
    }

    /// Hands one record to the transactional producer under the transaction gate and, in the
    /// same step, acknowledges its message and registers what it counts at commit: at a
    /// boundary the acknowledged messages are then exactly the transaction's records. A
    /// boundary under way (rare here: `run_transactional` holds outcomes while one is) is
    /// waited out.
    async fn send_in_transaction(
        &self,
        txn: &Transactions,
        mut rec: FutureRecord<'_, [u8], [u8]>,
        (target, size): (Target, usize),
        ack: &crate::daemon::ack::Ack,
        counters: Vec<metrics::Counter>,
    ) -> Sent {
        let mut counters = Some(counters);
        loop {
            // The gate is held only for the hand-over, never across an await.
            let back = {
                let Some((_gate, generation)) = txn.try_sending() else {
                    txn.boundary_over().await;
                    continue;
                };
                if !ack.is_current() {
                    return Sent::Stale;
                }
                match self.producer.send_result(rec) {
                    Ok(f) => {
                        txn.record_sent();
                        txn.count_on_commit(counters.take().unwrap_or_default());
                        ack.acknowledge();
                        return Sent::Queued(f, generation, target, size);
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => back,
                    Err((e, _)) => return Sent::Refused(e, generation),
                }
            };
            rec = back;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Awaits a delivery; a record on the topic also shows the cluster is reachable.
    async fn settle(
        &self,
        enqueued: Result<rdkafka::producer::DeliveryFuture, KafkaError>,
    ) -> Result<(), KafkaError> {
        match enqueued?.await {
            Ok(Ok(_)) => {
                self.cluster.seen_up();
                Ok(())
            }
            Ok(Err((e, _))) => Err(e),
            Err(_) => Err(KafkaError::Canceled),
        }
    }

    async fn deliver_event(
        &self,
        (event, headers): (Vec<u8>, Vec<(&'static str, String)>),
        origin: Origin,
        fired: Vec<metrics::Counter>,
        first: Result<rdkafka::producer::DeliveryFuture, KafkaError>,
    ) {
        let mut enqueued = first;
        let mut retry = Retry::new(self, "output");
        loop {
            match self.settle(enqueued).await {
                Ok(()) => {
                    metrics::counter!("emostream_labelled_total").increment(1);
                    fired.iter().for_each(|c| c.increment(1));
                    drop(retry);
                    delivered(origin);
                    return;
                }
                Err(e) if fault_of(&e) == Fault::Transient => retry.wait(&e, &origin).await,
                Err(e) => {
                    metrics::counter!("emostream_produce_errors_total", "topic" => "output", "fault" => "permanent").increment(1);
                    tracing::warn!(error = %e, offset = origin.position.offset, partition = origin.position.partition, "output topic refused the event for good; dead-lettering it");
                    drop(retry);
                    let detail = format!("output topic {}: {e}", self.output_topic);
                    return self
                        .dead_letter(Reason::ProduceFailed, detail, origin)
                        .await;
                }
            }
            enqueued = self
                .enqueue(
                    &self.output_topic,
                    origin.key.as_deref(),
                    Some(&event),
                    event_headers(&origin, &headers),
                )
                .await;
        }
    }

    /// Produces the original message to the dead-letter topic with a reason; retries until it
    /// is acknowledged (the offset stays unacknowledged meanwhile).
    async fn dead_letter(&self, reason: Reason, detail: String, origin: Origin) {
        let mut shape = Shape::Full;
        let mut retry = Retry::new(self, "dead_letter");
        let mut refused = false;
        loop {
            let (key, payload, headers) = self.dead_letter_record(reason, &detail, &origin, shape);
            let size = record_size(key, payload, Some(&headers));
            let enqueued = self
                .enqueue(&self.dead_letter_topic, key, payload, Some(headers))
                .await;
            match self.settle(enqueued).await {
                Ok(()) => {
                    metrics::counter!("emostream_dead_lettered_total", "reason" => reason.as_str())
                        .increment(1);
                    if refused {
                        self.count_undeliverable(false);
                    }
                    drop(retry);
                    delivered(origin);
                    return;
                }
                Err(e) => match (fault_of(&e), shape) {
                    (Fault::Transient, _) => retry.wait(&e, &origin).await,
                    (Fault::TooLarge, Shape::Full | Shape::Cut) => {
                        retry.reset();
                        self.limits.refused(&self.dead_letter_topic, size);
                        tracing::warn!(error = %e, ?shape, offset = origin.position.offset, "dead-letter topic refused the record's size; cutting it");
                        shape = if shape == Shape::Full {
                            Shape::Cut
                        } else {
                            Shape::Bare
                        };
                    }
                    _ => {
                        // Nothing a retry or a smaller record can fix (e.g. not authorised):
                        // hold the partition, show it in readiness and health, keep trying in
                        // case an operator fixes the topic.
                        metrics::counter!("emostream_produce_errors_total", "topic" => "dead_letter", "fault" => "permanent").increment(1);
                        // Refused for good, not waiting out a fault: readiness and health must
                        // see a stalled message, not an outage.
                        retry.reset();
                        if !refused {
                            refused = true;
                            self.count_undeliverable(true);
                        }
                        tracing::error!(error = %e, reason = reason.as_str(), topic = %origin.position.topic, partition = origin.position.partition, offset = origin.position.offset,
                            "dead-letter topic refused message; its partition cannot commit past it until it is delivered");
                        tokio::time::sleep(self.max_backoff).await;
                    }
                },
            }
        }
    }

    /// Key, payload and headers of a dead-letter record in the given shape.
    fn dead_letter_record<'a>(
        &self,
        reason: Reason,
        detail: &str,
        origin: &'a Origin,
        shape: Shape,
    ) -> (Option<&'a [u8]>, Option<&'a [u8]>, OwnedHeaders) {
        let payload = origin.payload.as_deref();
        let input_headers = origin.header_summary;
        let carry_headers = shape == Shape::Full && input_headers.bytes <= self.max_headers;
        let mut h = match (&origin.headers, carry_headers) {
            // A native copy: keys are carried as the producer sent them, UTF-8 or not.
            (Some(orig), true) => orig.clone(),
            _ => OwnedHeaders::new(),
        };
        let position = &origin.position;
        let mut put = |k: &str, v: &str| {
            h = std::mem::take(&mut h).insert(Header {
                key: k,
                value: Some(v),
            })
        };
        put("emostream.reason", reason.as_str());
        put("emostream.detail", cut_str(detail, MAX_DETAIL_BYTES));
        put("emostream.source.topic", &position.topic);
        put(
            "emostream.source.partition",
            &position.partition.to_string(),
        );
        put("emostream.source.offset", &position.offset.to_string());
        if let Some(ts) = position.timestamp_ms {
            put("emostream.source.timestamp_ms", &ts.to_string());
        }
        if origin.headers.is_some() && !carry_headers {
            put(
                "emostream.input_headers_dropped_bytes",
                &input_headers.bytes.to_string(),
            );
        }
        let limit = match shape {
            Shape::Full => self.max_payload,
            // What the dead-letter topic takes (when known) beside these headers.
            Shape::Cut => {
                self.limits
                    .limit(&self.dead_letter_topic)
                    .map_or(CUT_PAYLOAD_BYTES, |l| {
                        let around = record_size(None, None, Some(&h)) + TRUNCATION_HEADERS_BYTES;
                        l.saturating_sub(around).min(CUT_PAYLOAD_BYTES)
                    })
            }
            Shape::Bare => 0,
        };
        let kept = payload.map(|p| &p[..p.len().min(limit)]);
        let mut put = |k: &str, v: &str| {
            h = std::mem::take(&mut h).insert(Header {
                key: k,
                value: Some(v),
            })
        };
        if let (Some(p), Some(k)) = (payload, kept) {
            if k.len() < p.len() {
                put("emostream.payload_truncated", "true");
                put("emostream.original_bytes", &p.len().to_string());
                put("emostream.original_sha256", &hex::encode(Sha256::digest(p)));
            }
        }
        let key = if shape == Shape::Full {
            origin.key.as_deref()
        } else {
            None
        };
        (key, kept, h)
    }

    fn count_undeliverable(&self, one_more: bool) {
        // The gauge moves by steps (not set from the atomic): no stale value under races.
        if one_more {
            self.undeliverable.fetch_add(1, Ordering::SeqCst);
            metrics::gauge!("emostream_stalled_partitions").increment(1.0);
        } else {
            self.undeliverable.fetch_sub(1, Ordering::SeqCst);
            metrics::gauge!("emostream_stalled_partitions").decrement(1.0);
        }
    }
}

/// One message's wait through a transient fault: counted in `retrying` from the first failure
/// until it is dropped, with capped exponential backoff between attempts.
struct Retry<'a> {
    sink: &'a Sink,
    topic: &'static str,
    backoff: Duration,
    attempts: u32,
}

impl<'a> Retry<'a> {
    fn new(sink: &'a Sink, topic: &'static str) -> Retry<'a> {
        Retry {
            sink,
            topic,
            backoff: sink.backoff,
            attempts: 0,
        }
    }

    async fn wait(&mut self, e: &KafkaError, origin: &Origin) {
        if self.attempts == 0 {
            let n = self.sink.retrying.fetch_add(1, Ordering::SeqCst) + 1;
            // Moved by steps, not set from the atomic: two threads cannot leave a stale value.
            metrics::gauge!("emostream_produce_retrying").increment(1.0);
            // One line when an outage begins, not one per message in flight.
            if n == 1 {
                tracing::warn!(error = %e, topic = self.topic, "transient produce error; retrying until the cluster takes the messages (they stay in flight)");
            }
        }
        self.attempts += 1;
        metrics::counter!("emostream_produce_errors_total", "topic" => self.topic, "fault" => "transient").increment(1);
        tracing::debug!(error = %e, topic = self.topic, attempts = self.attempts, partition = origin.position.partition, offset = origin.position.offset, "retrying produce");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.sink.max_backoff);
    }
}

impl Retry<'_> {
    /// No longer waiting out a transient fault (the message is refused for good, or takes
    /// another shape): stop counting it as retrying.
    fn reset(&mut self) {
        self.release();
        self.attempts = 0;
        self.backoff = self.sink.backoff;
    }

    fn release(&mut self) {
        if self.attempts > 0 {
            let n = self.sink.retrying.fetch_sub(1, Ordering::SeqCst) - 1;
            metrics::gauge!("emostream_produce_retrying").decrement(1.0);
            if n == 0 {
                tracing::info!(
                    topic = self.topic,
                    "produce recovered: no message is waiting out a fault"
                );
            }
        }
    }
}

impl Drop for Retry<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// What the broker answers for a record over the topic's size limit.
fn too_large() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
}

/// A record for the producer from its optional parts.
fn record<'a>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut rec = FutureRecord::to(topic);
    rec.payload = payload;
    rec.key = key;
    rec.headers = headers;
    rec
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The message is on a topic: record its end-to-end time and resolve its acknowledgement.
fn delivered(origin: Origin) {
    end_to_end(&origin.position);
    origin.ack.delivered();
}

/// Records a message's end-to-end time (from its Kafka timestamp to now).
fn end_to_end(position: &crate::daemon::pipeline::event::Position) {
    if let Some(ts) = position.timestamp_ms {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        metrics::histogram!("emostream_end_to_end_seconds")
            .record(((now - ts).max(0)) as f64 / 1000.0);
    }
}

/// Outcomes held while a transaction boundary is under way, in arrival order
/// (`emostream_transaction_held_outcomes`).
#[derive(Default)]
struct Held(std::collections::VecDeque<Outcome>);

impl Held {
    fn pop(&mut self) -> Option<Outcome> {
        let o = self.0.pop_front();
        if o.is_some() {
            metrics::gauge!("emostream_transaction_held_outcomes").decrement(1.0);
        }
        o
    }

    fn push_front(&mut self, o: Outcome) {
        self.0.push_front(o);
        metrics::gauge!("emostream_transaction_held_outcomes").increment(1.0);
    }

    fn push_back(&mut self, o: Outcome) {
        self.0.push_back(o);
        metrics::gauge!("emostream_transaction_held_outcomes").increment(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_transient_and_bad_records_are_not() {
        let produce = |c| KafkaError::MessageProduction(c);
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert_eq!(fault_of(&produce(c)), Fault::Transient, "{c:?}");
        }
        assert_eq!(fault_of(&KafkaError::Canceled), Fault::Transient);
        assert_eq!(
            fault_of(&produce(RDKafkaErrorCode::MessageSizeTooLarge)),
            Fault::TooLarge
        );
        for c in [
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::PolicyViolation,
        ] {
            assert_eq!(fault_of(&produce(c)), Fault::Permanent, "{c:?}");
        }
    }

    #[test]
    fn a_cut_detail_stays_valid_utf8() {
        assert_eq!(cut_str("ééé", 3), "é");
        assert_eq!(cut_str("abc", 10), "abc");
    }
}
