//! The model registry in object storage (`s3://bucket/prefix`, `gs://…`, `az://…`): the disk
//! registry's layout — `PREFIX/versions/<version>/<files>`, `PREFIX/ACTIVE`, `PREFIX/HISTORY` —
//! with its guarantees kept by the store's conditional writes instead of renames:
//! - a version is immutable: each of its objects is written only if absent (`PutMode::Create`),
//!   its card (`model.json`) last, after the uploaded files were read back and verified; a
//!   version without a card is not a version;
//! - `ACTIVE` changes only by a write conditional on the ETag it was read with (If-Match), so of
//!   two publishers activating at once exactly one wins and the other learns of the conflict;
//! - a version is downloaded once into a local cache directory and verified (model.onnx sha256
//!   and the card's digest) before it is served; the cache keeps a bounded number of versions.
//!
//! The store's API is async; the registry's callers are not (the CLI, the swap controller's
//! blocking loads), so calls run on the registry's own small runtime, on a scoped thread (a
//! caller inside another runtime cannot block on one directly).

use crate::model::dir::{ModelDir, CARD_FILE};
use crate::model::registry_layout::{
    check_version_name, publishable, Expect, HISTORY_FILE, POINTER_FILE, VERSIONS_DIR,
};
use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, ObjectStore, ObjectStoreExt, ObjectStoreScheme,
    PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Versions kept in the local cache (the least recently used beyond this are removed; the one
/// being resolved never is).
const CACHED_VERSIONS: usize = 3;

/// What `ACTIVE` holds, with the version of the object it was read from (for a conditional
/// write).
#[derive(Debug, Clone)]
pub(crate) struct Pointer {
    pub(crate) version: String,
    tag: UpdateVersion,
}

/// A poll of `ACTIVE` against the ETag seen last.
#[derive(Debug)]
pub(crate) enum Poll {
    Unchanged,
    Changed(Option<Pointer>),
}

pub struct ObjectRegistry {
    /// The location as configured (for messages; it holds no secret: credentials come from the
    /// environment).
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    cache: PathBuf,
    /// Always `Some` until dropped (taken then, to shut it down without blocking).
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectRegistry {
    // The last handle may go inside an async task (a daemon's pointer poller at shutdown), where
    // dropping a runtime the normal way blocks and panics; nothing of ours is left running on it.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for ObjectRegistry {
    // The store's builders print secrets in Debug; the built store does not, but there is no
    // need to show it at all.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRegistry")
            .field("url", &self.url)
            .field("cache", &self.cache)
            .finish()
    }
}

/// Whether `root` names an object store (a URL with a scheme) rather than a directory.
pub fn is_object_url(root: &str) -> bool {
    root.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// Checks `url` names a store this build supports (S3, GCS, Azure), without connecting.
pub(crate) fn check_url(url: &str) -> Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("registry location {url:?}"))?;
    // The URL is logged and shown by the admin API: it must hold no secret.
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
        bail!("registry location: a URL with user info or a query string is refused (it is logged and shown by /admin/model); give credentials through the environment");
    }
    let (scheme, _) = ObjectStoreScheme::parse(&parsed)
        .with_context(|| format!("registry location {url:?}: not an object store URL"))?;
    match scheme {
        ObjectStoreScheme::AmazonS3
        | ObjectStoreScheme::GoogleCloudStorage
        | ObjectStoreScheme::MicrosoftAzure => Ok(()),
        other => bail!(
            "registry location {url:?}: {other:?} is not supported (use s3://, gs://, az:// or a directory)"
        ),
    }
}

/// Store calls give up after a few seconds: serving must not wait on the store, and a CLI
/// should say the store is unreachable rather than retry for the crate's default 3 minutes.
fn fail_fast() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(10),
    }
}

/// The store `url` names, configured from the environment the way each cloud's tools are
/// (AWS_*: keys, endpoint, web identity for pods; GOOGLE_*; AZURE_*), and the key prefix.
fn store_for(url: &str) -> Result<(Arc<dyn ObjectStore>, StorePath)> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    check_url(url)?;
    let parsed = url::Url::parse(url).with_context(|| format!("registry location {url:?}"))?;
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed)
        .with_context(|| format!("registry location {url:?}: not an object store URL"))?;
    let connect = (ClientConfigKey::ConnectTimeout, "2s");
    let timeout = (ClientConfigKey::Timeout, "30s");
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(url)
                .with_retry(fail_fast())
                .with_config(AmazonS3ConfigKey::Client(connect.0), connect.1)
                .with_config(AmazonS3ConfigKey::Client(timeout.0), timeout.1)
                .build()
                .with_context(|| format!("registry location {url:?}"))?,
        ),
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_retry(fail_fast())
                .with_config(GoogleConfigKey::Client(connect.0), connect.1)
                .with_config(GoogleConfigKey::Client(timeout.0), timeout.1)
                .build()
                .with_context(|| format!("registry location {url:?}"))?,
        ),
        ObjectStoreScheme::MicrosoftAzure => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(fail_fast())
                .with_config(AzureConfigKey::Client(connect.0), connect.1)
                .with_config(AzureConfigKey::Client(timeout.0), timeout.1)
                .build()
                .with_context(|| format!("registry location {url:?}"))?,
        ),
        other => bail!("registry location {url:?}: {other:?} is not supported"),
    };
    Ok((store, prefix))
}

/// This registry's part of the cache directory: `cache/<sha256 of the URL, 16 hex>`, so two
/// registries (staging, prod) never share a version's directory. Created private (0700) and
/// refused if another user owns it: whatever is in it is served.
fn own_cache(url: &str, cache: &Path) -> Result<PathBuf> {
    use sha2::Digest;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let digest = sha2::Sha256::digest(url.trim_end_matches('/').as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let dir = cache.join(hex);
    for d in [cache, dir.as_path()] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .with_context(|| format!("creating the registry cache {}", d.display()))?;
    }
    let meta =
        std::fs::metadata(&dir).with_context(|| format!("the registry cache {}", dir.display()))?;
    // /proc/self belongs to this process's (effective) user.
    let me = std::fs::metadata("/proc/self").map_or(meta.uid(), |m| m.uid());
    if meta.uid() != me {
        bail!(
            "the registry cache {} belongs to uid {}, not to this process (uid {me}): set registry.cache_dir to a directory of this user's",
            dir.display(),
            meta.uid()
        );
    }
    Ok(dir)
}

/// Whether `e` is the store failing to answer (network, timeout, server error) rather than an
/// answer (missing object, failed verification): worth trying again later.
pub(crate) fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<object_store::Error>().is_some_and(|oe| {
            !matches!(
                oe,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotModified { .. }
                    | object_store::Error::InvalidPath { .. }
            )
        })
    })
}

fn key(prefix: &StorePath, rel: &str) -> StorePath {
    StorePath::from_iter(prefix.parts().chain(StorePath::from(rel).parts()))
}

fn is_missing(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl ObjectRegistry {
    /// Opens the registry at `url`; versions are cached under `cache`. Nothing is read yet: a
    /// store that is down shows on the first call.
    pub fn open(url: &str, cache: &Path) -> Result<ObjectRegistry> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("registry-store")
            .enable_all()
            .build()
            .context("starting the registry's runtime")?;
        // Building a cloud client needs a runtime around it (reqwest).
        let built = {
            let _in = rt.enter();
            store_for(url).and_then(|(store, prefix)| Ok((store, prefix, own_cache(url, cache)?)))
        };
        match built {
            Ok((store, prefix, cache)) => Ok(ObjectRegistry {
                url: url.trim_end_matches('/').to_string(),
                store,
                prefix,
                cache,
                rt: Some(rt),
            }),
            Err(e) => {
                // This may run inside the daemon's runtime, where dropping ours the normal way
                // panics.
                rt.shutdown_background();
                Err(e)
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn cache(&self) -> &Path {
        &self.cache
    }

    /// Runs a store call to completion from any thread, inside a runtime or not.
    fn run<T: Send>(&self, fut: impl std::future::Future<Output = T> + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| self.rt.as_ref().expect("runtime until drop").block_on(fut))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn key(&self, rel: &str) -> StorePath {
        key(&self.prefix, rel)
    }

    /// `ACTIVE`, with the object version a conditional write needs.
    pub(crate) fn pointer(&self) -> Result<Option<Pointer>> {
        let at = self.key(POINTER_FILE);
        self.run(async {
            match self.store.get(&at).await {
                Ok(got) => {
                    let tag = UpdateVersion {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    let bytes = got.bytes().await?;
                    Ok(Some((bytes, tag)))
                }
                Err(e) if is_missing(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .with_context(|| format!("reading {}/{POINTER_FILE}", self.url))?
        .map(|(bytes, tag)| {
            let version = String::from_utf8_lossy(&bytes).trim().to_string();
            check_version_name(&version).with_context(|| format!("{}/{POINTER_FILE}", self.url))?;
            Ok(Pointer { version, tag })
        })
        .transpose()
    }

    /// The version `ACTIVE` names, if it exists.
    pub fn active(&self) -> Result<Option<String>> {
        Ok(self.pointer()?.map(|p| p.version))
    }

    /// Reads `ACTIVE` unless it still has the ETag `seen` (a cheap poll: the store answers
    /// 304 Not Modified without the body).
    pub(crate) fn poll_pointer(&self, seen: Option<&Pointer>) -> Result<Poll> {
        let Some(tag) = seen.and_then(|p| p.tag.e_tag.clone()) else {
            return Ok(Poll::Changed(self.pointer()?));
        };
        let at = self.key(POINTER_FILE);
        let opts = GetOptions::new()
            .with_if_none_match(Some(tag))
            .with_head(true);
        match self.run(self.store.get_opts(&at, opts)) {
            Err(object_store::Error::NotModified { .. }) => Ok(Poll::Unchanged),
            Ok(_) => Ok(Poll::Changed(self.pointer()?)),
            Err(e) if is_missing(&e) => Ok(Poll::Changed(None)),
            Err(e) => Err(e).with_context(|| format!("polling {}/{POINTER_FILE}", self.url)),
        }
    }

    /// Points `ACTIVE` at `version` (which must be a published version) with a write
    /// conditional on what was read: a concurrent change makes this fail, naming it.
    pub fn set_active(&self, version: &str, expect: Expect<'_>) -> Result<()> {
        check_version_name(version)?;
        if !self.is_published(version)? {
            bail!("version {version:?} is not published in {}", self.url);
        }
        let current = self.pointer()?;
        if let Expect::Names(want) = expect {
            let now = current.as_ref().map(|p| p.version.as_str());
            if now != want {
                bail!(
                    "{}/{POINTER_FILE} names {} where {} was expected: another publisher activated a version first; nothing changed",
                    self.url,
                    now.map_or("no version".to_string(), |v| format!("{v:?}")),
                    want.map_or("no version".to_string(), |v| format!("{v:?}")),
                );
            }
        }
        let mode = match &current {
            Some(p) => PutMode::Update(p.tag.clone()),
            None => PutMode::Create,
        };
        let at = self.key(POINTER_FILE);
        let body = PutPayload::from(format!("{version}\n"));
        match self.run(self.store.put_opts(&at, body, PutOptions::from(mode))) {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => {
                let now = self.active().ok().flatten();
                bail!(
                    "conflict: {}/{POINTER_FILE} changed while activating {version:?} (it now names {}): another publisher activated at the same time; nothing changed",
                    self.url,
                    now.map_or("no version".to_string(), |v| format!("{v:?}"))
                )
            }
            Err(e) => Err(e).with_context(|| format!("writing {}/{POINTER_FILE}", self.url)),
        }
    }

    /// Removes `ACTIVE` (a rollback to a directory outside the registry).
    pub(crate) fn clear_active(&self) -> Result<()> {
        let at = self.key(POINTER_FILE);
        match self.run(self.store.delete(&at)) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}/{POINTER_FILE}", self.url)),
        }
    }

    /// The rollback history, oldest first.
    pub(crate) fn history(&self) -> Result<Vec<String>> {
        let at = self.key(HISTORY_FILE);
        let text = self.run(async {
            match self.store.get(&at).await {
                Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())),
                Err(e) if is_missing(&e) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let text = text.with_context(|| format!("reading {}/{HISTORY_FILE}", self.url))?;
        Ok(text
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Replaces the rollback history (one write: a reader sees the old or the new one).
    pub(crate) fn set_history(&self, entries: &[String]) -> Result<()> {
        let at = self.key(HISTORY_FILE);
        let body: String = entries.iter().map(|e| format!("{e}\n")).collect();
        self.run(self.store.put(&at, PutPayload::from(body)))
            .with_context(|| format!("writing {}/{HISTORY_FILE}", self.url))?;
        Ok(())
    }

    /// Whether `version`'s card is in the store (a version is published once its card is).
    pub(crate) fn is_published(&self, version: &str) -> Result<bool> {
        let card = self.key(&format!("{VERSIONS_DIR}/{version}/{CARD_FILE}"));
        match self.run(self.store.head(&card)) {
            Ok(_) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => {
                Err(e).with_context(|| format!("looking up version {version:?} in {}", self.url))
            }
        }
    }

    /// Published versions, sorted by name.
    pub(crate) fn versions(&self) -> Result<Vec<String>> {
        let under = self.key(VERSIONS_DIR);
        let listed = self
            .run(self.store.list_with_delimiter(Some(&under)))
            .with_context(|| format!("listing {}/{VERSIONS_DIR}", self.url))?;
        let mut out = Vec::new();
        for p in listed.common_prefixes {
            if let Some(name) = p.filename().map(str::to_string) {
                if check_version_name(&name).is_ok() && self.is_published(&name)? {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Uploads model directory `src` as `version` (default: the card's). Every object is
    /// written only if absent, the card last, after the uploaded files were read back and
    /// verified; a version that exists (or is being written by someone else) is refused.
    pub fn publish(&self, src: &Path, version: Option<&str>) -> Result<(String, String)> {
        // Validate first: a registry only holds loadable directories with a matching sha256.
        let (md, version) = publishable(src, version)?;
        if self.is_published(&version)? {
            bail!(
                "version {version:?} already exists in {} (versions are immutable; pick a new one)",
                self.url
            );
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.path().metadata()?.is_file() && name != CARD_FILE {
                files.push((name, entry.path()));
            }
        }
        for (name, path) in &files {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let at = self.key(&format!("{VERSIONS_DIR}/{version}/{name}"));
            match self.run(self.store.put_opts(&at, PutPayload::from(bytes), PutMode::Create.into())) {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. }) => bail!(
                    "{}/{VERSIONS_DIR}/{version}/{name} already exists: another publisher is writing version {version:?} (versions are immutable; pick a new one)",
                    self.url
                ),
                Err(e) => return Err(e).with_context(|| format!("uploading {name} of version {version:?} to {}", self.url)),
            }
        }
        // The card names the registry's version and is sealed over the files as uploaded:
        // read them back, seal and verify locally, then write the card — the version exists
        // from that moment, complete.
        let staged = tempfile::Builder::new()
            .prefix(&format!(".publish-{version}."))
            .tempdir_in(&self.cache)
            .context("staging the upload check")?;
        for (name, _) in &files {
            self.download(&version, name, &staged.path().join(name))?;
        }
        let mut card = md.card.clone();
        card.version = version.clone();
        card.write(staged.path())?;
        ModelDir::load(staged.path(), true).with_context(|| {
            format!("checking the uploaded files of version {version:?} before writing its card")
        })?;
        let card_bytes = std::fs::read(staged.path().join(CARD_FILE))?;
        let at = self.key(&format!("{VERSIONS_DIR}/{version}/{CARD_FILE}"));
        match self.run(self.store.put_opts(
            &at,
            PutPayload::from(card_bytes),
            PutMode::Create.into(),
        )) {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => bail!(
                "version {version:?} was published by someone else meanwhile (its card exists)"
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("writing the card of version {version:?}"))
            }
        }
        Ok((
            version.clone(),
            format!("{}/{VERSIONS_DIR}/{version}", self.url),
        ))
    }

    fn download(&self, version: &str, name: &str, to: &Path) -> Result<()> {
        let at = self.key(&format!("{VERSIONS_DIR}/{version}/{name}"));
        let bytes = self
            .run(async { self.store.get(&at).await?.bytes().await })
            .with_context(|| {
                format!(
                    "downloading {name} of version {version:?} from {}",
                    self.url
                )
            })?;
        std::fs::write(to, &bytes).with_context(|| format!("writing {}", to.display()))
    }

    /// The local directory of `version`: downloaded into the cache on first use and verified
    /// (model.onnx sha256, the card's digest) before it is handed out; a version that fails
    /// verification is not cached.
    pub fn resolve(&self, version: &str) -> Result<PathBuf> {
        check_version_name(version)?;
        let dir = self.cache.join(version);
        if dir.exists() {
            // Checked again on every use: a copy cut short (a kill during eviction) or changed
            // on disk is removed and fetched afresh rather than refused for ever.
            match ModelDir::load(&dir, true) {
                Ok(_) => {
                    touch(&dir);
                    return Ok(dir);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), dir = %dir.display(), "cached model version fails verification; fetching it again");
                    std::fs::remove_dir_all(&dir).with_context(|| {
                        format!("removing the bad cached copy {}", dir.display())
                    })?;
                }
            }
        }
        if !self.is_published(version)? {
            bail!(
                "model version {version:?} is not in the registry {}",
                self.url
            );
        }
        let under = self.key(&format!("{VERSIONS_DIR}/{version}"));
        let objects: Vec<object_store::ObjectMeta> = self
            .run(self.store.list(Some(&under)).try_collect())
            .with_context(|| format!("listing version {version:?} in {}", self.url))?;
        let staged = tempfile::Builder::new()
            .prefix(&format!(".{version}."))
            .tempdir_in(&self.cache)
            .context("staging a download")?;
        for o in &objects {
            let Some(name) = o.location.filename() else {
                continue;
            };
            // One level only: a version is a flat directory.
            if o.location.parts().count() != under.parts().count() + 1 {
                continue;
            }
            self.download(version, name, &staged.path().join(name))?;
        }
        ModelDir::load(staged.path(), true)
            .with_context(|| format!("model version {version:?} from {}", self.url))?;
        let staged = staged.keep();
        std::fs::rename(&staged, &dir)
            .or_else(|e| {
                // Another resolve of the same version finished first: keep that one.
                if dir.join(CARD_FILE).is_file() {
                    let _ = std::fs::remove_dir_all(&staged);
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("caching version {version:?} in {}", dir.display()))?;
        self.evict(version);
        Ok(dir)
    }

    /// Keeps the cache to [`CACHED_VERSIONS`] versions, removing the least recently used
    /// (never `keep`).
    fn evict(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return;
        };
        let mut cached: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n != keep && check_version_name(&n).is_ok()
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        cached.sort();
        // Staging directories (".<version>.<random>") left by a process killed mid-download.
        if let Ok(entries) = std::fs::read_dir(&self.cache) {
            for e in entries.filter_map(|e| e.ok()) {
                let stale = e.file_name().to_string_lossy().starts_with('.')
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(3600));
                if stale {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        while cached.len() + 1 > CACHED_VERSIONS {
            let (_, old) = cached.remove(0);
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!(error = %e, dir = %old.display(), "could not evict a cached model version");
            }
        }
    }
}

/// Marks a cached version as just used (eviction removes the least recently used).
fn touch(dir: &Path) {
    let _ = std::fs::File::open(dir).and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_are_told_from_directories() {
        for url in ["s3://models/prod", "gs://b/p", "az://c/p", "file:///x"] {
            assert!(is_object_url(url), "{url}");
        }
        for dir in [
            "models/registry",
            "/var/lib/emostream",
            "s3:",
            "./s3:/x",
            "",
        ] {
            assert!(!is_object_url(dir), "{dir}");
        }
    }

    #[test]
    fn an_unsupported_scheme_is_refused_by_name() {
        let cache = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            ObjectRegistry::open("ftp://host/models", cache.path()).unwrap_err()
        );
        assert!(e.contains("ftp://host/models"), "{e}");
    }
}
