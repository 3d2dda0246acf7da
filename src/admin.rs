//! The admin HTTP server: Prometheus `/metrics`, `/healthz` (the process is up) and `/readyz`
//! (model loaded, partitions assigned, no partition stalled on an undeliverable message).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Health {
    pub model_loaded: AtomicBool,
    pub assigned: Arc<dyn Fn() -> bool + Send + Sync>,
    pub stalled: Arc<AtomicUsize>,
    pub shutting_down: AtomicBool,
}

#[derive(Clone)]
pub struct AdminState {
    pub prometheus: PrometheusHandle,
    pub health: Arc<Health>,
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let h = &s.health;
    let model = h.model_loaded.load(Ordering::SeqCst);
    let assigned = (h.assigned)();
    let stalled = h.stalled.load(Ordering::SeqCst);
    let stopping = h.shutting_down.load(Ordering::SeqCst);
    let ready = model && assigned && stalled == 0 && !stopping;
    let body = serde_json::json!({
        "ready": ready, "model_loaded": model, "partitions_assigned": assigned,
        "stalled_messages": stalled, "shutting_down": stopping,
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

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

pub async fn serve(bind: &str, state: AdminState) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("binding admin.bind {bind}: {e}"))?;
    tracing::info!(address = %listener.local_addr()?, "admin HTTP listening");
    let app = router(state);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }))
}
