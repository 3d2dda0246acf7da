//! The model registry, wherever it is kept: a directory (disk_registry.rs) or an object store,
//! `s3://` `gs://` `az://` (object_registry.rs). One layout — `versions/<version>/` model
//! directories, `ACTIVE` naming the one to serve, `HISTORY` for rollback — and one set of
//! guarantees: versions are immutable, `ACTIVE` is replaced whole, every version is verified
//! before it is served. The daemon and `train` use this type and do not care which it is.

use crate::model::disk_registry::DiskRegistry;
use crate::model::object_registry::{self, ObjectRegistry};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::model::registry_layout::Expect;
pub(crate) use crate::model::registry_layout::{check_version_name, POINTER_FILE, VERSIONS_DIR};

/// A model registry: a directory or an object store.
#[derive(Debug, Clone)]
pub enum Registry {
    Disk(DiskRegistry),
    Object(Arc<ObjectRegistry>),
}

/// What a pointer poll remembers between polls: the object's ETag (a directory needs nothing).
#[derive(Debug, Default)]
pub(crate) struct PointerSeen(Option<object_registry::Pointer>);

/// Whether `e` is a store that did not answer (worth trying again), not an answer.
pub(crate) fn is_unreachable(e: &anyhow::Error) -> bool {
    object_registry::is_unreachable(e)
}

/// Where an object store's versions are downloaded when no cache directory is configured.
pub fn default_cache_dir() -> PathBuf {
    std::env::temp_dir().join("emostream-registry-cache")
}

impl Registry {
    /// Opens the registry at `root`: an `s3://`, `gs://` or `az://` URL (versions are
    /// downloaded into `cache`), or a directory (created if missing). Anything else that looks
    /// like a URL is refused rather than taken for a directory named `s3:`.
    pub fn open(root: &str, cache: &Path) -> Result<Registry> {
        Registry::check_location(root)?;
        if object_registry::is_object_url(root) {
            return Ok(Registry::Object(Arc::new(ObjectRegistry::open(
                root, cache,
            )?)));
        }
        Ok(Registry::Disk(DiskRegistry::open(Path::new(root))?))
    }

    /// Checks `root` names a registry this build can open, without touching it (start-up
    /// validation): a supported object-store URL, or a path that does not look like a URL.
    pub fn check_location(root: &str) -> Result<()> {
        if object_registry::is_object_url(root) {
            return object_registry::check_url(root);
        }
        // A relative path whose first component starts like a URL scheme ("s3:", "gs:x").
        let first = Path::new(root).components().next();
        if let Some(std::path::Component::Normal(c)) = first {
            let c = c.to_string_lossy();
            let scheme = c.split_once(':').map(|(s, _)| s);
            if scheme.is_some_and(|s| {
                s.chars().next().is_some_and(|f| f.is_ascii_alphabetic())
                    && s.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "+.-".contains(ch))
            }) {
                bail!("registry location {root:?} looks like a URL but is not one: use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or a directory");
            }
        }
        Ok(())
    }

    /// Opens `root` only if it already holds a registry (a directory with `versions/`; any
    /// object-store URL, which has no such test short of listing it).
    pub fn open_existing(root: &str, cache: &Path) -> Result<Option<Registry>> {
        if !object_registry::is_object_url(root) && !Path::new(root).join(VERSIONS_DIR).is_dir() {
            return Ok(None);
        }
        Registry::open(root, cache).map(Some)
    }

    /// Where it is, for messages and the admin API (a URL holds no secret: credentials come
    /// from the environment).
    pub fn location(&self) -> String {
        match self {
            Registry::Disk(d) => d.root().display().to_string(),
            Registry::Object(o) => o.url().to_string(),
        }
    }

    /// Where `ACTIVE` is, for messages.
    pub fn pointer_location(&self) -> String {
        format!("{}/{POINTER_FILE}", self.location())
    }

    /// The directory to watch for pointer changes, when the registry is one.
    pub(crate) fn watch_dir(&self) -> Option<&Path> {
        match self {
            Registry::Disk(d) => Some(d.root()),
            Registry::Object(_) => None,
        }
    }

    /// Whether `dir` is one of the registry's versions (as `resolve` hands them out).
    pub(crate) fn holds(&self, dir: &Path) -> bool {
        match self {
            Registry::Disk(d) => dir.starts_with(d.root().join(VERSIONS_DIR)),
            Registry::Object(o) => dir.starts_with(o.cache()),
        }
    }

    /// Where `resolve` puts `version` (nothing is checked or downloaded).
    pub(crate) fn version_dir(&self, version: &str) -> PathBuf {
        match self {
            Registry::Disk(d) => d.root().join(VERSIONS_DIR).join(version),
            Registry::Object(o) => o.cache().join(version),
        }
    }

    /// The local directory of `version`, verified (an object store's is downloaded first).
    /// Blocking: call it off an async runtime's workers.
    pub fn resolve(&self, version: &str) -> Result<PathBuf> {
        match self {
            Registry::Disk(d) => d.resolve(version),
            Registry::Object(o) => o.resolve(version),
        }
    }

    /// The version `ACTIVE` names, if it exists.
    pub fn active(&self) -> Result<Option<String>> {
        match self {
            Registry::Disk(d) => d.active(),
            Registry::Object(o) => o.active(),
        }
    }

    /// The version `ACTIVE` names now; for an object store a conditional read that costs no
    /// body while it has not changed since `seen`.
    pub(crate) fn poll_active(&self, seen: &mut PointerSeen) -> Result<Option<String>> {
        match self {
            Registry::Disk(d) => d.active(),
            Registry::Object(o) => {
                if let object_registry::Poll::Changed(now) = o.poll_pointer(seen.0.as_ref())? {
                    seen.0 = now;
                }
                Ok(seen.0.as_ref().map(|p| p.version.clone()))
            }
        }
    }

    /// Points `ACTIVE` at `version` (a published version) if `expect` holds.
    pub fn set_active(&self, version: &str, expect: Expect<'_>) -> Result<()> {
        match self {
            Registry::Disk(d) => d.set_active(version, expect),
            Registry::Object(o) => o.set_active(version, expect),
        }
    }

    /// Removes `ACTIVE` (a rollback to `model.dir`, outside the registry).
    pub(crate) fn clear_active(&self) -> Result<()> {
        match self {
            Registry::Disk(d) => d.clear_active(),
            Registry::Object(o) => o.clear_active(),
        }
    }

    /// The rollback history, oldest first.
    pub(crate) fn history(&self) -> Result<Vec<String>> {
        match self {
            Registry::Disk(d) => d.history(),
            Registry::Object(o) => o.history(),
        }
    }

    pub(crate) fn set_history(&self, entries: &[String]) -> Result<()> {
        match self {
            Registry::Disk(d) => d.set_history(entries),
            Registry::Object(o) => o.set_history(entries),
        }
    }

    /// Published versions, sorted by name.
    pub(crate) fn versions(&self) -> Result<Vec<String>> {
        match self {
            Registry::Disk(d) => d.versions(),
            Registry::Object(o) => o.versions(),
        }
    }

    /// Publishes model directory `src` as `version` (default: its card's); returns the version
    /// and where it now is.
    pub fn publish(&self, src: &Path, version: Option<&str>) -> Result<(String, String)> {
        match self {
            Registry::Disk(d) => d
                .publish(src, version)
                .map(|(v, dir)| (v, dir.display().to_string())),
            Registry::Object(o) => o.publish(src, version),
        }
        .with_context(|| format!("publishing into {}", self.location()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_like_root_that_is_no_store_is_refused_not_made_a_directory() {
        let cwd = tempfile::tempdir().unwrap();
        let cache = cwd.path().join("cache");
        for root in ["s3:/models/prod", "s3:models"] {
            let e = format!("{:#}", Registry::open(root, &cache).unwrap_err());
            assert!(e.contains("looks like a URL"), "{root}: {e}");
            assert!(
                !Path::new("s3:").exists() && !Path::new("s3:models").exists(),
                "{root} made a directory"
            );
        }
        let e = format!(
            "{:#}",
            Registry::open("ftp://host/models", &cache).unwrap_err()
        );
        assert!(e.contains("ftp://host/models"), "{e}");
    }
}
