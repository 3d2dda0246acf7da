//! Faults a real cluster has every week, on the real broker and the real model: hostile
//! messages, a deleted output topic with a pause past max.poll.interval.ms while a replica
//! joins, a broker that is down at start-up and one stopped for 45 s mid-stream (on a broker
//! of the test's own), a panicking worker, and an ONNX Runtime failure on one comment.

mod common;

use common::daemon::{daemon_env, sigterm, wait_exit, DaemonBuilder};
use common::http::{free_port, http_get, wait_http};
use common::kafka::{
    committed, create_topic, delete_topic, end_offsets, produce, producer_with, raw_headers,
    read_until, send_all, send_all_no_flush, use_brokers, PrivateBroker, Rec, Record, Topics,
};
use rdkafka::message::OwnedHeaders;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn event_id(r: &Record) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn ids(records: &[Record]) -> HashSet<String> {
    records.iter().map(event_id).collect()
}

fn comment(id: &str, i: usize) -> Vec<u8> {
    let texts = [
        "what a lovely day",
        "I can't believe they did that",
        "thank you so much",
        "this is so sad",
    ];
    serde_json::json!({"id": id, "text": texts[i % texts.len()]})
        .to_string()
        .into_bytes()
}

fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn hostile_messages_reach_the_dead_letter_topic_with_their_reason_and_the_partition_keeps_flowing()
{
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    // The input topic takes messages up to 3 MB; the dead-letter topic keeps the broker's
    // default limit (~1 MiB), below a 1 MiB payload plus headers: the sink must cut to fit.
    let topics = Topics::spec(1)
        .input_config(&[("max.message.bytes", "3000000")])
        .create();
    let huge: Vec<u8> = std::iter::once(b'{')
        .chain(std::iter::repeat_n(b'x', 1_200_000))
        .collect();
    let bad_key = raw_headers(&[(b"trace", Some(b"1")), (b"\xff\xfekey", Some(b"v"))]);
    let big_header = raw_headers(&[(b"blob", Some(&vec![b'h'; 900_000]))]);
    let mut records: Vec<Rec> = Vec::new();
    let mut good = 0;
    let mut push_good = |records: &mut Vec<Rec>| {
        records.push((None, comment(&format!("g{good}"), good), None));
        good += 1;
    };
    for _ in 0..5 {
        push_good(&mut records);
    }
    records.push((Some("huge".into()), huge.clone(), None));
    push_good(&mut records);
    records.push((Some("badkey".into()), comment("bk", 0), Some(bad_key)));
    push_good(&mut records);
    records.push((Some("bigheader".into()), comment("bh", 1), Some(big_header)));
    push_good(&mut records);
    for _ in 0..5 {
        push_good(&mut records);
    }
    let p = producer_with(&[("message.max.bytes", "3000000")]);
    send_all(&p, &topics.input, &records[..7]);
    // A tombstone: a keyed record with a null payload.
    let tomb = rdkafka::producer::BaseRecord::<str, [u8]>::to(&topics.input).key("tomb");
    p.send(tomb).map_err(|(e, _)| e).unwrap();
    send_all(&p, &topics.input, &records[7..]);

    let port = free_port();
    let mut env = daemon_env(&topics, &model);
    env.push(("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")));
    let started = Instant::now();
    let mut daemon = DaemonBuilder::new(&env).spawn();
    let dead = read_until(&topics.dlq, Duration::from_secs(60), |r| r.len() >= 4);
    let out = read_until(&topics.output, Duration::from_secs(60), |r| {
        ids(r).len() >= good
    });
    eprintln!(
        "hostile messages dead-lettered after {:?}",
        started.elapsed()
    );
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is alive");
    let (code, health) = http_get(port, "/healthz").unwrap();
    assert_eq!(code, 200, "{health}");

    let by_key: BTreeMap<String, &Record> = dead
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_deref().unwrap_or(b"")).into_owned(),
                r,
            )
        })
        .collect();
    assert_eq!(dead.len(), 4, "{:?}", by_key.keys());
    let reason = |r: &Record| r.headers["emostream.reason"].clone();

    // The 1.2 MB message: too large; the dead-letter topic refused a 1 MiB record, so it
    // holds a cut payload and says what the original was.
    let h = dead
        .iter()
        .find(|r| r.headers.get("emostream.original_bytes").is_some())
        .expect("the huge message's dead letter");
    assert_eq!(reason(h), "too_large");
    assert_eq!(h.headers["emostream.payload_truncated"], "true");
    assert_eq!(
        h.headers["emostream.original_bytes"],
        huge.len().to_string()
    );
    assert_eq!(
        h.headers["emostream.original_sha256"],
        hex::encode(Sha256::digest(&huge))
    );
    assert!(!h.payload.is_empty() && huge.starts_with(&h.payload));

    let bk = by_key["badkey"];
    assert_eq!(reason(bk), "invalid_headers");
    assert!(
        bk.raw_headers
            .iter()
            .any(|(k, _)| k.as_slice() == b"\xff\xfekey"),
        "the raw key is carried to the dead letter as it came"
    );
    assert_eq!(bk.payload, comment("bk", 0));

    let bh = by_key["bigheader"];
    assert_eq!(reason(bh), "too_large");
    assert!(bh.headers["emostream.detail"].contains("max_header_bytes"));
    assert_eq!(
        bh.headers["emostream.input_headers_dropped_bytes"],
        "900004"
    );

    let t = by_key["tomb"];
    assert_eq!(reason(t), "tombstone");
    assert!(t.null_payload, "a tombstone stays a null payload");

    // The partition kept flowing past each of them.
    let got = ids(&out);
    for i in 0..good {
        assert!(got.contains(&format!("g{i}")), "g{i} labelled");
    }
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(40))
        .expect("exit")
        .success());
    assert_eq!(
        committed(&topics.group, &topics.input, 1),
        end_offsets(&topics.input, 1)
    );
}

#[test]
fn deleted_output_topic_pauses_past_max_poll_interval_while_a_replica_joins_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::spec(4).output_partitions(2).create();
    let replica = |port: u16| {
        let mut env = daemon_env(&topics, &model);
        env.extend([
            ("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")),
            (
                "EMOSTREAM__BACKPRESSURE__MAX_IN_FLIGHT_MESSAGES".into(),
                "64".into(),
            ),
            ("EMOSTREAM__KAFKA__PRODUCE_TIMEOUT_MS".into(), "3000".into()),
            ("EMOSTREAM__KAFKA__REVOKE_WAIT_MS".into(), "2000".into()),
        ]);
        env
    };
    // max.poll.interval.ms of 10 s (session 6 s): a member that stops polling while paused is
    // evicted well within this test. Small fetches interleave the partitions, so the messages
    // in flight span all of them and the join's revoke hits some. Dotted librdkafka keys go
    // through a config file.
    let conf = tmp.path().join("consumer.toml");
    std::fs::write(
        &conf,
        "[kafka.consumer_properties]\n\"max.poll.interval.ms\" = \"10000\"\n\"session.timeout.ms\" = \"6000\"\n\"fetch.message.max.bytes\" = \"4096\"\n",
    )
    .unwrap();
    let first: Vec<Rec> = (0..400)
        .map(|i| {
            (
                Some(format!("k{}", i % 16)),
                comment(&format!("a{i}"), i),
                None,
            )
        })
        .collect();
    produce(&topics.input, &first);
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = DaemonBuilder::new(&replica(port_a)).config(&conf).spawn();
    let before = read_until(&topics.output, Duration::from_secs(60), |r| {
        ids(r).len() >= 400
    });
    assert_eq!(ids(&before).len(), 400);
    wait_http(port_a, "/readyz", Duration::from_secs(30), |c, _| c == 200);

    // The output topic disappears; the stream goes on.
    delete_topic(&topics.output);
    let second: Vec<Rec> = (0..1500)
        .map(|i| {
            (
                Some(format!("k{}", i % 16)),
                comment(&format!("b{i}"), i),
                None,
            )
        })
        .collect();
    produce(&topics.input, &second);
    // The sink waits the fault out: not ready, retrying, paused at its budget.
    let paused_at = Instant::now();
    let body = wait_http(port_a, "/readyz", Duration::from_secs(60), |c, b| {
        c == 503 && b.contains("\"retrying_messages\":") && !b.contains("\"retrying_messages\":0")
    });
    eprintln!("output topic gone: {body}");
    let m = http_get(port_a, "/metrics").unwrap().1;
    assert_eq!(
        metric(&m, "emostream_source_paused"),
        Some(1.0),
        "paused at its budget"
    );
    // Paused past max.poll.interval.ms, then a second member joins the group.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(paused_at.elapsed()));
    let mut b = DaemonBuilder::new(&replica(port_b)).config(&conf).spawn();
    wait_http(port_b, "/readyz", Duration::from_secs(60), |_, body| {
        body.contains("\"partitions_assigned\":true")
    });
    std::thread::sleep(Duration::from_secs(4));
    create_topic(&topics.output, 2, &[]);

    let after = read_until(&topics.output, Duration::from_secs(180), |r| {
        ids(r).len() >= 1500
    });
    let got = ids(&after);
    for i in 0..1500 {
        assert!(
            got.contains(&format!("b{i}")),
            "b{i} labelled after the topic returned"
        );
    }
    assert!(
        read_until(&topics.dlq, Duration::from_secs(2), |_| false).is_empty(),
        "no comment dead-lettered"
    );
    for (name, d, port) in [("first", &mut a, port_a), ("second", &mut b, port_b)] {
        assert!(
            d.try_wait().unwrap().is_none(),
            "{name} replica never exited"
        );
        let r = wait_http(port, "/readyz", Duration::from_secs(60), |c, _| c == 200);
        assert!(r.contains("\"partitions_assigned\":true"), "{name}: {r}");
        let m = http_get(port, "/metrics").unwrap().1;
        assert!(
            !m.contains("MaxPollExceeded"),
            "{name} replica was evicted for not polling: {}",
            m.lines()
                .filter(|l| l.contains("consumer_errors"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let m = http_get(port_a, "/metrics").unwrap().1;
    eprintln!(
        "revoked while in flight: {:?}",
        metric(&m, "emostream_revoked_in_flight_total")
    );
    for d in [&mut a, &mut b] {
        sigterm(d);
        assert!(wait_exit(d, Duration::from_secs(40))
            .expect("exit")
            .success());
    }
    assert_eq!(
        committed(&topics.group, &topics.input, 4),
        end_offsets(&topics.input, 4)
    );
}

#[test]
fn broker_down_at_start_then_stopped_45s_mid_stream_loses_nothing_and_dead_letters_nothing() {
    let broker = PrivateBroker::new(19392);
    broker.start();
    use_brokers(&broker.brokers());
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::spec(3)
        .output_partitions(1)
        .named("comments", "emotions", "emotions-dlq", "emostream")
        .create();
    let early: Vec<Rec> = (0..300)
        .map(|i| {
            (
                Some(format!("k{}", i % 12)),
                comment(&format!("s{i}"), i),
                None,
            )
        })
        .collect();
    produce(&topics.input, &early);
    broker.stop();

    // 1. The daemon starts while the broker is down: alive, not ready.
    let port = free_port();
    let mut env = daemon_env(&topics, &model);
    env.push(("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")));
    let mut daemon = DaemonBuilder::new(&env).spawn();
    let down_since = Instant::now();
    let mut seen_not_ready = false;
    while down_since.elapsed() < Duration::from_secs(20) {
        if let Some((code, _)) = http_get(port, "/readyz") {
            assert_eq!(code, 503, "ready with no broker");
            seen_not_ready = true;
        }
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "exited with the broker down"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(seen_not_ready);
    broker.start();
    wait_http(port, "/readyz", Duration::from_secs(90), |c, _| c == 200);
    let out = read_until(&topics.output, Duration::from_secs(90), |r| {
        ids(r).len() >= 300
    });
    assert_eq!(ids(&out).len(), 300, "all labelled once the broker came up");

    // 2. A stream of ~100/s; the broker stops for 45 s in the middle of it.
    let total = 5000;
    let (brokers, input) = (broker.brokers(), topics.input.clone());
    let stream = std::thread::spawn(move || {
        use_brokers(&brokers);
        // The test's producer rides out the outage too (delivery timeout 5 min).
        let p = producer_with(&[("message.timeout.ms", "300000")]);
        let start = Instant::now();
        for i in 0..total {
            let due = start + Duration::from_millis(10 * i as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let id = format!("m{i}");
            let rec = (
                Some(format!("k{}", i % 12)),
                comment(&id, i),
                None::<OwnedHeaders>,
            );
            send_all_no_flush(&p, &input, &rec);
        }
        rdkafka::producer::Producer::flush(&p, Duration::from_secs(300)).unwrap();
    });
    std::thread::sleep(Duration::from_secs(10));
    let in_flight_before = metric(
        &http_get(port, "/metrics").unwrap().1,
        "emostream_consumed_total",
    );
    broker.stop();
    let stopped = Instant::now();
    let mut saw_503 = false;
    while stopped.elapsed() < Duration::from_secs(45) {
        if let Some((code, _)) = http_get(port, "/readyz") {
            saw_503 |= code == 503;
        }
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "exited during the outage"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(saw_503, "/readyz must say 503 while the broker is down");
    broker.start();
    stream.join().unwrap();
    let all = read_until(&topics.output, Duration::from_secs(240), |r| {
        ids(r).len() >= 300 + total
    });
    let got = ids(&all);
    for i in 0..total {
        assert!(
            got.contains(&format!("m{i}")),
            "m{i} lost across the outage"
        );
    }
    eprintln!(
        "45 s outage: {} events for {} ids ({} duplicates); consumed before the stop: {in_flight_before:?}",
        all.len(),
        got.len(),
        all.len() - got.len()
    );
    assert!(
        read_until(&topics.dlq, Duration::from_secs(3), |_| false).is_empty(),
        "no good comment dead-lettered"
    );
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon never exited"
    );
    wait_http(port, "/readyz", Duration::from_secs(60), |c, _| c == 200);
    // Committed offsets reach the end (the periodic commit gets there within a moment).
    let end = end_offsets(&topics.input, 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&topics.group, &topics.input, 3) != end && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(committed(&topics.group, &topics.input, 3), end);
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(40))
        .expect("exit")
        .success());
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panicking_worker_ends_the_process_within_seconds_and_a_restart_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::spec(2).output_partitions(1).create();
    let n = 1200;
    let records: Vec<Rec> = (0..n)
        .map(|i| {
            (
                Some(format!("k{}", i % 10)),
                comment(&format!("w{i}"), i),
                None,
            )
        })
        .collect();
    produce(&topics.input, &records);
    let mut env = daemon_env(&topics, &model);
    let log = tmp.path().join("daemon.log");
    let mut crashing = env.clone();
    crashing.push(("EMOSTREAM_FAULT_PANIC_AT_BATCH".into(), "5".into()));
    let mut daemon = DaemonBuilder::new(&crashing).log(&log).spawn();
    let started = Instant::now();
    let mut panicked_at = None;
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        if panicked_at.is_none()
            && std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("fault injection")
        {
            panicked_at = Some(Instant::now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the daemon did not exit after the panic"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    let panicked_at = panicked_at.expect("the injected panic happened");
    assert!(
        !status.success(),
        "exit status {status:?} after a worker panic"
    );
    assert!(
        panicked_at.elapsed() < Duration::from_secs(10),
        "exited {:?} after the panic",
        panicked_at.elapsed()
    );
    assert!(
        text.contains("stage inference-"),
        "the fault names the stage: {text}"
    );
    // Work was in flight: the crash left messages to label again.
    let left = committed(&topics.group, &topics.input, 2);
    let end = end_offsets(&topics.input, 2);
    assert!(
        left.iter().zip(&end).any(|(c, e)| c < e),
        "committed {left:?} already at the end {end:?}: nothing was in flight"
    );

    env.push(("EMOSTREAM__ADMIN__BIND".into(), "127.0.0.1:0".into()));
    let mut again = DaemonBuilder::new(&env).spawn();
    let out = read_until(&topics.output, Duration::from_secs(120), |r| {
        ids(r).len() >= n
    });
    let got = ids(&out);
    for i in 0..n {
        assert!(got.contains(&format!("w{i}")), "w{i} lost to the panic");
    }
    sigterm(&again);
    assert!(wait_exit(&mut again, Duration::from_secs(40))
        .expect("exit")
        .success());
    assert_eq!(
        committed(&topics.group, &topics.input, 2),
        end_offsets(&topics.input, 2)
    );
}

#[test]
fn an_onnx_runtime_failure_on_one_comment_dead_letters_that_comment_only() {
    // A real ORT failure: the tokenizer knows one word the embedding table has no row for, so
    // ONNX Runtime's Gather refuses any batch holding it.
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let tok_path = model.join("tokenizer.json");
    let mut tok = tokenizers::Tokenizer::from_file(&tok_path).unwrap();
    tok.add_tokens(&[tokenizers::AddedToken::from("qqfaultqq", false)]);
    tok.save(&tok_path, false).unwrap();
    // Sealed again, as a (faulty) exporter would have written it: the card's digest covers
    // tokenizer.json, and a changed one is refused at load.
    let card = emostream::model::dir::ModelDir::load(&model, false)
        .unwrap()
        .card;
    card.write(&model).unwrap();
    let good: Vec<String> = common::texts("test", 40);
    let mut lines = good.clone();
    lines.insert(17, "well qqfaultqq then".to_string());
    let classify = |lines: &[String]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_emostream"))
            .args(["classify", "--format", "text", "--model"])
            .arg(&model)
            .env("EMOSTREAM__BATCHING__MAX_BATCH_SIZE", "64")
            .env("EMOSTREAM__BATCHING__MAX_WAIT_MS", "500")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.join("\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let rejects: Vec<serde_json::Value> = String::from_utf8(out.stderr)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v.get("reason").is_some())
            .collect();
        (events, rejects)
    };
    let (events, rejects) = classify(&lines);
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0]["reason"], "inference_error");
    assert_eq!(rejects[0]["line"], 18);
    assert!(
        rejects[0]["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("gather")
            || rejects[0]["detail"].as_str().unwrap().contains("out of"),
        "{}",
        rejects[0]
    );
    assert_eq!(events.len(), good.len(), "every other comment labelled");
    // Isolating the failure did not change anyone else's scores.
    let (clean, none) = classify(&good);
    assert!(none.is_empty());
    for (a, b) in events.iter().zip(&clean) {
        assert_eq!(a["scores"], b["scores"]);
    }
}
