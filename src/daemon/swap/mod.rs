//! The swap controller: the one code path every trigger (registry pointer, admin API, control
//! topic) ends in. Requests are handled one at a time: resolve the version inside the registry,
//! load and validate the candidate in the background while the old model keeps serving,
//! optionally shadow it on live traffic, then replace the active generation (the batcher picks
//! it up at the next batch boundary). A rejected candidate changes nothing.

pub(crate) mod pointer_watch;
pub(crate) mod shadow;

use crate::backend::generation::{Active, Expectations, Generation};
use crate::backend::ort::RuntimeOptions;
use crate::daemon::config::RegistrySettings;
use crate::daemon::swap::shadow::{Agreement, Shadow};
use crate::model::registry::{check_version_name, Expect, Registry};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Version(String),
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Pointer,
    Admin,
    Control,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Pointer => "pointer",
            Trigger::Admin => "admin",
            Trigger::Control => "control",
        }
    }
}

pub(crate) struct SwapRequest {
    pub(crate) target: Target,
    pub(crate) trigger: Trigger,
    pub(crate) reply: Option<oneshot::Sender<SwapReport>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SwapResult {
    Swapped,
    Unchanged,
    Rejected,
}

impl SwapResult {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SwapResult::Swapped => "swapped",
            SwapResult::Unchanged => "unchanged",
            SwapResult::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SwapReport {
    pub(crate) result: SwapResult,
    /// The version asked for (for a rollback: the one rolled back to).
    pub(crate) requested: Option<String>,
    /// The version serving after the request.
    pub(crate) active: String,
    /// The version serving before, when it changed.
    pub(crate) previous: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) load_seconds: Option<f64>,
    pub(crate) shadow: Option<Agreement>,
}

/// Sends `target` to the controller and waits for its report.
pub(crate) async fn request(
    tx: &mpsc::Sender<SwapRequest>,
    target: Target,
    trigger: Trigger,
) -> anyhow::Result<SwapReport> {
    let (reply, rx) = oneshot::channel();
    tx.send(SwapRequest {
        target,
        trigger,
        reply: Some(reply),
    })
    .await
    .map_err(|_| anyhow::anyhow!("the swap controller has stopped"))?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the swap controller dropped the request"))
}

pub(crate) struct Controller {
    pub(crate) registry: Option<Registry>,
    pub(crate) active: Arc<Active>,
    pub(crate) runtime: RuntimeOptions,
    pub(crate) workers: usize,
    pub(crate) settings: RegistrySettings,
    pub(crate) shadow: Arc<Shadow>,
    /// Versions served before the active one (newest last), for rollback.
    pub(crate) history: Vec<(String, PathBuf)>,
    /// When recent candidate loads started (registry.max_swaps_per_minute).
    pub(crate) loads: std::collections::VecDeque<Instant>,
}

/// Publishes the active model's info gauge (1 for the active version, 0 for the one replaced).
pub(crate) fn set_model_info(m: &Generation, on: bool) {
    let v = if on { 1.0 } else { 0.0 };
    metrics::gauge!("emostream_model_info", "name" => m.model_ref.name.clone(), "version" => m.model_ref.version.clone(), "sha256" => m.model_ref.sha256.clone())
        .set(v);
    if on {
        metrics::gauge!("emostream_execution_provider", "provider" => m.provider()).set(1.0);
    }
}

impl Controller {
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<SwapRequest>) {
        while let Some(req) = rx.recv().await {
            let report = self.handle(&req.target, req.trigger).await;
            metrics::counter!("emostream_model_swaps_total", "result" => report.result.as_str(), "trigger" => req.trigger.as_str()).increment(1);
            match report.result {
                SwapResult::Swapped => {
                    tracing::info!(trigger = req.trigger.as_str(), active = %report.active, previous = ?report.previous, load_seconds = ?report.load_seconds, "model swapped")
                }
                SwapResult::Unchanged => {
                    tracing::debug!(trigger = req.trigger.as_str(), active = %report.active, "model already active")
                }
                SwapResult::Rejected => {
                    tracing::warn!(trigger = req.trigger.as_str(), requested = ?report.requested, reason = ?report.reason, active = %report.active, "model swap rejected; the active model keeps serving")
                }
            }
            if let Some(r) = req.reply {
                let _ = r.send(report);
            }
        }
    }

    fn report(&self, result: SwapResult, requested: Option<String>) -> SwapReport {
        SwapReport {
            result,
            requested,
            active: self.active.borrow().version().to_string(),
            previous: None,
            reason: None,
            load_seconds: None,
            shadow: None,
        }
    }

    fn rejected(&self, requested: Option<String>, reason: String) -> SwapReport {
        SwapReport {
            reason: Some(reason),
            ..self.report(SwapResult::Rejected, requested)
        }
    }

    /// One swap request: resolve, load and validate (off the runtime), optionally compare in
    /// shadow, then promote. Any failure leaves the running model serving.
    async fn handle(&mut self, target: &Target, trigger: Trigger) -> SwapReport {
        let (version, dir) = match self.resolve(target).await {
            Ok(found) => found,
            Err(report) => return report,
        };
        if self.active.borrow().dir == dir && *target != Target::Rollback {
            return self.report(SwapResult::Unchanged, Some(version));
        }
        // Each load costs a model's memory and a core for seconds: a flood of requests (or a
        // pointer flapping) must not starve the stream.
        let started = Instant::now();
        while self
            .loads
            .front()
            .is_some_and(|t| started.duration_since(*t) > Duration::from_secs(60))
        {
            self.loads.pop_front();
        }
        if self.loads.len() >= self.settings.max_swaps_per_minute {
            return self.rejected(
                Some(version),
                format!(
                    "rate limited: {} swaps in the last minute (registry.max_swaps_per_minute)",
                    self.loads.len()
                ),
            );
        }
        self.loads.push_back(started);
        let candidate = match self.load(&dir).await {
            Ok(m) => m,
            Err(reason) => return self.rejected(Some(version), reason),
        };
        let load_seconds = started.elapsed().as_secs_f64();
        metrics::histogram!("emostream_model_load_seconds").record(load_seconds);
        let mut shadow = None;
        if self.settings.shadow_batches > 0 {
            let agreement = self.compare_in_shadow(&candidate).await;
            if let Err(reason) = self.shadow_verdict(agreement) {
                return SwapReport {
                    shadow: agreement,
                    load_seconds: Some(load_seconds),
                    ..self.rejected(Some(version), reason)
                };
            }
            shadow = agreement;
        }
        let previous = self.promote(target, candidate, &dir);
        // A pointer swap follows a change made elsewhere (whoever moved ACTIVE keeps the
        // registry's record); every other trigger records what it did.
        if trigger != Trigger::Pointer {
            self.persist(&dir, &version).await;
        }
        SwapReport {
            previous: Some(previous),
            load_seconds: Some(load_seconds),
            shadow,
            ..self.report(SwapResult::Swapped, Some(version))
        }
    }

    /// The version and directory a request names; a rejection when there is none. A registry
    /// version is resolved (an object store's downloaded and verified) on a blocking thread.
    async fn resolve(&self, target: &Target) -> Result<(String, PathBuf), SwapReport> {
        let (version, dir) = match target {
            Target::Version(v) => (v.clone(), None),
            Target::Rollback => match self.history.last() {
                Some((v, d)) => (v.clone(), Some(d.clone())),
                None => return Err(self.rejected(None, "no previous model to roll back to".into())),
            },
        };
        let reg = match (&self.registry, dir) {
            // A directory outside the registry (model.dir) is served as it is.
            (Some(reg), Some(d)) if !reg.holds(&d) => return Ok((version, d)),
            (None, Some(d)) => return Ok((version, d)),
            (Some(reg), _) => reg.clone(),
            (None, None) => {
                return Err(self.rejected(
                    Some(version),
                    "no model registry is configured (registry.root)".into(),
                ))
            }
        };
        let v = version.clone();
        match tokio::task::spawn_blocking(move || reg.resolve(&v)).await {
            Ok(Ok(d)) => Ok((version, d)),
            Ok(Err(e)) => Err(self.rejected(Some(version), format!("{e:#}"))),
            Err(e) => Err(self.rejected(Some(version), format!("resolving panicked: {e}"))),
        }
    }

    /// Loads and validates a candidate on a blocking thread while the old model serves.
    async fn load(&self, dir: &std::path::Path) -> Result<Arc<Generation>, String> {
        let expect = Expectations {
            labels: Some(self.active.borrow().labels.clone()),
            label_map: self.settings.label_map.clone(),
        };
        let (runtime, workers, d) = (self.runtime.clone(), self.workers, dir.to_path_buf());
        match tokio::task::spawn_blocking(move || Generation::load(&d, &runtime, workers, &expect))
            .await
        {
            Ok(Ok(m)) => Ok(Arc::new(m)),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(format!("loader crashed: {e}")),
        }
    }

    /// Runs the candidate beside the active model on sampled live batches until
    /// `registry.shadow_batches` were compared or `registry.shadow_timeout_ms` passed.
    async fn compare_in_shadow(&self, candidate: &Arc<Generation>) -> Option<Agreement> {
        let done = self.shadow.start(
            candidate.clone(),
            self.settings.shadow_batches,
            self.settings.shadow_sample_every,
        );
        let limit = Duration::from_millis(self.settings.shadow_timeout_ms);
        let agreement = match tokio::time::timeout(limit, done).await {
            Ok(Ok(a)) => Some(a),
            _ => self.shadow.stop(),
        };
        if let Some(a) = agreement {
            metrics::gauge!("emostream_shadow_label_agreement").set(a.exact_match);
            metrics::gauge!("emostream_shadow_mean_jaccard").set(a.mean_jaccard);
            tracing::info!(
                candidate = candidate.version(),
                batches = a.batches,
                comments = a.comments,
                exact_match = a.exact_match,
                mean_jaccard = a.mean_jaccard,
                "shadow agreement"
            );
        }
        agreement
    }

    /// With `registry.shadow_min_agreement` set, the shadow comparison must be complete and
    /// agree at least that much.
    fn shadow_verdict(&self, agreement: Option<Agreement>) -> Result<(), String> {
        let min = self.settings.shadow_min_agreement;
        if min <= 0.0 {
            return Ok(());
        }
        match agreement.filter(|a| a.batches >= self.settings.shadow_batches) {
            Some(a) if a.exact_match >= min => Ok(()),
            Some(a) => Err(format!(
                "shadow label agreement {:.3} is below registry.shadow_min_agreement {min}",
                a.exact_match
            )),
            None => Err(format!(
                "shadow evaluation compared {} of {} batches before registry.shadow_timeout_ms",
                agreement.map_or(0, |a| a.batches),
                self.settings.shadow_batches
            )),
        }
    }

    /// The swap itself: new batches are tokenized and labelled by the candidate from here;
    /// batches already formed finish on the old generation, freed with its last batch. Returns
    /// the version replaced.
    fn promote(
        &mut self,
        target: &Target,
        candidate: Arc<Generation>,
        dir: &std::path::Path,
    ) -> String {
        set_model_info(&candidate, true);
        let old = self.active.send_replace(candidate);
        if old.dir != dir {
            set_model_info(&old, false);
        }
        if old.provider() != self.active.borrow().provider() {
            metrics::gauge!("emostream_execution_provider", "provider" => old.provider()).set(0.0);
        }
        let previous = old.version().to_string();
        match target {
            Target::Rollback => {
                self.history.pop();
            }
            Target::Version(_) => self.history.push((previous.clone(), old.dir.clone())),
        }
        drop(old);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!("emostream_model_last_swap_timestamp_seconds").set(now);
        previous
    }

    /// Keeps the registry in step with what serves now, so a restart serves it and can still
    /// roll back: `ACTIVE` names the version (removed when a directory outside the registry,
    /// `model.dir`, serves), `HISTORY` holds what served before. On a blocking thread (an
    /// object store is network I/O); a failure is logged, the swap stands.
    async fn persist(&self, dir: &std::path::Path, version: &str) {
        let Some(reg) = self.registry.clone() else {
            return;
        };
        let in_registry = reg.holds(dir);
        let entries: Vec<String> = self
            .history
            .iter()
            .map(|(v, d)| history_entry(&reg, v, d))
            .collect();
        let version = version.to_string();
        let done = tokio::task::spawn_blocking(move || {
            if in_registry {
                if reg.active().ok().flatten().as_deref() != Some(version.as_str()) {
                    reg.set_active(&version, Expect::Unchanged)?;
                }
            } else {
                reg.clear_active()?;
            }
            reg.set_history(&entries)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "could not update the registry's pointer or history")
            }
            Err(e) => tracing::warn!(error = %e, "updating the registry panicked"),
        }
    }
}

/// A `HISTORY` line: the version when it lives in the registry, else `dir`, the version and
/// the directory, tab-separated.
fn history_entry(reg: &Registry, version: &str, dir: &std::path::Path) -> String {
    if reg.holds(dir) {
        version.to_string()
    } else {
        format!("dir\t{version}\t{}", dir.display())
    }
}

/// The rollback history a registry holds (oldest first), each entry with its directory;
/// entries whose version or directory is gone are skipped (with a warning).
pub(crate) fn load_history(reg: &Registry) -> Vec<(String, PathBuf)> {
    let lines = match reg.history() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "unreadable registry history; rollback starts empty");
            return Vec::new();
        }
    };
    lines
        .iter()
        .filter_map(|line| {
            let found = match line.split('\t').collect::<Vec<_>>().as_slice() {
                ["dir", version, dir] => {
                    let dir = PathBuf::from(dir);
                    dir.is_dir().then(|| (version.to_string(), dir))
                }
                // A directory registry's versions are checked now; an object store's are
                // resolved (downloaded) only when a rollback asks for one.
                [version] => match reg {
                    Registry::Disk(_) => reg.resolve(version).ok(),
                    Registry::Object(_) => check_version_name(version)
                        .ok()
                        .map(|()| reg.version_dir(version)),
                }
                .map(|d| (version.to_string(), d)),
                _ => None,
            };
            if found.is_none() {
                tracing::warn!(entry = %line, "registry history entry no longer resolves; skipped");
            }
            found
        })
        .collect()
}
