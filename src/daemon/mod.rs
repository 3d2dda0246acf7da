//! The daemon layer: wires the stages into the running daemon (`emostream run`) and the
//! broker-less `emostream classify`, and handles shutdown: stop fetching, finish in-flight
//! batches, let the source make its final commit, flush, exit. docs/architecture.md draws it.

pub(crate) mod ack;
pub(crate) mod admin;
pub(crate) mod api;
pub mod config;
pub mod kafka;
pub(crate) mod pipeline;
pub mod serve;
pub(crate) mod supervise;
pub(crate) mod swap;
pub mod telemetry;

use crate::backend::generation::{Expectations, Generation};
use crate::model::registry::Registry;
use ack::Ledger;
use admin::{AdminState, Health, ModelAdmin};
use anyhow::{Context, Result};
use config::Delivery;
use config::Settings;
use kafka::client::KafkaProducer;
use kafka::client::{ClientHooks, Cluster, ProducerRole};
use kafka::control;
use kafka::sink::Sink;
use kafka::source::{self, SourceStage};
use kafka::transaction::Transactions;
use pipeline::{admit, batcher, workers, Admitted, Batch, Origin, Outcome};
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use supervise::Faults;
use swap::shadow::Shadow;
use swap::{pointer_watch, Controller, SwapRequest};
use tokio::sync::{mpsc, watch, Notify};

/// The model directory to serve at start-up: the registry's `ACTIVE` version when there is a
/// registry with a pointer, else `model.dir`. Also returns the registry and the pointer read.
fn initial_model(s: &Settings) -> Result<(Option<Registry>, Option<String>, PathBuf)> {
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
fn load_first(s: &Settings, dir: &Path, workers: usize) -> Result<Generation> {
    let expect = Expectations {
        labels: None,
        label_map: BTreeMap::new(),
    };
    Generation::load(dir, &s.runtime_options(), workers, &expect)
        .with_context(|| format!("loading model {}", dir.display()))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// The swap machinery of a running daemon: one controller and its triggers.
struct Swapping {
    requests: mpsc::Sender<SwapRequest>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the swap controller and its triggers: the registry pointer (when watched) and the
/// control topic (when configured); the admin API is the third, given `requests`.
fn start_swapping(
    s: &Settings,
    registry: &Option<Registry>,
    pointer: Option<String>,
    active: Arc<crate::backend::generation::Active>,
    shadow: Arc<Shadow>,
    producer: Option<&KafkaProducer>,
) -> Result<Swapping> {
    let (requests, rx) = mpsc::channel::<SwapRequest>(16);
    let controller = Controller {
        registry: registry.clone(),
        active,
        runtime: s.runtime_options(),
        workers: s.batching.inference_workers,
        settings: s.registry.clone(),
        shadow,
        history: Vec::new(),
        loads: Default::default(),
    };
    let mut tasks = vec![tokio::spawn(controller.run(rx))];
    if let (Some(reg), true) = (registry, s.registry.watch) {
        tasks.push(pointer_watch::spawn(
            reg.clone(),
            Duration::from_millis(s.registry.poll_interval_ms),
            requests.clone(),
            pointer,
        ));
    }
    if let (false, Some(producer)) = (s.registry.control_topic.is_empty(), producer) {
        tasks.push(control::spawn(s, producer.clone(), requests.clone())?);
    }
    Ok(Swapping { requests, tasks })
}

/// The data path's tasks: source → batcher → workers (threads) → sink.
struct Pipeline {
    source: tokio::task::JoinHandle<()>,
    batcher: tokio::task::JoinHandle<()>,
    sink: tokio::task::JoinHandle<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
    busy: Arc<workers::Busy>,
    stop: Arc<Notify>,
    /// Into the batcher beside the source, for the classify API (weak: see ClassifyApi).
    pending: mpsc::WeakSender<Admitted>,
}

fn start_pipeline(
    s: &Settings,
    consumer: Arc<source::KafkaConsumer>,
    sink: Arc<Sink>,
    active: watch::Receiver<Arc<Generation>>,
    watch: workers::Observers,
    faults: Arc<Faults>,
) -> Result<Pipeline> {
    let (pending_tx, pending_rx) = mpsc::channel::<Admitted>(s.batching.backlog_window);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(s.batching.inference_workers);
    let (outcome_tx, outcome_rx) = mpsc::channel::<Outcome>(4096);
    let (workers, busy) = workers::spawn(
        s.batching.inference_workers,
        batch_rx,
        outcome_tx,
        s.batching.call_limits(),
        s.output.clone(),
        watch,
        faults,
    )?;
    let stop = Arc::new(Notify::new());
    Ok(Pipeline {
        pending: pending_tx.downgrade(),
        busy: busy.clone(),
        sink: tokio::spawn(sink.run(outcome_rx)),
        batcher: tokio::spawn(batcher::run(
            pending_rx,
            batch_tx,
            active,
            busy,
            s.batching.clone(),
        )),
        source: tokio::spawn(
            SourceStage {
                consumer,
                settings: s.clone(),
                pending_tx,
                stop: stop.clone(),
            }
            .run(),
        ),
        workers,
        stop,
    })
}

pub async fn run(s: Settings) -> Result<()> {
    let prometheus = telemetry::init_metrics()?;
    let (registry, pointer, dir) = initial_model(&s)?;
    let model = load_first(&s, &dir, s.batching.inference_workers)?;
    tracing::info!(model = %model.model_ref.name, version = %model.model_ref.version, dir = %model.dir.display(), sessions = model.workers(), "model loaded");
    swap::set_model_info(&model, true);
    let (active_tx, active_rx) = watch::channel(Arc::new(model));
    let shadow = Arc::new(Shadow::default());
    let faults = Arc::new(Faults::default());
    let cluster = Arc::new(Cluster::default());
    let hooks = |role| ClientHooks {
        role,
        cluster: cluster.clone(),
        faults: faults.clone(),
    };
    let producer = kafka::client::producer(&s, hooks("producer"), ProducerRole::Plain)?;
    // Exactly-once: the sink's own transactional producer; control replies stay outside
    // transactions on the plain one.
    let txn = match s.kafka.delivery {
        Delivery::AtLeastOnce => None,
        Delivery::ExactlyOnce => {
            let p = kafka::client::producer(&s, hooks("producer"), ProducerRole::Transactional)?;
            let t = tokio::task::spawn_blocking({
                let s = s.clone();
                move || Transactions::start(p, &s)
            })
            .await
            .context("starting transactions")??;
            tracing::info!(transactional_id = %s.transactional_id(), "exactly-once delivery: outcomes and offsets commit in transactions");
            Some(Arc::new(t))
        }
    };
    let swapping = start_swapping(
        &s,
        &registry,
        pointer,
        Arc::new(active_tx),
        shadow.clone(),
        Some(&producer),
    )?;
    let ledger = Arc::new(Ledger::default());
    let consumer = source::consumer(&s, ledger.clone(), hooks("consumer"), txn.clone())?;
    let sink = Arc::new(Sink::new(
        txn.as_ref()
            .map_or_else(|| producer.clone(), |t| t.producer().clone()),
        &s,
        cluster.clone(),
        faults.clone(),
        txn.clone(),
    ));
    let live = s.ui.enabled.then(|| {
        Arc::new(api::live::LiveView::new(
            s.ui.live_size,
            s.ui.live_minutes,
            s.ui.show_text,
        ))
    });
    let pipeline = start_pipeline(
        &s,
        consumer.clone(),
        sink.clone(),
        active_rx.clone(),
        workers::Observers {
            shadow: Some(shadow),
            live: live.clone().map(|l| l as Arc<dyn workers::Watcher>),
        },
        faults.clone(),
    )?;
    let classify_api = s.api.enabled.then(|| {
        Arc::new(api::classify::ClassifyApi::new(
            pipeline.pending.clone(),
            &s.input,
            &s.api,
            active_rx.clone(),
        ))
    });
    let health = Arc::new(Health {
        model_loaded: AtomicBool::new(true),
        assigned: {
            let c = consumer.clone();
            Arc::new(move || c.context().assigned.load(Ordering::SeqCst))
        },
        cluster_reachable: {
            let c = cluster.clone();
            Arc::new(move || c.reachable())
        },
        retrying: {
            let sink = sink.clone();
            Arc::new(move || sink.retrying())
        },
        undeliverable: {
            let sink = sink.clone();
            Arc::new(move || sink.undeliverable())
        },
        stuck: stuck_check(
            &s,
            ledger,
            sink,
            cluster,
            pipeline.busy.clone(),
            txn.clone(),
        ),
        fault: {
            let f = faults.clone();
            Arc::new(move || f.cause())
        },
        shutting_down: AtomicBool::new(false),
    });
    let admin_task = admin::serve(
        &s.admin.bind,
        AdminState {
            prometheus,
            health: health.clone(),
            access: s.admin_access()?,
            model: Some(ModelAdmin {
                active: active_rx.clone(),
                registry: registry.clone(),
                swaps: swapping.requests.clone(),
            }),
            extra_metrics: {
                let c = consumer.clone();
                Arc::new(move || c.context().lag_metrics())
            },
            classify: classify_api.clone(),
            live,
            pages: s.ui.enabled,
        },
    )
    .await?;
    tracing::info!(topics = ?s.kafka.input_topics, output = %s.kafka.output_topic, dead_letter = %s.kafka.dead_letter_topic, "emostream running");

    let mut p = pipeline;
    let fault = tokio::select! {
        _ = shutdown_signal() => None,
        cause = faults.wait() => Some(cause),
        r = &mut p.source => Some(supervise::stage_ended("source", r)),
        r = &mut p.batcher => Some(supervise::stage_ended("batcher", r)),
        r = &mut p.sink => Some(supervise::stage_ended("sink", r)),
    };
    health.shutting_down.store(true, Ordering::SeqCst);
    if let Some(cause) = fault {
        // Record it (a stage end was not reported through `faults`), commit what is safe
        // (the acknowledged offsets: never past an unacknowledged message) and exit non-zero.
        faults.fatal(cause.clone());
        source::abandon(&consumer).await;
        admin_task.abort();
        anyhow::bail!("{cause}; committed what was acknowledged, exiting for a restart");
    }
    shut_down(&s, p, swapping).await;
    let _ = producer.flush(Duration::from_secs(5));
    if let Some(t) = &txn {
        let _ = t.producer().flush(Duration::from_secs(5));
    }
    admin_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// `/healthz`'s progress check: messages are in flight and the oldest has waited longer than
/// `health.stall_timeout_ms` (e.g. one that no topic takes) while the cluster was reachable and
/// no produce was waiting out a transient fault (an outage is readiness's business, not the
/// process's), or a worker has been on one batch that long.
fn stuck_check(
    s: &Settings,
    ledger: Arc<Ledger>,
    sink: Arc<Sink>,
    cluster: Arc<kafka::client::Cluster>,
    busy: Arc<workers::Busy>,
    txn: Option<Arc<Transactions>>,
) -> Arc<dyn Fn() -> Option<String> + Send + Sync> {
    let limit = Duration::from_millis(s.health.stall_timeout_ms);
    Arc::new(move || {
        // A record that aborts every transaction it joins (e.g. one the broker refuses after
        // the producer took it) is read again and again: no progress, though nothing stalls.
        if let Some(n) = txn
            .as_ref()
            .map(|t| t.consecutive_aborts())
            .filter(|n| *n >= 10)
        {
            return Some(format!("{n} transactions aborted in a row"));
        }
        if let Some(why) = busy.stuck(limit) {
            return Some(why);
        }
        if !cluster.reachable() || sink.retrying() > 0 {
            return None;
        }
        let stalled = ledger.stalled(limit);
        (!stalled.is_empty()).then(|| {
            let ((topic, p), o) = &stalled[0];
            format!(
                "no progress: {topic}/{p} offset {o} has been in flight for over {limit:?} ({} partitions stalled)",
                stalled.len()
            )
        })
    })
}

/// Stops fetching; the closing channels then drain batcher → workers → sink in order while
/// the source waits (bounded by `shutdown.timeout_ms`) for the acknowledgements and commits.
async fn shut_down(s: &Settings, p: Pipeline, swapping: Swapping) {
    p.stop.notify_one();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(s.shutdown.timeout_ms);
    // The source waits for acknowledgements until the same deadline, then commits: a few
    // seconds more for that commit. The rest of the pipeline gets no longer than the deadline
    // (a message no topic takes keeps the sink retrying for ever).
    let committed = tokio::time::timeout_at(deadline + Duration::from_secs(5), p.source)
        .await
        .is_ok();
    if !committed {
        tracing::warn!("the source did not finish its final commit in time");
    }
    let drained = committed
        && tokio::time::timeout_at(deadline, async {
            let _ = p.batcher.await;
            let _ = p.sink.await;
        })
        .await
        .is_ok();
    for t in swapping.tasks {
        t.abort();
    }
    if drained {
        for h in p.workers {
            let _ = h.join();
        }
    }
}

/// `emostream classify`: label lines from stdin (JSON objects or plain text, per
/// `input.format`) through the same batcher, workers and events, writing events to stdout in
/// input order and rejections to stderr.
pub async fn classify(s: Settings) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (_, _, dir) = initial_model(&s)?;
    // One worker keeps output in input order.
    let model = load_first(&s, &dir, 1)?;
    let (_active, active_rx) = watch::channel(Arc::new(model));
    let (pending_tx, pending_rx) = mpsc::channel::<Admitted>(s.batching.backlog_window);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<Outcome>(4096);
    let faults = Arc::new(Faults::default());
    let (handles, busy) = workers::spawn(
        1,
        batch_rx,
        outcome_tx,
        s.batching.call_limits(),
        s.output.clone(),
        workers::Observers::default(),
        faults.clone(),
    )?;
    let batcher_task = tokio::spawn(batcher::run(
        pending_rx,
        batch_tx,
        active_rx,
        busy,
        s.batching.clone(),
    ));
    let input = s.input.clone();
    let reader = tokio::spawn(async move {
        // Nothing commits here; the ledger only gives every line the token a message carries.
        let ledger = Arc::new(Ledger::default());
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut n: i64 = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            let origin = Origin::unkeyed(&ledger, "stdin", n, Some(line.into_bytes()));
            n += 1;
            if pending_tx.send(admit(origin, &input)).await.is_err() {
                break;
            }
        }
    });
    // Every line takes the same path through one worker: outcomes arrive in input order.
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    while let Some(o) = outcome_rx.recv().await {
        match o {
            Outcome::Labelled { event, origin, .. } => {
                out.write_all(&event).await?;
                out.write_all(b"\n").await?;
                origin.ack.delivered();
            }
            Outcome::Rejected(r) => {
                eprintln!(
                    "{}",
                    serde_json::json!({"line": r.origin.source.offset + 1, "reason": r.reason.as_str(), "detail": r.detail})
                );
                r.origin.ack.delivered();
            }
        }
    }
    out.flush().await?;
    if let Some(cause) = faults.cause() {
        anyhow::bail!("{cause}");
    }
    let _ = reader.await;
    let _ = batcher_task.await;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
