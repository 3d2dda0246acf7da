//! `emostream serve`: the model behind the classify API, the try-it page and the live view,
//! without Kafka. The same batcher, inference workers and hot swap as `run` (admin API and
//! registry pointer; the control topic needs Kafka, so `run`).

use crate::daemon::admin::{self, AdminState, Health, ModelAdmin};
use crate::daemon::api::{classify::ClassifyApi, live::LiveView};
use crate::daemon::config::Settings;
use crate::daemon::pipeline::{batcher, workers, Admitted, Batch, Outcome};
use crate::daemon::supervise::{self, Faults};
use crate::daemon::swap::{self, shadow::Shadow};
use crate::daemon::{initial_model, load_first, shutdown_signal, start_swapping, telemetry};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub async fn run(s: Settings) -> Result<()> {
    if !s.api.enabled {
        bail!("config key api.enabled: `emostream serve` answers the classify API only; set it to true");
    }
    let prometheus = telemetry::init_metrics()?;
    let (registry, pointer, dir) = initial_model(&s)?;
    let model = load_first(&s, &dir, s.batching.inference_workers)?;
    tracing::info!(model = %model.model_ref.name, version = %model.model_ref.version, dir = %model.dir.display(), "model loaded");
    swap::set_model_info(&model, true);
    let (active_tx, active_rx) = watch::channel(Arc::new(model));
    let shadow = Arc::new(Shadow::default());
    let faults = Arc::new(Faults::default());
    let swapping = start_swapping(
        &s,
        &registry,
        pointer,
        Arc::new(active_tx),
        shadow.clone(),
        None,
    )?;
    let live = s.ui.enabled.then(|| {
        Arc::new(LiveView::new(
            s.ui.live_size,
            s.ui.live_minutes,
            s.ui.show_text,
        ))
    });
    let (pending_tx, pending_rx) = mpsc::channel::<Admitted>(s.batching.backlog_window);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(s.batching.inference_workers);
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<Outcome>(64);
    let (handles, busy) = workers::spawn(
        s.batching.inference_workers,
        batch_rx,
        outcome_tx,
        s.batching.call_limits(),
        s.output.clone(),
        workers::Observers {
            shadow: Some(shadow),
            live: live.clone().map(|l| l as Arc<dyn workers::Watcher>),
        },
        faults.clone(),
    )?;
    let mut batcher = tokio::spawn(batcher::run(
        pending_rx,
        batch_tx,
        active_rx.clone(),
        busy.clone(),
        s.batching.clone(),
    ));
    // Every comment here came from a request, whose outcome goes back to it; anything else
    // would be a bug, said loudly rather than kept.
    let strays = tokio::spawn(async move {
        while let Some(o) = outcome_rx.recv().await {
            tracing::error!("an outcome without a request to answer; dropped");
            o.done();
        }
    });
    let stall = Duration::from_millis(s.health.stall_timeout_ms);
    let health = Arc::new(Health {
        model_loaded: AtomicBool::new(true),
        assigned: Arc::new(|| true),
        cluster_reachable: Arc::new(|| true),
        retrying: Arc::new(|| 0),
        undeliverable: Arc::new(|| 0),
        stuck: {
            let busy = busy.clone();
            Arc::new(move || busy.stuck(stall))
        },
        fault: {
            let f = faults.clone();
            Arc::new(move || f.cause())
        },
        shutting_down: AtomicBool::new(false),
    });
    let classify = Arc::new(ClassifyApi::new(
        pending_tx.downgrade(),
        &s.input,
        &s.api,
        active_rx.clone(),
    ));
    let admin_task = admin::serve(
        &s.admin.bind,
        AdminState {
            prometheus,
            health: health.clone(),
            access: s.admin_access()?,
            model: Some(ModelAdmin {
                active: active_rx.clone(),
                registry,
                swaps: swapping.requests.clone(),
            }),
            extra_metrics: Arc::new(String::new),
            classify: Some(classify.clone()),
            live,
            pages: s.ui.enabled,
        },
    )
    .await?;
    tracing::info!(bind = %s.admin.bind, "emostream serving the classify API (no Kafka)");
    let fault = tokio::select! {
        _ = shutdown_signal() => None,
        cause = faults.wait() => Some(cause),
        r = &mut batcher => Some(supervise::stage_ended("batcher", r)),
    };
    health.shutting_down.store(true, Ordering::SeqCst);
    classify.close();
    admin_task.abort();
    for t in swapping.tasks {
        t.abort();
    }
    if let Some(cause) = fault {
        bail!("{cause}; exiting for a restart");
    }
    // No more requests: the batcher and the workers finish what they hold and end (a request
    // still sending lets go within api.timeout_ms).
    drop(pending_tx);
    let drained = tokio::time::timeout(Duration::from_millis(s.shutdown.timeout_ms), async {
        let _ = batcher.await;
        let _ = strays.await;
    })
    .await
    .is_ok();
    if drained {
        for h in handles {
            let _ = h.join();
        }
    } else {
        tracing::warn!("the pipeline did not drain within shutdown.timeout_ms");
    }
    tracing::info!("stopped");
    Ok(())
}
