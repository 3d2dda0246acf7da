//! What the entry points (run.rs, serve.rs, stdin.rs) start the same way: the first model (the
//! registry's `ACTIVE` version or `model.dir`), the hot-swap controller and its triggers, the
//! moderators' live view, and the wait for a stop signal.

use crate::backend::generation::{Expectations, Generation};
use crate::daemon::api::live::LiveView;
use crate::daemon::config::{EventEncoding, InputFormat, Settings, UiSettings};
use crate::daemon::kafka::client::KafkaProducer;
use crate::daemon::kafka::control::{self, ControlSettings};
use crate::daemon::pipeline::core::CoreSettings;
use crate::daemon::pipeline::policy::PolicySource;
use crate::daemon::pipeline::workers::{BatchWatcher, Labelling, Observers, Watcher};
use crate::daemon::schemas::input::InputSchemas;
use crate::daemon::schemas::output::EventEncoder;
use crate::daemon::schemas::registry::SchemaRegistry;
use crate::daemon::swap::shadow::Shadow;
use crate::daemon::swap::{self, pointer_watch, Controller, SwapRequest};
use crate::model::registry::Registry;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The model directory to serve at start-up: the registry's `ACTIVE` version when there is a
/// registry with a pointer, else `model.dir`. Also returns the registry and the pointer read.
/// A registry in an object store must answer here (the first model comes from it); later,
/// serving never waits on it.
fn initial_model_dir(s: &Settings) -> Result<(Option<Registry>, Option<String>, PathBuf)> {
    if s.registry.root.is_empty() {
        return Ok((None, None, s.model.dir.clone()));
    }
    let reg = Registry::open(&s.registry.root, &s.registry.cache_dir())
        .with_context(|| format!("config key registry.root = {}", s.registry.root))?;
    match reg.active().context("config key registry.root")? {
        Some(v) => {
            let dir = reg
                .resolve(&v)
                .with_context(|| format!("registry pointer {}", reg.pointer_location()))?;
            Ok((Some(reg), Some(v), dir))
        }
        None => {
            tracing::info!(registry = %reg.location(), model = %s.model.dir.display(), "registry has no ACTIVE pointer yet; serving model.dir");
            Ok((Some(reg), None, s.model.dir.clone()))
        }
    }
}

/// The model an entry point starts with, and the registry it came from.
pub(crate) struct FirstModel {
    pub(crate) registry: Option<Registry>,
    /// The `ACTIVE` version read at start-up (the pointer watcher's starting point).
    pub(crate) pointer: Option<String>,
    pub(crate) generation: Generation,
}

/// Loads and validates the first model generation with `sessions` ONNX Runtime sessions.
pub(crate) fn load_first_model(s: &Settings, sessions: usize) -> Result<FirstModel> {
    let (registry, pointer, dir) = initial_model_dir(s)?;
    let expect = Expectations {
        labels: None,
        label_map: BTreeMap::new(),
    };
    let generation = Generation::load(&dir, &s.runtime_options(), sessions, &expect)
        .with_context(|| format!("loading model {}", dir.display()))?;
    Ok(FirstModel {
        registry,
        pointer,
        generation,
    })
}

/// The served model: logged, on `/metrics`, and in the channel every batch reads it from.
pub(crate) fn serve_model(
    model: Generation,
) -> (
    watch::Sender<Arc<Generation>>,
    watch::Receiver<Arc<Generation>>,
) {
    tracing::info!(model = %model.model_ref.name, version = %model.model_ref.version, dir = %model.dir.display(), sessions = model.workers(), "model loaded");
    swap::set_model_info(&model, true);
    watch::channel(Arc::new(model))
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// The swap machinery of a running daemon: one controller and its triggers.
pub(crate) struct Swapping {
    /// The admin API's way in (the third trigger).
    pub(crate) requests: mpsc::Sender<SwapRequest>,
    pub(crate) shadow: Arc<Shadow>,
    tasks: Vec<JoinHandle<()>>,
}

impl Swapping {
    pub(crate) fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Starts the swap controller and its triggers: the registry pointer (when watched) and the
/// control topic (when configured and there is a producer to answer on).
pub(crate) fn start_swapping(
    s: &Settings,
    registry: &Option<Registry>,
    pointer: Option<String>,
    active: watch::Sender<Arc<Generation>>,
    producer: Option<&KafkaProducer>,
) -> Result<Swapping> {
    let (requests, rx) = mpsc::channel::<SwapRequest>(16);
    let shadow = Arc::new(Shadow::default());
    let controller = Controller {
        registry: registry.clone(),
        active: Arc::new(active),
        runtime: s.runtime_options(),
        workers: s.batching.inference_workers,
        settings: s.registry.clone(),
        shadow: shadow.clone(),
        // What served before, from the registry: rollback works after a restart.
        history: registry
            .as_ref()
            .map(swap::load_history)
            .unwrap_or_default(),
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
        tasks.push(control::spawn(
            &ControlSettings::from_settings(s),
            producer.clone(),
            requests.clone(),
        )?);
    }
    Ok(Swapping {
        requests,
        shadow,
        tasks,
    })
}

/// The policy file named by `policy.file` (checked against the served model's labels and the
/// carried fields), or none.
pub(crate) fn open_policy(s: &Settings, model: &Generation) -> Result<Option<Arc<PolicySource>>> {
    if s.policy.file.is_empty() {
        return Ok(None);
    }
    let fields: Vec<String> = s.output.carry.keys().cloned().collect();
    let source = PolicySource::open(Some(Path::new(&s.policy.file)), &model.labels, &fields)?;
    tracing::info!(file = %s.policy.file, policies = ?source.status().policies, "policy file in force");
    Ok(Some(Arc::new(source)))
}

/// Checks the policy file for changes every `policy.poll_interval_ms`, against the labels of
/// the model served at the time.
pub(crate) fn watch_policy(
    s: &Settings,
    policy: Arc<PolicySource>,
    active: watch::Receiver<Arc<Generation>>,
) -> JoinHandle<()> {
    let every = Duration::from_millis(s.policy.poll_interval_ms);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let labels = active.borrow().labels.clone();
            let p = policy.clone();
            // File reads off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(move || p.reload(&labels)).await;
        }
    })
}

/// How the workers label: `output`, from JSON input when it is JSON, under `policy`.
/// What the stream uses of the schema registry (`[schema_registry]`): the input decoder
/// (input.format = "schema_registry") and the event framing (output.encoding), the event
/// schema registered now.
#[derive(Default)]
pub(crate) struct Schemas {
    pub(crate) registry: Option<Arc<SchemaRegistry>>,
    pub(crate) input: Option<Arc<InputSchemas>>,
    pub(crate) output: Option<Arc<EventEncoder>>,
}

pub(crate) async fn schemas(s: &Settings) -> Result<Schemas> {
    let framed_input = s.input.format == InputFormat::SchemaRegistry;
    let framed_output = s.output.encoding != EventEncoding::Json;
    if !framed_input && !framed_output {
        return Ok(Schemas::default());
    }
    let registry = Arc::new(SchemaRegistry::connect(&s.schema_registry)?);
    let output = if framed_output {
        let encoder = EventEncoder::register(
            &registry,
            s.output.encoding,
            s.output.schema_version,
            &s.kafka.output_topic,
            s.schema_registry.subject_strategy,
        )
        .await?;
        Some(Arc::new(encoder))
    } else {
        None
    };
    let input = if framed_input {
        registry.probe().await?;
        Some(Arc::new(InputSchemas::new(registry.clone())?))
    } else {
        None
    };
    Ok(Schemas {
        registry: Some(registry),
        input,
        output,
    })
}

pub(crate) fn labelling(s: &Settings, policy: Option<&PolicySource>) -> Labelling {
    let json_input = s.input.format.is_json();
    match policy {
        Some(p) => Labelling {
            output: s.output.clone(),
            framing: None,
            json_input,
            policy: p.subscribe(),
        },
        None => Labelling::without_policy(s.output.clone(), json_input),
    }
}

/// The inference core's settings: `batching`, `workers` threads, `outcome_buffer` outcomes
/// ahead of their taker, events made by `labelling`.
pub(crate) fn core_settings(
    s: &Settings,
    workers: usize,
    outcome_buffer: usize,
    labelling: Labelling,
) -> CoreSettings {
    CoreSettings {
        batching: s.batching.clone(),
        labelling,
        workers,
        outcome_buffer,
        // Every text a full set of concurrent requests may post (a request past it waits).
        interactive_queue: (s.api.max_concurrent * s.api.max_texts).clamp(1, 4096),
    }
}

/// The moderators' live view, when `ui.enabled`.
pub(crate) fn live_view(ui: &UiSettings) -> Option<Arc<LiveView>> {
    ui.enabled
        .then(|| Arc::new(LiveView::new(ui.live_size, ui.live_minutes, ui.show_text)))
}

/// What watches the workers besides the outcome queue: the swap shadow and the live view.
pub(crate) fn observers(swapping: &Swapping, live: &Option<Arc<LiveView>>) -> Observers {
    Observers {
        shadow: Some(swapping.shadow.clone() as Arc<dyn BatchWatcher>),
        live: live.clone().map(|l| l as Arc<dyn Watcher>),
    }
}
