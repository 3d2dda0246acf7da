//! `[kafka]`: brokers, topics, timings, delivery mode and client properties, with the secret
//! properties kept apart from the rest (never logged).

use super::check;
use anyhow::{bail, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KafkaSettings {
    pub(crate) brokers: String,
    pub(crate) group_id: String,
    pub(crate) input_topics: Vec<String>,
    pub(crate) output_topic: String,
    pub(crate) dead_letter_topic: String,
    /// Unset: 1000 at-least-once, 100 exactly-once ([`KafkaSettings::commit_interval`]).
    pub(crate) commit_interval_ms: Option<u64>,
    pub(crate) produce_timeout_ms: u64,
    pub(crate) produce_backoff_ms: u64,
    pub(crate) produce_backoff_max_ms: u64,
    pub(crate) revoke_wait_ms: u64,
    pub(crate) delivery: Delivery,
    pub(crate) transactional_id: String,
    pub(crate) transaction_timeout_ms: u64,
    pub(crate) transaction_max_messages: u64,
    #[serde(default)]
    pub(crate) properties: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) consumer_properties: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) producer_properties: BTreeMap<String, String>,
    /// librdkafka property → file holding its value (a mounted secret).
    #[serde(default)]
    pub(crate) secret_files: BTreeMap<String, PathBuf>,
    /// Values of `secret_files` and of `EMOSTREAM_KAFKA_SECRET_*`, read at start-up.
    #[serde(skip)]
    pub(crate) secrets: Secrets,
}

/// A mounted secret's value: the file's text without its trailing line break.
pub(super) fn read_secret_file(path: &Path) -> std::io::Result<String> {
    let raw = std::fs::read_to_string(path)?;
    Ok(raw.trim_end_matches(['\n', '\r']).to_string())
}

/// The environment form of a secret librdkafka property: `EMOSTREAM_KAFKA_SECRET_SASL_PASSWORD`
/// sets `sasl.password` (librdkafka's names have dots where the variable has underscores).
pub(crate) const SECRET_ENV_PREFIX: &str = "EMOSTREAM_KAFKA_SECRET_";

/// librdkafka properties whose values must never be shown: kept apart from the rest of the
/// settings, and their `Debug` names the keys only.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl Secrets {
    /// Reads each file of `kafka.secret_files` (a trailing newline is not part of the value),
    /// then the `EMOSTREAM_KAFKA_SECRET_*` variables; errors name the key, never the value.
    pub(super) fn resolve(
        files: &BTreeMap<String, PathBuf>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Secrets> {
        let mut out = BTreeMap::new();
        for (key, path) in files {
            let value = read_secret_file(path).map_err(|e| {
                anyhow::anyhow!(
                    "config key kafka.secret_files.{key}: reading {}: {e}",
                    path.display()
                )
            })?;
            out.insert(key.clone(), value);
        }
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix(SECRET_ENV_PREFIX) {
                check(
                    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    &name,
                    "is not a librdkafka property name (letters, digits, _ for .)",
                )?;
                out.insert(rest.to_ascii_lowercase().replace('_', "."), value);
            }
        }
        Ok(Secrets(out))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Whether `text` contains any secret value (for tests of what is logged).
    pub fn appear_in(&self, text: &str) -> bool {
        self.0
            .values()
            .any(|v| !v.is_empty() && text.contains(v.as_str()))
    }
}

/// `kafka.delivery`: what a reader of the output may count on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Delivery {
    /// Every input message's outcome at least once (duplicates after a crash or rebalance).
    AtLeastOnce,
    /// Outcomes and input offsets commit in one transaction: a `read_committed` reader sees
    /// each input message's outcome exactly once.
    ExactlyOnce,
}

impl KafkaSettings {
    /// `kafka.commit_interval_ms`, or by default 1 s at-least-once and 100 ms exactly-once:
    /// a transaction's events reach read_committed readers when it commits, and a commit costs
    /// a few milliseconds (not a drain) since issue 26 (BENCHMARKS.md, "Exactly-once at the
    /// cost of a commit"). Kafka Streams picks the same 100 ms under exactly-once.
    pub(crate) fn commit_interval(&self) -> std::time::Duration {
        let default = match self.delivery {
            Delivery::AtLeastOnce => 1000,
            Delivery::ExactlyOnce => 100,
        };
        std::time::Duration::from_millis(self.commit_interval_ms.unwrap_or(default))
    }

    /// Every `kafka.*` key on its own; rules that involve other sections are in
    /// `Settings::validate`.
    pub(super) fn validate(&self) -> Result<()> {
        self.validate_topics_and_timings()?;
        self.validate_properties()?;
        self.validate_transactions()
    }

    /// Brokers, group, topics, and the commit, rebalance and produce timings.
    fn validate_topics_and_timings(&self) -> Result<()> {
        let k = self;
        check(
            !k.brokers.trim().is_empty(),
            "kafka.brokers",
            "must not be empty",
        )?;
        check(
            !k.group_id.trim().is_empty(),
            "kafka.group_id",
            "must not be empty",
        )?;
        check(
            !k.input_topics.is_empty() && k.input_topics.iter().all(|t| !t.trim().is_empty()),
            "kafka.input_topics",
            "needs at least one non-empty topic",
        )?;
        check(
            !k.output_topic.trim().is_empty(),
            "kafka.output_topic",
            "must not be empty",
        )?;
        check(
            !k.dead_letter_topic.trim().is_empty(),
            "kafka.dead_letter_topic",
            "must not be empty",
        )?;
        check(
            k.dead_letter_topic != k.output_topic,
            "kafka.dead_letter_topic",
            "must differ from kafka.output_topic",
        )?;
        check(
            !k.input_topics.contains(&k.output_topic),
            "kafka.output_topic",
            "must not be one of kafka.input_topics",
        )?;
        check(
            k.commit_interval_ms.is_none_or(|ms| ms >= 10),
            "kafka.commit_interval_ms",
            format!(
                "must be at least 10 (got {})",
                k.commit_interval_ms.unwrap_or_default()
            ),
        )?;
        check(
            k.produce_backoff_ms >= 1 && k.produce_backoff_ms <= k.produce_backoff_max_ms,
            "kafka.produce_backoff_ms",
            format!(
                "must be between 1 and kafka.produce_backoff_max_ms ({}) (got {})",
                k.produce_backoff_max_ms, k.produce_backoff_ms
            ),
        )?;
        check(
            k.revoke_wait_ms <= 60_000,
            "kafka.revoke_wait_ms",
            format!("must be at most 60000 (got {})", k.revoke_wait_ms),
        )?;
        let max_poll = k
            .consumer_properties
            .get("max.poll.interval.ms")
            .or_else(|| k.properties.get("max.poll.interval.ms"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(300_000);
        check(
            k.revoke_wait_ms < max_poll,
            "kafka.revoke_wait_ms",
            format!("must be below the consumer's max.poll.interval.ms ({max_poll}): the wait happens inside the rebalance callback"),
        )?;
        check(
            k.produce_timeout_ms >= 100,
            "kafka.produce_timeout_ms",
            format!("must be at least 100 (got {})", k.produce_timeout_ms),
        )?;
        Ok(())
    }

    /// The client properties: none the daemon sets itself, and every secret one librdkafka
    /// accepts.
    fn validate_properties(&self) -> Result<()> {
        let k = self;
        let secret_keys: BTreeMap<String, ()> =
            k.secrets.iter().map(|(k, _)| (k.clone(), ())).collect();
        for (section, keys) in [
            ("kafka.properties", k.properties.keys().collect::<Vec<_>>()),
            (
                "kafka.consumer_properties",
                k.consumer_properties.keys().collect(),
            ),
            (
                "kafka.producer_properties",
                k.producer_properties.keys().collect(),
            ),
            (
                "kafka.secret_files (or EMOSTREAM_KAFKA_SECRET_*)",
                secret_keys.keys().collect(),
            ),
        ] {
            for key in keys {
                check(
                    !matches!(
                        key.as_str(),
                        "bootstrap.servers"
                            | "group.id"
                            | "enable.auto.commit"
                            | "enable.idempotence"
                            | "acks"
                            | "transactional.id"
                            | "transaction.timeout.ms"
                    ),
                    &format!("{section}.{key}"),
                    "is set by emostream itself (use kafka.brokers / kafka.group_id / kafka.transactional_id / kafka.transaction_timeout_ms)",
                )?;
            }
        }
        // librdkafka's own error for a property it refuses quotes the value: try each secret
        // alone first, so a misspelt secret key is named without its value.
        for (key, value) in k.secrets.iter() {
            let mut c = rdkafka::config::ClientConfig::new();
            c.set(key, value);
            if c.create_native_config().is_err() {
                bail!("config key kafka.secret_files.{key} (or {SECRET_ENV_PREFIX}{}): librdkafka does not accept this property (the value is not shown)", key.to_ascii_uppercase().replace('.', "_"));
            }
        }
        Ok(())
    }

    /// The transaction keys (exactly-once mode).
    fn validate_transactions(&self) -> Result<()> {
        let k = self;
        check(
            k.transaction_timeout_ms >= 1000 && k.transaction_timeout_ms <= 900_000,
            "kafka.transaction_timeout_ms",
            format!(
                "must be between 1000 and 900000 (got {})",
                k.transaction_timeout_ms
            ),
        )?;
        check(
            k.delivery == Delivery::AtLeastOnce || k.produce_timeout_ms <= k.transaction_timeout_ms,
            "kafka.produce_timeout_ms",
            format!("must not exceed kafka.transaction_timeout_ms ({}) with kafka.delivery = \"exactly_once\"", k.transaction_timeout_ms),
        )?;
        check(
            k.transaction_max_messages >= 1,
            "kafka.transaction_max_messages",
            "must be at least 1",
        )?;
        check(
            k.transactional_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "kafka.transactional_id",
            "use letters, digits and . _ -",
        )?;
        Ok(())
    }
}
