//! The one Kafka client builder: brokers and the shared `kafka.properties` (security, client
//! id, ...) for every client the daemon makes — consumer, producer, control-topic reader —
//! and the callbacks they share: whether the cluster is reachable (readiness) and which
//! librdkafka errors are fatal (supervision).

use crate::daemon::config::{Secrets, Settings};
use crate::daemon::supervise::Faults;
use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Statistics};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How every client reaches the cluster: `kafka.brokers`, `kafka.properties` and the secret
/// properties (`kafka.secret_files`, `EMOSTREAM_KAFKA_SECRET_*`) — the daemon's clients, the
/// load generator's and `train publish`'s.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub(crate) brokers: String,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) secrets: Secrets,
}

impl ClientSettings {
    pub fn from_settings(s: &Settings) -> ClientSettings {
        ClientSettings {
            brokers: s.kafka.brokers.clone(),
            properties: s.kafka.properties.clone(),
            secrets: s.kafka.secrets.clone(),
        }
    }
}

/// A client configuration with what [`ClientSettings`] holds; callers add their own role's
/// settings on top.
pub fn client_config(c: &ClientSettings) -> ClientConfig {
    let mut out = ClientConfig::new();
    out.set("bootstrap.servers", &c.brokers);
    for (k, v) in &c.properties {
        out.set(k, v);
    }
    for (k, v) in c.secrets.iter() {
        out.set(k, v);
    }
    out
}

/// Every partition of `topic` with its low and high watermarks, as the cluster has them now;
/// an error when the topic does not exist.
pub(crate) fn watermarks<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64)>> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("metadata for {topic:?}"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        bail!("topic {topic:?} does not exist (create it first)");
    }
    parts
        .into_iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .with_context(|| format!("watermarks of {topic}/{p}"))?;
            Ok((p, low, high))
        })
        .collect()
}

/// Whether any broker answers, as the clients last saw it.
#[derive(Debug)]
pub(crate) struct Cluster {
    down: AtomicBool,
}

impl Default for Cluster {
    fn default() -> Self {
        // Unknown until a client reaches a broker: not ready before that.
        Cluster {
            down: AtomicBool::new(true),
        }
    }
}

impl Cluster {
    pub(crate) fn reachable(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }

    /// A broker answered (a message moved, or statistics show a broker up).
    pub(crate) fn seen_up(&self) {
        // Called for every message: a plain read in the usual case, a write only on a change.
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::SeqCst) {
            tracing::info!("Kafka cluster reachable");
            metrics::gauge!("emostream_cluster_reachable").set(1.0);
        }
    }

    fn seen_down(&self, reason: &str) {
        if !self.down.swap(true, Ordering::SeqCst) {
            tracing::warn!(reason, "Kafka cluster unreachable: all brokers down");
            metrics::gauge!("emostream_cluster_reachable").set(0.0);
        }
    }
}

/// The callbacks every daemon client shares.
#[derive(Clone)]
pub(crate) struct ClientHooks {
    pub(crate) role: &'static str,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) faults: Arc<Faults>,
}

impl ClientHooks {
    /// librdkafka's global errors: a fatal one (the client instance is unusable, e.g. an
    /// idempotent producer's broken sequence) or failed authentication ends the process; all
    /// brokers down marks the cluster unreachable; the rest are logged (librdkafka retries).
    pub(crate) fn on_error(&self, error: &KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => self
                .faults
                .fatal(format!("Kafka {} fatal error: {reason}", self.role)),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                self.faults.fatal(format!(
                    "Kafka {} authentication failed: {reason}",
                    self.role
                ))
            }
            // A TLS handshake that fails (an untrusted or expired certificate, a client
            // certificate the broker refuses) fails the same way on every retry.
            Some(RDKafkaErrorCode::SSL) => self.faults.fatal(format!(
                "Kafka {} TLS handshake failed: {reason}",
                self.role
            )),
            Some(RDKafkaErrorCode::AllBrokersDown) => self.cluster.seen_down(reason),
            _ => tracing::warn!(role = self.role, error = %error, reason, "Kafka client error"),
        }
    }

    pub(crate) fn on_stats(&self, stats: &Statistics) {
        if stats.brokers.values().any(|b| b.state == "UP") {
            self.cluster.seen_up();
        }
    }
}

impl ClientContext for ClientHooks {
    fn error(&self, error: KafkaError, reason: &str) {
        self.on_error(&error, reason)
    }

    fn stats(&self, stats: Statistics) {
        self.on_stats(&stats)
    }
}

pub(crate) type KafkaProducer = FutureProducer<ClientHooks>;

/// Whether a producer joins transactions (exactly-once mode's sink) or sends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProducerRole {
    Plain,
    Transactional,
}

/// `kafka.transactional_id` as resolved and `kafka.transaction_timeout_ms`: exactly-once
/// mode's producer identity and how long a transaction may stay open.
#[derive(Debug, Clone)]
pub(crate) struct TransactionSettings {
    pub(crate) transactional_id: String,
    pub(crate) timeout: Duration,
}

/// What the daemon's producers are made with.
#[derive(Debug, Clone)]
pub(crate) struct ProducerSettings {
    pub(crate) client: ClientSettings,
    /// `kafka.produce_timeout_ms`: one delivery attempt's limit.
    pub(crate) produce_timeout: Duration,
    /// Room for the largest dead-letter record (or the operator's `message.max.bytes`).
    pub(crate) message_max_bytes: usize,
    /// `kafka.producer_properties`.
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) transactions: TransactionSettings,
}

impl ProducerSettings {
    pub(crate) fn from_settings(s: &Settings) -> Result<ProducerSettings> {
        Ok(ProducerSettings {
            client: ClientSettings::from_settings(s),
            produce_timeout: Duration::from_millis(s.kafka.produce_timeout_ms),
            message_max_bytes: s.producer_message_max_bytes()?.1,
            properties: s.kafka.producer_properties.clone(),
            transactions: TransactionSettings {
                transactional_id: s.transactional_id(),
                timeout: Duration::from_millis(s.kafka.transaction_timeout_ms),
            },
        })
    }
}

/// The producer for events, dead letters and control replies: idempotent, every replica's
/// acknowledgement awaited, room for the largest dead-letter record, `kafka.producer_properties`
/// on top; transactional (with `kafka.transactional_id`) for exactly-once mode's sink.
pub(crate) fn producer(
    s: &ProducerSettings,
    hooks: ClientHooks,
    role: ProducerRole,
) -> Result<KafkaProducer> {
    let mut c = client_config(&s.client);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            s.produce_timeout.as_millis().to_string(),
        )
        .set("message.max.bytes", s.message_max_bytes.to_string())
        .set("statistics.interval.ms", "2000")
        .set("linger.ms", "5");
    for (k, v) in &s.properties {
        c.set(k, v);
    }
    if role == ProducerRole::Transactional {
        let t = &s.transactions;
        c.set("transactional.id", &t.transactional_id)
            .set("transaction.timeout.ms", t.timeout.as_millis().to_string());
    }
    c.create_with_context(hooks)
        .context("creating Kafka producer")
}
