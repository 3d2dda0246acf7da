//! The moderators' live view: the last `ui.live_size` labelled comments (their text only with
//! `ui.show_text = true`) and how often each emotion fired in each of the last
//! `ui.live_minutes` minutes, kept in memory only and served as JSON at `/v1/live`.

use crate::daemon::pipeline::event::LabelEvent;
use crate::daemon::pipeline::workers::Watcher;
use crate::daemon::pipeline::Item;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Scores below this are left out of an entry (the view filters on scores worth showing).
const MIN_SCORE_KEPT: f32 = 0.05;
/// Characters of a comment's text kept when text is shown.
const TEXT_CHARS: usize = 280;
/// Characters of a comment's id kept (an id may be as long as a message).
const ID_CHARS: usize = 128;

#[derive(Debug, Clone, Serialize)]
struct Entry {
    /// Increases by one per entry, so a poller can tell new rows.
    seq: u64,
    at_ms: u64,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// Labels that fired, highest score first.
    labels: Vec<String>,
    /// Label → score, for scores of at least 0.05.
    scores: BTreeMap<String, f32>,
    model_version: String,
    /// `topic/partition/offset`, or `api` for a comment posted to `/v1/classify`.
    source: String,
}

#[derive(Debug, Default)]
struct Recent {
    entries: VecDeque<Entry>,
    /// Minute since the epoch → label → firings (two workers may record across a minute's
    /// edge in either order, so keyed, not appended).
    minutes: BTreeMap<u64, BTreeMap<String, u64>>,
    seq: u64,
}

pub(crate) struct LiveView {
    size: usize,
    minutes: usize,
    show_text: bool,
    state: Mutex<Recent>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LiveView {
    pub(crate) fn new(size: usize, minutes: usize, show_text: bool) -> LiveView {
        LiveView {
            size,
            minutes,
            show_text,
            state: Mutex::new(Recent::default()),
        }
    }

    /// What `/v1/live` answers: the entries (newest first), the counts of each of the last
    /// `live_minutes` minutes (quiet ones as empty) and their totals.
    pub(crate) fn snapshot(&self) -> serde_json::Value {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms() / 60_000;
        let empty = BTreeMap::new();
        let window = (now + 1).saturating_sub(self.minutes as u64)..=now;
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        let minutes: Vec<serde_json::Value> = window
            .map(|m| {
                let c = s.minutes.get(&m).unwrap_or(&empty);
                for (k, v) in c {
                    *totals.entry(k).or_default() += v;
                }
                serde_json::json!({"minute_start_ms": m * 60_000, "counts": c})
            })
            .collect();
        serde_json::json!({
            "size": self.size,
            "show_text": self.show_text,
            "window_minutes": self.minutes,
            "entries": s.entries,
            "minutes": minutes,
            "totals": totals,
        })
    }
}

/// Records each labelled comment.
impl Watcher for LiveView {
    fn labelled(&self, item: &Item, names: &[String], all: &[f32], ev: &LabelEvent<'_>, api: bool) {
        let labels: Vec<String> = ev.labels.iter().map(|l| l.label.to_string()).collect();
        let scores: BTreeMap<String, f32> = names
            .iter()
            .zip(all)
            .filter(|(_, &v)| v >= MIN_SCORE_KEPT)
            .map(|(k, &v)| (k.clone(), v))
            .collect();
        let mut entry = Entry {
            seq: 0,
            at_ms: 0,
            id: item.id.chars().take(ID_CHARS).collect(),
            text: self
                .show_text
                .then(|| item.text.chars().take(TEXT_CHARS).collect()),
            labels,
            scores,
            model_version: ev.model.version.clone(),
            source: if api {
                "api".into()
            } else {
                item.origin.position_id()
            },
        };
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock, so entries are in time order and minutes close in order.
        entry.at_ms = now_ms();
        let minute = entry.at_ms / 60_000;
        s.seq += 1;
        entry.seq = s.seq;
        let counts = s.minutes.entry(minute).or_default();
        for l in &entry.labels {
            *counts.entry(l.clone()).or_default() += 1;
        }
        s.entries.push_front(entry);
        s.entries.truncate(self.size);
        let keep_from = (minute + 1).saturating_sub(self.minutes as u64);
        s.minutes = s.minutes.split_off(&keep_from);
    }
}

/// `GET /v1/live`.
pub(crate) async fn get_live(State(view): State<Arc<LiveView>>) -> Response {
    Json(view.snapshot()).into_response()
}
