//! Moderator feedback: `POST /v1/feedback` takes a moderator's correction of a comment's labels
//! and writes it to the feedback topic (`api.feedback_topic`), keyed by comment id. One record
//! per (comment, moderator, label set): the same correction posted again is answered but not
//! written again (within this process's memory of the last 100,000; while it is being written,
//! 409); a different label set is a
//! new correction, and `train data import` keeps the latest per (comment, moderator). A
//! record is written whole or the request is answered 503.

use crate::backend::generation::Generation;
use crate::daemon::api::error;
use crate::daemon::kafka::client::KafkaProducer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const MAX_ID_CHARS: usize = 256;
const MAX_NAME_CHARS: usize = 128;
/// Corrections remembered for repeat detection (oldest forgotten first).
const REMEMBERED: usize = 100_000;

/// The feedback endpoint's state.
pub(crate) struct FeedbackApi {
    producer: KafkaProducer,
    topic: String,
    timeout: Duration,
    max_text_bytes: usize,
    active: watch::Receiver<Arc<Generation>>,
    written: Mutex<Written>,
}

/// (comment id, moderator) → the feedback id last written (or being written) for it, and the
/// order keys were first seen in (for forgetting the oldest).
#[derive(Default)]
struct Written {
    ids: HashMap<(String, String), Mark>,
    order: VecDeque<((String, String), u64)>,
    next_stamp: u64,
}

/// One key's state.
#[derive(Clone, PartialEq)]
struct Mark {
    id: String,
    /// Its record is being produced now.
    pending: bool,
    /// Which entry of `order` is this key's.
    stamp: u64,
}

/// Why a correction is not sent now.
enum NotNow {
    /// Written already.
    Repeat,
    /// The same correction is being written by another request at this moment.
    InFlight,
}

/// Where the comment was read, when the moderator's tool knows it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SourceRef {
    topic: String,
    partition: i32,
    offset: i64,
}

/// `{"comment_id", "text" and/or "source", "labels", "community"?, "moderator"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    comment_id: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    source: Option<SourceRef>,
    labels: Vec<String>,
    #[serde(default)]
    community: Option<String>,
    moderator: String,
}

/// The record on the feedback topic (docs/feedback-v1.schema.json).
#[derive(Serialize)]
struct FeedbackRecord<'a> {
    schema_version: u32,
    feedback_id: &'a str,
    comment_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a SourceRef>,
    labels: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    community: Option<&'a str>,
    moderator: &'a str,
    /// The model serving when the correction arrived.
    model: serde_json::Value,
    received_at: String,
}

impl FeedbackApi {
    pub(crate) fn new(
        producer: KafkaProducer,
        topic: &str,
        timeout: Duration,
        max_text_bytes: usize,
        active: watch::Receiver<Arc<Generation>>,
    ) -> FeedbackApi {
        FeedbackApi {
            producer,
            topic: topic.to_string(),
            timeout,
            max_text_bytes,
            active,
            written: Mutex::new(Written::default()),
        }
    }

    /// The request's problem, if any, named for the moderator's tool; labels are put in the
    /// model's order.
    fn check(&self, r: &mut FeedbackRequest) -> Result<(), String> {
        let text = |name: &str, v: &str, max: usize| -> Result<(), String> {
            if v.trim().is_empty() {
                return Err(format!("\"{name}\" is empty"));
            }
            // Ids end up in line- and tab-separated training files.
            if v.chars().any(char::is_control) {
                return Err(format!("\"{name}\" has a control character"));
            }
            if v.chars().count() > max {
                return Err(format!("\"{name}\" is over {max} characters"));
            }
            Ok(())
        };
        text("comment_id", &r.comment_id, MAX_ID_CHARS)?;
        text("moderator", &r.moderator, MAX_NAME_CHARS)?;
        if let Some(c) = &r.community {
            text("community", c, MAX_NAME_CHARS)?;
        }
        if let Some(p) = &r.source {
            if p.partition < 0 || p.offset < 0 {
                return Err("\"source\" partition and offset must be at least 0".into());
            }
        }
        match (&r.text, &r.source) {
            (None, None) => {
                return Err(
                    "give the comment's \"text\" or its \"source\" (topic, partition, offset)"
                        .into(),
                )
            }
            (Some(t), _) if t.trim().is_empty() => return Err("\"text\" is empty".into()),
            (Some(t), _) if t.len() > self.max_text_bytes => {
                return Err(format!(
                    "\"text\" is over input.max_message_bytes ({} bytes)",
                    self.max_text_bytes
                ))
            }
            _ => {}
        }
        if r.labels.is_empty() {
            return Err("\"labels\" is empty (a comment with no emotion is [\"neutral\"])".into());
        }
        let known = self.active.borrow().labels.clone();
        if let Some(bad) = r.labels.iter().find(|l| !known.contains(l)) {
            return Err(format!(
                "unknown label {bad:?} (the model's labels: {})",
                known.join(", ")
            ));
        }
        let mut labels: Vec<String> = known.into_iter().filter(|l| r.labels.contains(l)).collect();
        if labels.len() != r.labels.len() {
            return Err("a label is given twice".into());
        }
        std::mem::swap(&mut r.labels, &mut labels);
        Ok(())
    }

    /// Marks (comment, moderator) as being written with this feedback id; returns the mark it
    /// replaces, to put back if the write fails.
    fn reserve(&self, key: &(String, String), id: &str) -> Result<Option<Mark>, NotNow> {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match w.ids.get(key) {
            Some(m) if m.id == id && m.pending => return Err(NotNow::InFlight),
            Some(m) if m.id == id => return Err(NotNow::Repeat),
            _ => {}
        }
        let stamp = match w.ids.get(key) {
            Some(m) => m.stamp,
            None => {
                w.next_stamp += 1;
                let stamp = w.next_stamp;
                w.order.push_back((key.clone(), stamp));
                stamp
            }
        };
        let mark = Mark {
            id: id.to_string(),
            pending: true,
            stamp,
        };
        let before = w.ids.insert(key.clone(), mark);
        while w.order.len() > REMEMBERED {
            if let Some((old, stamp)) = w.order.pop_front() {
                if w.ids
                    .get(&old)
                    .is_some_and(|m| m.stamp == stamp && !m.pending)
                {
                    w.ids.remove(&old);
                }
            }
        }
        Ok(before)
    }

    /// The write of `id` ended: marked written, or (failed) the mark it replaced put back —
    /// either only if no later request has marked the key since.
    fn settle(&self, key: &(String, String), id: &str, written: bool, before: Option<Mark>) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let ours = w.ids.get(key).is_some_and(|m| m.id == id && m.pending);
        if !ours {
            return;
        }
        if written {
            if let Some(m) = w.ids.get_mut(key) {
                m.pending = false;
            }
        } else {
            match before {
                Some(m) => w.ids.insert(key.clone(), m),
                None => w.ids.remove(key),
            };
        }
    }
}

/// The correction's id: the comment, the moderator and the label set.
fn feedback_id(r: &FeedbackRequest) -> String {
    let mut h = Sha256::new();
    for part in [r.comment_id.as_str(), r.moderator.as_str()]
        .into_iter()
        .chain(r.labels.iter().map(String::as_str))
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

/// `POST /v1/feedback`.
pub(crate) async fn post_feedback(
    State(api): State<Arc<FeedbackApi>>,
    body: axum::body::Bytes,
) -> Response {
    let mut r: FeedbackRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return counted(error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}"))),
    };
    if let Err(why) = api.check(&mut r) {
        return counted(error(StatusCode::BAD_REQUEST, why));
    }
    let id = feedback_id(&r);
    let key = (r.comment_id.clone(), r.moderator.clone());
    let Ok(before) = api.reserve(&key, &id) else {
        return counted(
            Json(json!({"feedback_id": id, "written": false, "repeat": true})).into_response(),
        );
    };
    let model = api.active.borrow().model_ref.clone();
    let record = FeedbackRecord {
        schema_version: 1,
        feedback_id: &id,
        comment_id: &r.comment_id,
        text: r.text.as_deref(),
        source: r.source.as_ref(),
        labels: &r.labels,
        community: r.community.as_deref(),
        moderator: &r.moderator,
        model: json!({"name": model.name, "version": model.version}),
        received_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    };
    let payload = serde_json::to_vec(&record).expect("a feedback record serialises");
    let send = api.producer.send(
        FutureRecord::to(&api.topic)
            .key(&r.comment_id)
            .payload(&payload),
        api.timeout,
    );
    let sent = send.await;
    api.settle(&key, &id, sent.is_ok(), before);
    match sent {
        Ok(_) => counted(Json(json!({"feedback_id": id, "written": true})).into_response()),
        Err((e, _)) => {
            tracing::warn!(error = %e, topic = %api.topic, "feedback not written");
            counted(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the feedback topic did not acknowledge the correction ({e}); post it again (a correction written twice is kept once by train data import)"),
            ))
        }
    }
}

fn counted(r: Response) -> Response {
    metrics::counter!("emostream_feedback_requests_total", "status" => r.status().as_u16().to_string()).increment(1);
    r
}
