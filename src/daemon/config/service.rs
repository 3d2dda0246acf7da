//! The service's sections: `[api]` and `[ui]` (the classify API, the try-it page and the live
//! view), `[admin]` (the admin server and who may use it), `[log]`, `[shutdown]`, `[health]`.

use super::check;
use anyhow::Result;
use serde::Deserialize;
use std::net::SocketAddr;

/// `[api]`: `POST /v1/classify` on the admin server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiSettings {
    pub(crate) enabled: bool,
    pub(crate) max_texts: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_concurrent: usize,
    pub(crate) timeout_ms: u64,
    pub(crate) feedback_topic: String,
}

/// `[ui]`: the try-it page, the live view and what it keeps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UiSettings {
    pub(crate) enabled: bool,
    pub(crate) live_size: usize,
    pub(crate) live_minutes: usize,
    pub(crate) show_text: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSettings {
    pub(crate) bind: String,
    pub(crate) token: String,
    /// A file holding the token (a mounted secret); used when `token` is empty.
    pub(crate) token_file: String,
    /// With no token, let anyone who can reach a loopback bind use the admin API.
    pub(crate) allow_unauthenticated_loopback: bool,
    /// A request's headers must arrive within this; else the connection is closed.
    pub(crate) header_read_timeout_ms: u64,
    /// A handler's answer must start within this; else 503.
    pub(crate) request_timeout_ms: u64,
    /// A connection with nothing read or written for this long is closed.
    pub(crate) idle_timeout_ms: u64,
    /// Open connections at most; past it new ones are closed at once.
    pub(crate) max_connections: usize,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("bind", &self.bind)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("token_file", &self.token_file)
            .field(
                "allow_unauthenticated_loopback",
                &self.allow_unauthenticated_loopback,
            )
            .field("header_read_timeout_ms", &self.header_read_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Who may use the admin API's model endpoints.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum AdminAccess {
    /// `Authorization: Bearer <token>` on every request.
    Token(String),
    /// No token, loopback bind, and the operator said so (`admin.allow_unauthenticated_loopback`).
    OpenOnLoopback,
    /// No token and no opt-in: the model endpoints refuse everyone.
    Closed,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdminAccess::Token(_) => "Token(<redacted>)",
            AdminAccess::OpenOnLoopback => "OpenOnLoopback",
            AdminAccess::Closed => "Closed",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// `log.format`: human-readable lines or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShutdownSettings {
    pub(crate) timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthSettings {
    pub(crate) stall_timeout_ms: u64,
}

impl ApiSettings {
    pub(super) fn validate(&self) -> Result<()> {
        check(
            self.feedback_topic == self.feedback_topic.trim(),
            "api.feedback_topic",
            "has spaces around the topic name",
        )?;
        let a = self;
        check(
            (1..=4096).contains(&a.max_texts),
            "api.max_texts",
            format!("must be between 1 and 4096 (got {})", a.max_texts),
        )?;
        check(
            (1024..=64 * 1024 * 1024).contains(&a.max_request_bytes),
            "api.max_request_bytes",
            format!(
                "must be between 1024 and 67108864 (got {})",
                a.max_request_bytes
            ),
        )?;
        check(
            (1..=1024).contains(&a.max_concurrent),
            "api.max_concurrent",
            format!("must be between 1 and 1024 (got {})", a.max_concurrent),
        )?;
        check(
            a.timeout_ms >= 100,
            "api.timeout_ms",
            format!("must be at least 100 (got {})", a.timeout_ms),
        )?;
        Ok(())
    }
}

impl UiSettings {
    pub(super) fn validate(&self) -> Result<()> {
        let u = self;
        check(
            (1..=10_000).contains(&u.live_size),
            "ui.live_size",
            format!("must be between 1 and 10000 (got {})", u.live_size),
        )?;
        check(
            (1..=1440).contains(&u.live_minutes),
            "ui.live_minutes",
            format!("must be between 1 and 1440 (got {})", u.live_minutes),
        )?;
        Ok(())
    }
}

impl AdminSettings {
    /// `admin.bind` is an address; a token, or the loopback opt-in on a loopback bind.
    pub(super) fn validate(&self) -> Result<()> {
        let addr: SocketAddr = self.bind.parse().map_err(|e| {
            anyhow::anyhow!(
                "config key admin.bind: {:?} is not an address:port ({e})",
                self.bind
            )
        })?;
        check(
            !self.allow_unauthenticated_loopback || addr.ip().is_loopback(),
            "admin.allow_unauthenticated_loopback",
            format!("applies to a loopback admin.bind only (got {addr}); set admin.token"),
        )?;
        check(
            !self.allow_unauthenticated_loopback
                || self.token.is_empty() && self.token_file.is_empty(),
            "admin.allow_unauthenticated_loopback",
            "cannot be combined with a token (admin.token or admin.token_file): pick one",
        )?;
        check(
            self.token.is_empty() || self.token_file.is_empty(),
            "admin.token_file",
            "cannot be combined with admin.token: pick one",
        )?;
        check(
            addr.ip().is_loopback() || !self.token.is_empty() || !self.token_file.is_empty(),
            "admin.token",
            "is required when admin.bind is not a loopback address (or admin.token_file)",
        )?;
        for (key, v) in [
            ("admin.header_read_timeout_ms", self.header_read_timeout_ms),
            ("admin.request_timeout_ms", self.request_timeout_ms),
            ("admin.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            check(
                (100..=3_600_000).contains(&v),
                key,
                format!("must be between 100 and 3600000 ms (got {v})"),
            )?;
        }
        check(
            (1..=1_000_000).contains(&self.max_connections),
            "admin.max_connections",
            format!(
                "must be between 1 and 1000000 (got {})",
                self.max_connections
            ),
        )?;
        Ok(())
    }
}

impl LogSettings {
    pub(super) fn validate(&self) -> Result<()> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| anyhow::anyhow!("config key log.level: {e}"))?;
        Ok(())
    }
}

impl ShutdownSettings {
    pub(super) fn validate(&self) -> Result<()> {
        check(
            self.timeout_ms >= 100,
            "shutdown.timeout_ms",
            "must be at least 100",
        )?;
        Ok(())
    }
}

impl HealthSettings {
    pub(super) fn validate(&self) -> Result<()> {
        check(
            self.stall_timeout_ms >= 1000,
            "health.stall_timeout_ms",
            format!("must be at least 1000 (got {})", self.stall_timeout_ms),
        )?;
        Ok(())
    }
}
