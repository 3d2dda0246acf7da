//! Wires the stages into the running daemon (`emostream run`) and the broker-less
//! `emostream classify`, and handles shutdown: stop fetching, finish in-flight batches,
//! flush, commit, exit.

use crate::admin::{self, AdminState, Health};
use crate::config::Settings;
use crate::model::OrtModel;
use crate::model_dir::ModelDir;
use crate::offsets::OffsetTracker;
use crate::pipeline::{Batch, Outcome, Pending};
use crate::sink::Sink;
use crate::source::{self, SourceStage};
use crate::telemetry::InFlight;
use crate::tokenize::TextEncoder;
use crate::workers::{self, LoadedModel};
use crate::{batcher, telemetry};
use anyhow::{Context, Result};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// The model directory, its tokenizer, and a loader that opens one ONNX Runtime session.
pub struct ModelAssets {
    pub dir: ModelDir,
    pub text: Arc<TextEncoder>,
    pub load: Arc<dyn Fn() -> Result<LoadedModel> + Send + Sync>,
}

pub fn model_assets(s: &Settings) -> Result<ModelAssets> {
    let dir = ModelDir::load(&s.model.dir, true)
        .with_context(|| format!("config key model.dir = {}", s.model.dir.display()))?;
    let text = Arc::new(TextEncoder::from_file(
        &dir.tokenizer_path(),
        dir.card.max_sequence_length,
    )?);
    let runtime = s.runtime_options();
    let d = dir.clone();
    let pad = text.pad_id();
    let load: Arc<dyn Fn() -> Result<LoadedModel> + Send + Sync> = Arc::new(move || {
        let session = OrtModel::load(&d.onnx_path(), &runtime)?;
        anyhow::ensure!(
            session.num_labels() == d.card.labels.len(),
            "model.onnx has {} outputs, card lists {} labels",
            session.num_labels(),
            d.card.labels.len()
        );
        Ok(LoadedModel::new(&d, session, pad))
    });
    Ok(ModelAssets { dir, text, load })
}

fn producer(s: &Settings) -> Result<FutureProducer> {
    let mut c = source::client_config(s);
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
    let assets = model_assets(&s)?;
    let card = &assets.dir.card;
    tracing::info!(model = %card.name, version = %card.version, precision = %card.precision, dir = %assets.dir.dir.display(), "model loaded");
    metrics::gauge!("emostream_model_info", "name" => card.name.clone(), "version" => card.version.clone(), "sha256" => card.model_sha256.clone()).set(1.0);

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
        assets.load.clone(),
    )?;
    let producer = producer(&s)?;
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
        assets.text.clone(),
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
    use crate::event::Source;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let assets = model_assets(&s)?;
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(s.batching.max_batch_size * 4);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<Outcome>(4096);
    // One worker keeps output in input order.
    let handles = workers::spawn(
        1,
        batch_rx,
        outcome_tx.clone(),
        s.output.clone(),
        assets.load.clone(),
    )?;
    let batcher_task = tokio::spawn(batcher::run(
        pending_rx,
        batch_tx,
        assets.text.clone(),
        s.batching.clone(),
    ));
    let input = s.input.clone();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut n: i64 = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            let origin = crate::pipeline::Origin {
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
            let ok = match crate::pipeline::admit(origin, &input) {
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
