//! Test support for the real local broker (scripts/kafka.sh): topics, producing, reading a
//! topic to the end, committed offsets, and running the daemon binary.
#![allow(dead_code)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn brokers() -> String {
    std::env::var("EMOSTREAM_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
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
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
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

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until `done(&records)` or `timeout`.
pub fn read_until(topic: &str, timeout: Duration, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
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
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for x in h.iter() {
                    headers.insert(
                        x.key.to_string(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
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
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
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
