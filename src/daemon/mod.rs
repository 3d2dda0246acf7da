//! Wires the stages into the running daemon (`emostream run`) and the broker-less
//! `emostream classify`, and handles shutdown: stop fetching, finish in-flight batches,
//! flush, commit, exit.

pub mod ack;
pub mod admin;
pub mod config;
pub mod kafka;
pub mod pipeline;
pub mod swap;
pub mod telemetry;

use crate::backend::generation::{Expectations, ServingModel};
use crate::model::registry::Registry;
use ack::OffsetTracker;
use admin::{AdminState, Health, ModelAdmin};
use anyhow::{Context, Result};
use config::Settings;
use kafka::control;
use kafka::sink::Sink;
use kafka::source::{self, SourceStage};
use pipeline::{batcher, workers, Batch, Outcome, Pending};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swap::shadow::Shadow;
use swap::{pointer_watch, Controller, SwapRequest};
use telemetry::InFlight;
use tokio::sync::{mpsc, watch, Notify};

/// The model directory to serve at start-up: the registry's `ACTIVE` version when there is a
/// registry with a pointer, else `model.dir`. Also returns the registry and the pointer read.
pub fn initial_model(s: &Settings) -> Result<(Option<Registry>, Option<String>, PathBuf)> {
    if s.registry.root.is_empty() {
        return Ok((None, None, s.model.dir.clone()));
    }
    let reg = Registry::open(Path::new(&s.registry.root))
        .with_context(|| format!("config key registry.root = {}", s.registry.root))?;
    match reg.active().context("config key registry.root")? {
        Some(v) => {
            let dir = reg
                .resolve(&v)
                .with_context(|| format!("registry pointer {}", reg.pointer_path().display()))?;
            Ok((Some(reg), Some(v), dir))
        }
        None => {
            tracing::info!(registry = %reg.root().display(), model = %s.model.dir.display(), "registry has no ACTIVE pointer yet; serving model.dir");
            Ok((Some(reg), None, s.model.dir.clone()))
        }
    }
}

/// Loads and validates the first model generation with `workers` sessions.
pub fn load_first(s: &Settings, dir: &Path, workers: usize) -> Result<ServingModel> {
    let expect = Expectations {
        labels: None,
        label_map: BTreeMap::new(),
    };
    ServingModel::load(dir, &s.runtime_options(), workers, &expect)
        .with_context(|| format!("loading model {}", dir.display()))
}

fn producer(s: &Settings) -> Result<FutureProducer> {
    let mut c = kafka::client::client_config(s);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", s.kafka.produce_timeout_ms.to_string())
        .set("linger.ms", "5");
    for (k, v) in &s.kafka.producer_properties {
        c.set(k, v);
    }
    c.create().context("creating Kafka producer")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

pub async fn run(s: Settings) -> Result<()> {
    let prometheus = telemetry::init_metrics()?;
    let (registry, pointer, dir) = initial_model(&s)?;
    let model = load_first(&s, &dir, s.batching.inference_workers)?;
    tracing::info!(model = %model.model_ref.name, version = %model.model_ref.version, dir = %model.dir.display(), sessions = model.workers(), "model loaded");
    swap::set_model_info(&model, true);
    let (active_tx, active_rx) = watch::channel(Arc::new(model));
    let active = Arc::new(active_tx);
    let shadow = Arc::new(Shadow::default());

    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let in_flight = Arc::new(InFlight::default());
    let stalled = Arc::new(AtomicUsize::new(0));
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(s.batching.max_batch_size * 4);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(s.batching.inference_workers);
    let (outcome_tx, outcome_rx) = mpsc::channel::<Outcome>(4096);

    let worker_handles = workers::spawn(
        s.batching.inference_workers,
        batch_rx,
        outcome_tx.clone(),
        s.output.clone(),
        Some(shadow.clone()),
    )?;
    let producer = producer(&s)?;

    // Hot swap: one controller, three triggers (pointer, admin API, control topic).
    let (swap_tx, swap_rx) = mpsc::channel::<SwapRequest>(16);
    let controller = tokio::spawn(
        Controller {
            registry: registry.clone(),
            active: active.clone(),
            runtime: s.runtime_options(),
            workers: s.batching.inference_workers,
            settings: s.registry.clone(),
            shadow: shadow.clone(),
            history: Vec::new(),
        }
        .run(swap_rx),
    );
    let mut triggers = Vec::new();
    if let (Some(reg), true) = (&registry, s.registry.watch) {
        triggers.push(pointer_watch::spawn(
            reg.clone(),
            Duration::from_millis(s.registry.poll_interval_ms),
            swap_tx.clone(),
            pointer,
        ));
    }
    if !s.registry.control_topic.is_empty() {
        triggers.push(control::spawn(&s, producer.clone(), swap_tx.clone())?);
    }

    let consumer = source::consumer(&s, tracker.clone())?;

    let health = Arc::new(Health {
        model_loaded: AtomicBool::new(true),
        assigned: {
            let c = consumer.clone();
            Arc::new(move || c.context().assigned.load(Ordering::SeqCst))
        },
        stalled: stalled.clone(),
        shutting_down: AtomicBool::new(false),
    });
    let admin_task = admin::serve(
        &s.admin.bind,
        AdminState {
            prometheus,
            health: health.clone(),
            token: s.admin.token.clone(),
            model: Some(ModelAdmin {
                active: active_rx.clone(),
                registry: registry.clone(),
                swaps: swap_tx.clone(),
            }),
        },
    )
    .await?;

    let sink = Arc::new(Sink {
        producer: producer.clone(),
        output_topic: s.kafka.output_topic.clone(),
        dead_letter_topic: s.kafka.dead_letter_topic.clone(),
        attempts: s.kafka.produce_attempts,
        backoff: Duration::from_millis(s.kafka.produce_backoff_ms),
        tracker: tracker.clone(),
        in_flight: in_flight.clone(),
        stalled: stalled.clone(),
    });
    let sink_task = tokio::spawn(sink.run(outcome_rx));
    let batcher_task = tokio::spawn(batcher::run(
        pending_rx,
        batch_tx,
        active_rx.clone(),
        s.batching.clone(),
    ));
    let stop = Arc::new(Notify::new());
    let source_task = tokio::spawn(
        SourceStage {
            consumer: consumer.clone(),
            settings: s.clone(),
            tracker: tracker.clone(),
            in_flight: in_flight.clone(),
            pending_tx,
            outcome_tx,
            stop: stop.clone(),
        }
        .run(),
    );
    let committer = {
        let (c, t) = (consumer.clone(), tracker.clone());
        let every = Duration::from_millis(s.kafka.commit_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = source::commit(&c, &t, CommitMode::Async) {
                    tracing::warn!(error = %format!("{e:#}"), "periodic commit failed");
                }
                let stalled = t
                    .lock()
                    .expect("offset tracker lock")
                    .stalled(Duration::from_secs(60));
                for ((topic, p), o) in stalled {
                    tracing::warn!(
                        topic,
                        partition = p,
                        offset = o,
                        "oldest in-flight message is over 60 s old"
                    );
                }
            }
        })
    };
    tracing::info!(topics = ?s.kafka.input_topics, output = %s.kafka.output_topic, dead_letter = %s.kafka.dead_letter_topic, "emostream running");

    shutdown_signal().await;
    health.shutting_down.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(s.shutdown.timeout_ms);
    // Stop fetching; the closing channels then drain batcher → workers → sink in order.
    stop.notify_one();
    let drained = tokio::time::timeout_at(deadline, async {
        let _ = source_task.await;
        let _ = batcher_task.await;
        let _ = sink_task.await;
    })
    .await
    .is_ok();
    committer.abort();
    for t in triggers {
        t.abort();
    }
    drop(swap_tx);
    controller.abort();
    for h in worker_handles {
        if drained {
            let _ = h.join();
        }
    }
    let left = tracker.lock().expect("offset tracker lock").in_flight();
    if !drained {
        tracing::warn!(
            in_flight = left,
            "shutdown timeout: committing what was acknowledged; the rest will be re-read"
        );
    }
    let _ = producer.flush(Duration::from_secs(5));
    source::commit(&consumer, &tracker, CommitMode::Sync).context("final commit")?;
    consumer.unsubscribe();
    admin_task.abort();
    tracing::info!(in_flight = left, "stopped cleanly");
    Ok(())
}

/// `emostream classify`: label lines from stdin (JSON objects or plain text, per
/// `input.format`) through the same batcher, workers and events, writing events to stdout in
/// input order and rejections to stderr.
pub async fn classify(s: Settings) -> Result<()> {
    use crate::daemon::pipeline::event::Source;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (_, _, dir) = initial_model(&s)?;
    // One worker keeps output in input order.
    let model = load_first(&s, &dir, 1)?;
    let (_active, active_rx) = watch::channel(Arc::new(model));
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(s.batching.max_batch_size * 4);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<Outcome>(4096);
    let handles = workers::spawn(1, batch_rx, outcome_tx.clone(), s.output.clone(), None)?;
    let batcher_task = tokio::spawn(batcher::run(
        pending_rx,
        batch_tx,
        active_rx,
        s.batching.clone(),
    ));
    let input = s.input.clone();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut n: i64 = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            let origin = crate::daemon::pipeline::Origin {
                source: Source {
                    topic: "stdin".into(),
                    partition: 0,
                    offset: n,
                    timestamp_ms: None,
                },
                key: None,
                headers: None,
                payload: line.into_bytes(),
                received: std::time::Instant::now(),
            };
            n += 1;
            let ok = match crate::daemon::pipeline::admit(origin, &input) {
                Ok(p) => pending_tx.send(p).await.is_ok(),
                Err(rejected) => outcome_tx.send(rejected).await.is_ok(),
            };
            if !ok {
                break;
            }
        }
    });
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    // Rejections can overtake labelled lines (they skip the batcher): restore input order.
    let mut next: i64 = 0;
    let mut held = std::collections::BTreeMap::new();
    while let Some(o) = outcome_rx.recv().await {
        held.insert(o.origin().source.offset, o);
        while let Some(o) = held.remove(&next) {
            match o {
                Outcome::Labelled { event, .. } => {
                    out.write_all(&event).await?;
                    out.write_all(b"\n").await?;
                }
                Outcome::Rejected {
                    reason,
                    detail,
                    origin,
                } => {
                    eprintln!(
                        "{}",
                        serde_json::json!({"line": origin.source.offset + 1, "reason": reason.as_str(), "detail": detail})
                    );
                }
            }
            next += 1;
        }
    }
    out.flush().await?;
    let _ = reader.await;
    let _ = batcher_task.await;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
