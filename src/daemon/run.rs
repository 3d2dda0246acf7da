//! `emostream run`: the Kafka daemon. Reads top to bottom as the data path is built: the model,
//! the Kafka clients, the source → inference core → sink, the doors (classify API, admin
//! server, probes), then the wait for a signal or a fault and the shutdown that drains it all:
//! stop fetching, finish in-flight batches, let the source make its final commit, flush, exit.

use crate::daemon::ack::Ledger;
use crate::daemon::admin::{self, AdminState, Health, ModelAdmin};
use crate::daemon::api::classify::ClassifyApi;
use crate::daemon::api::feedback::FeedbackApi;
use crate::daemon::config::{Delivery, Settings};
use crate::daemon::kafka::client::{
    self, ClientHooks, Cluster, KafkaProducer, ProducerRole, ProducerSettings,
};
use crate::daemon::kafka::sink::{Sink, SinkSettings};
use crate::daemon::kafka::source::{self, KafkaConsumer, SourceSettings, SourceStage};
use crate::daemon::kafka::topic_limits::TopicLimits;
use crate::daemon::kafka::transaction::Transactions;
use crate::daemon::pipeline::core::{join_workers, Core};
use crate::daemon::pipeline::policy::PolicySource;
use crate::daemon::pipeline::workers::{EventFraming, Labelling, Observers, WorkerClock};
use crate::daemon::start;
use crate::daemon::supervise::{self, Faults};
use crate::daemon::telemetry;
use anyhow::{Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub async fn run(s: Settings) -> Result<()> {
    let prometheus = telemetry::init_metrics()?;
    // 1. The model: the registry's ACTIVE version or model.dir, one session per worker.
    let first = start::load_first_model(&s, s.batching.inference_workers)?;
    let registry = first.registry;
    let (active_tx, active) = start::serve_model(first.generation);
    // 1b. The schema registry (framed input or events): a refused event schema stops here.
    let schemas = start::schemas(&s).await?;
    // 2. The Kafka clients: one plain producer (events, dead letters, control replies) and,
    //    in exactly-once mode, the sink's own transactional producer.
    let kafka = KafkaClients::connect(&s).await?;
    // 3. Hot swap: controller, registry pointer, control topic (answered on the plain producer).
    let swapping = start::start_swapping(
        &s,
        &registry,
        first.pointer,
        active_tx,
        Some(&kafka.producer),
    )?;
    // 4. The data path: source → batcher → inference workers → sink, acknowledgements back;
    //    labels decided by the policy file in force (reloaded when it changes).
    let policy = start::open_policy(&s, &active.borrow())?;
    let policy_watch = policy
        .clone()
        .map(|p| start::watch_policy(&s, p, active.clone()));
    let live = start::live_view(&s.ui);
    let labelling = start::labelling(&s, policy.as_deref());
    let observers = start::observers(&swapping, &live);
    let stream = Stream::start(&s, &kafka, active.clone(), labelling, observers, &schemas)?;
    // 5. The doors: the classify API on the same core, the probes, the admin server.
    let (classify, feedback) = http_apis(&s, &kafka, &stream, &active, &policy);
    let classify_api = classify.clone();
    let health = health(&s, &kafka, &stream, &schemas);
    let state = AdminState {
        prometheus,
        health: health.clone(),
        access: s.admin_access()?,
        model: Some(ModelAdmin {
            active: active.clone(),
            registry,
            swaps: swapping.requests.clone(),
        }),
        extra_metrics: stream.lag_metrics(),
        classify,
        live,
        feedback,
        pages: s.ui.enabled,
    };
    let limits = crate::daemon::http_listener::HttpLimits::from_settings(&s.admin);
    let admin_task = admin::serve(&s.admin.bind, limits, state).await?;
    tracing::info!(topics = ?s.kafka.input_topics, output = %s.kafka.output_topic, dead_letter = %s.kafka.dead_letter_topic, "emostream running");
    // 6. Until a signal, a fault or a stage that ends on its own.
    let mut stream = stream;
    let fault = stream.wait(&kafka.faults).await;
    health.shutting_down.store(true, Ordering::SeqCst);
    // New classify requests get 503; those in flight are answered while the stream drains.
    classify_api.iter().for_each(|api| api.close());
    if let Some(cause) = fault {
        // Record it (a stage end was not reported through `faults`), commit what is safe
        // (the acknowledged offsets: never past an unacknowledged message) and exit non-zero.
        kafka.faults.fatal(cause.clone());
        source::abandon(&stream.consumer).await;
        admin_task.abort();
        anyhow::bail!("{cause}; committed what was acknowledged, exiting for a restart");
    }
    // 7. Drain and stop.
    stream.shut_down(&s).await;
    swapping.stop();
    if let Some(t) = policy_watch {
        t.abort();
    }
    kafka.flush();
    admin_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// The Kafka clients every stage shares, with the callbacks that report the cluster's state
/// (readiness) and fatal errors (supervision).
struct KafkaClients {
    producer: KafkaProducer,
    /// Exactly-once mode: the transactions the sink writes into and the source commits.
    txn: Option<Arc<Transactions>>,
    /// The output and dead-letter topics' size limits (read from the broker in exactly-once
    /// mode, where a refused record would abort its transaction; learned from refusals).
    limits: Arc<TopicLimits>,
    cluster: Arc<Cluster>,
    faults: Arc<Faults>,
}

impl KafkaClients {
    async fn connect(s: &Settings) -> Result<KafkaClients> {
        // The stream's series exist from the start, at zero: an alert on "no events while input
        // flows" or "cluster unreachable" must see a fresh replica that labels nothing, and
        // absent series look like that to no rule.
        metrics::gauge!("emostream_cluster_reachable").set(0.0);
        metrics::counter!("emostream_consumed_total").absolute(0);
        metrics::counter!("emostream_labelled_total").absolute(0);
        let faults = Arc::new(Faults::default());
        let cluster = Arc::new(Cluster::default());
        let settings = ProducerSettings::from_settings(s)?;
        let hooks = ClientHooks {
            role: "producer",
            cluster: cluster.clone(),
            faults: faults.clone(),
        };
        let producer = client::producer(&settings, hooks.clone(), ProducerRole::Plain)?;
        let txn = match s.kafka.delivery {
            Delivery::AtLeastOnce => None,
            Delivery::ExactlyOnce => {
                let p = client::producer(&settings, hooks, ProducerRole::Transactional)?;
                let t = settings.transactions.clone();
                let txn = tokio::task::spawn_blocking(move || Transactions::start(p, &t))
                    .await
                    .context("starting transactions")??;
                tracing::info!(transactional_id = %settings.transactions.transactional_id, "exactly-once delivery: outcomes and offsets commit in transactions");
                Some(Arc::new(txn))
            }
        };
        let limits = match s.kafka.delivery {
            Delivery::AtLeastOnce => TopicLimits::default(),
            Delivery::ExactlyOnce => {
                let topics = [s.kafka.output_topic.as_str(), &s.kafka.dead_letter_topic];
                TopicLimits::read(&settings.client, &topics).await
            }
        };
        Ok(KafkaClients {
            producer,
            txn,
            limits: Arc::new(limits),
            cluster,
            faults,
        })
    }

    fn hooks(&self, role: &'static str) -> ClientHooks {
        ClientHooks {
            role,
            cluster: self.cluster.clone(),
            faults: self.faults.clone(),
        }
    }

    /// The producer the sink writes with: the transactional one in exactly-once mode.
    fn sink_producer(&self) -> KafkaProducer {
        self.txn
            .as_ref()
            .map_or_else(|| self.producer.clone(), |t| t.producer().clone())
    }

    fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(5));
        if let Some(t) = &self.txn {
            let _ = t.producer().flush(Duration::from_secs(5));
        }
    }
}

/// The data path's running stages: the source task feeding the inference core, whose outcomes
/// the sink task delivers; acknowledgements flow back to the source through the ledger.
struct Stream {
    consumer: Arc<KafkaConsumer>,
    ledger: Arc<Ledger>,
    sink: Arc<Sink>,
    source_task: JoinHandle<()>,
    sink_task: JoinHandle<()>,
    batcher: JoinHandle<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
    clock: Arc<WorkerClock>,
    /// Tells the source to stop fetching (shutdown).
    stop: Arc<Notify>,
    /// The core's interactive lane, for the classify API: the API holds a weak sender, this
    /// the strong one, dropped at shutdown so the lane's batcher ends.
    interactive: tokio::sync::mpsc::Sender<crate::daemon::pipeline::Admitted>,
}

impl Stream {
    fn start(
        s: &Settings,
        kafka: &KafkaClients,
        active: tokio::sync::watch::Receiver<Arc<crate::backend::generation::Generation>>,
        mut labelling: Labelling,
        observers: Observers,
        schemas: &start::Schemas,
    ) -> Result<Stream> {
        // Stream events are framed for the schema registry when output.encoding says so.
        labelling.framing = schemas.output.clone().map(|e| e as Arc<dyn EventFraming>);
        let ledger = Arc::new(Ledger::default());
        let settings = SourceSettings::from_settings(s);
        let consumer = source::consumer(
            &settings,
            ledger.clone(),
            kafka.hooks("consumer"),
            kafka.txn.clone(),
        )?;
        let sink = Arc::new(Sink::new(
            kafka.sink_producer(),
            SinkSettings::from_settings(s),
            kafka.cluster.clone(),
            kafka.faults.clone(),
            kafka.txn.clone(),
            kafka.limits.clone(),
        ));
        let core = Core::start(
            start::core_settings(s, s.batching.inference_workers, 4096, labelling),
            active,
            observers,
            kafka.faults.clone(),
        )?;
        let stop = Arc::new(Notify::new());
        let source = SourceStage {
            consumer: consumer.clone(),
            settings,
            pending_tx: core.pending,
            stop: stop.clone(),
            schemas: schemas.input.clone(),
        };
        Ok(Stream {
            consumer,
            ledger,
            sink_task: tokio::spawn(sink.clone().run(core.outcomes)),
            sink,
            source_task: tokio::spawn(source.run()),
            batcher: core.batcher,
            workers: core.workers,
            clock: core.clock,
            stop,
            interactive: core.interactive,
        })
    }

    /// The consumer lag of the partitions held now, rendered for /metrics.
    fn lag_metrics(&self) -> Arc<dyn Fn() -> String + Send + Sync> {
        let c = self.consumer.clone();
        Arc::new(move || c.context().lag_metrics())
    }

    /// Waits for a stop signal (`None`), a fault, or a stage that ends on its own (its cause).
    async fn wait(&mut self, faults: &Faults) -> Option<String> {
        tokio::select! {
            _ = start::shutdown_signal() => None,
            cause = faults.wait() => Some(cause),
            r = &mut self.source_task => Some(supervise::stage_ended("source", r)),
            r = &mut self.batcher => Some(supervise::stage_ended("batcher", r)),
            r = &mut self.sink_task => Some(supervise::stage_ended("sink", r)),
        }
    }

    /// Stops fetching; the closing channels then drain batcher → workers → sink in order while
    /// the source waits (bounded by `shutdown.timeout_ms`) for the acknowledgements and commits.
    async fn shut_down(self, s: &Settings) {
        self.stop.notify_one();
        // The classify API is closed already; requests in flight keep their own senders.
        drop(self.interactive);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(s.shutdown.timeout_ms);
        // The source waits for acknowledgements until the same deadline, then commits: a few
        // seconds more for that commit. The rest of the pipeline gets no longer than the
        // deadline (a message no topic takes keeps the sink retrying for ever).
        let committed =
            tokio::time::timeout_at(deadline + Duration::from_secs(5), self.source_task)
                .await
                .is_ok();
        if !committed {
            tracing::warn!("the source did not finish its final commit in time");
        }
        let drained = committed
            && tokio::time::timeout_at(deadline, async {
                let _ = self.batcher.await;
                let _ = self.sink_task.await;
            })
            .await
            .is_ok();
        if drained {
            join_workers(self.workers);
        }
    }
}

/// The probes' view of the running daemon.
fn health(
    s: &Settings,
    kafka: &KafkaClients,
    stream: &Stream,
    schemas: &start::Schemas,
) -> Arc<Health> {
    let (consumer, cluster, sink, faults) = (
        stream.consumer.clone(),
        kafka.cluster.clone(),
        stream.sink.clone(),
        kafka.faults.clone(),
    );
    Arc::new(Health {
        model_loaded: AtomicBool::new(true),
        assigned: Arc::new(move || consumer.context().assigned.load(Ordering::SeqCst)),
        cluster_reachable: Arc::new(move || cluster.reachable()),
        retrying: {
            let sink = sink.clone();
            Arc::new(move || sink.retrying())
        },
        undeliverable: {
            let sink = sink.clone();
            Arc::new(move || sink.undeliverable())
        },
        transaction_retrying: {
            let txn = kafka.txn.clone();
            Arc::new(move || txn.as_ref().and_then(|t| t.call_retrying()))
        },
        schema_registry: {
            let r = schemas.registry.clone();
            Arc::new(move || r.as_ref().and_then(|r| r.outage()))
        },
        stuck: stuck_check(s, kafka, stream, schemas),
        fault: Arc::new(move || faults.cause()),
        shutting_down: AtomicBool::new(false),
    })
}

/// `/healthz`'s progress check, while the cluster is reachable and no produce is waiting out a
/// transient fault (an outage is readiness's business, not the process's): messages are in
/// flight and none was acknowledged for `health.stall_timeout_ms` (e.g. one that no topic
/// takes), or a worker has been on one batch that long; in exactly-once mode also nothing
/// committed that long while transactions abort or work waits (e.g. a record every
/// transaction fails on, or a commit that keeps failing).
fn stuck_check(
    s: &Settings,
    kafka: &KafkaClients,
    stream: &Stream,
    schemas: &start::Schemas,
) -> Arc<dyn Fn() -> Option<String> + Send + Sync> {
    let registry = schemas.registry.clone();
    let limit = Duration::from_millis(s.health.stall_timeout_ms);
    let (ledger, sink, cluster, clock, txn) = (
        stream.ledger.clone(),
        stream.sink.clone(),
        kafka.cluster.clone(),
        stream.clock.clone(),
        kafka.txn.clone(),
    );
    Arc::new(move || {
        if let Some(why) = clock.stuck(limit) {
            return Some(why);
        }
        // Credentials the schema registry refuses do not come right by themselves.
        if let Some(why) = registry
            .as_ref()
            .and_then(|r| r.refusing_credentials_longer_than(limit))
        {
            return Some(why);
        }
        // The schema registry's outage holds the source too: readiness's business as well.
        let registry_out = registry.as_ref().is_some_and(|r| r.outage().is_some());
        if !cluster.reachable() || sink.retrying() > 0 || registry_out {
            return None;
        }
        if let Some(txn) = &txn {
            // Settles with nothing to commit between aborts do not count as progress.
            if let Some(why) = txn.without_committed_progress(limit) {
                return Some(why);
            }
            // Work waits: consumed messages not yet in the transaction, or its records.
            let pending = ledger.unacknowledged() as u64 + txn.uncommitted_records();
            if let Some(since) = txn.committed_longer_ago_than(limit).filter(|_| pending > 0) {
                let call = txn
                    .call_retrying()
                    .map(|c| format!("; {c}"))
                    .unwrap_or_default();
                return Some(format!(
                    "no committed progress for {since:.1?} (over {limit:?}) with {pending} messages or records waiting{call}"
                ));
            }
        }
        // Progress is an acknowledgement: on a backlog under a slow model the oldest message
        // waits long while others are delivered, and that is queueing, not a stuck stage.
        let (n, since) = ledger.without_progress(limit)?;
        let oldest = ledger
            .stalled(limit)
            .first()
            .map(|((topic, p), o)| format!("; oldest {topic}/{p} offset {o}"))
            .unwrap_or_default();
        Some(format!(
            "no progress: {n} messages in flight and none acknowledged for {since:.1?} (over {limit:?}){oldest}"
        ))
    })
}

/// The `/v1/*` APIs when `api.enabled`: classify (into the stream's core) and, when
/// `api.feedback_topic` is set, feedback (on the plain producer).
fn http_apis(
    s: &Settings,
    kafka: &KafkaClients,
    stream: &Stream,
    active: &tokio::sync::watch::Receiver<Arc<crate::backend::generation::Generation>>,
    policy: &Option<Arc<PolicySource>>,
) -> (Option<Arc<ClassifyApi>>, Option<Arc<FeedbackApi>>) {
    let feedback = (s.api.enabled && !s.api.feedback_topic.is_empty()).then(|| {
        Arc::new(FeedbackApi::new(
            kafka.producer.clone(),
            &s.api.feedback_topic,
            Duration::from_millis(s.api.timeout_ms),
            s.input.max_message_bytes,
            active.clone(),
        ))
    });
    let classify = s.api.enabled.then(|| {
        Arc::new(ClassifyApi::new(
            stream.interactive.downgrade(),
            &s.input,
            &s.api,
            active.clone(),
            policy.clone(),
            feedback.is_some(),
        ))
    });
    (classify, feedback)
}
