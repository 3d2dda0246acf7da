//! Daemon configuration: `config/default.toml` (compiled in), an optional file, then
//! `EMOSTREAM__SECTION__KEY` environment variables. Unknown keys and bad values are start-up
//! errors that name the key. Each section is a type of its own that validates its own keys
//! (kafka.rs, pipeline.rs, model.rs, service.rs); `Settings::validate` adds the rules that
//! join sections. Stages are handed their own section (or settings built from it), never the
//! whole `Settings`.

mod kafka;
mod model;
mod pipeline;
mod schema_registry;
mod service;

pub use kafka::Secrets;
pub(crate) use kafka::{Delivery, KafkaSettings};
pub use model::ModelSettings;
pub(crate) use model::{ProviderKind, RegistrySettings, RuntimeSettings};
pub(crate) use pipeline::{
    BackpressureSettings, BatchingSettings, EventEncoding, OutputSettings, PolicySettings,
    ScoreMode,
};
pub use pipeline::{InputFormat, InputSettings};
pub(crate) use schema_registry::{RegistryAuth, SchemaRegistrySettings, SubjectStrategy};
pub(crate) use service::{
    AdminAccess, AdminSettings, ApiSettings, HealthSettings, ShutdownSettings, UiSettings,
};
pub use service::{LogFormat, LogSettings};

use anyhow::{bail, Context, Result};
use kafka::read_secret_file;
use serde::Deserialize;
use std::path::{Path, PathBuf};

const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub(crate) kafka: KafkaSettings,
    pub input: InputSettings,
    pub(crate) output: OutputSettings,
    pub(crate) policy: PolicySettings,
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
    pub(crate) schema_registry: SchemaRegistrySettings,
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

    /// `kafka.brokers`.
    pub fn brokers(&self) -> &str {
        &self.kafka.brokers
    }

    /// `registry.root` (empty: no registry).
    pub fn registry_root(&self) -> &str {
        &self.registry.root
    }

    /// The secret librdkafka properties in force (none of them is ever logged).
    pub fn secrets(&self) -> &Secrets {
        &self.kafka.secrets
    }

    /// Every section's own keys, then the rules that join sections; the error names the key.
    pub(crate) fn validate(&self) -> Result<()> {
        self.kafka.validate()?;
        self.input.validate()?;
        self.output.validate()?;
        self.policy.validate()?;
        self.batching.validate()?;
        self.model.validate()?;
        self.registry.validate()?;
        self.api.validate()?;
        self.ui.validate()?;
        self.schema_registry.validate()?;
        self.runtime.validate()?;
        self.admin.validate()?;
        self.log.validate()?;
        self.health.validate()?;
        self.shutdown.validate()?;
        self.validate_across_sections()
    }

    /// Exactly-once needs a transactional id that survives restarts; the HTTP deadline must
    /// leave room for the answers the API promises.
    fn validate_delivery_and_doors(&self) -> Result<()> {
        // A name with the process id in it changed on every restart, so a crashed run's open
        // transaction was not fenced and read_committed readers waited transaction_timeout_ms.
        check(
            self.kafka.delivery != Delivery::ExactlyOnce
                || !self.kafka.transactional_id.is_empty()
                || !self.registry.replica_id.is_empty(),
            "kafka.transactional_id",
            "is required with kafka.delivery = \"exactly_once\" (or registry.replica_id): a name per replica that stays the same across its restarts (e.g. \"<group>-<host>\" or a StatefulSet pod name), so a restart fences what the crashed run left open at once",
        )?;
        // The HTTP deadline must not pre-empt the answers the API promises (504 from the
        // classify queue, 503 from a feedback write the topic did not acknowledge).
        let longest = self
            .api
            .timeout_ms
            .max(if self.api.feedback_topic.is_empty() {
                0
            } else {
                self.kafka.produce_timeout_ms
            });
        check(
            self.admin.request_timeout_ms > longest,
            "admin.request_timeout_ms",
            format!(
                "must exceed api.timeout_ms (and kafka.produce_timeout_ms with api.feedback_topic): {} <= {longest}",
                self.admin.request_timeout_ms
            ),
        )?;
        Ok(())
    }

    /// Framed input and framed events need a registry; CloudEvents' content-type names plain
    /// JSON, so framed events go without it.
    fn validate_schema_registry(&self) -> Result<()> {
        let uses = self.input.format == InputFormat::SchemaRegistry
            || self.output.encoding != EventEncoding::Json;
        check(
            !uses || !self.schema_registry.url.is_empty(),
            "schema_registry.url",
            "is required with input.format = \"schema_registry\" or output.encoding = \"avro\" | \"json_schema\"",
        )?;
        check(
            !self.output.cloudevents || self.output.encoding == EventEncoding::Json,
            "output.cloudevents",
            "CloudEvents binary mode describes plain JSON events: needs output.encoding = \"json\"",
        )
    }

    /// Rules that tie one section's keys to another's.
    fn validate_across_sections(&self) -> Result<()> {
        self.validate_delivery_and_doors()?;
        self.validate_schema_registry()?;
        check(
            self.output.carry.is_empty() || self.input.format.is_json(),
            "output.carry",
            "carries fields of JSON comments: needs input.format = \"json\"",
        )?;
        check(
            self.output.event_time_pointer.is_empty() || self.input.format.is_json(),
            "output.event_time_pointer",
            "points into JSON comments: needs input.format = \"json\"",
        )?;
        check(
            self.api.feedback_topic.is_empty() || self.api.enabled,
            "api.feedback_topic",
            "is served by the API: needs api.enabled = true",
        )?;
        let (p, b, i) = (&self.backpressure, &self.batching, &self.input);
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
        let (k, g) = (&self.kafka, &self.registry);
        let f = &self.api.feedback_topic;
        check(
            f.is_empty()
                || (f != &k.output_topic
                    && f != &k.dead_letter_topic
                    && !k.input_topics.contains(f)
                    && f != &g.control_topic),
            "api.feedback_topic",
            "must differ from the input, output, dead-letter and control topics",
        )?;
        check(
            g.control_topic.is_empty()
                || g.control_topic != k.output_topic && !k.input_topics.contains(&g.control_topic),
            "registry.control_topic",
            "must differ from the input and output topics",
        )?;
        check(
            self.kafka.produce_timeout_ms < self.health.stall_timeout_ms,
            "health.stall_timeout_ms",
            format!(
                "must be above kafka.produce_timeout_ms ({}): before a produce attempt times out, an outage shows no retrying message, and /healthz would call it a stall",
                self.kafka.produce_timeout_ms
            ),
        )?;
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
    /// the group and `registry.replica_id` (validation demands one of them): a restart with the
    /// same id aborts what the last run left open.
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
    use std::collections::BTreeMap;
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
    fn schema_registry_settings_are_checked_and_name_their_key() {
        let _g = ENV_LOCK.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let load = |toml: &str| {
            let f = dir.path().join("c.toml");
            std::fs::write(&f, toml).unwrap();
            Settings::load(Some(&f)).map_err(|e| format!("{e:#}"))
        };
        let e = load("[input]\nformat = \"schema_registry\"\n").unwrap_err();
        assert!(e.contains("schema_registry.url"), "{e}");
        let e = load("[output]\nencoding = \"avro\"\n").unwrap_err();
        assert!(e.contains("schema_registry.url"), "{e}");
        let framed = "[output]\nencoding = \"avro\"\n[schema_registry]\nurl = \"http://r:8081\"\n";
        assert!(load(framed).is_ok());
        let e = load(&format!("{framed}username = \"u\"\n")).unwrap_err();
        assert!(e.contains("schema_registry.username"), "{e}");
        let e = load("[schema_registry]\nurl = \"ftp://r\"\n").unwrap_err();
        assert!(e.contains("schema_registry.url"), "{e}");
        let e = load("[schema_registry]\nurl = \"http://u:p@r\"\n").unwrap_err();
        assert!(
            e.contains("schema_registry.url") && !e.contains("u:p"),
            "{e}"
        );
        let e = load("[output]\nencoding = \"json_schema\"\ncloudevents = true\n[schema_registry]\nurl = \"http://r\"\n").unwrap_err();
        assert!(e.contains("output.cloudevents"), "{e}");
        // Credentials are read at start-up, naming the key when they cannot be.
        let s = load("[schema_registry]\nurl = \"http://r\"\nusername = \"u\"\npassword_env = \"EMOSTREAM_TEST_NO_SUCH_VAR\"\n").unwrap();
        let e = format!("{:#}", s.schema_registry.auth().unwrap_err());
        assert!(e.contains("schema_registry.password_env"), "{e}");
        let secret = dir.path().join("token");
        std::fs::write(&secret, "tok-secret\n").unwrap();
        let s = load(&format!(
            "[schema_registry]\nurl = \"http://r\"\ntoken_file = \"{}\"\n",
            secret.display()
        ))
        .unwrap();
        let auth = s.schema_registry.auth().unwrap();
        assert_eq!(auth, RegistryAuth::Bearer("tok-secret".into()));
        assert!(!format!("{auth:?}").contains("tok-secret"));
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

    #[test]
    fn bad_http_limits_and_an_unstable_transactional_id_are_named() {
        let _g = ENV_LOCK.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (toml, key) in [
            (
                "[kafka]\ndelivery = \"exactly_once\"\n",
                "kafka.transactional_id",
            ),
            (
                "[admin]\nrequest_timeout_ms = 30000\n",
                "admin.request_timeout_ms",
            ),
            ("[admin]\nmax_connections = 0\n", "admin.max_connections"),
            (
                "[admin]\nheader_read_timeout_ms = 5\n",
                "admin.header_read_timeout_ms",
            ),
        ] {
            let f = dir.path().join("c.toml");
            std::fs::write(&f, toml).unwrap();
            let e = format!("{:#}", Settings::load(Some(&f)).unwrap_err());
            assert!(e.contains(key), "{toml}: {e}");
        }
        let f = dir.path().join("c.toml");
        for ok in [
            "[kafka]\ndelivery = \"exactly_once\"\ntransactional_id = \"g-host1\"\n",
            "[kafka]\ndelivery = \"exactly_once\"\n[registry]\nreplica_id = \"pod-0\"\n",
        ] {
            std::fs::write(&f, ok).unwrap();
            Settings::load(Some(&f)).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
    }
}
