//! The moderators' live view: the last `ui.live_size` labelled comments (their text only with
//! `ui.show_text = true`) and how often each emotion fired in each of the last
//! `ui.live_minutes` minutes, kept in memory only and served as JSON at `/v1/live`.

use crate::daemon::pipeline::event::LabelEvent;
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
    /// (minute since the epoch, label → firings), oldest first.
    minutes: VecDeque<(u64, BTreeMap<String, u64>)>,
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

    /// Records a labelled comment (called by the inference workers).
    pub(crate) fn record(&self, item: &Item, ev: &LabelEvent<'_>, api: bool) {
        let at_ms = now_ms();
        let labels: Vec<String> = ev.labels.iter().map(|l| l.label.to_string()).collect();
        let kept = ev
            .scores
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32)))
            .filter(|(_, v)| *v >= MIN_SCORE_KEPT);
        // The event's map may hold only some labels (output.scores); the fired ones always.
        let mut map: BTreeMap<String, f32> = kept.collect();
        for l in &ev.labels {
            map.insert(l.label.to_string(), l.score);
        }
        let entry = Entry {
            seq: 0,
            at_ms,
            id: item.id.clone(),
            text: self
                .show_text
                .then(|| item.text.chars().take(TEXT_CHARS).collect()),
            labels: labels.clone(),
            scores: map,
            model_version: ev.model.version.clone(),
            source: if api {
                "api".into()
            } else {
                item.origin.coordinates()
            },
        };
        let minute = at_ms / 60_000;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.seq += 1;
        let seq = s.seq;
        s.entries.push_front(Entry { seq, ..entry });
        s.entries.truncate(self.size);
        if s.minutes.back().map(|(m, _)| *m) != Some(minute) {
            s.minutes.push_back((minute, BTreeMap::new()));
        }
        let counts = &mut s.minutes.back_mut().expect("pushed above").1;
        for l in labels {
            *counts.entry(l).or_default() += 1;
        }
        while s
            .minutes
            .front()
            .is_some_and(|(m, _)| *m + (self.minutes as u64) <= minute)
        {
            s.minutes.pop_front();
        }
    }

    /// What `/v1/live` answers: the entries (newest first), the per-minute counts of the last
    /// minutes and their totals.
    pub(crate) fn snapshot(&self) -> serde_json::Value {
        let now_minute = now_ms() / 60_000;
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let minutes: Vec<serde_json::Value> = s
            .minutes
            .iter()
            .filter(|(m, _)| *m + (self.minutes as u64) > now_minute)
            .map(|(m, c)| serde_json::json!({"minute_start_ms": m * 60_000, "counts": c}))
            .collect();
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for (m, c) in &s.minutes {
            if *m + (self.minutes as u64) > now_minute {
                for (k, v) in c {
                    *totals.entry(k).or_default() += v;
                }
            }
        }
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

/// `GET /v1/live`.
pub(crate) async fn get_live(State(view): State<Arc<LiveView>>) -> Response {
    Json(view.snapshot()).into_response()
}
