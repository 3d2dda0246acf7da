//! How large a record each topic takes (its `max.message.bytes`), so the sink can make a record
//! fit before it sends it. In exactly-once mode that is the only way: a record the broker
//! refuses fails its whole transaction, the abort rewinds every partition, and the same record
//! is refused again — one dead letter would stop the replica. The limits are read from the
//! broker at start-up (best effort: DescribeConfigs may not be allowed) and lowered whenever a
//! delivery is refused for its size, so a topic whose limit could not be read, or was lowered
//! since, costs one abort, not a loop.

use crate::daemon::kafka::client::{client_config, ClientSettings};
use crate::daemon::kafka::headers;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::OwnedHeaders;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Bytes a record batch of one record adds around the key, value and headers at most: the
/// batch header (61) and the record's varints and attributes (Kafka's record format v2).
const BATCH_OVERHEAD_BYTES: usize = 61 + 5 + 1 + 10 + 5 + 5 + 5 + 5;
/// Per header: its key and value length varints.
const HEADER_OVERHEAD_BYTES: usize = 10;

#[derive(Debug, Default)]
pub(crate) struct TopicLimits {
    /// Topic → the largest record (as [`record_size`] counts it) it takes.
    limits: Mutex<HashMap<String, usize>>,
}

impl TopicLimits {
    /// Reads `max.message.bytes` of each topic; a topic whose limit cannot be read is left
    /// unknown (learned from the first refusal instead).
    pub(crate) async fn read(client: &ClientSettings, topics: &[&str]) -> TopicLimits {
        let out = TopicLimits::default();
        let admin: AdminClient<DefaultClientContext> = match client_config(client).create() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "reading topic size limits: no admin client; they will be learned from refusals");
                return out;
            }
        };
        let specs: Vec<ResourceSpecifier<'_>> =
            topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let results = match tokio::time::timeout(
            Duration::from_secs(15),
            admin.describe_configs(&specs, &opts),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading topic size limits failed; they will be learned from refusals");
                return out;
            }
            Err(_) => {
                tracing::warn!(
                    "reading topic size limits timed out; they will be learned from refusals"
                );
                return out;
            }
        };
        for (topic, r) in topics.iter().zip(results) {
            let limit = r.ok().and_then(|c| {
                c.get("max.message.bytes")
                    .and_then(|e| e.value.as_deref()?.parse::<usize>().ok())
            });
            match limit {
                Some(l) => {
                    tracing::info!(topic, max_message_bytes = l, "topic size limit");
                    out.set(topic, l);
                }
                None => tracing::warn!(
                    topic,
                    "topic size limit unknown (missing topic or no DescribeConfigs right)"
                ),
            }
        }
        out
    }

    fn set(&self, topic: &str, limit: usize) {
        self.lock().insert(topic.to_string(), limit);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest record `topic` takes, when known.
    pub(crate) fn limit(&self, topic: &str) -> Option<usize> {
        self.lock().get(topic).copied()
    }

    /// Whether a record of `size` bytes fits `topic` (as far as is known).
    pub(crate) fn fits(&self, topic: &str, size: usize) -> bool {
        self.limit(topic).is_none_or(|l| size <= l)
    }

    /// The broker refused a record of `size` bytes for its size: the limit is below it.
    pub(crate) fn refused(&self, topic: &str, size: usize) {
        let below = size.saturating_sub(1);
        let mut limits = self.lock();
        let l = limits.entry(topic.to_string()).or_insert(below);
        if *l > below {
            *l = below;
        }
        tracing::warn!(
            topic,
            refused_bytes = size,
            limit_now = *l,
            "the topic refused a record's size; later records are cut to fit"
        );
    }
}

/// The size of a one-record batch holding this record, an upper bound on what the broker
/// compares with the topic's `max.message.bytes` (uncompressed).
pub(crate) fn record_size(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<&OwnedHeaders>,
) -> usize {
    // Byte-level: rdkafka's own header iterator panics on a key that is not UTF-8, and a
    // dead letter carries the input's headers as they came.
    let mut header_bytes = 0;
    if let Some(h) = headers {
        headers::for_each(h.as_borrowed(), |k, v| {
            header_bytes += k.len() + v.map_or(0, <[u8]>::len) + HEADER_OVERHEAD_BYTES;
        });
    }
    let headers = header_bytes;
    BATCH_OVERHEAD_BYTES + key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Header;

    #[test]
    fn a_refusal_lowers_the_limit_below_the_refused_size_and_never_raises_it() {
        let limits = TopicLimits::default();
        assert!(limits.fits("dlq", 10_000), "unknown: anything fits");
        limits.refused("dlq", 5_000);
        assert_eq!(limits.limit("dlq"), Some(4_999));
        assert!(!limits.fits("dlq", 5_000));
        limits.refused("dlq", 9_000);
        assert_eq!(
            limits.limit("dlq"),
            Some(4_999),
            "a larger refusal says nothing new"
        );
        limits.set("out", 2_000);
        limits.refused("out", 1_500);
        assert_eq!(limits.limit("out"), Some(1_499));
    }

    #[test]
    fn record_size_counts_header_keys_that_are_not_utf8_without_panicking() {
        let h = headers::add(OwnedHeaders::new(), &[0xff, 0xfe], Some(b"v"));
        assert_eq!(
            record_size(None, None, Some(&h)),
            BATCH_OVERHEAD_BYTES + 2 + 1 + HEADER_OVERHEAD_BYTES
        );
    }

    #[test]
    fn record_size_counts_key_payload_headers_and_the_batch_around_them() {
        let h = OwnedHeaders::new().insert(Header {
            key: "abc",
            value: Some("12345"),
        });
        let bare = record_size(None, None, None);
        assert_eq!(bare, BATCH_OVERHEAD_BYTES);
        assert_eq!(
            record_size(Some(b"k"), Some(&[0u8; 100]), Some(&h)),
            bare + 1 + 100 + 3 + 5 + HEADER_OVERHEAD_BYTES
        );
    }
}
