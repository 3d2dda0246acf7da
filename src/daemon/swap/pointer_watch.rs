//! Trigger: the registry pointer. A directory's `ROOT/ACTIVE` is watched with file-system
//! notifications and re-read every `poll_interval_ms` as the fallback (network file systems
//! often send no events); an object store's is polled every `poll_interval_ms` with its ETag
//! (unchanged: no body). A changed pointer becomes a swap request; a version already asked for
//! is not asked for again, so a rejected pointer does not loop. A store that does not answer
//! changes nothing that serves: the poll logs it, sets `emostream_registry_reachable` to 0
//! and tries again at the next interval.

use crate::daemon::swap::{self, SwapRequest, Target, Trigger};
use crate::model::registry::{is_unreachable, PointerSeen, Registry, POINTER_FILE};
use notify::{RecursiveMode, Watcher};
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) fn spawn(
    registry: Registry,
    poll: Duration,
    requests: mpsc::Sender<SwapRequest>,
    initial: Option<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (_watcher, mut ping) = watch_pointer(&registry);
        let mut notifications = _watcher.is_some();
        let mut last = initial;
        let mut seen = PointerSeen::default();
        let mut reachable = Reachable::default();
        loop {
            tokio::select! {
                // Without a watcher the channel is closed and recv() is ready at once: poll only.
                got = ping.recv(), if notifications => notifications = got.is_some(),
                _ = tokio::time::sleep(poll) => {}
            }
            // An object store's read is network I/O with retries: off the async workers.
            let (reg, mut s) = (registry.clone(), std::mem::take(&mut seen));
            let read = match tokio::task::spawn_blocking(move || (reg.poll_active(&mut s), s)).await
            {
                Ok((read, s)) => {
                    seen = s;
                    read
                }
                Err(e) => Err(anyhow::anyhow!("the pointer poll panicked: {e}")),
            };
            let Some(version) = reachable.record(read, &registry) else {
                continue;
            };
            if last.as_deref() == Some(version.as_str()) {
                continue;
            }
            // Fetched (and verified) here first: a store that fails mid-download is tried again
            // at the next poll, instead of the version being rejected for good.
            let (reg, v) = (registry.clone(), version.clone());
            let fetched = tokio::task::spawn_blocking(move || reg.resolve(&v))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("fetching panicked: {e}")));
            if let Err(e) = fetched {
                if is_unreachable(&e) {
                    reachable.record(Err(e), &registry);
                    continue;
                }
                // An answer (missing, tampered): the controller rejects it with the reason.
            }
            last = Some(version.clone());
            tracing::info!(version = %version, "registry pointer changed");
            match swap::request(&requests, Target::Version(version), Trigger::Pointer).await {
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
}

/// File-system notifications of changes to a directory registry's `ACTIVE` (none for an object
/// store, or when the watch cannot be set up): the watcher to keep, and its pings.
fn watch_pointer(registry: &Registry) -> (Option<notify::RecommendedWatcher>, mpsc::Receiver<()>) {
    let (ping_tx, ping) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Only a change of the pointer counts. inotify also reports opens and reads
        // (Access): reacting to those made our own re-read of ACTIVE trigger the next one,
        // a busy loop that held a core for as long as the daemon ran.
        let touches_pointer = ev.is_ok_and(|e| {
            !matches!(e.kind, notify::EventKind::Access(_))
                && e.paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| n == POINTER_FILE))
        });
        if touches_pointer {
            let _ = ping_tx.try_send(());
        }
    })
    .and_then(|mut w| match registry.watch_dir() {
        Some(dir) => w.watch(dir, RecursiveMode::NonRecursive).map(|_| Some(w)),
        None => Ok(None),
    });
    match watcher {
        Ok(w) => (w, ping),
        Err(e) => {
            tracing::warn!(error = %e, root = %registry.location(), "no file-system notifications for the registry; polling only");
            (None, ping)
        }
    }
}

/// Whether the last read of the pointer answered: logged when it changes, on /metrics always.
#[derive(Default)]
struct Reachable(Option<bool>);

impl Reachable {
    /// Records a read of the pointer; the version it names, if it answered and names one.
    fn record(
        &mut self,
        read: anyhow::Result<Option<String>>,
        registry: &Registry,
    ) -> Option<String> {
        match read {
            Ok(v) => {
                if self.0 != Some(true) {
                    if self.0.is_some() {
                        tracing::info!(registry = %registry.location(), "registry readable again");
                    }
                    metrics::gauge!("emostream_registry_reachable").set(1.0);
                    self.0 = Some(true);
                }
                v
            }
            Err(e) => {
                if self.0 != Some(false) {
                    tracing::warn!(error = %format!("{e:#}"), registry = %registry.location(), "cannot read the registry pointer; the current model keeps serving");
                    metrics::gauge!("emostream_registry_reachable").set(0.0);
                    self.0 = Some(false);
                }
                metrics::counter!("emostream_registry_poll_errors_total").increment(1);
                None
            }
        }
    }
}
