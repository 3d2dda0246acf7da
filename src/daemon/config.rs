//! Daemon configuration: `config/default.toml` (compiled in), an optional file, then
//! `EMOSTREAM__SECTION__KEY` environment variables. Unknown keys and bad values are start-up
//! errors that name the key.

use crate::backend::batching::CallLimits;
use crate::backend::ort::OptLevel;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub(crate) kafka: KafkaSettings,
    pub input: InputSettings,
    pub(crate) output: OutputSettings,
    pub(crate) batching: BatchingSettings,
    pub(crate) backpressure: BackpressureSettings,
    pub model: ModelSettings,
    pub(crate) registry: RegistrySettings,
    pub(crate) runtime: RuntimeSettings,
    pub(crate) admin: AdminSettings,
    pub log: LogSettings,
    pub(crate) shutdown: ShutdownSettings,
    pub(crate) health: HealthSettings,
    pub(crate) api: ApiSettings,
    pub(crate) ui: UiSettings,
}

/// `[api]`: `POST /v1/classify` on the admin server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiSettings {
    pub(crate) enabled: bool,
    pub(crate) max_texts: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_concurrent: usize,
    pub(crate) timeout_ms: u64,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KafkaSettings {
    pub(crate) brokers: String,
    pub(crate) group_id: String,
    pub(crate) input_topics: Vec<String>,
    pub(crate) output_topic: String,
    pub(crate) dead_letter_topic: String,
    pub(crate) commit_interval_ms: u64,
    pub(crate) produce_timeout_ms: u64,
    pub(crate) produce_backoff_ms: u64,
    pub(crate) produce_backoff_max_ms: u64,
    pub(crate) revoke_wait_ms: u64,
    pub(crate) delivery: Delivery,
    pub(crate) transactional_id: String,
    pub(crate) transaction_timeout_ms: u64,
    pub(crate) transaction_max_messages: u64,
    #[serde(default)]
    pub(crate) properties: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) consumer_properties: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) producer_properties: BTreeMap<String, String>,
    /// librdkafka property → file holding its value (a mounted secret).
    #[serde(default)]
    pub(crate) secret_files: BTreeMap<String, PathBuf>,
    /// Values of `secret_files` and of `EMOSTREAM_KAFKA_SECRET_*`, read at start-up.
    #[serde(skip)]
    pub(crate) secrets: Secrets,
}

/// A mounted secret's value: the file's text without its trailing line break.
fn read_secret_file(path: &Path) -> std::io::Result<String> {
    let raw = std::fs::read_to_string(path)?;
    Ok(raw.trim_end_matches(['\n', '\r']).to_string())
}

/// The environment form of a secret librdkafka property: `EMOSTREAM_KAFKA_SECRET_SASL_PASSWORD`
/// sets `sasl.password` (librdkafka's names have dots where the variable has underscores).
pub(crate) const SECRET_ENV_PREFIX: &str = "EMOSTREAM_KAFKA_SECRET_";

/// librdkafka properties whose values must never be shown: kept apart from the rest of the
/// settings, and their `Debug` names the keys only.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl Secrets {
    /// Reads each file of `kafka.secret_files` (a trailing newline is not part of the value),
    /// then the `EMOSTREAM_KAFKA_SECRET_*` variables; errors name the key, never the value.
    fn resolve(
        files: &BTreeMap<String, PathBuf>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Secrets> {
        let mut out = BTreeMap::new();
        for (key, path) in files {
            let value = read_secret_file(path).map_err(|e| {
                anyhow::anyhow!(
                    "config key kafka.secret_files.{key}: reading {}: {e}",
                    path.display()
                )
            })?;
            out.insert(key.clone(), value);
        }
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix(SECRET_ENV_PREFIX) {
                check(
                    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    &name,
                    "is not a librdkafka property name (letters, digits, _ for .)",
                )?;
                out.insert(rest.to_ascii_lowercase().replace('_', "."), value);
            }
        }
        Ok(Secrets(out))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Whether `text` contains any secret value (for tests of what is logged).
    pub fn appear_in(&self, text: &str) -> bool {
        self.0
            .values()
            .any(|v| !v.is_empty() && text.contains(v.as_str()))
    }
}

/// `kafka.delivery`: what a reader of the output may count on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Delivery {
    /// Every input message's outcome at least once (duplicates after a crash or rebalance).
    AtLeastOnce,
    /// Outcomes and input offsets commit in one transaction: a `read_committed` reader sees
    /// each input message's outcome exactly once.
    ExactlyOnce,
}

/// `input.format` (and `emostream classify --format`): a JSON object per message, or the
/// whole message as the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    pub format: InputFormat,
    pub(crate) text_pointer: String,
    pub(crate) id_pointer: String,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ScoreMode {
    All,
    TopK,
    OverThreshold,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputSettings {
    pub(crate) scores: ScoreMode,
    pub(crate) top_k: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchingSettings {
    pub(crate) max_batch_size: usize,
    pub(crate) max_wait_ms: u64,
    pub(crate) max_batch_tokens: usize,
    pub(crate) backlog_window: usize,
    pub(crate) inference_workers: usize,
}

impl BatchingSettings {
    /// The largest ONNX Runtime call.
    pub(crate) fn call_limits(&self) -> CallLimits {
        CallLimits {
            max_rows: self.max_batch_size,
            max_tokens: self.max_batch_tokens,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackpressureSettings {
    pub(crate) max_in_flight_messages: usize,
    pub(crate) max_in_flight_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistrySettings {
    pub(crate) root: String,
    pub(crate) watch: bool,
    pub(crate) poll_interval_ms: u64,
    pub(crate) control_topic: String,
    /// The HMAC key every control message must be signed with (a secret file).
    pub(crate) control_key_file: String,
    /// Control messages issued longer ago (or ahead) than this are refused.
    pub(crate) control_max_age_ms: u64,
    /// Candidate loads allowed per minute, all triggers together.
    pub(crate) max_swaps_per_minute: usize,
    pub(crate) replica_id: String,
    #[serde(default)]
    pub(crate) label_map: BTreeMap<String, String>,
    pub(crate) shadow_batches: usize,
    pub(crate) shadow_sample_every: u64,
    pub(crate) shadow_min_agreement: f64,
    pub(crate) shadow_timeout_ms: u64,
}

impl RegistrySettings {
    /// This replica's name in control-topic replies: `replica_id`, else host name and pid.
    pub(crate) fn replica(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("{host}-{}", std::process::id())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeSettings {
    pub(crate) library: String,
    pub(crate) provider: ProviderKind,
    pub(crate) device: i32,
    pub(crate) fallback_to_cpu: bool,
    pub(crate) intra_threads: usize,
    pub(crate) inter_threads: usize,
    pub(crate) intra_op_spinning: bool,
    pub(crate) optimization: OptLevel,
}

/// `runtime.provider`: where inference runs (`runtime.device` picks the GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProviderKind {
    Cpu,
    Cuda,
    Tensorrt,
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

/// Room a dead-letter record needs beyond the payload and input headers it carries: the
/// emostream.* headers (the detail is capped) and the record's framing.
pub(crate) const DEAD_LETTER_OVERHEAD_BYTES: usize = 16 * 1024;

fn check(ok: bool, key: &str, msg: impl std::fmt::Display) -> Result<()> {
    if ok {
        Ok(())
    } else {
        bail!("config key {key}: {msg}")
    }
}

impl Settings {
    /// Defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings> {
        let mut b = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(f) = file {
            if !f.exists() {
                bail!("config file {} does not exist", f.display());
            }
            b = b.add_source(config::File::from(f).required(true));
        }
        b = b.add_source(
            config::Environment::with_prefix("EMOSTREAM")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("kafka.input_topics"),
        );
        let cfg = b.build().context("reading configuration")?;
        let mut s: Settings = cfg
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        s.kafka.secrets = Secrets::resolve(&s.kafka.secret_files, std::env::vars())?;
        s.validate()?;
        Ok(s)
    }

    /// Who may use the admin API: reads `admin.token_file` when set (naming the key if it
    /// cannot), an empty token is no token.
    pub(crate) fn admin_access(&self) -> Result<AdminAccess> {
        let a = &self.admin;
        let token = if a.token_file.is_empty() {
            a.token.clone()
        } else {
            read_secret_file(Path::new(&a.token_file)).map_err(|e| {
                anyhow::anyhow!("config key admin.token_file: reading {}: {e}", a.token_file)
            })?
        };
        Ok(if !token.is_empty() {
            AdminAccess::Token(token)
        } else if a.allow_unauthenticated_loopback {
            AdminAccess::OpenOnLoopback
        } else {
            AdminAccess::Closed
        })
    }

    /// Points every Kafka client at other bootstrap servers (a tool's `--brokers`).
    pub fn set_brokers(&mut self, brokers: &str) {
        self.kafka.brokers = brokers.to_string();
    }

    /// The secret librdkafka properties in force (none of them is ever logged).
    pub fn secrets(&self) -> &Secrets {
        &self.kafka.secrets
    }

    /// Every key's value, section by section; the error names the key.
    pub(crate) fn validate(&self) -> Result<()> {
        self.validate_kafka()?;
        self.validate_input_output()?;
        self.validate_batching()?;
        self.validate_registry()?;
        self.validate_api_ui()?;
        self.validate_runtime_admin_log()
    }

    /// `kafka.*`: brokers, topics, timings and the client properties the daemon sets itself.
    fn validate_kafka(&self) -> Result<()> {
        let k = &self.kafka;
        check(
            !k.brokers.trim().is_empty(),
            "kafka.brokers",
            "must not be empty",
        )?;
        check(
            !k.group_id.trim().is_empty(),
            "kafka.group_id",
            "must not be empty",
        )?;
        check(
            !k.input_topics.is_empty() && k.input_topics.iter().all(|t| !t.trim().is_empty()),
            "kafka.input_topics",
            "needs at least one non-empty topic",
        )?;
        check(
            !k.output_topic.trim().is_empty(),
            "kafka.output_topic",
            "must not be empty",
        )?;
        check(
            !k.dead_letter_topic.trim().is_empty(),
            "kafka.dead_letter_topic",
            "must not be empty",
        )?;
        check(
            k.dead_letter_topic != k.output_topic,
            "kafka.dead_letter_topic",
            "must differ from kafka.output_topic",
        )?;
        check(
            !k.input_topics.contains(&k.output_topic),
            "kafka.output_topic",
            "must not be one of kafka.input_topics",
        )?;
        check(
            k.commit_interval_ms >= 10,
            "kafka.commit_interval_ms",
            format!("must be at least 10 (got {})", k.commit_interval_ms),
        )?;
        check(
            k.produce_backoff_ms >= 1 && k.produce_backoff_ms <= k.produce_backoff_max_ms,
            "kafka.produce_backoff_ms",
            format!(
                "must be between 1 and kafka.produce_backoff_max_ms ({}) (got {})",
                k.produce_backoff_max_ms, k.produce_backoff_ms
            ),
        )?;
        check(
            k.revoke_wait_ms <= 60_000,
            "kafka.revoke_wait_ms",
            format!("must be at most 60000 (got {})", k.revoke_wait_ms),
        )?;
        let max_poll = k
            .consumer_properties
            .get("max.poll.interval.ms")
            .or_else(|| k.properties.get("max.poll.interval.ms"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(300_000);
        check(
            k.revoke_wait_ms < max_poll,
            "kafka.revoke_wait_ms",
            format!("must be below the consumer's max.poll.interval.ms ({max_poll}): the wait happens inside the rebalance callback"),
        )?;
        check(
            k.produce_timeout_ms >= 100,
            "kafka.produce_timeout_ms",
            format!("must be at least 100 (got {})", k.produce_timeout_ms),
        )?;
        let secret_keys: BTreeMap<String, ()> =
            k.secrets.iter().map(|(k, _)| (k.clone(), ())).collect();
        for (section, keys) in [
            ("kafka.properties", k.properties.keys().collect::<Vec<_>>()),
            (
                "kafka.consumer_properties",
                k.consumer_properties.keys().collect(),
            ),
            (
                "kafka.producer_properties",
                k.producer_properties.keys().collect(),
            ),
            (
                "kafka.secret_files (or EMOSTREAM_KAFKA_SECRET_*)",
                secret_keys.keys().collect(),
            ),
        ] {
            for key in keys {
                check(
                    !matches!(
                        key.as_str(),
                        "bootstrap.servers"
                            | "group.id"
                            | "enable.auto.commit"
                            | "enable.idempotence"
                            | "acks"
                            | "transactional.id"
                            | "transaction.timeout.ms"
                    ),
                    &format!("{section}.{key}"),
                    "is set by emostream itself (use kafka.brokers / kafka.group_id / kafka.transactional_id / kafka.transaction_timeout_ms)",
                )?;
            }
        }
        check(
            k.transaction_timeout_ms >= 1000 && k.transaction_timeout_ms <= 900_000,
            "kafka.transaction_timeout_ms",
            format!(
                "must be between 1000 and 900000 (got {})",
                k.transaction_timeout_ms
            ),
        )?;
        check(
            k.delivery == Delivery::AtLeastOnce || k.produce_timeout_ms <= k.transaction_timeout_ms,
            "kafka.produce_timeout_ms",
            format!("must not exceed kafka.transaction_timeout_ms ({}) with kafka.delivery = \"exactly_once\"", k.transaction_timeout_ms),
        )?;
        check(
            k.transaction_max_messages >= 1,
            "kafka.transaction_max_messages",
            "must be at least 1",
        )?;
        check(
            k.transactional_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "kafka.transactional_id",
            "use letters, digits and . _ -",
        )?;
        // librdkafka's own error for a property it refuses quotes the value: try each secret
        // alone first, so a misspelt secret key is named without its value.
        for (key, value) in k.secrets.iter() {
            let mut c = rdkafka::config::ClientConfig::new();
            c.set(key, value);
            if c.create_native_config().is_err() {
                bail!("config key kafka.secret_files.{key} (or {SECRET_ENV_PREFIX}{}): librdkafka does not accept this property (the value is not shown)", key.to_ascii_uppercase().replace('.', "_"));
            }
        }
        let (key, limit) = self.producer_message_max_bytes()?;
        let need = self.dead_letter_record_bytes();
        check(
            limit >= need,
            &key,
            format!(
                "is {limit}, below what a dead-letter record may need: input.max_message_bytes ({}) + input.max_header_bytes ({}) + {DEAD_LETTER_OVERHEAD_BYTES} = {need}; raise it or lower those",
                self.input.max_message_bytes, self.input.max_header_bytes
            ),
        )?;
        Ok(())
    }

    /// The producer's transactional id in exactly-once mode: `kafka.transactional_id`, else
    /// the group and this replica's name. Stable across restarts only when set (or when
    /// `registry.replica_id` is): a restart with the same id aborts what the last run left open.
    pub(crate) fn transactional_id(&self) -> String {
        if !self.kafka.transactional_id.is_empty() {
            return self.kafka.transactional_id.clone();
        }
        format!("{}-{}", self.kafka.group_id, self.registry.replica())
    }

    /// The largest dead-letter record the daemon makes: the payload and input headers it
    /// admits (larger ones are cut to these sizes) plus its own headers.
    pub(crate) fn dead_letter_record_bytes(&self) -> usize {
        self.input.max_message_bytes + self.input.max_header_bytes + DEAD_LETTER_OVERHEAD_BYTES
    }

    /// The producer's `message.max.bytes` and the key it came from: the operator's value when
    /// set, else what the largest dead-letter record needs (librdkafka's own default, 1,000,000,
    /// is below a 1 MiB `input.max_message_bytes`).
    pub(crate) fn producer_message_max_bytes(&self) -> Result<(String, usize)> {
        let k = &self.kafka;
        for (section, props) in [
            ("kafka.producer_properties", &k.producer_properties),
            ("kafka.properties", &k.properties),
        ] {
            if let Some(v) = props.get("message.max.bytes") {
                let key = format!("{section}.message.max.bytes");
                let n = v
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("config key {key}: {v:?} is not a number"))?;
                return Ok((key, n));
            }
        }
        Ok((
            "kafka.producer_properties.message.max.bytes".into(),
            self.dead_letter_record_bytes(),
        ))
    }

    /// `input.*` and `output.*`: JSON pointers and the scores an event carries.
    fn validate_input_output(&self) -> Result<()> {
        let i = &self.input;
        for (key, p) in [
            ("input.text_pointer", &i.text_pointer),
            ("input.id_pointer", &i.id_pointer),
        ] {
            check(
                p.is_empty() || p.starts_with('/'),
                key,
                format!("{p:?} is not a JSON pointer (must start with '/')"),
            )?;
        }
        check(
            !i.text_pointer.is_empty(),
            "input.text_pointer",
            "must not be empty",
        )?;
        check(
            i.max_message_bytes >= 16,
            "input.max_message_bytes",
            "must be at least 16",
        )?;
        check(
            self.output.top_k >= 1 && self.output.top_k <= 1000,
            "output.top_k",
            format!("must be between 1 and 1000 (got {})", self.output.top_k),
        )?;
        Ok(())
    }

    /// `batching.*` and `backpressure.*`.
    fn validate_batching(&self) -> Result<()> {
        let i = &self.input;
        let b = &self.batching;
        check(
            (1..=4096).contains(&b.max_batch_size),
            "batching.max_batch_size",
            format!("must be between 1 and 4096 (got {})", b.max_batch_size),
        )?;
        check(
            b.max_wait_ms <= 60_000,
            "batching.max_wait_ms",
            format!("must be at most 60000 (got {})", b.max_wait_ms),
        )?;
        check(
            b.max_batch_tokens >= 16,
            "batching.max_batch_tokens",
            format!("must be at least 16 (got {})", b.max_batch_tokens),
        )?;
        check(
            (b.max_batch_size..=65_536).contains(&b.backlog_window),
            "batching.backlog_window",
            format!(
                "must be between batching.max_batch_size ({}) and 65536 (got {})",
                b.max_batch_size, b.backlog_window
            ),
        )?;
        check(
            (1..=64).contains(&b.inference_workers),
            "batching.inference_workers",
            format!("must be between 1 and 64 (got {})", b.inference_workers),
        )?;
        let p = &self.backpressure;
        check(
            p.max_in_flight_messages >= b.max_batch_size,
            "backpressure.max_in_flight_messages",
            format!(
                "must be at least batching.max_batch_size ({})",
                b.max_batch_size
            ),
        )?;
        check(
            p.max_in_flight_bytes >= i.max_message_bytes,
            "backpressure.max_in_flight_bytes",
            format!(
                "must be at least input.max_message_bytes ({})",
                i.max_message_bytes
            ),
        )?;
        check(
            !self.model.dir.as_os_str().is_empty(),
            "model.dir",
            "must not be empty",
        )?;
        Ok(())
    }

    /// `registry.*`: the swap triggers, shadow mode and label map.
    fn validate_registry(&self) -> Result<()> {
        let k = &self.kafka;
        let g = &self.registry;
        check(
            g.poll_interval_ms >= 50,
            "registry.poll_interval_ms",
            format!("must be at least 50 (got {})", g.poll_interval_ms),
        )?;
        check(
            g.control_topic.is_empty()
                || g.control_topic != k.output_topic && !k.input_topics.contains(&g.control_topic),
            "registry.control_topic",
            "must differ from the input and output topics",
        )?;
        check(
            g.control_topic.is_empty() || !g.root.is_empty(),
            "registry.control_topic",
            "needs registry.root (control messages name versions in the registry)",
        )?;
        check(
            g.control_topic.is_empty() || !g.control_key_file.is_empty(),
            "registry.control_key_file",
            "is required with registry.control_topic: control messages must be signed",
        )?;
        check(
            (1000..=3_600_000).contains(&g.control_max_age_ms),
            "registry.control_max_age_ms",
            "must be between 1000 and 3600000 (an hour): a longer window is a longer replay window",
        )?;
        check(
            g.max_swaps_per_minute >= 1,
            "registry.max_swaps_per_minute",
            "must be at least 1",
        )?;
        check(
            g.replica_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "registry.replica_id",
            "use letters, digits and . _ -",
        )?;
        check(
            g.shadow_sample_every >= 1,
            "registry.shadow_sample_every",
            "must be at least 1",
        )?;
        check(
            (0.0..=1.0).contains(&g.shadow_min_agreement),
            "registry.shadow_min_agreement",
            format!("must be between 0 and 1 (got {})", g.shadow_min_agreement),
        )?;
        for (from, to) in &g.label_map {
            check(
                !from.is_empty() && !to.is_empty(),
                &format!("registry.label_map.{from}"),
                "label names must not be empty",
            )?;
        }
        Ok(())
    }

    /// `api.*` and `ui.*`.
    fn validate_api_ui(&self) -> Result<()> {
        let a = &self.api;
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
        let u = &self.ui;
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

    /// `runtime.*`, `admin.*`, `log.*` and `shutdown.*`.
    fn validate_runtime_admin_log(&self) -> Result<()> {
        let r = &self.runtime;
        check(r.device >= 0, "runtime.device", "must be >= 0")?;
        check(
            (1..=256).contains(&r.intra_threads),
            "runtime.intra_threads",
            format!("must be between 1 and 256 (got {})", r.intra_threads),
        )?;
        check(
            (1..=256).contains(&r.inter_threads),
            "runtime.inter_threads",
            format!("must be between 1 and 256 (got {})", r.inter_threads),
        )?;
        let addr: SocketAddr = self.admin.bind.parse().map_err(|e| {
            anyhow::anyhow!(
                "config key admin.bind: {:?} is not an address:port ({e})",
                self.admin.bind
            )
        })?;
        check(
            !self.admin.allow_unauthenticated_loopback || addr.ip().is_loopback(),
            "admin.allow_unauthenticated_loopback",
            format!("applies to a loopback admin.bind only (got {addr}); set admin.token"),
        )?;
        check(
            !self.admin.allow_unauthenticated_loopback
                || self.admin.token.is_empty() && self.admin.token_file.is_empty(),
            "admin.allow_unauthenticated_loopback",
            "cannot be combined with a token (admin.token or admin.token_file): pick one",
        )?;
        check(
            self.admin.token.is_empty() || self.admin.token_file.is_empty(),
            "admin.token_file",
            "cannot be combined with admin.token: pick one",
        )?;
        check(
            addr.ip().is_loopback()
                || !self.admin.token.is_empty()
                || !self.admin.token_file.is_empty(),
            "admin.token",
            "is required when admin.bind is not a loopback address (or admin.token_file)",
        )?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| anyhow::anyhow!("config key log.level: {e}"))?;
        check(
            self.health.stall_timeout_ms >= 1000,
            "health.stall_timeout_ms",
            format!(
                "must be at least 1000 (got {})",
                self.health.stall_timeout_ms
            ),
        )?;
        check(
            self.kafka.produce_timeout_ms < self.health.stall_timeout_ms,
            "health.stall_timeout_ms",
            format!(
                "must be above kafka.produce_timeout_ms ({}): before a produce attempt times out, an outage shows no retrying message, and /healthz would call it a stall",
                self.kafka.produce_timeout_ms
            ),
        )?;
        check(
            self.shutdown.timeout_ms >= 100,
            "shutdown.timeout_ms",
            "must be at least 100",
        )?;
        Ok(())
    }

    pub fn runtime_options(&self) -> crate::backend::ort::RuntimeOptions {
        use crate::backend::ort::Provider;
        let r = &self.runtime;
        crate::backend::ort::RuntimeOptions {
            library: (!r.library.is_empty()).then(|| PathBuf::from(&r.library)),
            intra_threads: r.intra_threads,
            inter_threads: r.inter_threads,
            intra_spinning: r.intra_op_spinning,
            optimization: r.optimization.clone(),
            provider: match r.provider {
                ProviderKind::Cpu => Provider::Cpu,
                ProviderKind::Cuda => Provider::Cuda { device: r.device },
                ProviderKind::Tensorrt => Provider::Tensorrt { device: r.device },
            },
            fallback_to_cpu: r.fallback_to_cpu,
            optimized_model_path: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    // Environment variables are process-wide: tests that set them run one at a time.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn defaults_load_and_validate() {
        let _g = ENV_LOCK.lock().unwrap();
        let s = Settings::load(None).unwrap();
        assert_eq!(s.kafka.input_topics, vec!["comments".to_string()]);
        assert_eq!(s.batching.max_batch_size, 32);
    }

    #[test]
    fn environment_overrides_and_lists() {
        let _g = ENV_LOCK.lock().unwrap();
        std::env::set_var("EMOSTREAM__KAFKA__BROKERS", "h1:9092,h2:9092");
        std::env::set_var("EMOSTREAM__KAFKA__INPUT_TOPICS", "a,b");
        std::env::set_var("EMOSTREAM__BATCHING__MAX_BATCH_SIZE", "64");
        let s = Settings::load(None);
        std::env::remove_var("EMOSTREAM__KAFKA__BROKERS");
        std::env::remove_var("EMOSTREAM__KAFKA__INPUT_TOPICS");
        std::env::remove_var("EMOSTREAM__BATCHING__MAX_BATCH_SIZE");
        let s = s.unwrap();
        assert_eq!(s.kafka.brokers, "h1:9092,h2:9092");
        assert_eq!(s.kafka.input_topics, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(s.batching.max_batch_size, 64);
    }

    #[test]
    fn secrets_come_from_files_and_the_environment_and_never_show_in_debug() {
        let _g = ENV_LOCK.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "from-the-file\n").unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            format!(
                "[kafka.secret_files]\n\"sasl.password\" = \"{}\"\n",
                secret.display()
            ),
        )
        .unwrap();
        std::env::set_var("EMOSTREAM_KAFKA_SECRET_SSL_KEY_PASSWORD", "from-the-env");
        let s = Settings::load(Some(&f));
        std::env::remove_var("EMOSTREAM_KAFKA_SECRET_SSL_KEY_PASSWORD");
        let s = s.unwrap();
        let got: BTreeMap<_, _> = s.kafka.secrets.iter().collect();
        assert_eq!(got[&"sasl.password".to_string()], "from-the-file");
        assert_eq!(got[&"ssl.key.password".to_string()], "from-the-env");
        let mut s = s;
        s.admin.token = "admin-secret-token".into();
        let shown = format!("{s:?}");
        assert!(!s.secrets().appear_in(&shown), "{shown}");
        assert!(!shown.contains("admin-secret-token"), "{shown}");
        assert!(shown.contains("sasl.password"));
        // A misspelt secret property is refused naming the key, never the value.
        std::env::set_var("EMOSTREAM_KAFKA_SECRET_SASL_PASSWROD", "hunter2-value");
        let e = Settings::load(None);
        std::env::remove_var("EMOSTREAM_KAFKA_SECRET_SASL_PASSWROD");
        let e = format!("{:#}", e.unwrap_err());
        assert!(
            e.contains("sasl.passwrod") && !e.contains("hunter2-value"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let _g = ENV_LOCK.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[batching]\nmax_batch_sise = 3\n").unwrap();
        let e = format!("{:#}", Settings::load(Some(&f)).unwrap_err());
        assert!(e.contains("max_batch_sise"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let _g = ENV_LOCK.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (toml, key) in [
            (
                "[batching]\nmax_batch_size = 0\n",
                "batching.max_batch_size",
            ),
            ("[runtime]\nprovider = \"tpu\"\n", "runtime.provider"),
            (
                "[runtime]\noptimization = \"max\"\n",
                "runtime.optimization",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[admin]\nbind = \"0.0.0.0:9464\"\n", "admin.token"),
            ("[input]\ntext_pointer = \"text\"\n", "input.text_pointer"),
            (
                "[registry]\ncontrol_topic = \"ctl\"\n",
                "registry.control_topic",
            ),
            (
                "[registry]\nshadow_min_agreement = 1.5\n",
                "registry.shadow_min_agreement",
            ),
            (
                "[kafka.properties]\n\"group.id\" = \"x\"\n",
                "kafka.properties.group.id",
            ),
            (
                "[admin]\nbind = \"0.0.0.0:9464\"\ntoken = \"x\"\nallow_unauthenticated_loopback = true\n",
                "admin.allow_unauthenticated_loopback",
            ),
            (
                "[kafka.secret_files]\n\"sasl.password\" = \"/nonexistent/emostream-secret\"\n",
                "kafka.secret_files.sasl.password",
            ),
            ("[kafka]\ndelivery = \"at_most_once\"\n", "delivery"),
            (
                "[kafka]\ndelivery = \"exactly_once\"\ntransaction_timeout_ms = 5000\n",
                "kafka.produce_timeout_ms",
            ),
        ] {
            let f = dir.path().join("c.toml");
            std::fs::write(&f, toml).unwrap();
            let e = format!("{:#}", Settings::load(Some(&f)).unwrap_err());
            assert!(e.contains(key), "{toml}: {e}");
        }
        // A producer limit below what a dead-letter record may need names every key involved.
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[kafka.producer_properties]\n\"message.max.bytes\" = \"1000000\"\n",
        )
        .unwrap();
        let e = format!("{:#}", Settings::load(Some(&f)).unwrap_err());
        for key in [
            "kafka.producer_properties.message.max.bytes",
            "input.max_message_bytes",
            "input.max_header_bytes",
        ] {
            assert!(e.contains(key), "{e}");
        }
        std::fs::write(
            &f,
            "[kafka.consumer_properties]\n\"max.poll.interval.ms\" = \"4000\"\n",
        )
        .unwrap();
        let e = format!("{:#}", Settings::load(Some(&f)).unwrap_err());
        assert!(e.contains("kafka.revoke_wait_ms"), "{e}");
        std::fs::write(&f, "[batching]\nmax_batch_size = \"lots\"\n").unwrap();
        let e = format!("{:#}", Settings::load(Some(&f)).unwrap_err());
        assert!(e.contains("max_batch_size"), "{e}");
    }
}
