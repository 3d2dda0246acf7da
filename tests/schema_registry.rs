//! Topics with a schema, against a real Schema Registry (Apicurio Registry's Confluent-compatible
//! API), real broker and real ONNX Runtime, with confluent-kafka's own serdes as the independent
//! client: framed comments (Avro and JSON Schema) are labelled and the framed events are read
//! back by its deserializers; the message's own faults are dead-lettered with their reasons; a
//! registry outage holds new schema ids without dead-lettering anything; a registry that
//! refuses the event schema as incompatible stops start-up.

mod common;

use common::daemon::{daemon_env, wait_exit, DaemonBuilder};
use common::http::{free_port, http_get, metric, wait_http};
use common::kafka::{create_topic, produce, read_until, unique, Record, Topics};
use common::schema_registry::{
    client, client_within, latest_id, registry_log_tail, rest, shared_url, OwnRegistry,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// A daemon on `topics` reading framed input through `registry`, its events in `encoding`
/// with schema `version`, its admin API on loopback `port`.
fn framed_env(
    topics: &Topics,
    registry: &str,
    encoding: &str,
    version: u32,
    port: u16,
) -> Vec<(String, String)> {
    let mut env = daemon_env(topics, &common::shipped_model_dir());
    env.retain(|(k, _)| k != "EMOSTREAM__ADMIN__BIND");
    for (k, v) in [
        ("EMOSTREAM__ADMIN__BIND", format!("127.0.0.1:{port}")),
        (
            "EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK",
            "true".into(),
        ),
        ("EMOSTREAM__INPUT__FORMAT", "schema_registry".into()),
        ("EMOSTREAM__OUTPUT__ENCODING", encoding.into()),
        ("EMOSTREAM__OUTPUT__SCHEMA_VERSION", version.to_string()),
        ("EMOSTREAM__SCHEMA_REGISTRY__URL", registry.into()),
    ] {
        env.push((k.into(), v));
    }
    if version == 2 {
        env.push((
            "EMOSTREAM__OUTPUT__CARRY__COMMUNITY".into(),
            "/community".into(),
        ));
    }
    env
}

/// Events read back by confluent-kafka's deserializer: (schema id, event) each.
fn read_back(registry: &str, topic: &str, encoding: &str, count: usize) -> Vec<(i64, Value)> {
    let (ok, out, err) = client_within(
        &[
            "consume",
            &common::kafka::brokers(),
            registry,
            topic,
            encoding,
            &count.to_string(),
            "90",
        ],
        Duration::from_secs(150),
    );
    assert!(
        ok,
        "reading {topic} back with confluent-kafka's deserializer: {err}\n{}",
        registry_log_tail(port_of(registry))
    );
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["schema_id"].as_i64().unwrap(), v["event"].clone())
        })
        .collect()
}

/// The port in a registry URL (http://127.0.0.1:PORT/...).
fn port_of(url: &str) -> u16 {
    url.split(':')
        .nth(2)
        .and_then(|p| p.split('/').next()?.parse().ok())
        .unwrap_or(0)
}

/// The distinct comment ids of events read back.
fn event_ids(events: &[(i64, Value)]) -> HashSet<String> {
    events
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn reasons(dead: &[Record]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in dead {
        let reason = r
            .headers
            .get("emostream.reason")
            .cloned()
            .unwrap_or_default();
        *m.entry(reason).or_insert(0) += 1;
    }
    m
}

fn framed(id: i64, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&(id as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn comments_framed_by_confluent_serializers_are_labelled_and_framed_events_read_back_by_its_deserializers(
) {
    let url = shared_url();
    let avro_out = Topics::new(3);
    // A second daemon, its own group, reads the same comments and writes JSON Schema events.
    let json_out = Topics {
        output: unique("out-json"),
        dlq: unique("dlq-json"),
        group: unique("group-json"),
        ..avro_out.clone()
    };
    create_topic(&json_out.output, 3, &[]);
    create_topic(&json_out.dlq, 1, &[]);
    let (port_a, port_j) = (free_port(), free_port());
    let env_a = framed_env(&avro_out, &url, "avro", 2, port_a);
    let env_j = framed_env(&json_out, &url, "json_schema", 1, port_j);
    let _a = DaemonBuilder::new(&env_a).spawn();
    let _j = DaemonBuilder::new(&env_j).spawn();
    for port in [port_a, port_j] {
        wait_http(port, "/readyz", Duration::from_secs(90), |c, _| c == 200);
    }

    // 500 Avro and 500 JSON Schema comments from confluent-kafka's serializers, interleaved.
    let (ok, _, err) = client(&[
        "produce",
        &common::kafka::brokers(),
        &url,
        &avro_out.input,
        "sr",
        "500",
        "500",
    ]);
    assert!(ok, "producing with confluent-kafka's serializers: {err}");
    // The message's own faults: an id the registry does not hold, plain JSON, a header cut
    // short, an Avro body its schema cannot read, a JSON document its schema refuses.
    let avro_in = latest_id(&url, "emostream.test.Comment");
    let json_in = latest_id(&url, &format!("{}-value", avro_out.input));
    let bad: Vec<(
        Option<String>,
        Vec<u8>,
        Option<rdkafka::message::OwnedHeaders>,
    )> = vec![
        framed(2_000_000_000, br#"{"id":"x","text":"hi"}"#),
        br#"{"id":"plain","text":"not framed"}"#.to_vec(),
        vec![0, 0, 1],
        framed(avro_in, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        framed(json_in, br#"{"id":5}"#),
    ]
    .into_iter()
    .map(|v| (None, v, None))
    .collect();
    produce(&avro_out.input, &bad);

    let expected: HashSet<String> = (0..500)
        .flat_map(|i| [format!("sr-avro-{i}"), format!("sr-json-{i}")])
        .collect();
    let avro_id = latest_id(&url, &format!("{}-value", avro_out.output));
    let events = read_back(&url, &avro_out.output, "avro", 1000);
    let ids = event_ids(&events);
    assert_eq!(
        ids, expected,
        "every framed comment labelled, read back as Avro"
    );
    for (schema_id, e) in &events {
        assert_eq!(
            *schema_id, avro_id,
            "framed under the registered event schema"
        );
        assert_eq!(e["schema_version"], 2);
        assert!(
            e["input"]["community"].as_str().unwrap().starts_with('c'),
            "{e}"
        );
        assert!(e["scores"].as_object().unwrap().len() == 28, "{e}");
    }
    let json_id = latest_id(&url, &format!("{}-value", json_out.output));
    let events = read_back(&url, &json_out.output, "json_schema", 1000);
    let ids = event_ids(&events);
    assert_eq!(
        ids, expected,
        "every framed comment labelled, read back as JSON Schema (validated)"
    );
    assert!(events.iter().all(|(id, _)| *id == json_id));

    for t in [&avro_out, &json_out] {
        let dead = read_until(&t.dlq, Duration::from_secs(30), |r| r.len() >= 5);
        assert_eq!(
            reasons(&dead),
            BTreeMap::from([
                ("not_framed".to_string(), 2),
                ("schema_mismatch".to_string(), 2),
                ("unknown_schema".to_string(), 1),
            ]),
            "{:?}",
            dead.iter().map(|r| &r.headers).collect::<Vec<_>>()
        );
        // The dead letter keeps the original bytes.
        assert!(dead.iter().any(|r| r.payload == vec![0, 0, 1]));
    }
}

#[test]
fn with_the_registry_stopped_for_20_s_new_schema_ids_wait_and_nothing_is_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    // Its own registry (this test stops it), schemas on disk so a restart keeps their ids.
    let own = OwnRegistry::start(free_port(), &tmp.path().join("registry"));
    let url = own.url();
    let topics = Topics::new(3);
    let port = free_port();
    let mut env = framed_env(&topics, &url, "avro", 1, port);
    // Shorter than the outage: /healthz must hold because the registry is the cause, not
    // because the outage is too short to call it a stall.
    env.push(("EMOSTREAM__HEALTH__STALL_TIMEOUT_MS".into(), "8000".into()));
    env.push(("EMOSTREAM__KAFKA__PRODUCE_TIMEOUT_MS".into(), "5000".into()));
    let _d = DaemonBuilder::new(&env).spawn();
    wait_http(port, "/readyz", Duration::from_secs(90), |c, _| c == 200);
    let brokers = common::kafka::brokers();
    let (ok, _, err) = client(&[
        "produce",
        &brokers,
        &url,
        &topics.input,
        "before",
        "150",
        "150",
    ]);
    assert!(ok, "{err}");
    read_until(&topics.output, Duration::from_secs(60), |r| r.len() >= 300);
    // Comments under a schema the daemon has not seen yet, framed now, produced while the
    // registry is down: the daemon must ask the registry for their schema.
    let (ok, out, err) = client(&["serialize", &url, &topics.input, "during", "200"]);
    assert!(ok, "{err}");
    let during: Vec<_> = out
        .lines()
        .map(|h| {
            let bytes = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            (None, bytes, None)
        })
        .collect();
    assert_eq!(during.len(), 200);

    own.stop();
    let stopped = Instant::now();
    let scrape = |name: &str| http_get(port, "/metrics").and_then(|(_, b)| metric(&b, name));
    let consumed = scrape("emostream_consumed_total").unwrap();
    produce(&topics.input, &during);
    // The daemon holds them: consumed, not labelled, not dead-lettered, and says why.
    loop {
        let (code, body) = http_get(port, "/readyz").unwrap();
        if code == 503 && body.contains("schema_registry_unavailable\":\"") {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(18),
            "/readyz never named the registry: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        scrape("emostream_consumed_total").unwrap() > consumed,
        "work was in flight"
    );
    assert_eq!(scrape("emostream_schema_registry_reachable"), Some(0.0));
    std::thread::sleep(Duration::from_secs(20).saturating_sub(stopped.elapsed()));
    let (code, body) = http_get(port, "/healthz").unwrap();
    assert_eq!(
        code, 200,
        "a registry outage (20 s, over the 8 s stall timeout) is not a stuck process: {body}"
    );
    assert_eq!(scrape("emostream_labelled_total"), Some(300.0));

    own.resume();
    let labelled = read_until(&topics.output, Duration::from_secs(60), |r| r.len() >= 500);
    assert_eq!(
        labelled.len(),
        500,
        "all labelled once the registry is back"
    );
    let dead = read_until(&topics.dlq, Duration::from_secs(3), |_| false);
    assert!(
        dead.is_empty(),
        "nothing dead-lettered for the outage: {:?}",
        reasons(&dead)
    );
    let events = read_back(&url, &topics.output, "avro", 500);
    let ids = event_ids(&events);
    assert_eq!(ids.iter().filter(|i| i.starts_with("during-")).count(), 200);
    wait_http(port, "/readyz", Duration::from_secs(10), |c, _| c == 200);
    assert!(scrape("emostream_schema_registry_waits_total").unwrap() > 0.0);
}

#[test]
fn an_incompatible_output_schema_is_refused_and_start_up_names_the_subject_and_the_reason() {
    let url = shared_url();
    let topics = Topics::new(1);
    let subject = format!("{}-value", topics.output);
    // The subject already holds an event schema ours cannot read (BACKWARD: ours must read
    // what was written with it; an int id is not a string).
    let (code, body) = rest(
        "PUT",
        &format!("{url}/config/{subject}"),
        Some(r#"{"compatibility":"BACKWARD"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let old = r#"{"type":"record","name":"LabelEvent","namespace":"emostream","fields":[{"name":"id","type":"int"}]}"#;
    let (code, body) = rest(
        "POST",
        &format!("{url}/subjects/{subject}/versions"),
        Some(&serde_json::json!({ "schema": old }).to_string()),
    );
    assert_eq!(code, 200, "{body}");

    let env = framed_env(&topics, &url, "avro", 1, free_port());
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut d = DaemonBuilder::new(&env).log(log.path()).spawn();
    let status = wait_exit(&mut d, Duration::from_secs(90)).expect("start-up must stop");
    assert!(!status.success());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains(&subject), "names the subject: {text}");
    assert!(text.contains("incompatible"), "names the refusal: {text}");
    // The registry's own reason (here: the id field's type), not only its status.
    let reason = text.split("HTTP 409: ").nth(1).unwrap_or_default();
    assert!(
        reason.contains("/fields/1"),
        "the registry's reason: {text}"
    );
    // Nothing was registered under the subject.
    let (_, versions) = rest("GET", &format!("{url}/subjects/{subject}/versions"), None);
    assert_eq!(versions.trim(), "[1]", "{versions}");
}
