//! Trigger: the registry pointer. Watches `ROOT/ACTIVE` with file-system notifications and
//! re-reads it every `poll_interval_ms` as the fallback (network file systems often send no
//! events). A changed pointer becomes a swap request; a version already asked for is not
//! asked for again, so a rejected pointer does not loop.

use crate::daemon::swap::{self, SwapRequest, Target, Trigger};
use crate::model::registry::{Registry, POINTER_FILE};
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
        let (ping_tx, mut ping) = mpsc::channel::<()>(1);
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
        .and_then(|mut w| {
            w.watch(registry.root(), RecursiveMode::NonRecursive)
                .map(|_| w)
        });
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, root = %registry.root().display(), "no file-system notifications for the registry; polling only");
                None
            }
        };
        let mut notifications = true;
        let mut last = initial;
        loop {
            tokio::select! {
                // Without a watcher the channel is closed and recv() is ready at once: poll only.
                got = ping.recv(), if notifications => notifications = got.is_some(),
                _ = tokio::time::sleep(poll) => {}
            }
            let now = match registry.active() {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "unreadable registry pointer");
                    continue;
                }
            };
            let Some(version) = now else { continue };
            if last.as_deref() == Some(version.as_str()) {
                continue;
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
