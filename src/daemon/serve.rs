//! `emostream serve`: the model behind the classify API, the try-it page and the live view,
//! without Kafka. The same inference core and hot swap as `run` (admin API and registry
//! pointer; the control topic needs Kafka, so `run`).

use crate::daemon::admin::{self, AdminState, Health, ModelAdmin};
use crate::daemon::api::classify::ClassifyApi;
use crate::daemon::config::Settings;
use crate::daemon::pipeline::core::{join_workers, Core};
use crate::daemon::pipeline::workers::WorkerClock;
use crate::daemon::pipeline::Outcome;
use crate::daemon::start;
use crate::daemon::supervise::{self, Faults};
use crate::daemon::telemetry;
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub async fn run(s: Settings) -> Result<()> {
    if !s.api.enabled {
        bail!("config key api.enabled: `emostream serve` answers the classify API only; set it to true");
    }
    let prometheus = telemetry::init_metrics()?;
    // 1. The model, and hot swap through the admin API and the registry pointer.
    let first = start::load_first_model(&s, s.batching.inference_workers)?;
    let (active_tx, active) = start::serve_model(first.generation);
    let swapping = start::start_swapping(&s, &first.registry, first.pointer, active_tx, None)?;
    // 2. The inference core; every comment in it came from a request, answered directly.
    let live = start::live_view(&s.ui);
    let faults = Arc::new(Faults::default());
    let core = Core::start(
        start::core_settings(
            &s,
            s.batching.inference_workers,
            64,
            start::labelling(&s, None),
        ),
        active.clone(),
        start::observers(&swapping, &live),
        faults.clone(),
    )?;
    let strays = tokio::spawn(drop_strays(core.outcomes));
    // 3. The doors: the classify API, the probes, the admin server.
    let classify = Arc::new(ClassifyApi::new(
        core.pending.downgrade(),
        &s.input,
        &s.api,
        active.clone(),
        None,
        false,
    ));
    let health = health(&s, core.clock.clone(), faults.clone());
    let state = AdminState {
        prometheus,
        health: health.clone(),
        access: s.admin_access()?,
        model: Some(ModelAdmin {
            active,
            registry: first.registry,
            swaps: swapping.requests.clone(),
        }),
        extra_metrics: Arc::new(String::new),
        classify: Some(classify.clone()),
        live,
        feedback: None,
        pages: s.ui.enabled,
    };
    let admin_task = admin::serve(
        &s.admin.bind,
        crate::daemon::http_listener::HttpLimits::from_settings(&s.admin),
        state,
    )
    .await?;
    tracing::info!(bind = %s.admin.bind, "emostream serving the classify API (no Kafka)");
    // 4. Until a signal, a fault or the batcher ending on its own.
    let mut batcher = core.batcher;
    let fault = tokio::select! {
        _ = start::shutdown_signal() => None,
        cause = faults.wait() => Some(cause),
        r = &mut batcher => Some(supervise::stage_ended("batcher", r)),
    };
    health.shutting_down.store(true, Ordering::SeqCst);
    classify.close();
    admin_task.abort();
    swapping.stop();
    if let Some(cause) = fault {
        bail!("{cause}; exiting for a restart");
    }
    // 5. No more requests: the batcher and the workers finish what they hold and end (a
    //    request still sending lets go within api.timeout_ms).
    drop(core.pending);
    let limit = Duration::from_millis(s.shutdown.timeout_ms);
    drain(limit, batcher, strays, core.workers).await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits up to `limit` for the batcher and the outcome taker to end, then joins the workers.
async fn drain(
    limit: Duration,
    batcher: JoinHandle<()>,
    strays: JoinHandle<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
) {
    let drained = tokio::time::timeout(limit, async {
        let _ = batcher.await;
        let _ = strays.await;
    })
    .await
    .is_ok();
    if drained {
        join_workers(workers);
    } else {
        tracing::warn!("the pipeline did not drain within shutdown.timeout_ms");
    }
}

/// Every comment here came from a request, whose outcome goes back to it; anything else would
/// be a bug, said loudly rather than kept.
async fn drop_strays(mut outcomes: mpsc::Receiver<Outcome>) {
    while let Some(o) = outcomes.recv().await {
        tracing::error!("an outcome without a request to answer; dropped");
        o.done();
    }
}

/// The probes without Kafka: always assigned and reachable; stuck when a worker is.
fn health(s: &Settings, clock: Arc<WorkerClock>, faults: Arc<Faults>) -> Arc<Health> {
    let stall = Duration::from_millis(s.health.stall_timeout_ms);
    Arc::new(Health {
        model_loaded: AtomicBool::new(true),
        assigned: Arc::new(|| true),
        cluster_reachable: Arc::new(|| true),
        retrying: Arc::new(|| 0),
        undeliverable: Arc::new(|| 0),
        transaction_retrying: Arc::new(|| None),
        schema_registry: Arc::new(|| None),
        stuck: Arc::new(move || clock.stuck(stall)),
        fault: Arc::new(move || faults.cause()),
        shutting_down: AtomicBool::new(false),
    })
}
