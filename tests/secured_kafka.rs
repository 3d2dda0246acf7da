//! A secured cluster: the shared broker's SASL_SSL (SCRAM-SHA-512) and mTLS listeners
//! (scripts/kafka.sh makes the CA, certificates and SCRAM user). The daemon labels a stream over
//! each; a wrong password and an untrusted CA each end start-up within 30 s naming the cause;
//! no secret appears in any log of the test.

mod common;

use common::daemon::{daemon_env, sigterm, wait_exit, DaemonBuilder};
use common::kafka::{brokers, produce, read_until, unique, Rec, Topics};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `scripts/kafka.sh client-config MODE` for the shared broker: its TOML, and the secret
/// files it names.
fn client_config(mode: &str) -> (String, Vec<PathBuf>) {
    let port = brokers().rsplit(':').next().unwrap().trim().to_string();
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh"))
        .args(["client-config", mode])
        .env("KAFKA_PORT", port)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    let secrets = toml
        .lines()
        .skip_while(|l| !l.starts_with("[kafka.secret_files]"))
        .skip(1)
        .filter_map(|l| l.split('"').nth(3).map(PathBuf::from))
        .collect();
    (toml, secrets)
}

/// The daemon's environment without the plaintext brokers (the config file names the
/// secured listener).
fn env_for(topics: &Topics, model: &Path) -> Vec<(String, String)> {
    daemon_env(topics, model)
        .into_iter()
        .filter(|(k, _)| k != "EMOSTREAM__KAFKA__BROKERS")
        .collect()
}

/// Labels 200 comments through the listener of `mode`; returns the daemon's log.
fn labels_a_stream(mode: &str, tmp: &Path, extra_env: &[(&str, &str)]) -> String {
    let model = common::tiny_model_dir(&tmp.join(mode));
    let topics = Topics::new(2);
    let records: Vec<Rec> = (0..200)
        .map(|i| {
            (
                None,
                serde_json::json!({"id": format!("c{i}"), "text": "thank you so much"})
                    .to_string()
                    .into_bytes(),
                None,
            )
        })
        .collect();
    produce(&topics.input, &records);
    let cfg = tmp.join(format!("{mode}.toml"));
    std::fs::write(&cfg, client_config(mode).0).unwrap();
    let log = tmp.join(format!("{mode}.log"));
    let mut env = env_for(&topics, &model);
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut d = DaemonBuilder::new(&env).config(&cfg).log(&log).spawn();
    let events = read_until(&topics.output, Duration::from_secs(90), |r| r.len() >= 200);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        events.len(),
        200,
        "{mode}: events over the secured listener; log:\n{text}"
    );
    sigterm(&d);
    assert!(wait_exit(&mut d, Duration::from_secs(40))
        .expect("exits")
        .success());
    std::fs::read_to_string(&log).unwrap()
}

/// Starts the daemon with a broken secured configuration; it must exit non-zero within 30 s
/// with a log line containing `cause`.
fn refused(name: &str, toml: &str, tmp: &Path, extra_env: &[(&str, &str)], cause: &str) -> String {
    let model = common::tiny_model_dir(&tmp.join(name));
    let cfg = tmp.join(format!("{name}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    let log = tmp.join(format!("{name}.log"));
    let topics = Topics {
        input: "comments".into(),
        output: "out".into(),
        dlq: "dlq".into(),
        group: unique("group"),
    };
    let mut env = env_for(&topics, &model);
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let started = Instant::now();
    let mut d = DaemonBuilder::new(&env).config(&cfg).log(&log).spawn();
    let status = wait_exit(&mut d, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap();
    let status = status.unwrap_or_else(|| panic!("{name}: still running after 30 s; log:\n{text}"));
    assert!(!status.success(), "{name}: must fail; log:\n{text}");
    assert!(
        text.contains(cause),
        "{name}: the log names the cause ({cause}):\n{text}"
    );
    eprintln!(
        "{name}: refused after {:?}: {}",
        started.elapsed(),
        text.lines().rev().find(|l| l.contains(cause)).unwrap_or("")
    );
    text
}

#[test]
fn labels_over_sasl_scram_and_mtls_and_refuses_a_wrong_password_and_an_untrusted_ca_naming_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (sasl, mut secret_files) = client_config("sasl");
    let (mtls, mtls_secrets) = client_config("mtls");
    secret_files.extend(mtls_secrets);
    let secrets: Vec<String> = secret_files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().trim().to_string())
        .collect();
    assert_eq!(
        secrets.len(),
        2,
        "the SCRAM password and the client key's password"
    );

    let mut logs = vec![
        // The password from its mounted file (kafka.secret_files).
        labels_a_stream("sasl", tmp.path(), &[]),
        // The client key's password from the environment form instead of the file.
        labels_a_stream(
            "mtls",
            tmp.path(),
            &[(
                "EMOSTREAM_KAFKA_SECRET_SSL_KEY_PASSWORD",
                secrets[1].as_str(),
            )],
        ),
    ];
    // The environment form wins over the file: a wrong password that way.
    logs.push(refused(
        "wrong-password",
        &sasl,
        tmp.path(),
        &[("EMOSTREAM_KAFKA_SECRET_SASL_PASSWORD", "not-the-password")],
        "authentication failed",
    ));
    // A CA that did not sign the broker's certificate.
    let other_ca = tmp.path().join("other-ca.pem");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(tmp.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(ok.status.success());
    let untrusted = mtls
        .lines()
        .map(|l| {
            if l.starts_with("\"ssl.ca.location\"") {
                format!("\"ssl.ca.location\" = \"{}\"", other_ca.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    logs.push(refused(
        "untrusted-ca",
        &untrusted,
        tmp.path(),
        &[],
        "TLS handshake failed",
    ));
    for (i, log) in logs.iter().enumerate() {
        for s in &secrets {
            assert!(!log.contains(s.as_str()), "log {i} contains a secret");
        }
    }
}
