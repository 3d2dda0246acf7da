//! Label event v1 (docs/events.md, docs/label-event-v1.schema.json): what the daemon writes
//! for each comment.

use crate::daemon::config::ScoreMode;
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
    /// RFC 3339 UTC time the event was built.
    pub(crate) processed_at: String,
    /// The text was longer than the model's max length and was cut before labelling.
    pub(crate) truncated: bool,
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
