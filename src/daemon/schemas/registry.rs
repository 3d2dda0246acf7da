//! The registry client shared by input and output: built from `[schema_registry]` (URL, basic
//! or bearer authentication, a CA file, a per-call timeout), and the registry's reachability
//! as the stream last saw it (readiness shows an outage).

use crate::daemon::config::{RegistryAuth, SchemaRegistrySettings};
use anyhow::{Context, Result};
use schema_registry_client::rest::apis::Error as RestError;
use schema_registry_client::rest::client_config::ClientConfig;
use schema_registry_client::rest::schema_registry_client::{Client, SchemaRegistryClient};
use std::sync::Mutex;
use std::time::Duration;

/// What a failed registry call means for the message that needed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The registry did not answer, or answered that it cannot now (5xx, 408, 429, or a
    /// credential it refuses — a rotation in progress is not the message's fault): ask again.
    Unavailable(String),
    /// The registry has no such schema (404).
    Unknown(String),
    /// Any other answer that refuses the call (4xx).
    Refused(String),
}

pub(crate) struct SchemaRegistry {
    /// The crate's serdes borrow their client for their whole life; the client lives as
    /// long as the process, so it is leaked once at start-up rather than shared by lifetime.
    pub(crate) client: &'static SchemaRegistryClient,
    pub(crate) url: String,
    /// Why the last call failed for want of the registry, until one succeeds.
    outage: Mutex<Option<String>>,
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
        if let Failure::Unavailable(why) = &f {
            let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
            if o.is_none() {
                tracing::warn!(error = %why, "the schema registry is unavailable; waiting for it (nothing is dead-lettered for it)");
                metrics::gauge!("emostream_schema_registry_reachable").set(0.0);
            }
            *o = Some(why.clone());
        }
        f
    }

    /// A call succeeded: the registry is back.
    pub(crate) fn answered(&self) {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if o.take().is_some() {
            tracing::info!(url = %self.url, "the schema registry answers again");
        }
        metrics::gauge!("emostream_schema_registry_reachable").set(1.0);
    }

    /// Why the registry is unavailable, while it is (readiness).
    pub(crate) fn outage(&self) -> Option<String> {
        self.outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
            match status {
                404 => Failure::Unknown(why),
                401 | 403 | 408 | 429 | 500..=599 => Failure::Unavailable(why),
                _ => Failure::Refused(why),
            }
        }
        RestError::Reqwest(r) => Failure::Unavailable(format!("{what}: {r}")),
        // An answer that is not the API's (a proxy's error page, a registry starting up).
        RestError::Serde(s) => Failure::Unavailable(format!("{what}: unreadable answer: {s}")),
        RestError::Io(io) => Failure::Unavailable(format!("{what}: {io}")),
    }
}
