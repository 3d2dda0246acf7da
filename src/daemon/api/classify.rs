//! `POST /v1/classify` and `GET /v1/model`: comments posted over HTTP go through the inference
//! core's interactive lane (`emostream run`: batched apart, taken before the stream's next
//! batch; `emostream serve`: the core's only queue) and its active model generation (so a hot
//! swap applies to both) as raw-text messages and come back as the stream's label events (schema v1) without the Kafka `source`, with
//! every label's score.
//! Limits: `api.max_texts` and `api.max_request_bytes` per request (413), `api.max_concurrent`
//! requests at once (429), `api.timeout_ms` for the whole request (408 while its body has not
//! arrived, 504 while it waits to be labelled); bad JSON is a 400 naming the problem.

use crate::backend::generation::Generation;
use crate::daemon::ack::Ledger;
use crate::daemon::api::error;
use crate::daemon::config::{ApiSettings, InputFormat, InputSettings};
use crate::daemon::pipeline::policy::PolicySource;
use crate::daemon::pipeline::{admit, Admitted, Origin, Outcome};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

pub(crate) struct ClassifyApi {
    /// Into the inference core (its interactive lane under `run`). Weak: the core still drains
    /// and stops when its owner drops the strong sender; a request holds one only while it
    /// sends.
    queue: mpsc::WeakSender<Admitted>,
    /// Tracks posted comments (their outcomes resolve it; nothing commits from it).
    ledger: Arc<Ledger>,
    next: AtomicI64,
    /// The stream's content rules (size, empty text), a posted text read as a raw-text message.
    input: InputSettings,
    limits: ApiSettings,
    permits: Arc<Semaphore>,
    active: watch::Receiver<Arc<Generation>>,
    /// Set when the process shuts down: new requests get 503.
    closed: AtomicBool,
    /// The stream's policy file, shown by `/v1/model` (the API's own answers use the model's
    /// thresholds).
    policy: Option<Arc<PolicySource>>,
    /// `POST /v1/feedback` is served beside (the try-it page offers corrections).
    feedback: bool,
}

impl ClassifyApi {
    pub(crate) fn new(
        pending: mpsc::WeakSender<Admitted>,
        input: &InputSettings,
        limits: &ApiSettings,
        active: watch::Receiver<Arc<Generation>>,
        policy: Option<Arc<PolicySource>>,
        feedback: bool,
    ) -> ClassifyApi {
        ClassifyApi {
            queue: pending,
            ledger: Arc::new(Ledger::default()),
            next: AtomicI64::new(0),
            input: InputSettings {
                format: InputFormat::Text,
                ..input.clone()
            },
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits: limits.clone(),
            active,
            closed: AtomicBool::new(false),
            policy,
            feedback,
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

/// The answer for one posted text: its label event as the workers serialised it (built
/// without the Kafka source), or the reason the stream would have dead-lettered it.
fn answer(outcome: Outcome, index: usize) -> Vec<u8> {
    match outcome {
        Outcome::Labelled { event, origin, .. } => {
            origin.ack.delivered();
            event
        }
        Outcome::Rejected(r) => {
            let v = json!({
                "id": index.to_string(),
                "error": {"reason": r.reason.as_str(), "detail": r.detail},
            });
            r.origin.ack.delivered();
            serde_json::to_vec(&v).expect("a JSON object of strings serialises")
        }
    }
}

/// `POST /v1/classify`: admission (open, a concurrency slot), the request read and checked,
/// its texts handed to the inference core, the answers gathered, all within api.timeout_ms.
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
    let texts = match read_texts(&api, req, deadline).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    let waiting = match submit(&api, texts, deadline).await {
        Ok(w) => w,
        Err(refused) => return refused,
    };
    let mut body = match gather(&api, waiting, deadline).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let took = started.elapsed().as_secs_f64();
    body.extend(format!("],\"took_seconds\":{took}}}").into_bytes());
    counted(
        StatusCode::OK,
        ([("content-type", "application/json")], body).into_response(),
    )
}

/// The request's texts, or the answer refusing it: a body over the size limit (413), broken
/// or late (400, 408), not the JSON asked for (400), or with too many texts (413).
async fn read_texts(
    api: &ClassifyApi,
    req: Request,
    deadline: tokio::time::Instant,
) -> Result<Vec<String>, Response> {
    let read = axum::body::to_bytes(req.into_body(), api.limits.max_request_bytes);
    let body = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(body)) => body,
        // to_bytes fails for the length limit, or for a broken body (reset, bad chunking).
        Ok(Err(e)) if format!("{e:#}").contains("length limit") => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over api.max_request_bytes ({} bytes)",
                    api.limits.max_request_bytes
                ),
            ))
        }
        Ok(Err(e)) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            ))
        }
        Err(_) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within api.timeout_ms ({} ms)",
                    api.limits.timeout_ms
                ),
            ))
        }
    };
    parse_texts(&body, api.limits.max_texts)
}

/// `{"text": ...}` or `{"texts": [...]}` with at most `max_texts` texts.
fn parse_texts(body: &[u8], max_texts: usize) -> Result<Vec<String>, Response> {
    let parsed: ClassifyRequest = serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("bad JSON: {e} (expected {{\"text\": \"...\"}} or {{\"texts\": [\"...\"]}})"),
        )
    })?;
    let texts = match (parsed.text, parsed.texts) {
        (Some(t), None) => vec![t],
        (None, Some(v)) if !v.is_empty() => v,
        (None, Some(_)) => return Err(refuse(StatusCode::BAD_REQUEST, "\"texts\" is empty")),
        _ => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"text\" (a string) or \"texts\" (an array of strings)",
            ))
        }
    };
    if texts.len() > max_texts {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} texts; at most {max_texts} per request (api.max_texts)",
                texts.len()
            ),
        ));
    }
    Ok(texts)
}

/// Hands each text to the inference core as a raw-text message whose outcome answers this
/// request; returns where each answer will arrive.
async fn submit(
    api: &ClassifyApi,
    texts: Vec<String>,
    deadline: tokio::time::Instant,
) -> Result<Vec<oneshot::Receiver<Outcome>>, Response> {
    let Some(pending) = api.queue.upgrade() else {
        return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    };
    let mut waiting = Vec::with_capacity(texts.len());
    for (i, text) in texts.into_iter().enumerate() {
        // A slot first, then the message: a request that gives up never drops a message
        // whose acknowledgement is still open.
        let permit = match tokio::time::timeout_at(deadline, pending.reserve()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down")),
            Err(_) => {
                return Err(refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the classify queue stayed full past api.timeout_ms",
                ))
            }
        };
        let offset = api.next.fetch_add(1, Ordering::Relaxed);
        let mut origin = Origin::unkeyed(&api.ledger, "api", offset, Some(text.into_bytes()));
        let (tx, rx) = oneshot::channel();
        origin.reply = Some(tx);
        // A comment's id in the answer is its place in the request.
        let admitted = admit(origin, &api.input).map(|mut p| {
            p.id = i.to_string();
            p
        });
        permit.send(admitted);
        waiting.push(rx);
    }
    Ok(waiting)
}

/// The answer body up to the end of its events array: the events are written as the workers
/// serialised them, not parsed and written again.
async fn gather(
    api: &ClassifyApi,
    waiting: Vec<oneshot::Receiver<Outcome>>,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, Response> {
    let mut body = b"{\"events\":[".to_vec();
    for (i, rx) in waiting.into_iter().enumerate() {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => {
                if i > 0 {
                    body.push(b',');
                }
                body.extend(answer(outcome, i));
            }
            Ok(Err(_)) => {
                return Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the pipeline stopped before answering",
                ))
            }
            Err(_) => {
                return Err(refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "not labelled within api.timeout_ms ({} ms)",
                        api.limits.timeout_ms
                    ),
                ))
            }
        }
    }
    Ok(body)
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
        "policy": api.policy.as_ref().map(|p| p.status()),
        "feedback": api.feedback,
    }))
    .into_response()
}
