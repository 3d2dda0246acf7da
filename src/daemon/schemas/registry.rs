//! The registry client shared by input and output: built from `[schema_registry]` (URL, basic
//! or bearer authentication, a CA file, a per-call timeout), and the registry's reachability
//! as the stream last saw it (readiness shows an outage).

use crate::daemon::config::{RegistryAuth, SchemaRegistrySettings};
use anyhow::{Context, Result};
use schema_registry_client::rest::apis::Error as RestError;
use schema_registry_client::rest::client_config::ClientConfig;
use schema_registry_client::rest::schema_registry_client::{Client, SchemaRegistryClient};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a failed registry call means for the message that needed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The registry did not answer, or answered that it cannot now (5xx, 408, 429, a 404 that
    /// is not the registry's own — a proxy with no backend): ask again.
    Unavailable(String),
    /// The registry refuses our credentials (401, 403): not the message's fault either, so
    /// ask again — but it does not pass by itself (the secrets are read at start-up), so
    /// `/healthz` fails after `health.stall_timeout_ms` and a restart reads them again.
    Credentials(String),
    /// The registry has no such schema (its own 404: error code 40401, 40402 or 40403).
    Unknown(String),
    /// Any other answer that refuses the call (4xx).
    Refused(String),
}

pub(crate) struct SchemaRegistry {
    /// The crate's serdes borrow their client for their whole life; the client lives as
    /// long as the process, so it is leaked once at start-up rather than shared by lifetime.
    pub(crate) client: &'static SchemaRegistryClient,
    pub(crate) url: String,
    /// Why calls fail for want of the registry, since when, until it answers again.
    outage: Mutex<Option<Outage>>,
}

#[derive(Debug, Clone)]
struct Outage {
    why: String,
    since: Instant,
    credentials: bool,
}

impl SchemaRegistry {
    /// A client for `[schema_registry]` (reads the credentials now; the error names the key).
    pub(crate) fn connect(s: &SchemaRegistrySettings) -> Result<SchemaRegistry> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_millis(s.timeout_ms));
        if !s.ca_file.is_empty() {
            let pem = std::fs::read(&s.ca_file).with_context(|| {
                format!("config key schema_registry.ca_file: reading {}", s.ca_file)
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!(
                    "config key schema_registry.ca_file: {} holds no PEM certificate",
                    s.ca_file
                )
            })? {
                http = http.add_root_certificate(cert);
            }
        }
        let mut config = ClientConfig::new(vec![s.url.trim_end_matches('/').to_string()]);
        match s.auth()? {
            RegistryAuth::None => {}
            RegistryAuth::Basic { username, password } => {
                config.basic_auth = Some((username, Some(password)))
            }
            RegistryAuth::Bearer(token) => config.bearer_access_token = Some(token),
        }
        // Retried by the caller, which keeps committing and can stop meanwhile.
        config.max_retries = 0;
        config.client = http
            .build()
            .context("building the schema registry's HTTP client")?;
        Ok(SchemaRegistry {
            client: Box::leak(Box::new(SchemaRegistryClient::new(config))),
            url: s.url.clone(),
            outage: Mutex::new(None),
        })
    }

    /// What `e` means, the registry's reachability updated.
    pub(crate) fn failure(&self, e: &RestError, what: &str) -> Failure {
        let f = classify(e, &format!("{what} at {}", self.url));
        match &f {
            Failure::Unavailable(why) | Failure::Credentials(why) => {
                let credentials = matches!(f, Failure::Credentials(_));
                let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
                let since = match o.as_ref() {
                    Some(prev) if prev.credentials == credentials => prev.since,
                    _ => {
                        tracing::warn!(error = %why, "the schema registry is unavailable; waiting for it (nothing is dead-lettered for it)");
                        metrics::gauge!("emostream_schema_registry_reachable").set(0.0);
                        Instant::now()
                    }
                };
                *o = Some(Outage {
                    why: why.clone(),
                    since,
                    credentials,
                });
            }
            // It answered (no, but it answered).
            Failure::Unknown(_) | Failure::Refused(_) => self.answered(),
        }
        f
    }

    /// The registry answered a call: any outage is over.
    pub(crate) fn answered(&self) {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if o.take().is_some() {
            tracing::info!(url = %self.url, "the schema registry answers again");
        }
        metrics::gauge!("emostream_schema_registry_reachable").set(1.0);
    }

    /// Why the registry is unavailable, while it is (readiness).
    pub(crate) fn outage(&self) -> Option<String> {
        let o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        o.as_ref().map(|o| o.why.clone())
    }

    /// `/healthz`: credentials refused for longer than `limit` (they do not come right by
    /// themselves; a restart reads the secrets again). An outage of the registry itself is not
    /// the process's fault and never fails it.
    pub(crate) fn refusing_credentials_longer_than(&self, limit: Duration) -> Option<String> {
        let o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let o = o.as_ref().filter(|o| o.credentials)?;
        let for_ = o.since.elapsed();
        (for_ > limit).then(|| {
            format!(
                "the schema registry has refused our credentials for {for_:.1?} (over {limit:?}); a restart reads schema_registry's secrets again: {}",
                o.why
            )
        })
    }

    /// At start-up with framed input (framed events register their schema instead): one call
    /// that needs read access, so credentials the registry refuses stop start-up naming the
    /// keys. A registry that does not answer is waited for later, per message.
    pub(crate) async fn probe(&self) -> Result<()> {
        match self.client.get_all_subjects(false).await {
            Ok(_) => {
                self.answered();
                Ok(())
            }
            Err(e) => match self.failure(&e, "listing subjects") {
                Failure::Credentials(why) => anyhow::bail!(
                    "config keys schema_registry.username/password_* or token_*: the registry refuses them: {why}"
                ),
                Failure::Unavailable(why) => {
                    tracing::warn!(error = %why, "the schema registry does not answer at start-up; framed comments will wait for it");
                    Ok(())
                }
                Failure::Unknown(why) | Failure::Refused(why) => {
                    anyhow::bail!("config key schema_registry.url: {why}")
                }
            },
        }
    }
}

/// Sorts a failed call by what the registry answered.
pub(crate) fn classify(e: &RestError, what: &str) -> Failure {
    match e {
        RestError::ResponseError(r) => {
            let status = r.status.as_u16();
            let message = r
                .entity
                .as_ref()
                .and_then(|m| m.message.clone())
                .unwrap_or_else(|| r.content.chars().take(300).collect());
            let why = format!("{what}: HTTP {status}: {message}");
            // The registry's own 404s carry its error codes; a bare 404 (an ingress with no
            // backend during a rollout) says nothing about the schema.
            let code = r.entity.as_ref().and_then(|m| m.error_code);
            match status {
                404 if matches!(code, Some(40401..=40403)) => Failure::Unknown(why),
                401 | 403 => Failure::Credentials(why),
                404 | 408 | 429 | 500..=599 => Failure::Unavailable(why),
                _ => Failure::Refused(why),
            }
        }
        RestError::Reqwest(r) => Failure::Unavailable(format!("{what}: {r}")),
        // An answer that is not the API's (a proxy's error page, a registry starting up).
        RestError::Serde(s) => Failure::Unavailable(format!("{what}: unreadable answer: {s}")),
        RestError::Io(io) => Failure::Unavailable(format!("{what}: {io}")),
    }
}
