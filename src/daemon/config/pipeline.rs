//! The pipeline's sections: `[input]` (what a message is), `[output]` (what an event carries),
//! `[batching]` and `[backpressure]`.

use super::check;
use crate::backend::batching::CallLimits;
use anyhow::Result;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `input.format` (and `emostream classify --format`): a JSON object per message, the whole
/// message as the text, or a record in the Schema Registry wire format (Avro or JSON Schema,
/// decoded by its schema id into the same JSON object; Kafka input only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    Json,
    Text,
    #[value(skip)]
    SchemaRegistry,
}

impl InputFormat {
    /// A comment is a JSON object once decoded (the pointers apply).
    pub(crate) fn is_json(self) -> bool {
        matches!(self, InputFormat::Json | InputFormat::SchemaRegistry)
    }
}

/// `output.encoding`: plain JSON events, or events in the Schema Registry wire format with
/// the label-event schema registered at start-up (docs/events.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventEncoding {
    Json,
    JsonSchema,
    Avro,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    pub format: InputFormat,
    pub(crate) text_pointer: String,
    pub(crate) id_pointer: String,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ScoreMode {
    All,
    TopK,
    OverThreshold,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputSettings {
    pub(crate) scores: ScoreMode,
    pub(crate) top_k: usize,
    pub(crate) schema_version: u32,
    pub(crate) encoding: EventEncoding,
    pub(crate) max_carry_bytes: usize,
    pub(crate) event_time_pointer: String,
    pub(crate) cloudevents: bool,
    pub(crate) cloudevents_source: String,
    /// Event field name → JSON pointer into the comment.
    #[serde(default)]
    pub(crate) carry: BTreeMap<String, String>,
}

/// `[policy]`: the per-community policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySettings {
    pub(crate) file: String,
    pub(crate) poll_interval_ms: u64,
}

impl PolicySettings {
    pub(super) fn validate(&self) -> Result<()> {
        check(
            self.poll_interval_ms >= 50,
            "policy.poll_interval_ms",
            format!("must be at least 50 (got {})", self.poll_interval_ms),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchingSettings {
    pub(crate) max_batch_size: usize,
    pub(crate) max_wait_ms: u64,
    pub(crate) max_batch_tokens: usize,
    pub(crate) backlog_window: usize,
    pub(crate) inference_workers: usize,
}

impl BatchingSettings {
    /// The largest ONNX Runtime call.
    pub(crate) fn call_limits(&self) -> CallLimits {
        CallLimits {
            max_rows: self.max_batch_size,
            max_tokens: self.max_batch_tokens,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackpressureSettings {
    pub(crate) max_in_flight_messages: usize,
    pub(crate) max_in_flight_bytes: usize,
}

impl InputSettings {
    /// Every `input.*` key on its own.
    pub(super) fn validate(&self) -> Result<()> {
        let i = self;
        for (key, p) in [
            ("input.text_pointer", &i.text_pointer),
            ("input.id_pointer", &i.id_pointer),
        ] {
            check(
                p.is_empty() || p.starts_with('/'),
                key,
                format!("{p:?} is not a JSON pointer (must start with '/')"),
            )?;
        }
        check(
            !i.text_pointer.is_empty(),
            "input.text_pointer",
            "must not be empty",
        )?;
        check(
            i.max_message_bytes >= 16,
            "input.max_message_bytes",
            "must be at least 16",
        )?;
        Ok(())
    }
}

impl OutputSettings {
    pub(super) fn validate(&self) -> Result<()> {
        check(
            self.top_k >= 1 && self.top_k <= 1000,
            "output.top_k",
            format!("must be between 1 and 1000 (got {})", self.top_k),
        )?;
        check(
            matches!(self.schema_version, 1 | 2),
            "output.schema_version",
            format!("must be 1 or 2 (got {})", self.schema_version),
        )?;
        check(
            self.max_carry_bytes >= 16,
            "output.max_carry_bytes",
            format!("must be at least 16 (got {})", self.max_carry_bytes),
        )?;
        check(
            self.event_time_pointer.is_empty() || self.event_time_pointer.starts_with('/'),
            "output.event_time_pointer",
            format!(
                "{:?} is not a JSON pointer (must start with '/')",
                self.event_time_pointer
            ),
        )?;
        check(
            !self.cloudevents || !self.cloudevents_source.trim().is_empty(),
            "output.cloudevents_source",
            "must not be empty with output.cloudevents = true",
        )?;
        for (name, pointer) in &self.carry {
            check(
                pointer.starts_with('/'),
                &format!("output.carry.{name}"),
                format!("{pointer:?} is not a JSON pointer (must start with '/')"),
            )?;
            check(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                &format!("output.carry.{name}"),
                "an event field name is letters, digits and _",
            )?;
        }
        Ok(())
    }
}

impl BatchingSettings {
    /// Every `batching.*` key on its own.
    pub(super) fn validate(&self) -> Result<()> {
        let b = self;
        check(
            (1..=4096).contains(&b.max_batch_size),
            "batching.max_batch_size",
            format!("must be between 1 and 4096 (got {})", b.max_batch_size),
        )?;
        check(
            b.max_wait_ms <= 60_000,
            "batching.max_wait_ms",
            format!("must be at most 60000 (got {})", b.max_wait_ms),
        )?;
        check(
            b.max_batch_tokens >= 16,
            "batching.max_batch_tokens",
            format!("must be at least 16 (got {})", b.max_batch_tokens),
        )?;
        check(
            (b.max_batch_size..=65_536).contains(&b.backlog_window),
            "batching.backlog_window",
            format!(
                "must be between batching.max_batch_size ({}) and 65536 (got {})",
                b.max_batch_size, b.backlog_window
            ),
        )?;
        check(
            (1..=64).contains(&b.inference_workers),
            "batching.inference_workers",
            format!("must be between 1 and 64 (got {})", b.inference_workers),
        )?;
        Ok(())
    }
}
