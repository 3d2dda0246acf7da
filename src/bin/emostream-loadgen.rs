//! `emostream-loadgen`: produces GoEmotions comments to the input topic at a set rate and reads
//! the daemon's label events back, reporting end-to-end throughput and latency (input Kafka
//! timestamp → event consumed) with a live summary. Used by the demo and the benchmark.

use anyhow::{Context, Result};
use clap::Parser;
use emostream::model::eval::dataset::{goemotions_dir, Split};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "emostream-loadgen",
    version,
    about = "Load generator and live summary for emostream"
)]
struct Args {
    /// The daemon's config file: its Kafka client settings (security, secret files) are used
    /// here too, so the load generator reaches the same (secured) cluster.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Bootstrap servers (default: kafka.brokers of the config).
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long, default_value = "comments")]
    input_topic: String,
    #[arg(long, default_value = "comment-emotions")]
    output_topic: String,
    /// Also create the input, output and this dead-letter topic (if missing).
    #[arg(long)]
    create_topics: Option<String>,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Comments to produce (cycling through the split).
    #[arg(long, default_value_t = 5427)]
    count: usize,
    /// Messages per second; 0 = as fast as the producer goes.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Split to read comments from.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Give up waiting for events after this many seconds without progress.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Print this many sample events at the end.
    #[arg(long, default_value_t = 3)]
    samples: usize,
    /// Write one line per event read back: seconds since start and end-to-end latency in
    /// seconds (to see when slow events happen).
    #[arg(long)]
    latency_file: Option<std::path::PathBuf>,
    /// The shared Kafka client settings, from `config` and `brokers`.
    #[arg(skip)]
    kafka: ClientConfig,
}

/// The daemon's client builder over its settings (file, environment, secrets).
fn kafka_config(a: &Args) -> Result<ClientConfig> {
    let mut s = emostream::daemon::config::Settings::load(a.config.as_deref())?;
    if let Some(b) = &a.brokers {
        s.set_brokers(b);
    }
    Ok(emostream::daemon::kafka::client::client_config(
        &emostream::daemon::kafka::client::ClientSettings::from_settings(&s),
    ))
}

async fn create_topics(a: &Args, dlq: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = a.kafka.create()?;
    let topics = [
        NewTopic::new(&a.input_topic, a.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&a.output_topic, a.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(dlq, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin
        .create_topics(topics.iter(), &AdminOptions::new())
        .await
        .context("creating topics")?
    {
        match r {
            Ok(t) => println!("created topic {t}"),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                println!("topic {t} exists")
            }
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Subscribes to the output topic at its current end and waits for the group to join, so only
/// events of this run count.
async fn subscribe_from_end(a: &Args, run: &str) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = a
        .kafka
        .clone()
        .set("group.id", format!("emostream-loadgen-{run}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .create()?;
    consumer.subscribe(&[&a.output_topic])?;
    let join = Instant::now();
    while consumer.assignment().map(|t| t.count()).unwrap_or(0) == 0
        && join.elapsed() < Duration::from_secs(20)
    {
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    Ok(consumer)
}

/// Produces `a.count` comments (ids `prefix<i>`) at `a.rate` per second (0: at once); the task
/// ends with the time the last one was acknowledged.
fn spawn_producer(
    a: &Args,
    texts: Vec<String>,
    prefix: String,
    started: Instant,
) -> Result<tokio::task::JoinHandle<Duration>> {
    let producer: FutureProducer = a.kafka.clone().set("linger.ms", "5").create()?;
    let (n, rate, input) = (a.count, a.rate, a.input_topic.clone());
    Ok(tokio::spawn(async move {
        let mut futs = Vec::with_capacity(n);
        for i in 0..n {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let payload =
                serde_json::json!({"id": format!("{prefix}{i}"), "text": texts[i % texts.len()]})
                    .to_string();
            let key = format!("user{}", i % 1000);
            loop {
                match producer.send_result(FutureRecord::to(&input).payload(&payload).key(&key)) {
                    Ok(f) => {
                        futs.push(f);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        }
        for f in futs {
            let _ = f.await;
        }
        started.elapsed()
    }))
}

/// What came back: distinct events, duplicates, latencies, label counts, samples, and the
/// (seconds since start, model version) of each distinct event for the swap summary.
#[derive(Default)]
struct Tally {
    seen: HashSet<String>,
    dup: usize,
    top: BTreeMap<String, usize>,
    samples: Vec<serde_json::Value>,
    arrivals: Vec<(f64, String)>,
    /// (seconds since start, latency) of each event, in arrival order.
    timeline: Vec<(f64, f64)>,
}

impl Tally {
    /// Counts one event of this run; false if it is not one (or a duplicate).
    fn record(
        &mut self,
        v: &serde_json::Value,
        prefix: &str,
        started: Instant,
        keep: usize,
    ) -> bool {
        let Some(id) = v["id"].as_str().filter(|id| id.starts_with(prefix)) else {
            return false;
        };
        if !self.seen.insert(id.to_string()) {
            self.dup += 1;
            return false;
        }
        self.arrivals.push((
            started.elapsed().as_secs_f64(),
            v["model"]["version"].as_str().unwrap_or("?").to_string(),
        ));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if let Some(ts) = v["source"]["timestamp_ms"].as_i64() {
            self.timeline.push((
                started.elapsed().as_secs_f64(),
                (now_ms - ts) as f64 / 1000.0,
            ));
        }
        for l in v["labels"].as_array().into_iter().flatten() {
            *self
                .top
                .entry(l["label"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        if self.samples.len() < keep {
            self.samples.push(v.clone());
        }
        true
    }

    fn top(&self, k: usize) -> String {
        let mut t: Vec<(&String, &usize)> = self.top.iter().collect();
        t.sort_by(|x, y| y.1.cmp(x.1));
        t.iter()
            .take(k)
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn print_summary(&mut self, n: usize, produced_in: Duration, total: f64) {
        let mut latency: Vec<f64> = self.timeline.iter().map(|&(_, l)| l).collect();
        latency.sort_by(f64::total_cmp);
        println!("\nproduced {n} comments in {:.1} s; received {} distinct events ({} duplicates) in {total:.1} s", produced_in.as_secs_f64(), self.seen.len(), self.dup);
        println!(
            "end-to-end throughput: {:.0} comments/s",
            self.seen.len() as f64 / total
        );
        println!(
            "latency (input timestamp -> event read): p50 {:.3} s, p99 {:.3} s, max {:.3} s",
            pct(&latency, 0.5),
            pct(&latency, 0.99),
            pct(&latency, 1.0)
        );
        println!("top emotions: {}", self.top(8));
        for s in &self.samples {
            let labels: Vec<String> = s["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    format!(
                        "{} {:.2}",
                        l["label"].as_str().unwrap_or("?"),
                        l["score"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            println!(
                "event {} (partition {}, offset {}): [{}]",
                s["id"],
                s["source"]["partition"],
                s["source"]["offset"],
                labels.join(", ")
            );
        }
        swap_summary(&self.arrivals);
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut a = Args::parse();
    a.kafka = kafka_config(&a)?;
    if let Some(dlq) = &a.create_topics {
        create_topics(&a, dlq).await?;
    }
    let split = Split::read(
        &a.data
            .clone()
            .unwrap_or_else(|| goemotions_dir().join("test.tsv")),
        28,
    )?;
    let run = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let consumer = subscribe_from_end(&a, &run).await?;
    let n = a.count;
    let prefix = format!("lg{run}-");
    let texts: Vec<String> = split.examples.iter().map(|e| e.text.clone()).collect();
    let started = Instant::now();
    let produce = spawn_producer(&a, texts, prefix.clone(), started)?;

    let mut tally = Tally::default();
    let (mut last_print, mut last_count, mut last_progress) = (Instant::now(), 0, Instant::now());
    while tally.seen.len() < n && last_progress.elapsed() < Duration::from_secs(a.idle_timeout) {
        let event = match tokio::time::timeout(Duration::from_millis(250), consumer.recv()).await {
            Ok(Ok(m)) => m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()),
            _ => None,
        };
        if event.is_some_and(|v| tally.record(&v, &prefix, started, a.samples)) {
            last_progress = Instant::now();
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let secs = last_print.elapsed().as_secs_f64();
            println!(
                "[{:>5.1}s] events {:>6}/{n}  {:>6.0}/s  top: {}",
                started.elapsed().as_secs_f64(),
                tally.seen.len(),
                (tally.seen.len() - last_count) as f64 / secs,
                tally.top(5)
            );
            (last_print, last_count) = (Instant::now(), tally.seen.len());
        }
    }
    let produced_in = produce.await?;
    tally.print_summary(n, produced_in, started.elapsed().as_secs_f64());
    if let Some(path) = &a.latency_file {
        let lines: String = tally
            .timeline
            .iter()
            .map(|(t, l)| format!("{t:.4} {l:.4}\n"))
            .collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    if tally.seen.len() < n {
        anyhow::bail!("only {} of {n} events arrived", tally.seen.len());
    }
    Ok(())
}

/// Events per model version, and for each change of version (a hot swap) the longest gap
/// between consecutive events within a second of it, beside the longest gap anywhere else.
fn swap_summary(arrivals: &[(f64, String)]) {
    if arrivals.len() < 2 {
        return;
    }
    let mut by_version: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, v) in arrivals {
        *by_version.entry(v.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = by_version.iter().map(|(v, c)| format!("{v} {c}")).collect();
    println!("events by model version: {}", counts.join(", "));
    let changes: Vec<f64> = arrivals
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| w[1].0)
        .collect();
    let near = |t: f64| changes.iter().any(|c| (t - c).abs() <= 1.0);
    let (mut at_swap, mut elsewhere) = (0f64, 0f64);
    for w in arrivals.windows(2) {
        let gap = w[1].0 - w[0].0;
        if near(w[1].0) {
            at_swap = at_swap.max(gap);
        } else {
            elsewhere = elsewhere.max(gap);
        }
    }
    if !changes.is_empty() {
        println!(
            "model changes seen: {} (at {}); longest gap between events within 1 s of a change {:.3} s; elsewhere {:.3} s",
            changes.len(),
            changes.iter().map(|c| format!("{c:.1}s")).collect::<Vec<_>>().join(", "),
            at_swap,
            elsewhere
        );
    }
}
