//! Test support for the real local broker (scripts/kafka.sh): topics, producing, reading a
//! topic to the end, committed offsets, and running the daemon binary.
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
use std::process::{Child, Command, Stdio};
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

/// Points this thread's helpers (topics, producing, reading, daemon_env) at `brokers`.
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

/// Committed offset per partition for a group (-1 when none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
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

/// Environment for a daemon reading `input` and writing `output`/`dlq` with `model`.
pub fn daemon_env(
    group: &str,
    input: &str,
    output: &str,
    dlq: &str,
    model: &Path,
) -> Vec<(String, String)> {
    vec![
        ("EMOSTREAM__KAFKA__BROKERS".into(), brokers()),
        ("EMOSTREAM__KAFKA__GROUP_ID".into(), group.into()),
        ("EMOSTREAM__KAFKA__INPUT_TOPICS".into(), input.into()),
        ("EMOSTREAM__KAFKA__OUTPUT_TOPIC".into(), output.into()),
        ("EMOSTREAM__KAFKA__DEAD_LETTER_TOPIC".into(), dlq.into()),
        ("EMOSTREAM__KAFKA__COMMIT_INTERVAL_MS".into(), "200".into()),
        ("EMOSTREAM__MODEL__DIR".into(), model.display().to_string()),
        ("EMOSTREAM__ADMIN__BIND".into(), "127.0.0.1:0".into()),
        (
            "EMOSTREAM__LOG__LEVEL".into(),
            "info,ort=warn,librdkafka=warn".into(),
        ),
    ]
}

/// A daemon child process that is killed when dropped, so a failing test leaves no daemon
/// behind (it would go on consuming, and log errors once the broker stops).
pub struct Daemon(pub Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn spawn_daemon(env: &[(String, String)]) -> Daemon {
    spawn_daemon_with(env, None)
}

/// `emostream [--config FILE] run` with the given environment.
pub fn spawn_daemon_with(env: &[(String, String)], config: Option<&Path>) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emostream"));
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    Daemon(
        cmd.arg("run")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting emostream run"),
    )
}

/// `emostream run` with its log (stderr and stdout) written to `log`.
pub fn spawn_daemon_logged(env: &[(String, String)], log: &Path) -> Daemon {
    spawn_daemon_logged_with(env, None, log)
}

/// `emostream [--config FILE] run`, its log (stderr and stdout) written to `log`.
pub fn spawn_daemon_logged_with(
    env: &[(String, String)],
    config: Option<&Path>,
    log: &Path,
) -> Daemon {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emostream"));
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    Daemon(
        cmd.arg("run")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting emostream run"),
    )
}

pub fn sigterm(child: &Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
}

/// Waits for a child to exit, killing it after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    None
}

/// CPU time (user + system, seconds) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // Linux reports in USER_HZ, 100 on every x86-64 kernel.
    ticks / 100.0
}

/// A free localhost port (bound, then released) for a daemon's admin server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one HTTP/1.1 request (closing the connection) to localhost; returns (status, body).
fn http(port: u16, request: &str, timeout: Duration) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// Plain HTTP GET against localhost; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, None)
}

/// HTTP GET against localhost with an optional bearer token; returns (status code, body).
pub fn http_get_with(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n");
    http(port, &req, Duration::from_secs(5))
}

/// Plain HTTP POST of a JSON body against localhost, with an optional bearer token; returns
/// (status code, body). Waits up to 120 s: a swap answers once the candidate is validated.
pub fn http_post(port: u16, path: &str, body: &str, token: Option<&str>) -> Option<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(port, &req, Duration::from_secs(120))
}

/// Polls `GET path` until `ok(status, body)` holds; panics after `timeout`.
pub fn wait_http(
    port: u16,
    path: &str,
    timeout: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> String {
    let end = Instant::now() + timeout;
    loop {
        if let Some((code, body)) = http_get(port, path) {
            if ok(code, &body) {
                return body;
            }
        }
        assert!(
            Instant::now() < end,
            "timed out waiting on http://127.0.0.1:{port}{path}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
