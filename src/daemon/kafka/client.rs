//! The one Kafka client builder: brokers and the shared `kafka.properties` (security, client
//! id, ...) for every client the daemon makes — consumer, producer, control-topic reader.

use crate::daemon::config::Settings;
use anyhow::{Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

/// Brokers plus `kafka.properties`; callers add their own role's settings on top.
pub(crate) fn client_config(s: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.kafka.brokers);
    for (k, v) in &s.kafka.properties {
        c.set(k, v);
    }
    c
}

/// The producer for events, dead letters and control replies: idempotent, every replica's
/// acknowledgement awaited, `kafka.producer_properties` on top.
pub(crate) fn producer(s: &Settings) -> Result<FutureProducer> {
    let mut c = client_config(s);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", s.kafka.produce_timeout_ms.to_string())
        .set("linger.ms", "5");
    for (k, v) in &s.kafka.producer_properties {
        c.set(k, v);
    }
    c.create().context("creating Kafka producer")
}
