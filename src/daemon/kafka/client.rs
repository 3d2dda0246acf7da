//! The one Kafka client builder: brokers and the shared `kafka.properties` (security, client
//! id, ...) for every client the daemon makes — consumer, producer, control-topic reader.

use crate::daemon::config::Settings;
use rdkafka::config::ClientConfig;

/// Brokers plus `kafka.properties`; callers add their own role's settings on top.
pub(crate) fn client_config(s: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.kafka.brokers);
    for (k, v) in &s.kafka.properties {
        c.set(k, v);
    }
    c
}
