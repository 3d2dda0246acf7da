//! Moderators' corrections become the next model (issue 24), through the worked example of
//! docs/moderation.md (`scripts/feedback-to-model.sh`) on the real broker, the shipped model and
//! ONNX Runtime: corrections posted to a running daemon are imported, the model in production is
//! fine-tuned from its own ONNX weights with GoEmotions replay, judged and published over the
//! control topic; the daemon's next events come from the new version and score the corrected
//! labels higher. A candidate that fails the gate is refused and nothing changes.

mod common;

use common::daemon::{daemon_env, DaemonBuilder};
use common::http::{free_port, http_get, wait_http};
use common::kafka::{brokers, create_topic, produce, read_until, unique, Topics};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const CORRECTIONS: usize = 50;
const GOOD: &str = "1.0.1-feedback";
const BAD: &str = "1.0.2-overshoot";

/// The worked example, as docs/moderation.md runs it, with `vars` on top of `base`.
fn worked_example(base: &[(&str, String)], vars: &[(&str, &str)]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/feedback-to-model.sh"))
        .env("TRAIN", env!("CARGO_BIN_EXE_train"))
        .env("RUST_LOG", "warn");
    for (k, v) in base {
        cmd.env(k, v);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("running scripts/feedback-to-model.sh")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Labels `texts` (ids `{prefix}{i}`) through the daemon and returns the events by id.
fn label_all(topics: &Topics, prefix: &str, texts: &[&str]) -> HashMap<String, Value> {
    let records: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let body = json!({"id": format!("{prefix}{i}"), "text": t, "subreddit": "ventingroom"});
            (None, body.to_string().into_bytes(), None)
        })
        .collect();
    produce(&topics.input, &records);
    let want = texts.len();
    let ours = |r: &common::kafka::Record| {
        serde_json::from_slice::<Value>(&r.payload)
            .ok()
            .filter(|e| e["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
    };
    let events = read_until(&topics.output, Duration::from_secs(120), |rs| {
        rs.iter().filter_map(ours).count() >= want
    });
    let by_id: HashMap<String, Value> = events
        .iter()
        .filter_map(ours)
        .map(|e| (e["id"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(by_id.len(), want, "one event per comment");
    by_id
}

fn label_set(e: &Value) -> BTreeSet<String> {
    e["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap().to_string())
        .collect()
}

/// Mean score, over every (comment, corrected label), of the events' scores.
fn mean_corrected_score(events: &[&Value], corrected: &[Vec<String>]) -> f64 {
    let mut all = Vec::new();
    for (e, labels) in events.iter().zip(corrected) {
        for l in labels {
            all.push(e["scores"][l].as_f64().unwrap());
        }
    }
    all.iter().sum::<f64>() / all.len() as f64
}

fn active_version(port: u16) -> String {
    let (_, body) = http_get(port, "/v1/model").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["version"].as_str().unwrap_or_default().to_string()
}

#[test]
fn corrections_become_a_model_that_scores_them_higher_and_a_failing_candidate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("registry");
    let publish = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["publish", "--activate", "--model"])
        .arg(common::shipped_model_dir())
        .arg("--registry")
        .arg(&registry)
        .output()
        .unwrap();
    assert!(publish.status.success(), "{}", text(&publish));
    let key_file = tmp.path().join("control.key");
    std::fs::write(
        &key_file,
        "0b5e1f6a2c7d3e8f4a9b0c1d2e3f40516273849506a7b8c9\n",
    )
    .unwrap();
    let config = tmp.path().join("emostream.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[registry]\ncontrol_key_file = \"{}\"\n",
            brokers(),
            key_file.display()
        ),
    )
    .unwrap();
    let topics = Topics::new(1);
    let feedback = unique("feedback");
    let control = unique("control");
    create_topic(&feedback, 2, &[]);
    create_topic(&control, 1, &[]);
    let port = free_port();
    let mut env = daemon_env(&topics, &common::shipped_model_dir());
    env.retain(|(k, _)| k != "EMOSTREAM__ADMIN__BIND");
    for (k, v) in [
        ("EMOSTREAM__ADMIN__BIND", format!("127.0.0.1:{port}")),
        (
            "EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK",
            "true".into(),
        ),
        ("EMOSTREAM__API__FEEDBACK_TOPIC", feedback.clone()),
        ("EMOSTREAM__REGISTRY__ROOT", registry.display().to_string()),
        ("EMOSTREAM__REGISTRY__CONTROL_TOPIC", control.clone()),
        (
            "EMOSTREAM__REGISTRY__CONTROL_KEY_FILE",
            key_file.display().to_string(),
        ),
        ("EMOSTREAM__REGISTRY__REPLICA_ID", "replica-0".into()),
        // Only the control message moves it (the script also moves ACTIVE).
        ("EMOSTREAM__REGISTRY__WATCH", "false".into()),
    ] {
        env.push((k.into(), v));
    }
    let _daemon = DaemonBuilder::new(&env).spawn();
    wait_http(port, "/readyz", Duration::from_secs(90), |c, _| c == 200);
    let shipped = common::shipped_card();
    let shipped_version = shipped["version"].as_str().unwrap().to_string();
    assert_eq!(active_version(port), shipped_version);

    // Moderators correct the comments the shipped model got wrong: GoEmotions train comments whose labels
    // (as the daemon's events give them) differ from the annotators'; the correction is the
    // annotators' label set.
    let names = emostream::model::labels::LabelSet::goemotions();
    let train = common::split("train");
    let pool: Vec<_> = train.examples.iter().take(400).collect();
    let texts: Vec<&str> = pool.iter().map(|e| e.text.as_str()).collect();
    let first = label_all(&topics, "p", &texts);
    let mut chosen = Vec::new();
    for (i, e) in pool.iter().enumerate() {
        let gold: BTreeSet<String> = e.labels.iter().map(|&j| names.names()[j].clone()).collect();
        if label_set(&first[&format!("p{i}")]) != gold && chosen.len() < CORRECTIONS {
            chosen.push((i, gold.into_iter().collect::<Vec<_>>()));
        }
    }
    assert_eq!(
        chosen.len(),
        CORRECTIONS,
        "enough mislabelled comments in 400"
    );
    let corrections_file = tmp.path().join("corrections.jsonl");
    let lines: Vec<String> = chosen
        .iter()
        .map(|(i, labels)| {
            json!({"comment_id": format!("t1_{i}"), "text": texts[*i], "labels": labels,
                   "community": "ventingroom", "moderator": "mod-1"})
            .to_string()
        })
        .collect();
    std::fs::write(&corrections_file, lines.join("\n") + "\n").unwrap();
    let corrected: Vec<Vec<String>> = chosen.iter().map(|(_, l)| l.clone()).collect();
    let before_events: Vec<&Value> = chosen
        .iter()
        .map(|(i, _)| &first[&format!("p{i}")])
        .collect();
    let before = mean_corrected_score(&before_events, &corrected);

    let base = [
        ("CONFIG", config.display().to_string()),
        ("FEEDBACK_TOPIC", feedback.clone()),
        ("REGISTRY", registry.display().to_string()),
        ("CONTROL_TOPIC", control.clone()),
        ("API", format!("http://127.0.0.1:{port}")),
    ];
    let work = tmp.path().join("good");
    let good = worked_example(
        &base,
        &[
            ("VERSION", GOOD),
            ("WORK", work.to_str().unwrap()),
            ("CORRECTIONS", corrections_file.to_str().unwrap()),
        ],
    );
    let out = text(&good);
    assert!(good.status.success(), "{out}");
    assert!(
        out.contains(&format!("posted {CORRECTIONS} corrections")),
        "{out}"
    );
    let provenance: Value =
        serde_json::from_slice(&std::fs::read(work.join("data/provenance.json")).unwrap()).unwrap();
    assert_eq!(
        provenance["counts"]["comments"], CORRECTIONS,
        "{provenance}"
    );
    let gate: Value =
        serde_json::from_slice(&std::fs::read(work.join("candidate/gate.json")).unwrap()).unwrap();
    for c in gate["criteria"].as_array().unwrap() {
        eprintln!("{}: {} ({})", GOOD, c["name"], c["detail"]);
    }
    assert_eq!(gate["gate"], "refresh");
    assert_eq!(gate["passed"], true, "{gate:#}");
    // The GoEmotions test condition is judged on the paired bootstrap interval, which the card
    // figures bound: the shipped model's test macro-F1 inside the candidate's interval.
    let before_f1 = shipped["metrics"]["test"]["macro_f1"].as_f64().unwrap();
    let card: Value =
        serde_json::from_slice(&std::fs::read(work.join("candidate/model.json")).unwrap()).unwrap();
    let test = &card["metrics"]["test"];
    let [lo, hi] = [0, 1].map(|k| test["macro_f1_ci95"][k].as_f64().unwrap());
    assert!(
        lo < before_f1 && before_f1 < hi,
        "{shipped_version}'s macro-F1 {before_f1} in [{lo}, {hi}]"
    );
    assert!(card["training"]["base_model"]
        .as_str()
        .unwrap()
        .contains("recovered from its int8 model.onnx"));
    assert_eq!(
        card["training"]["mix"]["feedback_rows"],
        gate["feedback"]["trained_on"]["comments"]
    );

    // The control message swapped the daemon; its next events come from the new version and
    // give the moderators' labels higher scores.
    let t = Instant::now();
    while active_version(port) != GOOD {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "daemon never swapped to {GOOD}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again: Vec<&str> = chosen.iter().map(|(i, _)| texts[*i]).collect();
    let second = label_all(&topics, "q", &again);
    let after_events: Vec<&Value> = (0..again.len())
        .map(|k| &second[&format!("q{k}")])
        .collect();
    assert!(after_events.iter().all(|e| e["model"]["version"] == GOOD));
    let after = mean_corrected_score(&after_events, &corrected);
    // Both models are calibrated on dev, so their scores are comparable probabilities.
    assert!(
        after > before + 0.002,
        "mean score of the corrected labels: {before:.5} under {shipped_version}, {after:.5} under {GOOD}"
    );
    eprintln!("mean score of the corrected labels: {before:.5} ({shipped_version}) -> {after:.5} ({GOOD})");

    // A fine-tune that overshoots (a learning rate 30 times too high) fails the gate: the
    // script stops at publish, naming the conditions; nothing is copied or swapped.
    let bad = worked_example(
        &base,
        &[
            ("VERSION", BAD),
            ("WORK", tmp.path().join("bad").to_str().unwrap()),
            ("LR", "3e-3"),
            ("EPOCHS", "1"),
        ],
    );
    let out = text(&bad);
    assert!(!bad.status.success(), "{out}");
    eprintln!(
        "{}",
        out.lines()
            .filter(|l| l.contains("refused:"))
            .collect::<String>()
    );
    assert!(out.contains("refused:"), "{out}");
    assert!(
        out.contains("GoEmotions test macro-F1 not significantly below"),
        "{out}"
    );
    assert!(!registry.join("versions").join(BAD).exists());
    assert_eq!(
        std::fs::read_to_string(registry.join("ACTIVE"))
            .unwrap()
            .trim(),
        GOOD
    );
    assert_eq!(active_version(port), GOOD);
}
