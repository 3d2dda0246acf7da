//! The try-it page (`/`) and the live view (`/live`): static HTML with inline CSS and JS,
//! compiled into the binary (no build step, nothing fetched from elsewhere). They hold no data;
//! what they show comes from `/v1/*`, under the admin API's access rules.

use axum::response::{Html, IntoResponse};

const TRY_IT: &str = include_str!("assets/index.html");
const LIVE: &str = include_str!("assets/live.html");

pub(crate) async fn try_it() -> impl IntoResponse {
    Html(TRY_IT)
}

pub(crate) async fn live() -> impl IntoResponse {
    Html(LIVE)
}
