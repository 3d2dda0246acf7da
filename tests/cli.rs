//! The command lines tell the truth about themselves: every binary answers `--version`; a flag
//! that would be silently ignored is refused; `train publish` refuses an announcement it could
//! not sign before it publishes or activates anything.

mod common;

use std::process::Command;

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_binary_answers_version_with_the_crate_version() {
    for bin in [
        env!("CARGO_BIN_EXE_emostream"),
        env!("CARGO_BIN_EXE_train"),
        env!("CARGO_BIN_EXE_emostream-loadgen"),
    ] {
        let (ok, out) = run(bin, &["--version"], &[]);
        assert!(ok, "{bin} --version: {out}");
        assert!(
            out.trim().ends_with(env!("CARGO_PKG_VERSION")),
            "{bin}: {out}"
        );
    }
}

#[test]
fn model_flag_where_a_registry_decides_the_model_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("registry");
    let model = common::shipped_model_dir();
    let root_s = root.to_str().unwrap();
    for cmd in ["serve", "classify"] {
        let (ok, out) = run(
            env!("CARGO_BIN_EXE_emostream"),
            &[cmd, "--model", model.to_str().unwrap()],
            &[("EMOSTREAM__REGISTRY__ROOT", root_s)],
        );
        assert!(!ok, "{cmd}: {out}");
        assert!(
            out.contains("conflicts with config key registry.root"),
            "{cmd}: {out}"
        );
    }
}

#[test]
fn publish_with_an_unsignable_announcement_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("registry");
    let model = common::shipped_model_dir();
    let (ok, out) = run(
        env!("CARGO_BIN_EXE_train"),
        &[
            "publish",
            "--model",
            model.to_str().unwrap(),
            "--registry",
            root.to_str().unwrap(),
            "--activate",
            "--control-topic",
            "emostream-control",
        ],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("registry.control_key_file"), "{out}");
    assert!(!root.join("ACTIVE").exists(), "activated: {out}");
    let published = std::fs::read_dir(root.join("versions"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(published, 0, "published: {out}");
}

/// Issue 27: a registry location written like a URL but not a supported one is refused by the
/// daemon's start-up validation (naming `registry.root`) and by `train publish`, instead of
/// silently creating a local directory called `s3:` and serving whatever it holds.
#[test]
fn a_url_like_registry_that_is_no_supported_store_is_refused_and_creates_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::shipped_model_dir();
    for root in ["s3:/models/prod", "ftp://host/models"] {
        let out = Command::new(env!("CARGO_BIN_EXE_emostream"))
            .args(["check-config"])
            .env("EMOSTREAM__REGISTRY__ROOT", root)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{root}: {said}");
        assert!(said.contains("registry.root"), "{root}: {said}");
        let out = Command::new(env!("CARGO_BIN_EXE_train"))
            .args([
                "publish",
                "--model",
                model.to_str().unwrap(),
                "--registry",
                root,
            ])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{root}: {said}");
        assert!(said.contains(root), "{root}: {said}");
    }
    let made: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(made.is_empty(), "created {made:?}");
}

/// `emostream create-topics` makes every topic the configuration names with the partitions
/// asked for, gives the dead-letter topic room for the largest dead letter the configuration
/// allows (input.max_message_bytes + input.max_header_bytes + 16 KiB), and leaves existing
/// topics alone when run again.
#[test]
fn create_topics_makes_each_configured_topic_once_with_a_dead_letter_limit_from_the_config() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::ClientConfig;
    let topics = common::kafka::Topics::unique();
    let feedback = common::kafka::unique("feedback");
    let brokers = common::kafka::brokers();
    let env = [
        ("EMOSTREAM__KAFKA__BROKERS", brokers.as_str()),
        ("EMOSTREAM__KAFKA__INPUT_TOPICS", topics.input.as_str()),
        ("EMOSTREAM__KAFKA__OUTPUT_TOPIC", topics.output.as_str()),
        ("EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC", topics.dlq.as_str()),
        ("EMOSTREAM__API__FEEDBACK_TOPIC", feedback.as_str()),
        ("EMOSTREAM__INPUT__MAX_MESSAGE_BYTES", "4096"),
    ];
    let bin = env!("CARGO_BIN_EXE_emostream");
    let args = [
        "create-topics",
        "--partitions",
        "3",
        "--replication-factor",
        "1",
    ];
    let (ok, out) = run(bin, &args, &env);
    assert!(ok, "{out}");
    for t in [&topics.input, &topics.output, &topics.dlq, &feedback] {
        assert!(
            out.contains(&format!("{t}\t"))
                && out
                    .lines()
                    .any(|l| l.starts_with(t.as_str()) && l.ends_with("created")),
            "{t} created: {out}"
        );
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for t in [&topics.input, &topics.output, &topics.dlq, &feedback] {
        let md = c
            .fetch_metadata(Some(t), std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(md.topics()[0].partitions().len(), 3, "{t}");
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let described = rt
        .block_on(admin.describe_configs(
            &[ResourceSpecifier::Topic(&topics.dlq)],
            &AdminOptions::new(),
        ))
        .unwrap();
    let dlq = described[0].as_ref().unwrap();
    let limit = dlq.get("max.message.bytes").and_then(|e| e.value.clone());
    assert_eq!(limit.as_deref(), Some("86016"), "4096 + 65536 + 16384");
    let (ok, again) = run(bin, &args, &env);
    assert!(ok, "{again}");
    assert_eq!(
        again.lines().filter(|l| l.ends_with("\texists")).count(),
        4,
        "{again}"
    );
}
