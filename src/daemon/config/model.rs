//! The model's sections: `[model]` (the directory served without a registry), `[registry]`
//! (versions, swap triggers, shadow mode) and `[runtime]` (ONNX Runtime).

use super::check;
use crate::backend::ort::OptLevel;
use anyhow::Result;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistrySettings {
    pub(crate) root: String,
    /// Where versions from an object-store registry are downloaded (empty: the default).
    pub(crate) cache_dir: String,
    pub(crate) watch: bool,
    pub(crate) poll_interval_ms: u64,
    pub(crate) control_topic: String,
    /// The HMAC key every control message must be signed with (a secret file).
    pub(crate) control_key_file: String,
    /// Control messages issued longer ago (or ahead) than this are refused.
    pub(crate) control_max_age_ms: u64,
    /// Candidate loads allowed per minute, all triggers together.
    pub(crate) max_swaps_per_minute: usize,
    pub(crate) replica_id: String,
    #[serde(default)]
    pub(crate) label_map: BTreeMap<String, String>,
    pub(crate) shadow_batches: usize,
    pub(crate) shadow_sample_every: u64,
    pub(crate) shadow_min_agreement: f64,
    pub(crate) shadow_timeout_ms: u64,
}

impl RegistrySettings {
    /// Where versions from an object-store registry are downloaded and verified.
    pub(crate) fn cache_dir(&self) -> std::path::PathBuf {
        if self.cache_dir.is_empty() {
            crate::model::registry::default_cache_dir()
        } else {
            std::path::PathBuf::from(&self.cache_dir)
        }
    }

    /// This replica's name in control-topic replies: `replica_id`, else host name and pid.
    pub(crate) fn replica(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("{host}-{}", std::process::id())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeSettings {
    pub(crate) library: String,
    pub(crate) provider: ProviderKind,
    pub(crate) device: i32,
    pub(crate) fallback_to_cpu: bool,
    pub(crate) intra_threads: usize,
    pub(crate) inter_threads: usize,
    pub(crate) intra_op_spinning: bool,
    pub(crate) optimization: OptLevel,
}

/// `runtime.provider`: where inference runs (`runtime.device` picks the GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProviderKind {
    Cpu,
    Cuda,
    Tensorrt,
}

impl ModelSettings {
    pub(super) fn validate(&self) -> Result<()> {
        check(
            !self.dir.as_os_str().is_empty(),
            "model.dir",
            "must not be empty",
        )?;
        Ok(())
    }
}

impl RegistrySettings {
    /// Every `registry.*` key on its own: the swap triggers, shadow mode and label map.
    pub(super) fn validate(&self) -> Result<()> {
        let g = self;
        if !g.root.is_empty() {
            if let Err(e) = crate::model::registry::Registry::check_location(&g.root) {
                check(false, "registry.root", format!("{e:#}"))?;
            }
        }
        check(
            g.poll_interval_ms >= 50,
            "registry.poll_interval_ms",
            format!("must be at least 50 (got {})", g.poll_interval_ms),
        )?;
        check(
            g.control_topic.is_empty() || !g.root.is_empty(),
            "registry.control_topic",
            "needs registry.root (control messages name versions in the registry)",
        )?;
        check(
            g.control_topic.is_empty() || !g.control_key_file.is_empty(),
            "registry.control_key_file",
            "is required with registry.control_topic: control messages must be signed",
        )?;
        check(
            (1000..=3_600_000).contains(&g.control_max_age_ms),
            "registry.control_max_age_ms",
            "must be between 1000 and 3600000 (an hour): a longer window is a longer replay window",
        )?;
        check(
            g.max_swaps_per_minute >= 1,
            "registry.max_swaps_per_minute",
            "must be at least 1",
        )?;
        check(
            g.replica_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "registry.replica_id",
            "use letters, digits and . _ -",
        )?;
        check(
            g.shadow_sample_every >= 1,
            "registry.shadow_sample_every",
            "must be at least 1",
        )?;
        check(
            (0.0..=1.0).contains(&g.shadow_min_agreement),
            "registry.shadow_min_agreement",
            format!("must be between 0 and 1 (got {})", g.shadow_min_agreement),
        )?;
        for (from, to) in &g.label_map {
            check(
                !from.is_empty() && !to.is_empty(),
                &format!("registry.label_map.{from}"),
                "label names must not be empty",
            )?;
        }
        Ok(())
    }
}

impl RuntimeSettings {
    pub(super) fn validate(&self) -> Result<()> {
        let r = self;
        check(r.device >= 0, "runtime.device", "must be >= 0")?;
        check(
            (1..=256).contains(&r.intra_threads),
            "runtime.intra_threads",
            format!("must be between 1 and 256 (got {})", r.intra_threads),
        )?;
        check(
            (1..=256).contains(&r.inter_threads),
            "runtime.inter_threads",
            format!("must be between 1 and 256 (got {})", r.inter_threads),
        )?;
        Ok(())
    }
}
