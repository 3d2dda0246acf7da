//! The one Kafka client builder: brokers and the shared `kafka.properties` (security, client
//! id, ...) for every client the daemon makes — consumer, producer, control-topic reader —
//! and the callbacks they share: whether the cluster is reachable (readiness) and which
//! librdkafka errors are fatal (supervision).

use crate::daemon::config::Settings;
use crate::daemon::supervise::Faults;
use anyhow::{Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Statistics};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Brokers, `kafka.properties` and the secret properties (`kafka.secret_files`,
/// `EMOSTREAM_KAFKA_SECRET_*`): how every client reaches the cluster — the daemon's, the load
/// generator's and `train publish`'s. Callers add their own role's settings on top.
pub fn client_config(s: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.kafka.brokers);
    for (k, v) in &s.kafka.properties {
        c.set(k, v);
    }
    for (k, v) in s.kafka.secrets.iter() {
        c.set(k, v);
    }
    c
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

/// The producer for events, dead letters and control replies: idempotent, every replica's
/// acknowledgement awaited, room for the largest dead-letter record, `kafka.producer_properties`
/// on top; transactional (with `kafka.transactional_id`) for exactly-once mode's sink.
pub(crate) fn producer(
    s: &Settings,
    hooks: ClientHooks,
    role: ProducerRole,
) -> Result<KafkaProducer> {
    let mut c = client_config(s);
    let (_, max_bytes) = s.producer_message_max_bytes()?;
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", s.kafka.produce_timeout_ms.to_string())
        .set("message.max.bytes", max_bytes.to_string())
        .set("statistics.interval.ms", "2000")
        .set("linger.ms", "5");
    for (k, v) in &s.kafka.producer_properties {
        c.set(k, v);
    }
    if role == ProducerRole::Transactional {
        c.set("transactional.id", s.transactional_id()).set(
            "transaction.timeout.ms",
            s.kafka.transaction_timeout_ms.to_string(),
        );
    }
    c.create_with_context(hooks)
        .context("creating Kafka producer")
}
