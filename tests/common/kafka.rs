//! Test support for the real local broker (scripts/kafka.sh): brokers (the shared one or a
//! private one), topics, producing, reading a topic to the end, offsets and headers. The daemon
//! process is in `daemon`, HTTP in `http`.
#![allow(dead_code)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

thread_local! {
    /// A test that runs its own broker points this thread's helpers at it.
    static BROKERS: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The broker the helpers talk to: this thread's own (see [`use_brokers`]), else the shared one.
pub fn brokers() -> String {
    BROKERS
        .with(|b| b.borrow().clone())
        .or_else(|| std::env::var("EMOSTREAM_TEST_BROKERS").ok())
        .unwrap_or_else(|| "127.0.0.1:19092".into())
}

/// Points this thread's helpers (topics, producing, reading, `daemon::daemon_env`) at `brokers`.
pub fn use_brokers(brokers: &str) {
    BROKERS.with(|b| *b.borrow_mut() = Some(brokers.to_string()));
}

/// A broker of the test's own (scripts/kafka.sh on another port, its data in a temporary
/// directory), for tests that stop or break a broker: the shared one is never touched.
/// Stopped when dropped.
pub struct PrivateBroker {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Prepares the broker's directory (jars are shared with the main broker's cache).
    pub fn new(port: u16) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let libs = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/kafka/libs");
        std::os::unix::fs::symlink(&libs, dir.path().join("libs")).unwrap();
        PrivateBroker { port, dir }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, action: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let out = Command::new(script)
            .arg(action)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_DIR", self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kafka.sh {action} on port {}: {}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it (formatting storage the first time) and waits until it accepts connections.
    pub fn start(&self) {
        self.script("start");
    }

    /// Stops it gracefully and waits; its data stays for the next start.
    pub fn stop(&self) {
        self.script("stop");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.script("stop");
    }
}

/// Headers built from raw bytes: keys need not be UTF-8 (rust-rdkafka's own builder takes
/// only `&str` keys, and a real producer in another language can send anything).
pub fn raw_headers(pairs: &[(&[u8], Option<&[u8]>)]) -> OwnedHeaders {
    use rdkafka::bindings as rd;
    let h = OwnedHeaders::new();
    let ptr =
        h.as_borrowed() as *const rdkafka::message::BorrowedHeaders as *mut rd::rd_kafka_headers_t;
    for (k, v) in pairs {
        let (vp, vl) = v.map_or((std::ptr::null(), 0), |v| {
            (v.as_ptr() as *const _, v.len() as isize)
        });
        unsafe { rd::rd_kafka_header_add(ptr, k.as_ptr() as *const _, k.len() as isize, vp, vl) };
    }
    h
}

/// Headers as (key, value) byte pairs, read without rust-rdkafka's UTF-8 unwrap.
pub fn header_pairs(h: &rdkafka::message::BorrowedHeaders) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    use rdkafka::bindings as rd;
    let ptr = h as *const rdkafka::message::BorrowedHeaders as *const rd::rd_kafka_headers_t;
    let n = unsafe { rd::rd_kafka_header_cnt(ptr) };
    let mut out = Vec::new();
    for idx in 0..n {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
        unsafe { rd::rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size) };
        let key = unsafe { std::ffi::CStr::from_ptr(name) }
            .to_bytes()
            .to_vec();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) }.to_vec());
        out.push((key, value));
    }
    out
}

/// Deletes a topic.
pub fn delete_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let res = rt()
        .block_on(admin.delete_topics(
            &[name],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        ))
        .unwrap_or_else(|e| panic!("deleting topic {name}: {e}"));
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("deleting topic {t}: {e}"));
    }
}

/// A name no other test run has used.
pub fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), t % 1_000_000_000_000)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates topics (partitions, extra topic configs); panics with a hint if no broker answers.
pub fn create_topic(name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res = rt().block_on(admin.create_topics(
        [&t],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
    ));
    let res = res.unwrap_or_else(|e| panic!("creating topic {name} on {} failed: {e} (is the broker running? scripts/kafka.sh start)", brokers()));
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

pub fn producer() -> ThreadedProducer<DefaultProducerContext> {
    producer_with(&[])
}

/// A producer with extra librdkafka properties (e.g. a larger message.max.bytes).
pub fn producer_with(props: &[(&str, &str)]) -> ThreadedProducer<DefaultProducerContext> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true");
    for (k, v) in props {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

/// (key, payload, headers) of a record to produce.
pub type Rec = (Option<String>, Vec<u8>, Option<OwnedHeaders>);

/// Produces records and waits until all are acknowledged.
pub fn produce(topic: &str, records: &[Rec]) {
    send_all(&producer(), topic, records);
}

/// Produces records with an existing producer and waits until all are acknowledged. A loader
/// that sends many small chunks reuses one producer: each new idempotent producer costs a
/// connection and a producer-id round trip before its first record.
pub fn send_all(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, records: &[Rec]) {
    for (k, v, h) in records {
        let mut r = BaseRecord::<String, Vec<u8>>::to(topic).payload(v);
        if let Some(k) = k {
            r = r.key(k);
        }
        if let Some(h) = h {
            r = r.headers(h.clone());
        }
        let mut r = r;
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Hands one record to the producer (waiting while its queue is full), without flushing.
pub fn send_all_no_flush(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, rec: &Rec) {
    let (k, v, h) = rec;
    let mut r = BaseRecord::<String, Vec<u8>>::to(topic).payload(v);
    if let Some(k) = k {
        r = r.key(k);
    }
    if let Some(h) = h {
        r = r.headers(h.clone());
    }
    loop {
        match p.send(r) {
            Ok(()) => return,
            Err((_, back)) => {
                r = back;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// `payload` is empty for a null payload (tombstone) too; this tells them apart.
    pub null_payload: bool,
    /// Keys and values read as bytes, shown lossily as text.
    pub headers: HashMap<String, String>,
    /// The headers exactly as they are on the topic.
    pub raw_headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Reads `topic` from the beginning until `done(&records)` or `timeout`. Records of open or
/// aborted transactions are not seen (librdkafka's default `read_committed`).
pub fn read_until(topic: &str, timeout: Duration, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    read_until_with(topic, timeout, &[], done)
}

/// [`read_until`] with extra consumer properties (e.g. `isolation.level`).
pub fn read_until_with(
    topic: &str,
    timeout: Duration,
    props: &[(&str, &str)],
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in props {
        cfg.set(*k, *v);
    }
    let c: BaseConsumer = cfg.create().unwrap();
    // Every partition assigned from the start: no group join to wait for on each read.
    let meta = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let mut tpl = TopicPartitionList::new();
    for p in meta.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    assert!(tpl.count() > 0, "topic {topic} has no partitions");
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + timeout;
    // `done` may be costly (it sees every record so far): ask it at most every 300 ms, and
    // whenever the topic goes quiet, not after every message.
    let mut checked = Instant::now() - Duration::from_secs(1);
    loop {
        if Instant::now() >= end {
            break;
        }
        let msg = c.poll(Duration::from_millis(200));
        if (msg.is_none() || checked.elapsed() >= Duration::from_millis(300)) && {
            checked = Instant::now();
            done(&out)
        } {
            break;
        }
        if let Some(Ok(m)) = msg {
            let raw_headers = m.headers().map(header_pairs).unwrap_or_default();
            let headers = raw_headers
                .iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned(),
                    )
                })
                .collect();
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                null_payload: m.payload().is_none(),
                headers,
                raw_headers,
            });
        }
    }
    out
}

/// Committed offset per partition for a group (-1 when none), as committed now: offsets sent in
/// a transaction still open do not count and are not waited for. (librdkafka's default
/// read_committed consumer asks the broker for stable offsets, and the broker keeps answering
/// "unstable" while the group has an open transaction — minutes, for a test whose daemon keeps
/// aborting or was killed inside one; that timed out here under CI load.)
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let mut tries = 0;
    let got = loop {
        // A busy broker (two test binaries, each with daemons) may be slow to find the group's
        // coordinator: a few tries before calling it a failure.
        match c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(got) => break got,
            Err(e) if tries < 5 => {
                eprintln!("committed offsets of {group}: {e}; trying again");
                tries += 1;
            }
            Err(e) => panic!("committed offsets of {group} on {topic}: {e}"),
        }
    };
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// End offsets (high watermarks) per partition.
pub fn end_offsets(topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// A daemon test's topics (input, output, dead-letter) and the consumer group its daemons join.
#[derive(Debug, Clone)]
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
}

impl Topics {
    /// Names no other test run has used, for topics not created yet.
    pub fn unique() -> Topics {
        Topics {
            input: unique("in"),
            output: unique("out"),
            dlq: unique("dlq"),
            group: unique("group"),
        }
    }

    /// Fresh topics, created: input and output with `partitions` each, dead-letter with one.
    pub fn new(partitions: i32) -> Topics {
        Topics::spec(partitions).create()
    }

    /// Fresh topics to create: input and output with `partitions` each, dead-letter with one,
    /// no topic configs; change that, then [`TopicsSpec::create`].
    pub fn spec(partitions: i32) -> TopicsSpec {
        TopicsSpec {
            names: Topics::unique(),
            input: (partitions, Vec::new()),
            output: (partitions, Vec::new()),
            dlq: (1, Vec::new()),
        }
    }
}

/// Topics to create: partitions and topic configs of each (see [`Topics::spec`]).
pub struct TopicsSpec {
    names: Topics,
    input: (i32, Vec<(String, String)>),
    output: (i32, Vec<(String, String)>),
    dlq: (i32, Vec<(String, String)>),
}

fn owned(configs: &[(&str, &str)]) -> Vec<(String, String)> {
    configs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl TopicsSpec {
    /// The output topic's partitions (the input's by default).
    pub fn output_partitions(mut self, partitions: i32) -> TopicsSpec {
        self.output.0 = partitions;
        self
    }

    pub fn input_config(mut self, configs: &[(&str, &str)]) -> TopicsSpec {
        self.input.1 = owned(configs);
        self
    }

    pub fn output_config(mut self, configs: &[(&str, &str)]) -> TopicsSpec {
        self.output.1 = owned(configs);
        self
    }

    pub fn dlq_config(mut self, configs: &[(&str, &str)]) -> TopicsSpec {
        self.dlq.1 = owned(configs);
        self
    }

    /// These names instead of unique ones (e.g. on a private broker of the test's own).
    pub fn named(mut self, input: &str, output: &str, dlq: &str, group: &str) -> TopicsSpec {
        self.names = Topics {
            input: input.into(),
            output: output.into(),
            dlq: dlq.into(),
            group: group.into(),
        };
        self
    }

    /// Creates input, output and dead-letter topics, in that order.
    pub fn create(self) -> Topics {
        let t = self.names;
        for (name, (partitions, configs)) in [
            (&t.input, &self.input),
            (&t.output, &self.output),
            (&t.dlq, &self.dlq),
        ] {
            let configs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            create_topic(name, *partitions, &configs);
        }
        t
    }
}

/// Label events in `records`: checks that per source partition, in offset order, the model
/// version only moves forward through `order` (oldest first) — a hot swap never labels a later
/// message with the older model — and returns the versions seen. A version not in `order` fails.
pub fn versions_only_move_forward(
    records: &[Record],
    order: &[&str],
) -> std::collections::HashSet<String> {
    let mut by_partition: std::collections::BTreeMap<i64, Vec<(i64, usize)>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for r in records {
        let e: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        let v = e["model"]["version"].as_str().unwrap();
        let rank = order
            .iter()
            .position(|o| *o == v)
            .unwrap_or_else(|| panic!("event labelled by unexpected version {v}"));
        seen.insert(v.to_string());
        by_partition
            .entry(e["source"]["partition"].as_i64().unwrap())
            .or_default()
            .push((e["source"]["offset"].as_i64().unwrap(), rank));
    }
    for (p, mut evs) in by_partition {
        evs.sort();
        for w in evs.windows(2) {
            assert!(
                w[0].1 <= w[1].1,
                "partition {p}: offset {} labelled by a newer model than offset {}",
                w[0].0,
                w[1].0
            );
        }
    }
    seen
}
