//! Exactly-once delivery on the real broker with the shipped model: one script — 5,000
//! comments, a kill -9 mid-stream and a restart, then a rebalance to three replicas under load —
//! run once with `kafka.delivery = "exactly_once"` (a read_committed reader must see every input
//! id exactly once) and once at-least-once (the same script must show duplicates there, so the
//! first half of the test can fail).

mod common;

use common::daemon::{daemon_env, sigterm, wait_exit, DaemonBuilder};
use common::http::{free_port, http_get};
use common::kafka::{
    brokers, committed, end_offsets, producer, producer_with, read_until, read_until_with,
    send_all, use_brokers, Rec, Record, Topics,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn event_id(r: &Record) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn comments(range: std::ops::Range<usize>) -> Vec<Rec> {
    let texts = common::texts("test", 2000);
    range
        .map(|i| {
            (
                Some(format!("k{}", i % 60)),
                serde_json::json!({"id": format!("c{i}"), "text": texts[i % texts.len()]})
                    .to_string()
                    .into_bytes(),
                None,
            )
        })
        .collect()
}

fn metric(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .map(|(_, page)| {
            page.lines()
                .filter_map(|l| l.strip_prefix(name))
                .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
}

/// Reads `topic` from the beginning with `isolation` until nothing new came for 3 s (offsets
/// cannot tell the end: transaction markers take offsets too, and an open transaction holds
/// a read_committed reader back).
fn read_settled(topic: &str, isolation: &str) -> Vec<Record> {
    let last = std::cell::Cell::new((0usize, Instant::now()));
    read_until_with(
        topic,
        Duration::from_secs(120),
        &[("isolation.level", isolation)],
        |r| {
            let (n, at) = last.get();
            if r.len() != n {
                last.set((r.len(), Instant::now()));
                return false;
            }
            at.elapsed() > Duration::from_secs(3)
        },
    )
}

/// Sends `kill -9` to `pid` — exactly-once: only while its transaction holds records. The
/// replica is frozen (SIGSTOP) first and the output's last stable offsets compared with its
/// high watermarks: with 100 ms-to-1 s transactions committing in milliseconds, a kill sent
/// on an older reading could land just after a commit (seen in CI: 0 records in flight).
/// Whether it was sent.
fn kill_with_work_in_flight(pid: &str, delivery: &str, output: &str) -> bool {
    let signal = |s: &str| {
        std::process::Command::new("kill")
            .args([s, pid])
            .status()
            .is_ok_and(|st| st.success())
    };
    if delivery != "exactly_once" {
        return signal("-KILL");
    }
    if !signal("-STOP") {
        return false;
    }
    // Requests already on the wire (a commit) finish at the broker meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    if open_transaction(output, PARTITIONS) {
        return signal("-KILL");
    }
    signal("-CONT");
    false
}

/// Some partition of `topic` holds records of an open transaction: its last stable offset
/// (a read_committed reader's end) is below its high watermark.
fn open_transaction(topic: &str, partitions: i32) -> bool {
    let ends = |isolation: &str| -> Vec<i64> {
        let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::kafka::brokers())
            .set("group.id", common::kafka::unique("watermarks"))
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        (0..partitions)
            .map(|p| {
                rdkafka::consumer::Consumer::fetch_watermarks(&c, topic, p, Duration::from_secs(10))
                    .map_or(0, |(_, high)| high)
            })
            .collect()
    };
    let (high, stable) = (ends("read_uncommitted"), ends("read_committed"));
    high.iter().zip(&stable).any(|(h, s)| s < h)
}

/// What a read_committed reader saw once the group had committed everything.
struct Seen {
    events: usize,
    /// How many times each id was seen.
    counts: HashMap<String, usize>,
    /// Outcomes the killed replica had produced but not committed at the kill.
    uncommitted_at_kill: usize,
}

const N: usize = 5000;
const PARTITIONS: i32 = 6;

fn script(delivery: &str) -> Seen {
    let model = common::shipped_model_dir();
    let topics = Topics::new(PARTITIONS);
    // Small record batches and small fetches (below) interleave the partitions in what a
    // replica has in flight, so whichever partitions a rebalance revokes have work in flight.
    let loader = producer_with(&[("batch.num.messages", "25")]);
    send_all(&loader, &topics.input, &comments(0..N / 2));

    let tmp = tempfile::tempdir().unwrap();
    // A short group session: the restarted replica need not wait 45 s for the coordinator to
    // give up on the killed one.
    let cfg = tmp.path().join("session.toml");
    std::fs::write(
        &cfg,
        "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\"fetch.message.max.bytes\" = \"4096\"\n",
    )
    .unwrap();
    let replica = |name: &str, port: u16| {
        let mut env = daemon_env(&topics, &model);
        env.extend([
            ("EMOSTREAM__KAFKA__DELIVERY".into(), delivery.into()),
            // A transaction a second; at-least-once commits offsets every 5 s, so the kill
            // below (sent once 50+ outcomes are past the committed offsets) cannot race a
            // commit that settles them: with 1 s commits it sometimes did, and the run then
            // showed no repeats at all.
            (
                "EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS".into(),
                if delivery == "exactly_once" {
                    "1000"
                } else {
                    "5000"
                }
                .into(),
            ),
            // Stable per replica: the restart fences the killed run's open transaction.
            (
                "EMOSTREAM__KAFKA__TRANSACTIONAL_ID".into(),
                format!("{}-{name}", topics.group),
            ),
            ("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")),
            ("EMOSTREAM__BATCHING__INFERENCE_WORKERS".into(), "1".into()),
        ]);
        DaemonBuilder::new(&env).config(&cfg).spawn()
    };

    // 1. Mid-stream kill -9, once 800 outcomes are on the topic (committed or not) and at
    // least 50 of them are beyond the group's committed offsets (one outcome per input before
    // the kill). The kill is sent from the check itself: a commit a moment later would settle
    // them, and outcomes come in bursts of a batch.
    let mut a = replica("a", free_port());
    let pid = a.id().to_string();
    let early = read_until_with(
        &topics.output,
        Duration::from_secs(120),
        &[("isolation.level", "read_uncommitted")],
        |r| {
            r.len() >= 800 && {
                let done: i64 = committed(&topics.group, &topics.input, PARTITIONS)
                    .iter()
                    .map(|o| (*o).max(0))
                    .sum();
                r.len() as i64 >= done + 50
                    && kill_with_work_in_flight(&pid, delivery, &topics.output)
            }
        },
    );
    assert!(
        early.len() >= 800,
        "{delivery}: only {} events before the kill",
        early.len()
    );
    a.kill().unwrap();
    a.wait().unwrap();
    // What was in flight at the kill: outcomes on the topic beyond what the group committed
    // (at-least-once), or in a transaction that never committed (exactly-once).
    let committed_inputs: i64 = committed(&topics.group, &topics.input, PARTITIONS)
        .iter()
        .map(|o| (*o).max(0))
        .sum();
    let visible = |isolation: &str| read_settled(&topics.output, isolation).len();
    let uncommitted_at_kill = match delivery {
        "exactly_once" => visible("read_uncommitted") - visible("read_committed"),
        _ => visible("read_uncommitted") - committed_inputs as usize,
    };

    // 2. Restart; once it is labelling its backlog again, two more replicas join while the
    // second half streams in.
    let before = visible("read_uncommitted");
    let port_a = free_port();
    let a = replica("a", port_a);
    let feeder = {
        let input = topics.input.clone();
        let brokers = brokers();
        std::thread::spawn(move || {
            use_brokers(&brokers);
            let p = producer_with(&[("batch.num.messages", "25")]);
            for chunk in comments(N / 2..N).chunks(50) {
                send_all(&p, &input, chunk);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let busy = read_until_with(
        &topics.output,
        Duration::from_secs(120),
        &[("isolation.level", "read_uncommitted")],
        |r| r.len() >= before + 300,
    );
    assert!(
        busy.len() >= before + 300,
        "{delivery}: the restarted replica labels again"
    );
    let backlog: i64 = end_offsets(&topics.input, PARTITIONS).iter().sum::<i64>()
        - committed(&topics.group, &topics.input, PARTITIONS)
            .iter()
            .map(|o| (*o).max(0))
            .sum::<i64>();
    assert!(
        backlog >= 500,
        "{delivery}: the replicas join under load (backlog {backlog})"
    );
    let (port_b, port_c) = (free_port(), free_port());
    let b = replica("b", port_b);
    let c = replica("c", port_c);
    feeder.join().unwrap();

    // 3. Everything labelled and committed.
    let end = Instant::now() + Duration::from_secs(400);
    while committed(&topics.group, &topics.input, PARTITIONS)
        != end_offsets(&topics.input, PARTITIONS)
    {
        assert!(
            Instant::now() < end,
            "{delivery}: the group did not commit everything"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let joined = [port_b, port_c]
        .iter()
        .map(|p| metric(*p, "emostream_consumed_total"))
        .collect::<Vec<_>>();
    assert!(
        joined.iter().all(|n| *n > 0.0),
        "{delivery}: both joining replicas took partitions ({joined:?})"
    );
    // At-least-once, the revoke waits for the revoked partitions' messages in flight.
    // Exactly-once, it drains everything in flight into the transaction it commits, and is
    // mostly served at the poll after a periodic commit's drain, so it seldom finds any.
    assert!(
        delivery == "exactly_once" || metric(port_a, "emostream_revoked_in_flight_total") >= 1.0,
        "{delivery}: a revoke hit messages in flight"
    );
    for mut d in [a, b, c] {
        sigterm(&d);
        assert!(wait_exit(&mut d, Duration::from_secs(40))
            .expect("replica exits")
            .success());
    }
    let all = read_settled(&topics.output, "read_committed");
    let mut counts = HashMap::new();
    for r in &all {
        *counts.entry(event_id(r)).or_insert(0) += 1;
    }
    assert!(read_until(&topics.dlq, Duration::from_secs(2), |_| false).is_empty());
    Seen {
        events: all.len(),
        counts,
        uncommitted_at_kill,
    }
}

#[test]
fn exactly_once_sees_every_id_once_through_kill_restart_and_rebalance_where_at_least_once_repeats()
{
    let eos = script("exactly_once");
    let missing: Vec<usize> = (0..N)
        .filter(|i| !eos.counts.contains_key(&format!("c{i}")))
        .collect();
    let duplicated = eos.counts.values().filter(|n| **n > 1).count();
    eprintln!(
        "exactly_once: {} events for {N} ids, {duplicated} duplicated, {} missing; {} uncommitted outcomes at the kill",
        eos.events,
        missing.len(),
        eos.uncommitted_at_kill
    );
    assert!(
        eos.uncommitted_at_kill > 0,
        "work was in flight (in an open transaction) at the kill"
    );
    assert!(
        missing.is_empty(),
        "missing ids: {:?}",
        &missing[..missing.len().min(10)]
    );
    assert_eq!(duplicated, 0, "a read_committed reader saw duplicates");
    assert_eq!(eos.events, N);

    let alo = script("at_least_once");
    let duplicated = alo.counts.values().filter(|n| **n > 1).count();
    eprintln!(
        "at_least_once: {} events for {} ids, {duplicated} duplicated; {} uncommitted outcomes at the kill",
        alo.events,
        alo.counts.len(),
        alo.uncommitted_at_kill
    );
    assert_eq!(alo.counts.len(), N, "at-least-once loses nothing either");
    assert!(
        duplicated > 0 && alo.events > N,
        "the same script repeats outcomes at-least-once (else it does not test what exactly-once removes)"
    );
}

/// Aborts mid-stream (every third transaction that holds records, a test-build fault hook)
/// throw their records away and rewind every partition to its committed offset: the stream is
/// labelled again from there, and a read_committed reader still sees each id exactly once.
#[test]
fn aborted_transactions_rewind_and_relabel_so_each_id_is_seen_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::new(3);
    let n = 3000;
    let port = free_port();
    let mut env = daemon_env(&topics, &model);
    env.extend([
        ("EMOSTREAM__KAFKA__DELIVERY".into(), "exactly_once".into()),
        (
            "EMOSTREAM__KAFKA__TRANSACTIONAL_ID".into(),
            format!("{}-a", topics.group),
        ),
        // Small transactions, so a 3,000-comment stream has many.
        (
            "EMOSTREAM__KAFKA__TRANSACTION_MAX_MESSAGES".into(),
            "200".into(),
        ),
        ("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")),
        ("EMOSTREAM_FAULT_ABORT_EVERY".into(), "3".into()),
    ]);
    let mut d = DaemonBuilder::new(&env).spawn();
    let loader = producer();
    for chunk in comments(0..n).chunks(250) {
        send_all(&loader, &topics.input, chunk);
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = Instant::now() + Duration::from_secs(180);
    while committed(&topics.group, &topics.input, 3) != end_offsets(&topics.input, 3) {
        assert!(Instant::now() < end, "the group did not commit everything");
        assert!(d.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(300));
    }
    let aborted = metric(port, "emostream_transactions_total{result=\"aborted\"}");
    let rewinds = metric(port, "emostream_transaction_rewinds_total");
    sigterm(&d);
    assert!(wait_exit(&mut d, Duration::from_secs(40))
        .expect("exits")
        .success());
    let all = read_settled(&topics.output, "read_committed");
    let uncommitted = read_settled(&topics.output, "read_uncommitted");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &all {
        *counts.entry(event_id(r)).or_insert(0) += 1;
    }
    eprintln!(
        "{aborted} aborted transactions, {rewinds} rewinds; {} records written, {} committed",
        uncommitted.len(),
        all.len()
    );
    assert!(
        aborted >= 2.0 && rewinds >= 2.0,
        "aborts happened ({aborted}, {rewinds} rewinds)"
    );
    assert!(
        uncommitted.len() > all.len(),
        "aborted records were written, then thrown away"
    );
    assert_eq!(counts.len(), n, "every id once");
    assert!(counts.values().all(|c| *c == 1), "no id twice");
    assert_eq!(all.len(), n);
}

/// An exactly-once daemon on `topics` with the tiny model, its admin server on `port`.
fn exactly_once_env(topics: &Topics, model: &std::path::Path, port: u16) -> Vec<(String, String)> {
    let mut env = daemon_env(topics, model);
    env.extend([
        ("EMOSTREAM__KAFKA__DELIVERY".into(), "exactly_once".into()),
        (
            "EMOSTREAM__KAFKA__TRANSACTIONAL_ID".into(),
            format!("{}-a", topics.group),
        ),
        ("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")),
    ]);
    env
}

fn wait_all_committed(
    group: &str,
    topic: &str,
    partitions: i32,
    within: Duration,
    d: &mut common::daemon::Daemon,
) -> Duration {
    let started = Instant::now();
    while committed(group, topic, partitions) != end_offsets(topic, partitions) {
        assert!(
            started.elapsed() < within,
            "the group did not commit everything in {within:?}"
        );
        assert!(d.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(300));
    }
    started.elapsed()
}

/// Issue 25: a dead letter larger than the dead-letter topic's `max.message.bytes` used to be
/// taken by the producer, refused by the broker, and abort every transaction it joined (0 of
/// 300 committed in 40 s, an abort a second). Now the topic's limit is read at start-up and
/// the dead letter cut to fit before it is sent: 299 events and 1 cut dead letter commit, with
/// no abort.
#[test]
fn a_dead_letter_over_the_topics_size_limit_is_cut_to_fit_and_never_aborts_a_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::spec(3)
        .dlq_config(&[("max.message.bytes", "2000")])
        .create();
    let port = free_port();
    let mut d = DaemonBuilder::new(&exactly_once_env(&topics, &model, port)).spawn();
    let mut recs = comments(0..299);
    // Not JSON: a dead letter carrying its 5 KB payload.
    recs.insert(150, (Some("k-bad".into()), vec![b'x'; 5000], None));
    send_all(&producer(), &topics.input, &recs);
    let took = wait_all_committed(
        &topics.group,
        &topics.input,
        3,
        Duration::from_secs(60),
        &mut d,
    );
    let aborted = metric(port, "emostream_transactions_total{result=\"aborted\"}");
    let (_, health) = http_get(port, "/healthz").expect("healthz answers");
    sigterm(&d);
    wait_exit(&mut d, Duration::from_secs(40));
    let events = read_settled(&topics.output, "read_committed");
    let dead = read_settled(&topics.dlq, "read_committed");
    eprintln!(
        "committed everything in {took:?}; {aborted} aborts; {} events, {} dead letters",
        events.len(),
        dead.len()
    );
    assert_eq!(events.len(), 299, "every good comment labelled once");
    assert_eq!(dead.len(), 1, "the bad one dead-lettered once");
    let h = |k: &str| {
        dead[0]
            .headers
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        h("emostream.payload_truncated").as_deref(),
        Some("true"),
        "cut: {:?}",
        dead[0].headers
    );
    assert_eq!(h("emostream.original_bytes").as_deref(), Some("5000"));
    assert!(
        !dead[0].payload.is_empty() && dead[0].payload.len() < 2000,
        "the cut keeps what fits: {} bytes",
        dead[0].payload.len()
    );
    assert_eq!(
        aborted, 0.0,
        "the record was made to fit before it was sent"
    );
    assert!(health.contains("\"healthy\":true"), "{health}");
}

/// Issue 25: with the dead-letter topic missing every transaction holding a dead letter
/// aborts; an empty settle between aborts used to reset the abort count, so /healthz stayed
/// 200 with nothing committed. Health now measures committed progress: 503 naming the aborts
/// once nothing commits for `health.stall_timeout_ms`; once the topic exists, everything
/// commits and health is back to 200.
#[test]
fn transactions_that_keep_aborting_fail_health_by_time_without_committed_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::unique();
    common::kafka::create_topic(&topics.input, 2, &[]);
    common::kafka::create_topic(&topics.output, 2, &[]);
    let port = free_port();
    let mut env = exactly_once_env(&topics, &model, port);
    env.extend([
        ("EMOSTREAM__HEALTH__STALL_TIMEOUT_MS".into(), "3000".into()),
        ("EMOSTREAM__KAFKA__PRODUCE_TIMEOUT_MS".into(), "2000".into()),
        (
            "EMOSTREAM__KAFKA__TRANSACTION_TIMEOUT_MS".into(),
            "10000".into(),
        ),
    ]);
    let mut d = DaemonBuilder::new(&env).spawn();
    let mut recs = comments(0..50);
    recs.insert(25, (None, b"not json".to_vec(), None));
    send_all(&producer(), &topics.input, &recs);
    let started = Instant::now();
    let body = common::http::wait_http(port, "/healthz", Duration::from_secs(90), |code, _| {
        code == 503
    });
    eprintln!("/healthz 503 after {:?}: {body}", started.elapsed());
    assert!(body.contains("no committed progress"), "{body}");
    assert_ne!(
        committed(&topics.group, &topics.input, 2),
        end_offsets(&topics.input, 2),
        "the dead letter's partition has not committed"
    );
    common::kafka::create_topic(&topics.dlq, 1, &[]);
    wait_all_committed(
        &topics.group,
        &topics.input,
        2,
        Duration::from_secs(90),
        &mut d,
    );
    common::http::wait_http(port, "/healthz", Duration::from_secs(10), |code, _| {
        code == 200
    });
    sigterm(&d);
    wait_exit(&mut d, Duration::from_secs(40));
    assert_eq!(read_settled(&topics.output, "read_committed").len(), 50);
    assert_eq!(read_settled(&topics.dlq, "read_committed").len(), 1);
}

/// Issue 25: a transaction commit that keeps failing with a retriable error (a test-build hook
/// fails it for 8 s) used to leave both probes green. Now /readyz is 503 naming the call while
/// it retries, /healthz 503 once nothing committed for `health.stall_timeout_ms` with work
/// consumed, and both recover when the commit goes through — nothing lost or repeated.
#[test]
fn a_commit_that_keeps_failing_shows_in_readiness_then_health_and_both_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::new(2);
    let port = free_port();
    let mut env = exactly_once_env(&topics, &model, port);
    env.extend([
        ("EMOSTREAM__HEALTH__STALL_TIMEOUT_MS".into(), "3000".into()),
        ("EMOSTREAM__KAFKA__PRODUCE_TIMEOUT_MS".into(), "2000".into()),
        ("EMOSTREAM_FAULT_COMMIT_FAILS_FOR_MS".into(), "9000".into()),
    ]);
    let mut d = DaemonBuilder::new(&env).spawn();
    common::http::wait_http(port, "/readyz", Duration::from_secs(60), |code, _| {
        code == 200
    });
    send_all(&producer(), &topics.input, &comments(0..100));
    let ready = common::http::wait_http(port, "/readyz", Duration::from_secs(30), |code, _| {
        code == 503
    });
    assert!(ready.contains("injected retriable failure"), "{ready}");
    let health = common::http::wait_http(port, "/healthz", Duration::from_secs(30), |code, _| {
        code == 503
    });
    assert!(
        health.contains("no committed progress") && health.contains("injected retriable failure"),
        "{health}"
    );
    wait_all_committed(
        &topics.group,
        &topics.input,
        2,
        Duration::from_secs(60),
        &mut d,
    );
    common::http::wait_http(port, "/readyz", Duration::from_secs(10), |code, _| {
        code == 200
    });
    common::http::wait_http(port, "/healthz", Duration::from_secs(10), |code, _| {
        code == 200
    });
    sigterm(&d);
    wait_exit(&mut d, Duration::from_secs(40));
    let mut ids: Vec<String> = read_settled(&topics.output, "read_committed")
        .iter()
        .map(event_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    assert_eq!(
        read_settled(&topics.output, "read_committed").len(),
        100,
        "none twice"
    );
}

/// Issue 25: a graceful stop in exactly-once mode commits the work it completed. Stopping under
/// a backlog used to abort the last transaction (the message the source held while the
/// pipeline was full was dropped unacknowledged, so the drain never finished), throwing away
/// everything since the last commit on every rolling deploy. Now the final transaction commits
/// up to the first unfinished message of each partition: every record it wrote is committed
/// (a read_uncommitted reader sees nothing a read_committed one does not), and a restart labels
/// the rest exactly once.
#[test]
fn a_graceful_stop_under_a_backlog_commits_the_completed_work_instead_of_aborting_it() {
    let topics = Topics::new(2);
    let n = 10_000;
    send_all(&producer(), &topics.input, &comments(0..n));
    let port = free_port();
    let mut env = exactly_once_env(&topics, &common::shipped_model_dir(), port);
    // One transaction for the whole run until the stop, so the stop decides its fate.
    env.retain(|(k, _)| k != "EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS");
    env.extend([
        (
            "EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS".into(),
            "600000".into(),
        ),
        (
            "EMOSTREAM__KAFKA__TRANSACTION_MAX_MESSAGES".into(),
            "100000".into(),
        ),
        (
            "EMOSTREAM__KAFKA__TRANSACTION_TIMEOUT_MS".into(),
            "900000".into(),
        ),
    ]);
    let mut d = DaemonBuilder::new(&env).spawn();
    let started = Instant::now();
    while metric(port, "emostream_consumed_total") < 3000.0 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the backlog did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&d);
    assert!(wait_exit(&mut d, Duration::from_secs(60))
        .expect("exits")
        .success());
    let committed_events = read_settled(&topics.output, "read_committed").len();
    let written = read_settled(&topics.output, "read_uncommitted").len();
    let offsets: i64 = committed(&topics.group, &topics.input, 2)
        .iter()
        .map(|o| o.max(&0))
        .sum();
    eprintln!("stopped under a backlog: {committed_events} events committed, {written} written, committed offsets sum {offsets}");
    assert!(committed_events > 0, "the completed work was committed");
    assert_eq!(written, committed_events, "nothing written was aborted");
    assert_eq!(
        committed_events as i64, offsets,
        "the offsets commit exactly what was written"
    );
    // A restart labels the rest, each id once.
    let mut d = DaemonBuilder::new(&exactly_once_env(
        &topics,
        &common::shipped_model_dir(),
        port,
    ))
    .spawn();
    wait_all_committed(
        &topics.group,
        &topics.input,
        2,
        Duration::from_secs(120),
        &mut d,
    );
    sigterm(&d);
    wait_exit(&mut d, Duration::from_secs(60));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in read_settled(&topics.output, "read_committed") {
        *counts.entry(event_id(&r)).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), n, "every id");
    assert!(counts.values().all(|c| *c == 1), "each once");
}

/// Issue 25: while a transaction commit retries (a test-build hook fails it for 15 s), the
/// source keeps polling the consumer with its partitions paused, so a retry longer than the
/// consumer's `max.poll.interval.ms` (7 s here) does not cost the group membership — which
/// would fence the late commit and stop the replica. The daemon stays up, nothing is revoked,
/// and each id is committed once.
#[test]
fn a_commit_retrying_past_max_poll_interval_keeps_the_group_membership() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::new(2);
    let port = free_port();
    let log = tmp.path().join("daemon.log");
    let mut env = exactly_once_env(&topics, &model, port);
    env.extend([
        ("EMOSTREAM_FAULT_COMMIT_FAILS_FOR_MS".into(), "15000".into()),
        ("EMOSTREAM__KAFKA__REVOKE_WAIT_MS".into(), "2000".into()),
    ]);
    let cfg = tmp.path().join("poll.toml");
    std::fs::write(
        &cfg,
        "[kafka.consumer_properties]\n\"max.poll.interval.ms\" = \"7000\"\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
    )
    .unwrap();
    let mut d = DaemonBuilder::new(&env).config(&cfg).log(&log).spawn();
    common::http::wait_http(port, "/readyz", Duration::from_secs(60), |code, _| {
        code == 200
    });
    send_all(&producer(), &topics.input, &comments(0..100));
    common::http::wait_http(port, "/readyz", Duration::from_secs(30), |code, _| {
        code == 503
    });
    let took = wait_all_committed(
        &topics.group,
        &topics.input,
        2,
        Duration::from_secs(90),
        &mut d,
    );
    assert!(
        d.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    sigterm(&d);
    assert!(wait_exit(&mut d, Duration::from_secs(40))
        .expect("exits")
        .success());
    let text = std::fs::read_to_string(&log).unwrap();
    let revoked = text.matches("partitions revoked").count();
    eprintln!("committed after {took:?}; revokes in the log: {revoked}");
    // The one revoke is the stop's own (leaving the group).
    assert!(
        revoked <= 1,
        "the member lost its partitions while the commit retried:\n{text}"
    );
    assert!(!text.contains("fatal"), "{text}");
    let events = read_settled(&topics.output, "read_committed");
    let mut ids: Vec<String> = events.iter().map(event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), events.len()), (100, 100), "each id once");
}

/// Issue 25: exactly-once requires a stable transactional id (there is no pid-based default), so
/// a replica restarted after `kill -9` fences its crashed run's open transaction at once: a
/// read_committed reader sees the restarted run's events within seconds, not after the
/// broker's transaction timeout (60 s here; measured before: about a minute with the old
/// `<group>-<host>-<pid>` default).
#[test]
fn a_restart_after_kill_9_fences_the_open_transaction_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::new(1);
    let port = free_port();
    let env = exactly_once_env(&topics, &model, port);
    // The first run never commits: its records stay in an open transaction at the kill.
    let mut first = env.clone();
    first.retain(|(k, _)| k != "EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS");
    first.extend([
        (
            "EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS".into(),
            "600000".into(),
        ),
        (
            "EMOSTREAM__KAFKA__TRANSACTION_MAX_MESSAGES".into(),
            "100000".into(),
        ),
        (
            "EMOSTREAM__KAFKA__TRANSACTION_TIMEOUT_MS".into(),
            "60000".into(),
        ),
    ]);
    // A short group session: the restarted member need not wait 45 s for the group to give up
    // on the killed one (that wait is the consumer group's, not the transaction's).
    let cfg = tmp.path().join("session.toml");
    std::fs::write(
        &cfg,
        "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
    )
    .unwrap();
    let mut d = DaemonBuilder::new(&first).config(&cfg).spawn();
    send_all(&producer(), &topics.input, &comments(0..50));
    // Written, not committed: only a read_uncommitted reader sees them.
    let started = Instant::now();
    while read_settled(&topics.output, "read_uncommitted").len() < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first run wrote nothing"
        );
        assert!(d.try_wait().unwrap().is_none(), "the daemon exited");
    }
    d.kill().unwrap();
    d.wait().unwrap();
    // Restarted with the same transactional id: the open transaction is aborted at start-up.
    let restarted = Instant::now();
    let mut d = DaemonBuilder::new(&env).config(&cfg).spawn();
    send_all(&producer(), &topics.input, &comments(50..60));
    let seen = read_until_with(
        &topics.output,
        Duration::from_secs(45),
        &[("isolation.level", "read_committed")],
        |r| r.len() >= 60,
    );
    let took = restarted.elapsed();
    eprintln!(
        "{} events visible to read_committed {took:?} after the restart",
        seen.len()
    );
    assert_eq!(seen.len(), 60, "everything, once");
    assert!(
        took < Duration::from_secs(20),
        "fenced at once, not after the 60 s transaction timeout: {took:?}"
    );
    sigterm(&d);
    wait_exit(&mut d, Duration::from_secs(40));
}

/// Issue 26: what the tests below share — an exactly-once daemon with 100 ms transactions
/// whose every boundary pauses `pause_ms` with the gate closed (test-build hook
/// `EMOSTREAM_FAULT_SETTLE_PAUSE_MS`: after the offsets are sent and before the commit, or
/// before the abort), so the records labelled meanwhile are held for the next transaction.
fn paused_boundaries_env(
    topics: &Topics,
    model: &std::path::Path,
    port: u16,
    pause_ms: u64,
) -> Vec<(String, String)> {
    let mut env = exactly_once_env(topics, model, port);
    env.extend([
        ("EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS".into(), "100".into()),
        (
            "EMOSTREAM_FAULT_SETTLE_PAUSE_MS".into(),
            pause_ms.to_string(),
        ),
    ]);
    env
}

/// Produces comments `range` in chunks of 25 every 100 ms (about 250/s) on another thread:
/// the stream keeps flowing while a test waits for a boundary.
fn stream(topic: &str, range: std::ops::Range<usize>) -> std::thread::JoinHandle<()> {
    let topic = topic.to_string();
    std::thread::spawn(move || {
        let p = producer();
        for chunk in comments(range).chunks(25) {
            send_all(&p, &topic, chunk);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Waits until `log` holds `needle` at least `times` times (the daemon writes it).
fn wait_log(log: &std::path::Path, needle: &str, times: usize, d: &mut common::daemon::Daemon) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return;
        }
        assert!(Instant::now() < end, "no {needle:?} in the log within 60 s");
        assert!(d.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, and the daemon exits successfully within 40 s.
fn stop_cleanly(d: &mut common::daemon::Daemon) {
    sigterm(d);
    assert!(wait_exit(d, Duration::from_secs(40))
        .expect("exits")
        .success());
}

/// Every id of `0..n` exactly once for a read_committed reader of `topic`; the number of
/// records written in all (read_uncommitted, aborted ones included).
fn assert_each_id_once(topic: &str, n: usize) -> usize {
    let committed = read_settled(topic, "read_committed");
    let written = read_settled(topic, "read_uncommitted").len();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &committed {
        *counts.entry(event_id(r)).or_insert(0) += 1;
    }
    let twice = counts.values().filter(|c| **c > 1).count();
    let missing = (0..n)
        .filter(|i| !counts.contains_key(&format!("c{i}")))
        .count();
    eprintln!(
        "{} records written, {} committed: {missing} ids missing, {twice} seen more than once",
        written,
        committed.len()
    );
    assert_eq!((missing, twice), (0, 0), "each id exactly once");
    assert_eq!(committed.len(), n);
    written
}

/// Issue 26: a replica killed (-9) inside a commit — its offsets sent to the transaction, the
/// commit not made — and, once restarted, killed again while records labelled during a
/// boundary are held for the next transaction: a read_committed reader sees every id exactly
/// once, and the killed transactions' records were written and thrown away (work was in
/// flight at both kills).
#[test]
fn a_kill_9_inside_a_commit_or_while_records_are_held_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::new(3);
    let n = 3000;
    let cfg = tmp.path().join("session.toml");
    std::fs::write(
        &cfg,
        "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
    )
    .unwrap();
    let producing = stream(&topics.input, 0..n);

    // 1. Inside a commit: the third boundary that pauses after sending its offsets.
    let (port, log) = (free_port(), tmp.path().join("first.log"));
    let env = paused_boundaries_env(&topics, &model, port, 1500);
    let mut d = DaemonBuilder::new(&env).config(&cfg).log(&log).spawn();
    wait_log(
        &log,
        "pausing inside the transaction commit (offsets sent)",
        3,
        &mut d,
    );
    d.kill().unwrap();
    d.wait().unwrap();
    let at_first_kill = read_settled(&topics.output, "read_uncommitted").len();

    // 2. While records are held: a boundary pausing 3 s, killed once 20 outcomes wait for it.
    let (port, log) = (free_port(), tmp.path().join("second.log"));
    let env = paused_boundaries_env(&topics, &model, port, 3000);
    let mut d = DaemonBuilder::new(&env).config(&cfg).log(&log).spawn();
    let end = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let held = metric(port, "emostream_transaction_held_outcomes");
        if held >= 20.0 {
            break held;
        }
        assert!(Instant::now() < end, "no outcomes held within 60 s");
        assert!(d.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(50));
    };
    d.kill().unwrap();
    d.wait().unwrap();
    eprintln!("killed inside a commit with {at_first_kill} records written, then with {held} outcomes held");

    // 3. A replica without pauses finishes the stream.
    let port = free_port();
    let mut d = DaemonBuilder::new(&exactly_once_env(&topics, &model, port))
        .config(&cfg)
        .spawn();
    producing.join().unwrap();
    wait_all_committed(
        &topics.group,
        &topics.input,
        3,
        Duration::from_secs(120),
        &mut d,
    );
    stop_cleanly(&mut d);
    let written = assert_each_id_once(&topics.output, n);
    assert!(
        written > n,
        "the killed transactions' records were written and aborted ({written} written)"
    );
}

/// Issue 26: aborts (every third transaction, test hook) decided while the boundary pauses
/// with records held for the next transaction: the held records belong to the rewound
/// partitions, so they are dropped rather than sent, and labelled again after the rewind — a
/// read_committed reader sees every id exactly once.
#[test]
fn an_abort_while_records_are_held_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model_dir(tmp.path());
    let topics = Topics::new(3);
    let n = 2000;
    let port = free_port();
    let mut env = paused_boundaries_env(&topics, &model, port, 300);
    env.push(("EMOSTREAM_FAULT_ABORT_EVERY".into(), "3".into()));
    let mut d = DaemonBuilder::new(&env).spawn();
    let producing = stream(&topics.input, 0..n);
    let mut most_held = 0.0f64;
    while !producing.is_finished() {
        most_held = most_held.max(metric(port, "emostream_transaction_held_outcomes"));
        std::thread::sleep(Duration::from_millis(30));
    }
    producing.join().unwrap();
    wait_all_committed(
        &topics.group,
        &topics.input,
        3,
        Duration::from_secs(120),
        &mut d,
    );
    let aborted = metric(port, "emostream_transactions_total{result=\"aborted\"}");
    let rewinds = metric(port, "emostream_transaction_rewinds_total");
    stop_cleanly(&mut d);
    eprintln!("{aborted} aborts, {rewinds} rewinds, up to {most_held} outcomes held at a boundary");
    assert!(aborted >= 2.0 && rewinds >= 2.0, "aborts happened");
    assert!(most_held > 0.0, "records were held during boundaries");
    let written = assert_each_id_once(&topics.output, n);
    assert!(
        written > n,
        "aborted records were written, then thrown away"
    );
}
