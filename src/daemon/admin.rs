//! The admin HTTP server: Prometheus `/metrics`, `/healthz` (503 when a stage died or work in
//! flight made no progress for `health.stall_timeout_ms`: restart me), `/readyz` (503 unless
//! the model is loaded, the cluster reachable, partitions assigned, and no produce is waiting
//! out a fault or refused for good: do not count on me now), and
//! the model API: `GET /admin/model`, `POST /admin/model {"version": ...}`,
//! `POST /admin/model/rollback`. `/admin/*` needs `Authorization: Bearer <token>` whenever a
//! token is set; with none it refuses everyone, unless the operator opened it on a loopback
//! bind (`admin.allow_unauthenticated_loopback`; config validation demands a token off
//! loopback). The same rules guard `/v1/*` (classify API, live view: daemon/api); the pages at
//! `/` and `/live` hold no data and are served to anyone who can reach the bind.

use crate::backend::generation::Generation;
use crate::daemon::api::classify::{self, ClassifyApi};
use crate::daemon::api::feedback::{self, FeedbackApi};
use crate::daemon::api::live::{self, LiveView};
use crate::daemon::api::{error, pages};
use crate::daemon::config::AdminAccess;
use crate::daemon::swap::{self, SwapRequest, SwapResult, Target, Trigger};
use crate::model::registry::{check_version_name, Registry};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// What readiness is made of; each stage reports its part through a reader of its own state.
pub(crate) struct Health {
    pub(crate) model_loaded: AtomicBool,
    /// The source holds partitions.
    pub(crate) assigned: Arc<dyn Fn() -> bool + Send + Sync>,
    /// A broker answers.
    pub(crate) cluster_reachable: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Messages the sink is retrying through a transient fault right now.
    pub(crate) retrying: Arc<dyn Fn() -> usize + Send + Sync>,
    /// Messages the sink can deliver nowhere right now.
    pub(crate) undeliverable: Arc<dyn Fn() -> usize + Send + Sync>,
    /// A Kafka transaction call (commit, abort) failing and retrying right now, and why.
    pub(crate) transaction_retrying: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// The schema registry is unavailable and framed input waits for it, and why.
    pub(crate) schema_registry: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// Why the pipeline is stuck, when it is.
    pub(crate) stuck: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// The fatal fault the daemon is exiting for.
    pub(crate) fault: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    pub(crate) shutting_down: AtomicBool,
}

/// What the model API needs; absent in processes that cannot swap.
#[derive(Clone)]
pub(crate) struct ModelAdmin {
    pub(crate) active: watch::Receiver<Arc<Generation>>,
    pub(crate) registry: Option<Registry>,
    pub(crate) swaps: mpsc::Sender<SwapRequest>,
}

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) health: Arc<Health>,
    pub(crate) access: AdminAccess,
    pub(crate) model: Option<ModelAdmin>,
    /// Series rendered outside the recorder (the consumer lag of the partitions held now).
    pub(crate) extra_metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `POST /v1/classify` and `GET /v1/model` (api.enabled).
    pub(crate) classify: Option<Arc<ClassifyApi>>,
    /// `GET /v1/live` (ui.enabled).
    pub(crate) live: Option<Arc<LiveView>>,
    /// `POST /v1/feedback`, when `api.feedback_topic` is set (`emostream run`).
    pub(crate) feedback: Option<Arc<FeedbackApi>>,
    /// Serve the pages at `/` and `/live` (ui.enabled).
    pub(crate) pages: bool,
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.prometheus.render() + &(s.extra_metrics)(),
    )
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let h = &s.health;
    let fault = (h.fault)();
    let stuck = (h.stuck)();
    let healthy = fault.is_none() && stuck.is_none();
    let body = json!({"healthy": healthy, "fault": fault, "stuck": stuck});
    (
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let h = &s.health;
    let model = h.model_loaded.load(Ordering::SeqCst);
    let reachable = (h.cluster_reachable)();
    let assigned = (h.assigned)();
    let retrying = (h.retrying)();
    let stalled = (h.undeliverable)();
    let transaction = (h.transaction_retrying)();
    let registry = (h.schema_registry)();
    let stopping = h.shutting_down.load(Ordering::SeqCst);
    let ready = model
        && reachable
        && assigned
        && retrying == 0
        && stalled == 0
        && transaction.is_none()
        && registry.is_none()
        && !stopping;
    let body = serde_json::json!({
        "ready": ready, "model_loaded": model, "cluster_reachable": reachable,
        "partitions_assigned": assigned, "retrying_messages": retrying,
        "stalled_messages": stalled, "transaction_retrying": transaction,
        "schema_registry_unavailable": registry,
        "shutting_down": stopping,
    });
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    match &s.access {
        AdminAccess::Token(token) => {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            }
        }
        // No token: only a local program may ask. A browser page on this host could otherwise
        // post a form here (it sends an Origin) or reach it by DNS rebinding (another Host).
        AdminAccess::OpenOnLoopback => {
            let h = req.headers();
            let host = h
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
            // A page may ask only when it was served from here (the try-it and live pages).
            let foreign = h
                .get("origin")
                .is_some_and(|o| o.to_str().ok() != Some(format!("http://{host}").as_str()));
            if foreign || !["127.0.0.1", "localhost", "[::1]"].contains(&name) {
                return error(
                    StatusCode::FORBIDDEN,
                    "without a token the admin API answers local programs and its own pages only (no Origin header or this origin, Host 127.0.0.1/localhost)",
                );
            }
        }
        AdminAccess::Closed => {
            return error(
                StatusCode::UNAUTHORIZED,
                "the admin API has no token: set admin.token (or admin.token_file), or admin.allow_unauthenticated_loopback = true on a loopback bind",
            )
        }
    }
    next.run(req).await
}

async fn get_model(State(s): State<AdminState>) -> Response {
    let Some(m) = &s.model else {
        return error(StatusCode::NOT_FOUND, "this process has no model API");
    };
    let active = m.active.borrow().clone();
    // An object store's listing is network I/O: off the async workers.
    // A registry that cannot be read says so (an empty list would look like an empty registry).
    let (versions, pointer, registry_error) = match m.registry.clone() {
        Some(r) => tokio::task::spawn_blocking(move || {
            match r.versions().and_then(|v| Ok((v, r.active()?))) {
                Ok((v, p)) => (v, p, None),
                Err(e) => (Vec::new(), None, Some(format!("{e:#}"))),
            }
        })
        .await
        .unwrap_or_else(|e| {
            (
                Vec::new(),
                None,
                Some(format!("reading the registry panicked: {e}")),
            )
        }),
        None => (Vec::new(), None, None),
    };
    Json(json!({
        "active": {"name": active.model_ref.name, "version": active.model_ref.version,
                   "sha256": active.model_ref.sha256, "dir": active.dir},
        "registry": m.registry.as_ref().map(|r| r.location()),
        "pointer": pointer,
        "versions": versions,
        "registry_error": registry_error,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    version: String,
}

async fn swap_to(s: &AdminState, target: Target) -> Response {
    let Some(m) = &s.model else {
        return error(StatusCode::NOT_FOUND, "this process has no model API");
    };
    match swap::request(&m.swaps, target, Trigger::Admin).await {
        Ok(report) => {
            let status = match report.result {
                SwapResult::Swapped | SwapResult::Unchanged => StatusCode::OK,
                SwapResult::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, Json(report)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn post_model(State(s): State<AdminState>, Json(body): Json<ActivateBody>) -> Response {
    // Refuse anything that is not a plain version name before it gets near the file system.
    if let Err(e) = check_version_name(&body.version) {
        return error(StatusCode::BAD_REQUEST, format!("{e:#}"));
    }
    swap_to(&s, Target::Version(body.version)).await
}

async fn post_rollback(State(s): State<AdminState>) -> Response {
    swap_to(&s, Target::Rollback).await
}

fn router(state: AdminState) -> Router {
    let mut guarded = Router::new()
        .route("/admin/model", get(get_model).post(post_model))
        .route("/admin/model/rollback", post(post_rollback));
    if let Some(api) = &state.classify {
        guarded = guarded.merge(
            Router::new()
                .route("/v1/classify", post(classify::post_classify))
                .route("/v1/model", get(classify::get_model_info))
                .with_state(api.clone()),
        );
    }
    if let Some(corrections) = &state.feedback {
        guarded = guarded.merge(
            Router::new()
                .route("/v1/feedback", post(feedback::post_feedback))
                .with_state(corrections.clone()),
        );
    }
    if let Some(view) = &state.live {
        guarded = guarded.merge(
            Router::new()
                .route("/v1/live", get(live::get_live))
                .with_state(view.clone()),
        );
    }
    let guarded = guarded.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_token,
    ));
    let mut open = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    // The try-it page needs the classify API; the live view only its own data.
    if state.pages && state.classify.is_some() {
        open = open.route("/", get(pages::try_it));
    }
    if state.pages {
        open = open.route("/live", get(pages::live));
    }
    open.merge(guarded).with_state(state)
}

pub(crate) async fn serve(
    bind: &str,
    limits: crate::daemon::http_listener::HttpLimits,
    state: AdminState,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = crate::daemon::http_listener::bind(bind)
        .map_err(|e| anyhow::anyhow!("binding admin.bind {bind}: {e}"))?;
    let address = listener.local_addr()?;
    match &state.access {
        AdminAccess::Token(_) => {
            tracing::info!(%address, "admin HTTP listening; /admin/* needs the bearer token")
        }
        AdminAccess::OpenOnLoopback => {
            tracing::warn!(%address, "admin HTTP listening; /admin/* is open to anyone on this host without a token (admin.allow_unauthenticated_loopback)")
        }
        AdminAccess::Closed => {
            tracing::info!(%address, "admin HTTP listening; /admin/* is disabled: no admin.token set (admin.allow_unauthenticated_loopback is false)")
        }
    }
    let app = router(state);
    Ok(tokio::spawn(crate::daemon::http_listener::serve(
        listener, app, limits,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn state(access: AdminAccess) -> AdminState {
        let never = Arc::new(|| false);
        AdminState {
            prometheus: metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            health: Arc::new(Health {
                model_loaded: AtomicBool::new(true),
                assigned: never.clone(),
                cluster_reachable: never,
                retrying: Arc::new(|| 0),
                undeliverable: Arc::new(|| 0),
                transaction_retrying: Arc::new(|| None),
                schema_registry: Arc::new(|| None),
                stuck: Arc::new(|| None),
                fault: Arc::new(|| None),
                shutting_down: AtomicBool::new(false),
            }),
            access,
            model: None,
            extra_metrics: Arc::new(String::new),
            classify: None,
            live: None,
            feedback: None,
            pages: false,
        }
    }

    /// Status and body of one request to a server with `access`.
    async fn ask(access: AdminAccess, request: &str) -> (u16, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server =
            tokio::spawn(async move { axum::serve(listener, router(state(access))).await });
        let request = request.to_string();
        let reply = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            buf
        })
        .await
        .unwrap();
        server.abort();
        let code = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
        (
            code,
            reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
        )
    }

    const ROLLBACK: &str = "POST /admin/model/rollback HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nConnection: close\r\nContent-Length: 0\r\n";

    #[tokio::test]
    async fn without_a_token_the_admin_api_is_closed_unless_opened_on_loopback_and_probes_stay_open(
    ) {
        let (code, body) = ask(AdminAccess::Closed, &format!("{ROLLBACK}\r\n")).await;
        assert_eq!(code, 401);
        assert!(
            body.contains("admin.allow_unauthenticated_loopback"),
            "{body}"
        );
        // Past the gate: this process has no model API.
        let (code, _) = ask(AdminAccess::OpenOnLoopback, &format!("{ROLLBACK}\r\n")).await;
        assert_eq!(code, 404);
        // ... but not for a browser page (an Origin) or a rebound name (another Host).
        let from_page = format!("{ROLLBACK}Origin: http://evil.example\r\n\r\n");
        assert_eq!(ask(AdminAccess::OpenOnLoopback, &from_page).await.0, 403);
        // A page this server served itself (same origin) may ask: the try-it and live pages.
        let own_page = format!("{ROLLBACK}Origin: http://127.0.0.1:9464\r\n\r\n");
        assert_eq!(ask(AdminAccess::OpenOnLoopback, &own_page).await.0, 404);
        let rebound_page = ROLLBACK.replace("Host: 127.0.0.1", "Host: evil.example")
            + "Origin: http://evil.example:9464\r\n\r\n";
        assert_eq!(ask(AdminAccess::OpenOnLoopback, &rebound_page).await.0, 403);
        let rebound = ROLLBACK.replace("Host: 127.0.0.1", "Host: evil.example");
        assert_eq!(
            ask(AdminAccess::OpenOnLoopback, &format!("{rebound}\r\n"))
                .await
                .0,
            403
        );
        let token = || AdminAccess::Token("t0ken".into());
        assert_eq!(ask(token(), &format!("{ROLLBACK}\r\n")).await.0, 401);
        let wrong = format!("{ROLLBACK}Authorization: Bearer t0kem\r\n\r\n");
        assert_eq!(ask(token(), &wrong).await.0, 401);
        let right = format!("{ROLLBACK}Authorization: Bearer t0ken\r\n\r\n");
        assert_eq!(ask(token(), &right).await.0, 404);
        let metrics = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert_eq!(ask(AdminAccess::Closed, metrics).await.0, 200);
        let health = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert_eq!(ask(token(), health).await.0, 200);
    }
}
