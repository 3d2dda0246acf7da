//! Hot swap against the real local Apache Kafka broker and real ONNX Runtime: three swaps under
//! continuous load (admin API and registry pointer, one of them a corrupt model) lose no message
//! and only move each partition's model version forward; one signed control-topic message moves
//! two replicas of a group, while unsigned, forged, tampered and replayed ones are refused with
//! the reason, and a rollback on the control topic moves both back; the admin API swaps and
//! rolls back with its bearer token only, and refuses path traversal, unknown versions, a
//! version whose tokenizer.json changed after publishing and loads over its rate limit; shadow
//! mode compares the candidate on live traffic before promoting it.

mod common;

use common::daemon::{cpu_seconds, daemon_env, sigterm, wait_exit, DaemonBuilder};
use common::http::{free_port, http_get, http_get_with, http_post, wait_http};
use common::kafka::{
    brokers, create_topic, produce, producer, read_until, send_all, unique,
    versions_only_move_forward, Record, Topics,
};
use emostream::daemon::kafka::control;
use emostream::daemon::kafka::signing::ControlKey;
use emostream::model::disk_registry::DiskRegistry;
use emostream::model::registry::Expect;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// A registry holding the tiny test model as `versions`, with ACTIVE at the first.
fn registry_with(root: &Path, model: &Path, versions: &[&str]) -> DiskRegistry {
    let reg = DiskRegistry::open(root).unwrap();
    for v in versions {
        reg.publish(model, Some(v)).unwrap();
    }
    reg.set_active(versions[0], Expect::Unchanged).unwrap();
    reg
}

/// A version whose model.onnx is cut in half, with a card sha256 that matches the damage: it
/// passes the checksum and fails to load in ONNX Runtime.
fn publish_truncated(reg: &DiskRegistry, model: &Path, version: &str) {
    let (_, dir) = reg.publish(model, Some(version)).unwrap();
    let onnx = dir.join("model.onnx");
    let bytes = std::fs::read(&onnx).unwrap();
    std::fs::write(&onnx, &bytes[..bytes.len() / 2]).unwrap();
    // Re-sealed over the damaged file, as a publisher with a broken exporter would.
    let mut card = emostream::model::dir::ModelDir::load(&dir, false)
        .unwrap()
        .card;
    card.model_sha256 = emostream::model::eval::dataset::sha256_file(&onnx).unwrap();
    card.write(&dir).unwrap();
}

/// The active version, asked with the admin token.
fn active_version_with(port: u16, token: &str) -> String {
    let (_, body) = http_get_with(port, "/admin/model", Some(token)).expect("GET /admin/model");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["active"]["version"].as_str().unwrap().to_string()
}

fn event(r: &Record) -> Value {
    serde_json::from_slice(&r.payload).unwrap()
}

/// Reads `topic` until `n` distinct event ids arrived (or `timeout`): the records and the ids.
fn read_ids(topic: &str, n: usize, timeout: Duration) -> (Vec<Record>, HashSet<String>) {
    let id = |r: &Record| event(r)["id"].as_str().unwrap().to_string();
    let got = read_until(topic, timeout, |r| {
        r.iter().map(id).collect::<HashSet<_>>().len() >= n
    });
    let ids = got.iter().map(id).collect();
    (got, ids)
}

fn active_version(port: u16) -> String {
    let (_, body) = http_get(port, "/admin/model").expect("GET /admin/model");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["active"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// POSTs `body` to the admin API's `path` (with the bearer `token`, if any), asserts the
/// answer's status and returns the answer's body.
fn admin_post(port: u16, path: &str, body: &str, token: Option<&str>, status: u16) -> String {
    let (code, answer) = http_post(port, path, body, token).expect("POST to the admin API");
    assert_eq!(code, status, "POST {path} {body}: {answer}");
    answer
}

/// Asks the admin API to make `version` active; asserts the answer's status, returns its body.
fn swap_to(port: u16, version: &str, token: Option<&str>, status: u16) -> String {
    let body = serde_json::json!({ "version": version }).to_string();
    admin_post(port, "/admin/model", &body, token, status)
}

/// Asks the admin API to roll back; asserts the answer's status, returns its body.
fn roll_back(port: u16, token: Option<&str>, status: u16) -> String {
    admin_post(port, "/admin/model/rollback", "", token, status)
}

fn registry_env(
    base: Vec<(String, String)>,
    root: &Path,
    port: u16,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = base;
    env.retain(|(k, _)| k != "EMOSTREAM__ADMIN__BIND");
    env.push(("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")));
    env.push((
        "EMOSTREAM__REGISTRY__ROOT".into(),
        root.display().to_string(),
    ));
    env.push(("EMOSTREAM__REGISTRY__POLL_INTERVAL_MS".into(), "200".into()));
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    env
}

#[test]
fn three_swaps_under_load_one_corrupt_lose_nothing_and_only_move_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let root = tmp.path().join("registry");
    let reg = registry_with(&root, &model, &["1.0.0", "1.1.0", "1.2.0"]);
    publish_truncated(&reg, &model, "1.1.5-corrupt");

    let topics = Topics::new(3);
    let port = free_port();
    let env = registry_env(
        daemon_env(&topics, &model),
        &root,
        port,
        &[
            ("EMOSTREAM__BATCHING__MAX_BATCH_SIZE", "16"),
            // No token: the operator opens the admin API on loopback explicitly.
            ("EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK", "true"),
        ],
    );
    let mut daemon = DaemonBuilder::new(&env).spawn();
    wait_http(port, "/readyz", Duration::from_secs(60), |c, _| c == 200);
    assert_eq!(active_version(port), "1.0.0");
    // Idle, a daemon watching its registry sleeps. (Reacting to its own reads of ACTIVE once
    // kept a core busy for as long as it ran: ~0.6 CPU-seconds per second.)
    let (cpu0, t0) = (cpu_seconds(daemon.id()), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let idle_share = (cpu_seconds(daemon.id()) - cpu0) / t0.elapsed().as_secs_f64();
    assert!(
        idle_share < 0.2,
        "an idle daemon used {:.0}% of a core",
        idle_share * 100.0
    );

    // Continuous load: 40 messages every 20 ms on a thread, 6,000 in all (about 3 s of traffic
    // per 1,000), while the swaps below happen.
    let texts = common::texts("test", 2000);
    let n = 6000usize;
    let loader = {
        let (input, texts) = (topics.input.clone(), texts.clone());
        std::thread::spawn(move || {
            let p = producer();
            for chunk in (0..n).collect::<Vec<_>>().chunks(40) {
                let recs: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        let body = serde_json::json!({"id": format!("c{i}"), "text": texts[i % texts.len()]});
                        (Some(format!("user{}", i % 31)), body.to_string().into_bytes(), None)
                    })
                    .collect();
                send_all(&p, &input, &recs);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let wait_output = |k: usize| {
        read_until(&topics.output, Duration::from_secs(120), |r| r.len() >= k);
    };
    wait_output(800);

    // Swap 1, through the admin API.
    let body = swap_to(port, "1.1.0", None, 200);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["result"], "swapped", "{body}");
    assert_eq!(report["previous"], "1.0.0");
    let swap_seconds = report["load_seconds"].as_f64().unwrap();
    wait_output(2000);

    // Swap 2: a corrupt model is rejected with a reason; 1.1.0 keeps serving.
    let body = swap_to(port, "1.1.5-corrupt", None, 422);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["result"], "rejected");
    assert_eq!(report["active"], "1.1.0");
    assert!(
        report["reason"].as_str().unwrap().contains("model.onnx"),
        "{body}"
    );
    assert_eq!(active_version(port), "1.1.0");
    wait_output(3200);

    // Swap 3, through the registry pointer (file watch / poll).
    reg.set_active("1.2.0", Expect::Unchanged).unwrap();
    let t = Instant::now();
    while active_version(port) != "1.2.0" {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "pointer swap never happened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    loader.join().unwrap();

    let (got, ids) = read_ids(&topics.output, n, Duration::from_secs(180));
    let missing: Vec<usize> = (0..n).filter(|i| !ids.contains(&format!("c{i}"))).collect();
    assert!(
        missing.is_empty(),
        "missing ids: {:?}",
        &missing[..missing.len().min(20)]
    );
    let dead = read_until(&topics.dlq, Duration::from_secs(2), |_| false);
    assert!(
        dead.is_empty(),
        "{} messages were dead-lettered",
        dead.len()
    );

    // Per source partition, in offset order, the version only moves forward.
    let seen_versions = versions_only_move_forward(&got, &["1.0.0", "1.1.0", "1.2.0"]);
    assert_eq!(seen_versions.len(), 3, "versions seen: {seen_versions:?}");
    let mut processed: Vec<f64> = got
        .iter()
        .map(|r| {
            let at =
                humantime::parse_rfc3339_weak(event(r)["processed_at"].as_str().unwrap()).unwrap();
            at.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        })
        .collect();
    // The longest gap between consecutive labelled events while the load ran.
    processed.sort_by(f64::total_cmp);
    let longest = processed
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    println!(
        "hot swap under load: load+validate {:.3} s (admin swap 1.0.0 -> 1.1.0); longest gap between labelled events over the run {:.3} s; {} events for {n} ids",
        swap_seconds,
        longest,
        got.len()
    );

    sigterm(&daemon);
    let status = wait_exit(&mut daemon, Duration::from_secs(60)).expect("daemon exit");
    assert!(status.success());
}

#[test]
fn a_signed_control_message_moves_both_replicas_and_unsigned_forged_or_replayed_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let root = tmp.path().join("registry");
    registry_with(&root, &model, &["1.0.0", "2.0.0"]);
    let topics = Topics::new(2);
    let control = unique("control");
    create_topic(&control, 1, &[]);
    // The control key, as a mounted secret file.
    let key_file = tmp.path().join("control.key");
    std::fs::write(
        &key_file,
        "7f3a9c0e5b1d2468ace013579bdf2468ace013579bdf0246\n",
    )
    .unwrap();
    let key = ControlKey::from_file(&key_file).unwrap();
    let key_path = key_file.display().to_string();
    let token = "s3cret-token";
    let ports = [free_port(), free_port()];
    let mut daemons: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            let replica = format!("replica-{i}");
            // Candidate loads a minute: replica-0 makes three here; replica-1 may make two,
            // the activation and the rollback, so the published version finds it at its limit.
            let max_swaps = if i == 0 { "5" } else { "2" };
            DaemonBuilder::new(&registry_env(
                daemon_env(&topics, &model),
                &root,
                port,
                &[
                    ("EMOSTREAM__REGISTRY__CONTROL_TOPIC", control.as_str()),
                    ("EMOSTREAM__REGISTRY__CONTROL_KEY_FILE", key_path.as_str()),
                    ("EMOSTREAM__REGISTRY__MAX_SWAPS_PER_MINUTE", max_swaps),
                    ("EMOSTREAM__REGISTRY__REPLICA_ID", replica.as_str()),
                    // Only the control message may move them (no pointer trigger).
                    ("EMOSTREAM__REGISTRY__WATCH", "false"),
                    ("EMOSTREAM__ADMIN__TOKEN", token),
                ],
            ))
            .spawn()
        })
        .collect();
    for &p in &ports {
        wait_http(p, "/healthz", Duration::from_secs(60), |c, _| c == 200);
    }

    // Wait until both are in the group and reading, then one control message.
    let t = Instant::now();
    while ports
        .iter()
        .any(|&p| http_get(p, "/readyz").map(|x| x.0) != Some(200))
    {
        assert!(t.elapsed() < Duration::from_secs(90), "replicas not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let results = |rid: &str, want: usize| -> Vec<Value> {
        let rid = rid.to_string();
        read_until(&control, Duration::from_secs(90), |r| {
            r.iter()
                .filter(|x| event(x)["type"] == "result" && event(x)["request_id"] == rid.as_str())
                .count()
                >= want
        })
        .iter()
        .map(event)
        .filter(|v| v["type"] == "result" && v["request_id"] == rid.as_str())
        .collect()
    };
    // Unsigned, signed with another key, or tampered after signing: refused, with the reason.
    let unsigned = control::activate_message("2.0.0", "req-0");
    produce(&control, &[(None, unsigned.to_string().into_bytes(), None)]);
    for r in results("req-0", 2) {
        assert_eq!(r["result"], "refused", "{r}");
        assert!(r["reason"].as_str().unwrap().contains("unsigned"), "{r}");
    }
    let forger = {
        let f = tmp.path().join("other.key");
        std::fs::write(&f, "0000000000000000000000000000000000000000000000000").unwrap();
        ControlKey::from_file(&f).unwrap()
    };
    let (body, headers) =
        control::signed_record(&forger, &control::activate_message("2.0.0", "req-0b"));
    produce(&control, &[(None, body.into_bytes(), Some(headers))]);
    let (body, headers) = control::signed_record(&key, &control::rollback_message("req-0c"));
    let tampered = body.replace("rollback", "activate\",\"version\":\"2.0.0");
    produce(&control, &[(None, tampered.into_bytes(), Some(headers))]);
    for rid in ["req-0b", "req-0c"] {
        for r in results(rid, 2) {
            assert_eq!(r["result"], "refused", "{r}");
            assert!(
                r["reason"].as_str().unwrap().contains("bad signature"),
                "{r}"
            );
        }
    }
    for &p in &ports {
        assert_eq!(active_version_with(p, token), "1.0.0", "nothing moved");
    }
    let (body, headers) =
        control::signed_record(&key, &control::activate_message("2.0.0", "req-1"));
    let signed = (None, body.into_bytes(), Some(headers));
    produce(&control, std::slice::from_ref(&signed));
    let replies = results("req-1", 2);
    let replicas: HashSet<&str> = replies
        .iter()
        .map(|v| v["replica"].as_str().unwrap())
        .collect();
    assert_eq!(replicas, HashSet::from(["replica-0", "replica-1"]));
    for r in &replies {
        assert_eq!(r["result"], "swapped", "{r}");
        assert_eq!(r["active"], "2.0.0", "{r}");
    }

    // Events now carry 2.0.0 from both replicas.
    let texts = common::texts("test", 200);
    let recs: Vec<_> = (0..200)
        .map(|i| {
            let body = serde_json::json!({"id": format!("a{i}"), "text": texts[i]});
            (Some(format!("k{i}")), body.to_string().into_bytes(), None)
        })
        .collect();
    produce(&topics.input, &recs);
    let got = read_until(&topics.output, Duration::from_secs(90), |r| r.len() >= 200);
    assert!(got.len() >= 200);
    let partitions: HashSet<i64> = got
        .iter()
        .map(|r| event(r)["source"]["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(partitions.len(), 2, "both partitions labelled");
    for r in &got {
        assert_eq!(event(r)["model"]["version"], "2.0.0");
    }

    // The same signed message again is a replay: refused (results now count 2 per replica).
    produce(&control, std::slice::from_ref(&signed));
    let replayed: Vec<Value> = results("req-1", 4)
        .into_iter()
        .filter(|r| r["result"] == "refused")
        .collect();
    assert_eq!(replayed.len(), 2, "{replayed:?}");
    for r in &replayed {
        assert!(r["reason"].as_str().unwrap().contains("replayed"), "{r}");
        assert_eq!(r["active"], Value::Null);
    }

    // Rollback on the control topic: both go back to 1.0.0.
    let (body, headers) = control::signed_record(&key, &control::rollback_message("req-2"));
    produce(&control, &[(None, body.into_bytes(), Some(headers))]);
    for r in results("req-2", 2) {
        assert_eq!(r["result"], "swapped", "{r}");
        assert_eq!(r["active"], "1.0.0", "{r}");
    }

    // `train publish --control-topic --config` signs with the config's key and reaches the fleet
    // through the daemons' own Kafka client settings. Replica-0 swaps; replica-1 has used its
    // two loads this minute and says so.
    let publisher = tmp.path().join("publisher.toml");
    std::fs::write(
        &publisher,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[registry]\ncontrol_key_file = \"{key_path}\"\n",
            brokers()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_train"))
        .arg("publish")
        .arg("--model")
        .arg(&model)
        .arg("--registry")
        .arg(&root)
        .args([
            "--version",
            "2.5.0",
            "--control-topic",
            control.as_str(),
            "--config",
        ])
        .arg(&publisher)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rid = stdout
        .split("request_id ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no request id in {stdout}"))
        .to_string();
    let replies: HashMap<String, Value> = results(&rid, 2)
        .into_iter()
        .map(|r| (r["replica"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(replies["replica-0"]["result"], "swapped", "{replies:?}");
    assert_eq!(replies["replica-0"]["active"], "2.5.0", "{replies:?}");
    assert_eq!(replies["replica-1"]["result"], "rejected", "{replies:?}");
    assert!(
        replies["replica-1"]["reason"]
            .as_str()
            .unwrap()
            .contains("rate limited"),
        "{replies:?}"
    );

    for d in &daemons {
        sigterm(d);
    }
    for d in &mut daemons {
        let status = wait_exit(d, Duration::from_secs(60)).expect("daemon exit");
        assert!(status.success());
    }
}

#[test]
fn admin_api_swaps_and_rolls_back_with_its_token_and_refuses_traversal_bad_versions_and_floods() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let root = tmp.path().join("registry");
    registry_with(&root, &model, &["1.0.0", "2.0.0"]);
    let topics = Topics::new(2);
    let token = "s3cret-token";
    let port = free_port();
    let mut daemon = DaemonBuilder::new(&registry_env(
        daemon_env(&topics, &model),
        &root,
        port,
        &[
            // Three candidate loads a minute (this test makes three).
            ("EMOSTREAM__REGISTRY__MAX_SWAPS_PER_MINUTE", "3"),
            // Only the admin API may move it (no pointer trigger).
            ("EMOSTREAM__REGISTRY__WATCH", "false"),
            ("EMOSTREAM__ADMIN__TOKEN", token),
        ],
    ))
    .spawn();
    wait_http(port, "/healthz", Duration::from_secs(60), |c, _| c == 200);
    // The admin API wants the token; the model info is behind it too.
    swap_to(port, "2.0.0", None, 401);
    swap_to(port, "2.0.0", Some("wrong"), 401);
    // Traversal is refused before it reaches the file system.
    for bad in ["../../etc", "..", "1.0.0/../../x", "/etc/passwd"] {
        swap_to(port, bad, Some(token), 400);
    }
    wait_http(port, "/readyz", Duration::from_secs(90), |c, _| c == 200);

    // Admin swap and admin rollback.
    swap_to(port, "2.0.0", Some(token), 200);
    let body = roll_back(port, Some(token), 200);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["active"], "1.0.0", "{body}");
    // And with nothing left to roll back to, the admin API says so and nothing changes.
    let body = roll_back(port, Some(token), 422);
    assert!(body.contains("no previous model"), "{body}");
    // An unknown version is rejected and 1.0.0 keeps serving.
    let body = swap_to(port, "9.9.9", Some(token), 422);
    assert!(body.contains("not in the registry"), "{body}");
    // A version whose tokenizer.json was changed after publishing is refused on swap.
    let reg = DiskRegistry::open(&root).unwrap();
    let (_, dir) = reg.publish(&model, Some("3.0.0")).unwrap();
    let tok = dir.join("tokenizer.json");
    let mut bytes = std::fs::read(&tok).unwrap();
    bytes.extend_from_slice(b"\n");
    std::fs::write(&tok, bytes).unwrap();
    let body = swap_to(port, "3.0.0", Some(token), 422);
    assert!(body.contains("tokenizer.json"), "{body}");
    // That was the third load this minute: a fourth is refused before loading.
    let body = swap_to(port, "2.0.0", Some(token), 422);
    assert!(body.contains("rate limited"), "{body}");

    let metrics = http_get(port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("emostream_model_swaps_total{result=\"swapped\",trigger=\"admin\"}")
            || metrics
                .contains("emostream_model_swaps_total{trigger=\"admin\",result=\"swapped\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("emostream_model_load_seconds"),
        "{metrics}"
    );

    sigterm(&daemon);
    let status = wait_exit(&mut daemon, Duration::from_secs(60)).expect("daemon exit");
    assert!(status.success());
}

#[test]
fn shadow_mode_compares_on_live_traffic_before_promoting() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let root = tmp.path().join("registry");
    registry_with(&root, &model, &["1.0.0", "1.1.0"]);
    let topics = Topics::new(2);
    let port = free_port();
    // The token from a mounted file (admin.token_file).
    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, "file-token\n").unwrap();
    let token_path = token_file.display().to_string();
    let mut daemon = DaemonBuilder::new(&registry_env(
        daemon_env(&topics, &model),
        &root,
        port,
        &[
            ("EMOSTREAM__ADMIN__TOKEN_FILE", token_path.as_str()),
            ("EMOSTREAM__BATCHING__MAX_BATCH_SIZE", "8"),
            ("EMOSTREAM__REGISTRY__SHADOW_BATCHES", "5"),
            ("EMOSTREAM__REGISTRY__SHADOW_SAMPLE_EVERY", "2"),
            ("EMOSTREAM__REGISTRY__SHADOW_MIN_AGREEMENT", "0.99"),
            ("EMOSTREAM__REGISTRY__SHADOW_TIMEOUT_MS", "60000"),
        ],
    ))
    .spawn();
    wait_http(port, "/readyz", Duration::from_secs(60), |c, _| c == 200);
    // Traffic until the swap is done: 10 comments every 30 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let texts = common::texts("test", 2000);
    let loader = {
        let (input, stop) = (topics.input.clone(), stop.clone());
        std::thread::spawn(move || {
            let p = producer();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || i < 300 {
                let recs: Vec<_> = (i..i + 10)
                    .map(|k| {
                        let body = serde_json::json!({"id": format!("s{k}"), "text": texts[k % texts.len()]});
                        (Some(format!("k{k}")), body.to_string().into_bytes(), None)
                    })
                    .collect();
                send_all(&p, &input, &recs);
                i += 10;
                std::thread::sleep(Duration::from_millis(30));
            }
            i
        })
    };
    read_until(&topics.output, Duration::from_secs(60), |r| r.len() >= 100);
    // The candidate is the same network: on the sampled live batches it must agree fully, and
    // with shadow_min_agreement 0.99 it is promoted only after the comparison.
    // The token file's token is required.
    swap_to(port, "1.1.0", None, 401);
    let body = swap_to(port, "1.1.0", Some("file-token"), 200);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["result"], "swapped", "{body}");
    assert_eq!(report["shadow"]["batches"], 5, "{body}");
    assert!(
        report["shadow"]["comments"].as_u64().unwrap() >= 5,
        "{body}"
    );
    assert_eq!(report["shadow"]["exact_match"], 1.0, "{body}");
    assert_eq!(report["shadow"]["mean_jaccard"], 1.0, "{body}");
    let metrics = http_get(port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("emostream_shadow_label_agreement 1"),
        "{metrics}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = loader.join().unwrap();
    let (got, ids) = read_ids(&topics.output, n, Duration::from_secs(120));
    assert_eq!(ids.len(), n, "every comment labelled exactly once or more");
    assert!(got.iter().any(|r| event(r)["model"]["version"] == "1.1.0"));
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(60))
        .expect("daemon exit")
        .success());
}

/// Issue 25: rollback history lives in the registry (`HISTORY`) and a rollback to `model.dir`
/// removes `ACTIVE`, so after a restart the daemon serves what it served before the restart
/// and can still roll back (it used to answer 422 "no previous model", and a restart after a
/// rollback to `model.dir` served the version just rolled back from).
#[test]
fn rollbacks_survive_restarts_and_a_rollback_to_model_dir_is_what_a_restart_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let root = tmp.path().join("registry");
    let reg = DiskRegistry::open(&root).unwrap();
    for v in ["1.0.0", "2.0.0"] {
        reg.publish(&model, Some(v)).unwrap();
    }
    let topics = Topics::new(1);
    let token = "s3cret-token";
    let port = free_port();
    let env = registry_env(
        daemon_env(&topics, &model),
        &root,
        port,
        &[
            ("EMOSTREAM__REGISTRY__WATCH", "false"),
            ("EMOSTREAM__ADMIN__TOKEN", token),
        ],
    );
    let start = || {
        let d = DaemonBuilder::new(&env).spawn();
        wait_http(port, "/healthz", Duration::from_secs(60), |c, _| c == 200);
        d
    };
    let stop = |mut d: common::daemon::Daemon| {
        sigterm(&d);
        assert!(wait_exit(&mut d, Duration::from_secs(60))
            .expect("exits")
            .success());
    };
    // No ACTIVE yet: model.dir (the tiny model's own version) serves.
    let d = start();
    let own = active_version_with(port, token);
    swap_to(port, "1.0.0", Some(token), 200);
    swap_to(port, "2.0.0", Some(token), 200);
    stop(d);

    let d = start();
    assert_eq!(active_version_with(port, token), "2.0.0", "ACTIVE survives");
    let body = roll_back(port, Some(token), 200);
    assert!(
        body.contains("\"active\":\"1.0.0\""),
        "history survives a restart: {body}"
    );
    stop(d);

    let d = start();
    assert_eq!(
        active_version_with(port, token),
        "1.0.0",
        "the rollback was persisted"
    );
    let body = roll_back(port, Some(token), 200);
    assert!(
        body.contains(&format!("\"active\":\"{own}\"")),
        "back to model.dir: {body}"
    );
    assert_eq!(
        reg.active().unwrap(),
        None,
        "a rollback to model.dir removes ACTIVE"
    );
    stop(d);

    let d = start();
    assert_eq!(
        active_version_with(port, token),
        own,
        "a restart serves model.dir again"
    );
    let body = roll_back(port, Some(token), 422);
    assert!(body.contains("no previous model"), "{body}");
    stop(d);
}
