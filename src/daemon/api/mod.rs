//! What the admin HTTP server offers people and programs besides operations: the classify API
//! (`/v1/classify`, `/v1/model`), moderators' corrections (`/v1/feedback`), the moderators'
//! live view (`/v1/live`) and the two pages that
//! use them (`/` to try the model, `/live` to watch the stream), plain HTML/CSS/JS compiled in.

pub(crate) mod classify;
pub(crate) mod feedback;
pub(crate) mod live;
pub(crate) mod pages;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A JSON error answer: `{"error": msg}`.
pub(crate) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({"error": msg.to_string()}))).into_response()
}
