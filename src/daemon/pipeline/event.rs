//! The label event (docs/events.md): what the daemon writes for each comment. Version 1
//! (docs/label-event-v1.schema.json) by default; version 2 (docs/label-event-v2.schema.json)
//! adds the comment's context (carried input fields, event time) and the policy that decided
//! its labels.

use crate::daemon::config::ScoreMode;
use crate::daemon::pipeline::context::Context;
use crate::model::dir::ModelRef;
use crate::model::labels::{over_threshold, ranked};
use serde::Serialize;

const SCHEMA_VERSION: u32 = 1;

/// Where a message was read: its Kafka topic, partition, offset and timestamp (an event's
/// `source`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Position {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Kafka message timestamp, milliseconds since the epoch (if the message had one).
    pub(crate) timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct LabelScore<'a> {
    pub(crate) label: &'a str,
    pub(crate) score: f32,
}

#[derive(Debug, Serialize)]
pub(crate) struct LabelEvent<'a> {
    pub(crate) schema_version: u32,
    pub(crate) id: &'a str,
    /// Labels whose score reached their threshold, highest score first.
    pub(crate) labels: Vec<LabelScore<'a>>,
    /// Label → score, for the labels selected by `output.scores`.
    pub(crate) scores: serde_json::Map<String, serde_json::Value>,
    pub(crate) model: &'a ModelRef,
    /// Where the comment came from; absent in an answer of the HTTP API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<&'a Position>,
    /// v2: the carried input fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// v2: carried fields that were cut to `output.max_carry_bytes` (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input_cut: Option<&'a [String]>,
    /// v2: when the comment happened (null when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) event_time: Option<Option<&'a str>>,
    /// v2: the threshold set that decided `labels`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<PolicyRef<'a>>,
    /// RFC 3339 UTC time the event was built.
    pub(crate) processed_at: String,
    /// The text was longer than the model's max length and was cut before labelling.
    pub(crate) truncated: bool,
}

/// The policy named in a v2 event: its name and the short hash of the rule it applied.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct PolicyRef<'a> {
    pub(crate) name: &'a str,
    pub(crate) hash: &'a str,
}

impl<'a> LabelEvent<'a> {
    /// The same event as version 2: with the comment's context and the policy that decided it.
    pub(crate) fn with_context(mut self, c: &'a Context, policy: PolicyRef<'a>) -> LabelEvent<'a> {
        self.schema_version = 2;
        self.input = Some(&c.input);
        self.input_cut = (!c.cut.is_empty()).then_some(c.cut.as_slice());
        self.event_time = Some(c.event_time.as_deref());
        self.policy = Some(policy);
        self
    }
}

/// Builds an event from sigmoid `scores` (label order of `names`) and per-label `thresholds`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build<'a>(
    id: &'a str,
    scores: &[f32],
    names: &'a [String],
    thresholds: &[f32],
    mode: ScoreMode,
    top_k: usize,
    model: &'a ModelRef,
    source: Option<&'a Position>,
    truncated: bool,
) -> LabelEvent<'a> {
    let order = ranked(scores);
    let on = over_threshold(&order, scores, thresholds);
    let labels: Vec<LabelScore> = on
        .iter()
        .map(|&i| LabelScore {
            label: &names[i],
            score: scores[i],
        })
        .collect();
    let chosen: Vec<usize> = match mode {
        ScoreMode::All => (0..scores.len()).collect(),
        ScoreMode::TopK => order.into_iter().take(top_k).collect(),
        ScoreMode::OverThreshold => on,
    };
    let mut map = serde_json::Map::new();
    for i in chosen {
        map.insert(names[i].clone(), serde_json::Value::from(scores[i] as f64));
    }
    LabelEvent {
        schema_version: SCHEMA_VERSION,
        id,
        labels,
        scores: map,
        model,
        source,
        input: None,
        input_cut: None,
        event_time: None,
        policy: None,
        processed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_over_threshold_by_score_and_modes() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let m = ModelRef {
            name: "m".into(),
            version: "1".into(),
            sha256: "x".into(),
        };
        let s = Position {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            timestamp_ms: Some(1),
        };
        let e = build(
            "id",
            &[0.2, 0.9, 0.5],
            &names,
            &[0.3, 0.5, 0.5],
            ScoreMode::All,
            1,
            &m,
            Some(&s),
            false,
        );
        assert_eq!(
            e.labels.iter().map(|l| l.label).collect::<Vec<_>>(),
            vec!["b", "c"]
        );
        assert_eq!(e.scores.len(), 3);
        let e = build(
            "id",
            &[0.2, 0.9, 0.5],
            &names,
            &[0.3, 0.5, 0.5],
            ScoreMode::TopK,
            1,
            &m,
            Some(&s),
            false,
        );
        assert_eq!(e.scores.keys().collect::<Vec<_>>(), vec!["b"]);
        let e = build(
            "id",
            &[0.2, 0.9, 0.5],
            &names,
            &[0.3, 0.5, 0.5],
            ScoreMode::OverThreshold,
            1,
            &m,
            Some(&s),
            true,
        );
        assert_eq!(e.scores.len(), 2);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["source"]["offset"], 5);
    }
}
