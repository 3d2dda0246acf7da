//! What moderators downstream get (issue 24), on the real broker with the shipped model: label
//! events (schema v2) carry the comment's context and name the per-community policy that
//! decided their labels; the policy file reloads while the stream runs (a bad edit refused, the
//! policy in force kept), with no comment lost or repeated; CloudEvents headers on request.

mod common;

use common::daemon::{daemon_env, DaemonBuilder};
use common::http::{free_port, http_get, http_post, wait_http};
use common::kafka::{produce, read_until, Record, Topics};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const ANGER: &str = "anger";

/// The shipped model's own threshold for `label`.
fn model_threshold(label: &str) -> f64 {
    let card = common::shipped_card();
    let at = card["labels"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l == label)
        .unwrap();
    card["thresholds"]["per_label"][at].as_f64().unwrap()
}

/// Comment `i`: a test-split text in one of four communities, with an author, a thread and a
/// creation time; its headers a trace id and a CloudEvents attribute of its own.
fn comment(
    i: usize,
    texts: &[String],
) -> (
    Option<String>,
    Vec<u8>,
    Option<rdkafka::message::OwnedHeaders>,
) {
    let subreddit = ["calmplace", "ventingroom", "news", "pics"][i % 4];
    let body = json!({
        "id": format!("c{i}"),
        "text": texts[i % texts.len()],
        "subreddit": subreddit,
        "author": format!("user{}", i % 13),
        "link_id": format!("t3_{}", i % 7),
        "created_utc": 1_700_000_000 + i as i64,
    });
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: "trace-id",
            value: Some(&format!("t{i}")),
        })
        .insert(rdkafka::message::Header {
            key: "ce_subject",
            value: Some("the input's own subject"),
        });
    (
        Some(format!("t3_{}", i % 7)),
        body.to_string().into_bytes(),
        Some(headers),
    )
}

fn policy_v1() -> &'static str {
    r#"
[default]

[[policies]]
name = "calm"
field = "subreddit"
values = ["calmplace"]
off = ["anger"]

[[policies]]
name = "sensitive"
field = "subreddit"
values = ["ventingroom"]
thresholds = { anger = 0.02 }
"#
}

/// The same, and `news` now calm as well.
fn policy_v2() -> String {
    policy_v1().replace(
        r#"values = ["calmplace"]"#,
        r#"values = ["calmplace", "news"]"#,
    )
}

fn event(r: &Record) -> Value {
    serde_json::from_slice(&r.payload).unwrap()
}

fn has_label(e: &Value, label: &str) -> bool {
    e["labels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["label"] == label)
}

/// Each event's labels follow its community's rule for anger; returns how many events the
/// non-default rules changed (so a test can tell the rules were exercised).
fn check_anger(events: &[Value], calm: &[&str], model_t: f64) -> (usize, usize) {
    let (mut silenced, mut raised) = (0, 0);
    for e in events {
        let score = e["scores"][ANGER].as_f64().unwrap();
        let sub = e["input"]["subreddit"].as_str().unwrap();
        let policy = e["policy"]["name"].as_str().unwrap();
        let fired = has_label(e, ANGER);
        if calm.contains(&sub) {
            assert_eq!(policy, "calm", "{e}");
            assert!(!fired, "anger is off in {sub}: {e}");
            silenced += usize::from(score >= model_t);
        } else if sub == "ventingroom" {
            assert_eq!(policy, "sensitive", "{e}");
            assert_eq!(fired, score >= 0.02, "{e}");
            raised += usize::from(fired && score < model_t);
        } else {
            assert_eq!(policy, "default", "{e}");
            assert_eq!(fired, score >= model_t, "{e}");
        }
    }
    (silenced, raised)
}

/// The sum of the series of metric `name` that have every label of `labels` (in any order).
fn metric(port: u16, name: &str, labels: &[&str]) -> f64 {
    http_get(port, "/metrics")
        .map(|(_, page)| {
            page.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .filter(|l| labels.iter().all(|want| l.contains(want)))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
}

/// The daemon's environment for `topics` with the shipped model and the `/v1/*` API open on
/// loopback at `port`.
fn env_with_open_api(topics: &Topics, port: u16) -> Vec<(String, String)> {
    let mut env = daemon_env(topics, &common::shipped_model_dir());
    env.push(("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")));
    env.push((
        "EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK".into(),
        "true".into(),
    ));
    env
}

/// A validator for the JSON Schema `docs/<name>`.
fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn events_carry_context_and_follow_each_communitys_policy_through_reloads() {
    let topics = Topics::new(2);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_v1()).unwrap();
    let config = dir.path().join("emostream.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[output]
schema_version = 2
event_time_pointer = "/created_utc"
cloudevents = true
[output.carry]
subreddit = "/subreddit"
author = "/author"
link_id = "/link_id"
created_utc = "/created_utc"
[policy]
file = "{}"
poll_interval_ms = 200
"#,
            policy.display()
        ),
    )
    .unwrap();
    let texts = common::texts("test", 5427);
    let batch =
        |from: usize, to: usize| -> Vec<_> { (from..to).map(|i| comment(i, &texts)).collect() };
    produce(&topics.input, &batch(0, 500));

    let port = free_port();
    let env = env_with_open_api(&topics, port);
    let _daemon = DaemonBuilder::new(&env).config(&config).spawn();
    let first = read_until(&topics.output, Duration::from_secs(180), |r| r.len() >= 500);
    assert_eq!(first.len(), 500);

    // Every event validates against v2 and carries its comment's fields with their types.
    let validator = schema("label-event-v2.schema.json");
    let events: Vec<Value> = first.iter().map(event).collect();
    for (r, e) in first.iter().zip(&events) {
        assert!(validator.is_valid(e), "not a v2 event: {e}");
        let i: usize = e["id"].as_str().unwrap()[1..].parse().unwrap();
        let (_, input, _) = comment(i, &texts);
        let input: Value = serde_json::from_slice(&input).unwrap();
        for field in ["subreddit", "author", "link_id", "created_utc"] {
            assert_eq!(e["input"][field], input[field], "{field} of {e}");
        }
        assert!(e.get("input_cut").is_none(), "{e}");
        let created =
            std::time::UNIX_EPOCH + Duration::from_secs(input["created_utc"].as_u64().unwrap());
        assert_eq!(
            e["event_time"],
            humantime::format_rfc3339_millis(created).to_string(),
            "event_time from created_utc"
        );
        assert_eq!(e["policy"]["hash"].as_str().unwrap().len(), 12);
        // CloudEvents binary mode: the event's id is its input coordinates and model version.
        let h = &r.headers;
        // Input headers carried over, except the input's own CloudEvents attributes.
        assert_eq!(h.get("trace-id"), Some(&format!("t{i}")), "{h:?}");
        assert!(!h.contains_key("ce_subject"), "{h:?}");
        let want_id = format!(
            "{}-{}-{}-{}",
            e["source"]["topic"].as_str().unwrap(),
            e["source"]["partition"],
            e["source"]["offset"],
            e["model"]["version"].as_str().unwrap()
        );
        assert_eq!(h.get("ce_id"), Some(&want_id), "{h:?}");
        assert_eq!(h.get("ce_specversion").map(String::as_str), Some("1.0"));
        assert_eq!(
            h.get("ce_type").map(String::as_str),
            Some("io.emostream.label.v2")
        );
        assert_eq!(
            h.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert!(
            h.contains_key("ce_source") && h.contains_key("ce_time"),
            "{h:?}"
        );
    }
    let model_t = model_threshold(ANGER);
    let (silenced, raised) = check_anger(&events, &["calmplace"], model_t);
    assert!(
        silenced > 0,
        "no calm comment would have fired anger: the test proves nothing"
    );
    assert!(
        raised > 0,
        "no venting comment fired anger only by its lower threshold"
    );
    // The same rule set has the same hash; the three differ.
    let hashes: HashMap<&str, &str> = events
        .iter()
        .map(|e| {
            (
                e["policy"]["name"].as_str().unwrap(),
                e["policy"]["hash"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(
        metric(
            port,
            "emostream_policy_labels_total",
            &["policy=\"sensitive\"", "label=\"anger\""]
        ) > 0.0
    );

    // A broken edit (an unknown label) is refused; the policy in force keeps deciding.
    std::fs::write(
        &policy,
        policy_v1().replace("off = [\"anger\"]", "off = [\"rage\"]"),
    )
    .unwrap();
    // The refusal and its reason show in /v1/model.
    wait_http(port, "/v1/model", Duration::from_secs(20), |_, body| {
        body.contains("unknown label \\\"rage\\\"")
    });
    assert_eq!(
        metric(
            port,
            "emostream_policy_reloads_total",
            &["result=\"refused\""]
        ),
        1.0
    );
    produce(&topics.input, &batch(500, 600));
    let second = read_until(&topics.output, Duration::from_secs(120), |r| r.len() >= 600);
    let events: Vec<Value> = second[..]
        .iter()
        .map(event)
        .filter(|e| id_at_least(e, 500))
        .collect();
    assert_eq!(events.len(), 100);
    check_anger(&events, &["calmplace"], model_t);

    // A valid edit applies without a restart: news is calm from now on.
    std::fs::write(&policy, policy_v2()).unwrap();
    // Applied (no refusal any more) before the next comments are produced.
    wait_http(port, "/v1/model", Duration::from_secs(20), |_, body| {
        body.contains("\"refused\":null") && body.contains("\"calm\"")
    });
    produce(&topics.input, &batch(600, 800));
    let all = read_until(&topics.output, Duration::from_secs(120), |r| r.len() >= 800);
    let events: Vec<Value> = all
        .iter()
        .map(event)
        .filter(|e| id_at_least(e, 600))
        .collect();
    assert_eq!(events.len(), 200);
    check_anger(&events, &["calmplace", "news"], model_t);

    // Nothing lost, nothing repeated across the reloads.
    std::thread::sleep(Duration::from_secs(2));
    let all = read_until(&topics.output, Duration::from_secs(5), |_| false);
    let mut ids: Vec<String> = all
        .iter()
        .map(|r| event(r)["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((all.len(), ids.len()), (800, 800));
}

fn id_at_least(e: &Value, from: usize) -> bool {
    e["id"].as_str().unwrap()[1..].parse::<usize>().unwrap() >= from
}

/// A correction of comment `i` by moderator `m`.
fn correction(i: usize, m: usize, labels: &[&str]) -> Value {
    json!({
        "comment_id": format!("c{i}"),
        "text": format!("comment number {i}"),
        "labels": labels,
        "community": "ventingroom",
        "moderator": format!("mod-{m}"),
    })
}

#[test]
fn fifty_corrections_land_on_the_feedback_topic_once_each_and_bad_ones_write_nothing() {
    let topics = Topics::new(1);
    let feedback_topic = common::kafka::unique("feedback");
    common::kafka::create_topic(&feedback_topic, 2, &[]);
    let port = free_port();
    let mut env = env_with_open_api(&topics, port);
    env.push((
        "EMOSTREAM__API__FEEDBACK_TOPIC".into(),
        feedback_topic.clone(),
    ));
    let _daemon = DaemonBuilder::new(&env).spawn();
    wait_http(port, "/readyz", Duration::from_secs(90), |code, _| {
        code == 200
    });
    let post = |body: &Value| -> (u16, Value) {
        let (code, text) = http_post(port, "/v1/feedback", &body.to_string(), None).unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    };

    // 50 corrections: 25 comments, each corrected by two moderators.
    let labels_of = |i: usize, m: usize| -> Vec<&str> {
        match (i + m) % 3 {
            0 => vec!["anger"],
            1 => vec!["annoyance", "disapproval"],
            _ => vec!["neutral"],
        }
    };
    let mut ids = std::collections::HashSet::new();
    for i in 0..25 {
        for m in 0..2 {
            let (code, answer) = post(&correction(i, m, &labels_of(i, m)));
            assert_eq!(code, 200, "{answer}");
            assert_eq!(answer["written"], true, "{answer}");
            ids.insert(answer["feedback_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), 50);
    // The same corrections again (labels in another order): answered, not written twice.
    for i in 0..10 {
        let mut labels = labels_of(i, 0);
        labels.reverse();
        let (code, answer) = post(&correction(i, 0, &labels));
        assert_eq!(
            (code, &answer["written"], &answer["repeat"]),
            (200, &json!(false), &json!(true)),
            "{answer}"
        );
        assert!(ids.contains(answer["feedback_id"].as_str().unwrap()));
    }
    // Bad feedback: 400 naming the problem, nothing written.
    let mut no_text = correction(90, 0, &["joy"]);
    no_text.as_object_mut().unwrap().remove("text");
    let long = "x".repeat(1_048_577);
    for (body, says) in [
        (correction(91, 0, &["rage"]), "unknown label \"rage\""),
        (correction(92, 0, &[]), "\"labels\" is empty"),
        (correction(93, 0, &["joy", "joy"]), "twice"),
        (
            json!({"comment_id": "c94", "text": long, "labels": ["joy"], "moderator": "m"}),
            "input.max_message_bytes",
        ),
        (
            json!({"comment_id": "", "text": "t", "labels": ["joy"], "moderator": "m"}),
            "\"comment_id\" is empty",
        ),
        (
            json!({"comment_id": "c95", "text": "t", "labels": ["joy"]}),
            "missing field `moderator`",
        ),
        (
            json!({"comment_id": "c96", "text": "t", "labels": ["joy"], "moderator": "m", "extra": 1}),
            "unknown field",
        ),
        (
            json!({"comment_id": "a\nb", "text": "t", "labels": ["joy"], "moderator": "m"}),
            "control character",
        ),
        (
            json!({"comment_id": "c97", "source": {"topic": "t", "partition": -1, "offset": 0},
                   "labels": ["joy"], "moderator": "m"}),
            "at least 0",
        ),
        (no_text, "\"source\""),
    ] {
        let (code, answer) = post(&body);
        assert_eq!(code, 400, "{answer}");
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains(says), "{msg:?} should say {says:?}");
    }
    let (code, text) = http_post(port, "/v1/feedback", "{\"comment_id\": ", None).unwrap();
    assert_eq!(code, 400, "{text}");

    // An independent consumer reads exactly the 50, each valid, keyed by its comment.
    let validator = schema("feedback-v1.schema.json");
    std::thread::sleep(Duration::from_secs(1));
    let records = read_until(&feedback_topic, Duration::from_secs(20), |r| r.len() > 50);
    assert_eq!(records.len(), 50);
    let mut seen = std::collections::HashSet::new();
    for r in &records {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        assert!(validator.is_valid(&v), "{v}");
        assert_eq!(
            r.key.as_deref(),
            v["comment_id"].as_str().map(str::as_bytes)
        );
        let i: usize = v["comment_id"].as_str().unwrap()[1..].parse().unwrap();
        let m: usize = v["moderator"].as_str().unwrap()[4..].parse().unwrap();
        let mut want = labels_of(i, m);
        want.sort_by_key(|l| {
            ["anger", "annoyance", "disapproval", "neutral"]
                .iter()
                .position(|x| x == l)
        });
        assert_eq!(v["labels"], json!(want));
        assert_eq!(v["model"]["version"], common::shipped_card()["version"]);
        assert!(seen.insert((i, m)), "({i}, {m}) written twice");
    }

    // A moderator changes their mind: a new record, the latest wins at import.
    let (code, answer) = post(&correction(0, 0, &["joy"]));
    assert_eq!((code, &answer["written"]), (200, &json!(true)), "{answer}");

    // `train data import` turns the topic (and a file) into a dataset with provenance.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("extra.jsonl");
    std::fs::write(
        &file,
        "{\"id\": \"f1\", \"text\": \"what a lovely day\", \"labels\": [\"joy\"]}\n",
    )
    .unwrap();
    let import = |out: &Path| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_train"))
            .args([
                "data",
                "import",
                "--feedback-topic",
                &feedback_topic,
                "--brokers",
            ])
            .arg(common::kafka::brokers())
            .arg("--file")
            .arg(&file)
            .arg("--out")
            .arg(out)
            .env("EMOSTREAM__LOG__LEVEL", "warn")
            .status()
            .unwrap();
        assert!(status.success());
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    import(&a);
    import(&b);
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(
        read(&a, "train.tsv"),
        read(&b, "train.tsv"),
        "the same import twice"
    );
    assert_eq!(read(&a, "heldout.tsv"), read(&b, "heldout.tsv"));
    let provenance: Value = serde_json::from_str(&read(&a, "provenance.json")).unwrap();
    let counts = &provenance["counts"];
    assert_eq!(
        (
            &counts["corrections"],
            &counts["superseded"],
            &counts["comments"]
        ),
        (&json!(52), &json!(1), &json!(26)),
        "{provenance}"
    );
    let kafka = &provenance["sources"][0];
    let records: u64 = kafka["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["records"].as_u64().unwrap())
        .sum();
    assert_eq!(records, 51, "{kafka}");
    assert_eq!(provenance["sources"][1]["rows"], 1);
    // Held out by comment id, as the rule says; every comment on one side.
    let ids = |f: &str| -> Vec<String> {
        read(&a, f)
            .lines()
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect()
    };
    let (train, heldout) = (ids("train.tsv"), ids("heldout.tsv"));
    assert_eq!(train.len() + heldout.len(), 26);
    for id in &heldout {
        assert!(emostream::train::feedback::held_out(id, 20), "{id}");
    }
    for id in &train {
        assert!(!emostream::train::feedback::held_out(id, 20), "{id}");
    }
    // c0: mod-0 now says joy, mod-1 annoyance + disapproval: each has half the votes.
    let all = read(&a, "train.tsv") + &read(&a, "heldout.tsv");
    let c0 = all.lines().find(|l| l.ends_with("\tc0")).unwrap();
    let names = emostream::model::labels::LabelSet::goemotions();
    let labels: Vec<&str> = c0
        .split('\t')
        .nth(1)
        .unwrap()
        .split(',')
        .map(|i| names.name(i.parse().unwrap()))
        .collect();
    assert_eq!(labels, vec!["annoyance", "disapproval", "joy"]);
}

#[test]
fn a_correction_during_a_broker_outage_is_answered_503_and_written_only_when_posted_again() {
    // A broker of this test's own: it is stopped mid-test.
    let broker = common::kafka::PrivateBroker::new(19492);
    broker.start();
    common::kafka::use_brokers(&broker.brokers());
    let topics = Topics::new(1);
    let feedback_topic = common::kafka::unique("feedback");
    common::kafka::create_topic(&feedback_topic, 1, &[]);
    let port = free_port();
    let mut env = env_with_open_api(&topics, port);
    env.push((
        "EMOSTREAM__API__FEEDBACK_TOPIC".into(),
        feedback_topic.clone(),
    ));
    // A delivery attempt is given up after 3 s (the daemon's stall check must stay above it).
    env.push(("EMOSTREAM__KAFKA__PRODUCE_TIMEOUT_MS".into(), "3000".into()));
    let _daemon = DaemonBuilder::new(&env).spawn();
    wait_http(port, "/readyz", Duration::from_secs(90), |code, _| {
        code == 200
    });
    let post = |i: usize| -> (u16, String) {
        http_post(
            port,
            "/v1/feedback",
            &correction(i, 0, &["fear"]).to_string(),
            None,
        )
        .unwrap()
    };
    assert_eq!(post(1).0, 200);

    broker.stop();
    let (code, body) = post(2);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("post it again"), "{body}");
    broker.start();
    wait_http(port, "/readyz", Duration::from_secs(90), |code, _| {
        code == 200
    });
    // Not remembered as written: posting it again writes it. /readyz is the consumer's view;
    // the producer may need a moment more to reach the restarted broker, and until then the
    // answer is the same 503 (CI once saw one) — a client posts again, as the 503 says.
    let again = std::time::Instant::now();
    let (code, body) = loop {
        let (code, body) = post(2);
        if code != 503 || again.elapsed() > Duration::from_secs(60) {
            break (code, body);
        }
        assert!(body.contains("post it again"), "{body}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"written\":true"), "{body}");

    std::thread::sleep(Duration::from_secs(1));
    let records = read_until(&feedback_topic, Duration::from_secs(10), |r| r.len() > 2);
    let ids: Vec<String> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.payload).unwrap()["comment_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ids,
        vec!["c1", "c2"],
        "the refused correction was not written besides"
    );
}
