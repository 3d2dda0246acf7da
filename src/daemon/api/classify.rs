//! `POST /v1/classify` and `GET /v1/model`: comments posted over HTTP go through the stream's
//! batcher and active model generation (so a hot swap applies to both) and come back as the
//! stream's label events (schema v1) without the Kafka `source`, with every label's score.
//! Limits: `api.max_texts` and `api.max_request_bytes` per request (413), `api.max_concurrent`
//! requests at once (429), `api.timeout_ms` for the whole request (408 while its body has not
//! arrived, 504 while it waits to be labelled); bad JSON is a 400 naming the problem.

use crate::backend::generation::Generation;
use crate::daemon::ack::Ledger;
use crate::daemon::api::error;
use crate::daemon::config::{ApiSettings, InputFormat, InputSettings};
use crate::daemon::pipeline::{admit, Admitted, Origin, Outcome};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

pub(crate) struct ClassifyApi {
    /// Into the batcher, beside the Kafka source. Weak: the pipeline still drains and stops
    /// when its source does; a request holds a strong sender only while it sends.
    pending: mpsc::WeakSender<Admitted>,
    /// Tracks posted comments (their outcomes resolve it; nothing commits from it).
    ledger: Arc<Ledger>,
    next: AtomicI64,
    /// The stream's content rules (empty text) for a JSON body of `{"id", "text"}`.
    input: InputSettings,
    /// input.max_message_bytes: a longer text is refused like on the stream (too_large).
    max_text_bytes: usize,
    limits: ApiSettings,
    permits: Arc<Semaphore>,
    active: watch::Receiver<Arc<Generation>>,
    /// Set when the process shuts down: new requests get 503.
    closed: AtomicBool,
}

impl ClassifyApi {
    pub(crate) fn new(
        pending: mpsc::WeakSender<Admitted>,
        input: &InputSettings,
        limits: &ApiSettings,
        active: watch::Receiver<Arc<Generation>>,
    ) -> ClassifyApi {
        ClassifyApi {
            pending,
            ledger: Arc::new(Ledger::default()),
            next: AtomicI64::new(0),
            input: InputSettings {
                format: InputFormat::Json,
                text_pointer: "/text".into(),
                id_pointer: "/id".into(),
                // The text's own size is checked against input.max_message_bytes below; the
                // JSON wrapper (escapes included) must not make a text the stream takes too large.
                max_message_bytes: input.max_message_bytes.saturating_mul(6).saturating_add(64),
                ..input.clone()
            },
            max_text_bytes: input.max_message_bytes,
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits: limits.clone(),
            active,
            closed: AtomicBool::new(false),
        }
    }

    /// Refuses new requests from now on (shutdown).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// `{"text": "..."}` or `{"texts": ["...", ...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    text: Option<String>,
    texts: Option<Vec<String>>,
}

fn counted(status: StatusCode, response: Response) -> Response {
    metrics::counter!("emostream_api_requests_total", "status" => status.as_u16().to_string())
        .increment(1);
    response
}

fn refuse(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    counted(status, error(status, msg))
}

/// The label event of a posted comment: the stream's, without the Kafka source.
fn answer(outcome: Outcome, index: usize) -> Value {
    let v = match &outcome {
        Outcome::Labelled { event, .. } => match serde_json::from_slice::<Value>(event) {
            Ok(Value::Object(mut m)) => {
                m.remove("source");
                Value::Object(m)
            }
            _ => json!({"error": {"reason": "internal", "detail": "unreadable event"}}),
        },
        Outcome::Rejected(r) => json!({
            "id": index.to_string(),
            "error": {"reason": r.reason.as_str(), "detail": r.detail},
        }),
    };
    outcome.done();
    v
}

pub(crate) async fn post_classify(State(api): State<Arc<ClassifyApi>>, req: Request) -> Response {
    let started = Instant::now();
    if api.closed.load(Ordering::SeqCst) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let Ok(_permit) = api.permits.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} requests are being answered already (api.max_concurrent); retry shortly",
                api.limits.max_concurrent
            ),
        );
    };
    // The whole request, body included, within api.timeout_ms: a client that never finishes
    // its body gives its slot back.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(api.limits.timeout_ms);
    let read = axum::body::to_bytes(req.into_body(), api.limits.max_request_bytes);
    let body = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(body)) => body,
        // to_bytes fails for the length limit, or for a broken body (reset, bad chunking).
        Ok(Err(e)) if format!("{e:#}").contains("length limit") => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over api.max_request_bytes ({} bytes)",
                    api.limits.max_request_bytes
                ),
            )
        }
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within api.timeout_ms ({} ms)",
                    api.limits.timeout_ms
                ),
            )
        }
    };
    let parsed: ClassifyRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad JSON: {e} (expected {{\"text\": \"...\"}} or {{\"texts\": [\"...\"]}})"
                ),
            )
        }
    };
    let texts = match (parsed.text, parsed.texts) {
        (Some(t), None) => vec![t],
        (None, Some(v)) if !v.is_empty() => v,
        (None, Some(_)) => return refuse(StatusCode::BAD_REQUEST, "\"texts\" is empty"),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"text\" (a string) or \"texts\" (an array of strings)",
            )
        }
    };
    if texts.len() > api.limits.max_texts {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} texts; at most {} per request (api.max_texts)",
                texts.len(),
                api.limits.max_texts
            ),
        );
    }
    let Some(pending) = api.pending.upgrade() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    // Each text's place: waiting for its outcome, or refused here for its size.
    let mut waiting: Vec<Result<oneshot::Receiver<Outcome>, Value>> =
        Vec::with_capacity(texts.len());
    for (i, text) in texts.into_iter().enumerate() {
        if text.len() > api.max_text_bytes {
            waiting.push(Err(json!({"id": i.to_string(), "error": {
                "reason": "too_large",
                "detail": format!("text is {} bytes > input.max_message_bytes {}", text.len(), api.max_text_bytes),
            }})));
            continue;
        }
        // A slot first, then the message: a request that gives up never drops a message
        // whose acknowledgement is still open.
        let permit = match tokio::time::timeout_at(deadline, pending.reserve()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
            Err(_) => {
                return refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the stream's queue stayed full past api.timeout_ms",
                )
            }
        };
        let payload = serde_json::to_vec(&json!({"id": i.to_string(), "text": text}))
            .expect("a JSON object of strings serialises");
        let offset = api.next.fetch_add(1, Ordering::Relaxed);
        let mut origin = Origin::unkeyed(&api.ledger, "api", offset, Some(payload));
        let (tx, rx) = oneshot::channel();
        origin.reply = Some(tx);
        permit.send(admit(origin, &api.input));
        waiting.push(Ok(rx));
    }
    drop(pending);
    let mut events = Vec::with_capacity(waiting.len());
    for (i, place) in waiting.into_iter().enumerate() {
        let rx = match place {
            Ok(rx) => rx,
            Err(refused) => {
                events.push(refused);
                continue;
            }
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => events.push(answer(outcome, i)),
            Ok(Err(_)) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the pipeline stopped before answering",
                )
            }
            Err(_) => {
                return refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "not labelled within api.timeout_ms ({} ms)",
                        api.limits.timeout_ms
                    ),
                )
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    counted(
        StatusCode::OK,
        Json(json!({"events": events, "took_seconds": took})).into_response(),
    )
}

/// `GET /v1/model`: the active model, its labels and thresholds (the try-it page marks them).
pub(crate) async fn get_model_info(State(api): State<Arc<ClassifyApi>>) -> Response {
    let m = api.active.borrow().clone();
    Json(json!({
        "name": m.model_ref.name,
        "version": m.model_ref.version,
        "sha256": m.model_ref.sha256,
        "labels": m.labels,
        "thresholds": m.thresholds,
    }))
    .into_response()
}
