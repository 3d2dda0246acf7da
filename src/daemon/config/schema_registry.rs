//! `[schema_registry]`: the Confluent-compatible Schema Registry that framed input is decoded
//! with and framed events are registered in (input.format = "schema_registry",
//! output.encoding = "avro" | "json_schema"). Secrets come from files or the environment,
//! never from the config file itself.

use super::check;
use super::kafka::read_secret_file;
use anyhow::{anyhow, Result};
use serde::Deserialize;
use std::path::Path;

/// `schema_registry.subject_strategy`: the subject the output schema is registered under
/// (Confluent's three strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // Confluent's own names for them
pub(crate) enum SubjectStrategy {
    /// `<output topic>-value`.
    TopicName,
    /// The record's full name, `emostream.LabelEvent`.
    RecordName,
    /// `<output topic>-emostream.LabelEvent`.
    TopicRecordName,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaRegistrySettings {
    /// Base URL of the Confluent-compatible API (empty: no registry).
    pub(crate) url: String,
    pub(crate) username: String,
    pub(crate) password_file: String,
    pub(crate) password_env: String,
    pub(crate) token_file: String,
    pub(crate) token_env: String,
    /// PEM file of the CA(s) that sign the registry's certificate (https).
    pub(crate) ca_file: String,
    pub(crate) timeout_ms: u64,
    pub(crate) subject_strategy: SubjectStrategy,
}

/// How the daemon proves who it is to the registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum RegistryAuth {
    None,
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::None => f.write_str("None"),
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl SchemaRegistrySettings {
    pub(super) fn validate(&self) -> Result<()> {
        check(
            self.url.is_empty()
                || self.url.starts_with("http://")
                || self.url.starts_with("https://"),
            "schema_registry.url",
            format!("{:?} is not an http:// or https:// URL", self.url),
        )?;
        check(
            !self.url.contains('@'),
            "schema_registry.url",
            "must not hold credentials (use schema_registry.username with password_file or password_env)",
        )?;
        check(
            (1..=120_000).contains(&self.timeout_ms),
            "schema_registry.timeout_ms",
            format!("must be between 1 and 120000 (got {})", self.timeout_ms),
        )?;
        let password = !self.password_file.is_empty() || !self.password_env.is_empty();
        let token = !self.token_file.is_empty() || !self.token_env.is_empty();
        check(
            self.password_file.is_empty() || self.password_env.is_empty(),
            "schema_registry.password_file",
            "set password_file or password_env, not both",
        )?;
        check(
            self.token_file.is_empty() || self.token_env.is_empty(),
            "schema_registry.token_file",
            "set token_file or token_env, not both",
        )?;
        check(
            self.username.is_empty() != password,
            "schema_registry.username",
            "basic authentication needs both username and a password (password_file or password_env)",
        )?;
        check(
            !(password && token),
            "schema_registry.token_file",
            "use basic authentication (username + password) or a bearer token, not both",
        )
    }

    /// The credentials, read from their file or variable now (the error names the key).
    pub(crate) fn auth(&self) -> Result<RegistryAuth> {
        let secret = |file: &str, env: &str, key: &str| -> Result<Option<String>> {
            if !file.is_empty() {
                return read_secret_file(Path::new(file)).map(Some).map_err(|e| {
                    anyhow!("config key schema_registry.{key}_file: reading {file}: {e}")
                });
            }
            if !env.is_empty() {
                return std::env::var(env).map(Some).map_err(|_| {
                    anyhow!("config key schema_registry.{key}_env: the variable {env} is not set")
                });
            }
            Ok(None)
        };
        if let Some(password) = secret(&self.password_file, &self.password_env, "password")? {
            return Ok(RegistryAuth::Basic {
                username: self.username.clone(),
                password,
            });
        }
        Ok(match secret(&self.token_file, &self.token_env, "token")? {
            Some(t) => RegistryAuth::Bearer(t),
            None => RegistryAuth::None,
        })
    }
}
