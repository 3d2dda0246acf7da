//! The model registry in a directory: `ROOT/versions/<version>/` holds model directories
//! (docs/model-format.md) and `ROOT/ACTIVE` names the one to serve. Publishing copies a
//! directory in atomically (temporary name, fsync, rename) and the pointer is replaced the same
//! way, so a reader never sees half a model or half a pointer. Versions resolve only to
//! directories inside the root.

use crate::model::dir::{ModelDir, CARD_FILE};
use crate::model::registry_layout::{
    check_version_name, publishable, Expect, HISTORY_FILE, POINTER_FILE, VERSIONS_DIR,
};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DiskRegistry {
    root: PathBuf,
}

/// A temporary file name part no other writer uses: in containers every replica is PID 1 on
/// the same shared volume, so the pid alone made two replicas write one temporary file (a torn
/// or mixed ACTIVE). Host name, pid and 64 random bits (std's per-call random hasher keys).
fn unique_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace(['/', '.'], "_"))
        .unwrap_or_default();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{host}.{}.{:016x}", std::process::id(), h.finish())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

impl DiskRegistry {
    /// Opens (and creates, if missing) a registry root.
    pub fn open(root: &Path) -> Result<DiskRegistry> {
        fs::create_dir_all(root.join(VERSIONS_DIR))
            .with_context(|| format!("creating model registry {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("model registry {}", root.display()))?;
        Ok(DiskRegistry { root })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub fn pointer_path(&self) -> PathBuf {
        self.root.join(POINTER_FILE)
    }

    /// The directory of `version`, which must exist inside the registry.
    pub fn resolve(&self, version: &str) -> Result<PathBuf> {
        check_version_name(version)?;
        let versions = self.root.join(VERSIONS_DIR);
        let dir = versions.join(version);
        let real = dir
            .canonicalize()
            .with_context(|| format!("model version {version:?} is not in the registry"))?;
        // A symlink inside versions/ could still point outside the root (or at versions/ itself).
        if real.parent() != Some(versions.as_path()) || !real.is_dir() {
            bail!("model version {version:?} resolves outside the registry");
        }
        // So could one inside the version: every file loaded must be the registry's own.
        for entry in fs::read_dir(&real)? {
            let entry = entry?;
            if entry.file_type()?.is_symlink() {
                let target = entry.path().canonicalize().ok();
                if !target.is_some_and(|t| t.starts_with(&versions)) {
                    bail!(
                        "model version {version:?} holds a symlink {:?} that leaves the registry",
                        entry.file_name()
                    );
                }
            }
        }
        let card = real.join(CARD_FILE);
        if !card.exists() {
            bail!("model version {version:?} has no {CARD_FILE} card (publish it with `train publish`)");
        }
        let text =
            fs::read_to_string(&card).with_context(|| format!("reading {}", card.display()))?;
        let card: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("model version {version:?}: parsing {CARD_FILE}"))?;
        if !card.get("digest").is_some_and(|d| d.is_string()) {
            bail!("model version {version:?}: its card has no digest (publish it again with `train publish`, which seals it)");
        }
        // Events name the card's version: it must be the registry's name for it (the digest
        // covers the card's version, so it cannot be edited afterwards).
        if card.get("version").and_then(|v| v.as_str()) != Some(version) {
            bail!(
                "model version {version:?}: its card names version {:?}",
                card.get("version")
            );
        }
        Ok(real)
    }

    /// The version `ACTIVE` names, if the pointer exists.
    pub fn active(&self) -> Result<Option<String>> {
        match fs::read_to_string(self.pointer_path()) {
            Ok(s) => {
                let v = s.trim().to_string();
                check_version_name(&v)
                    .with_context(|| format!("{}", self.pointer_path().display()))?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.pointer_path().display())),
        }
    }

    /// Points `ACTIVE` at `version` (which must exist): write a temporary file, fsync, rename.
    /// `expect` is checked just before; a directory has no conditional rename, so two writers
    /// within that moment both succeed (the last one wins) — an object store closes the gap.
    pub fn set_active(&self, version: &str, expect: Expect<'_>) -> Result<()> {
        self.resolve(version)?;
        if let Expect::Names(judged) = expect {
            let now = self.active()?;
            if now.as_deref() != judged {
                bail!(
                    "conflict: {} names {} where {} was expected: another publisher activated a version first; nothing changed",
                    self.pointer_path().display(),
                    now.as_deref().unwrap_or("nothing"),
                    judged.unwrap_or("nothing")
                );
            }
        }
        self.replace_file(POINTER_FILE, &format!("{version}\n"))
    }

    /// Removes `ACTIVE` (a rollback to `model.dir`, outside the registry: a restart then
    /// serves `model.dir`, not the version just rolled back from).
    pub(crate) fn clear_active(&self) -> Result<()> {
        match fs::remove_file(self.pointer_path()) {
            Ok(()) => fsync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.pointer_path().display())),
        }
    }

    /// The rollback history (`HISTORY`), oldest first; empty when there is none.
    pub(crate) fn history(&self) -> Result<Vec<String>> {
        let path = self.root.join(HISTORY_FILE);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Replaces the rollback history as the pointer is replaced: temporary file, fsync, rename.
    pub(crate) fn set_history(&self, entries: &[String]) -> Result<()> {
        self.replace_file(
            HISTORY_FILE,
            &entries.iter().map(|e| format!("{e}\n")).collect::<String>(),
        )
    }

    fn replace_file(&self, name: &str, content: &str) -> Result<()> {
        let tmp = self.root.join(format!(".{name}.{}.tmp", unique_suffix()));
        {
            let mut f =
                fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(content.as_bytes())?;
            f.sync_all()?;
        }
        let path = self.root.join(name);
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        fsync_dir(&self.root)
    }

    /// Published versions, sorted by name.
    pub(crate) fn versions(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.root.join(VERSIONS_DIR))? {
            let name = e?.file_name().to_string_lossy().to_string();
            if check_version_name(&name).is_ok() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Copies model directory `src` into the registry as `version` (default: the card's
    /// version). The copy is written under a temporary name, fsynced and renamed, so the
    /// version appears complete or not at all. An existing version is never overwritten.
    pub fn publish(&self, src: &Path, version: Option<&str>) -> Result<(String, PathBuf)> {
        // Validate first: a registry only holds loadable directories with a matching sha256.
        let (md, version) = publishable(src, version)?;
        let versions = self.root.join(VERSIONS_DIR);
        let dest = versions.join(&version);
        if dest.exists() {
            bail!(
                "version {version:?} already exists in {} (versions are immutable; pick a new one)",
                self.root.display()
            );
        }
        let tmp = versions.join(format!(".{version}.{}.tmp", unique_suffix()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            // A symlinked file in the source is copied as the file it names.
            if !entry.path().metadata()?.is_file() {
                continue;
            }
            let to = tmp.join(entry.file_name());
            fs::copy(entry.path(), &to)
                .with_context(|| format!("copying {}", entry.path().display()))?;
            fs::File::open(&to)?.sync_all()?;
        }
        // The card names the version events will carry (kept equal to the registry's), and is
        // sealed: its digest covers the copied model.onnx, tokenizer.json, labels and
        // thresholds, and every load verifies it.
        let mut card = md.card.clone();
        card.version = version.clone();
        card.write(&tmp)?;
        fs::File::open(tmp.join(CARD_FILE))?.sync_all()?;
        // What was copied is what was validated (a source changed meanwhile is caught here).
        ModelDir::load(&tmp, true)
            .with_context(|| format!("checking the copy of {} before publishing", src.display()))?;
        fsync_dir(&tmp)?;
        fs::rename(&tmp, &dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        fsync_dir(&versions)?;
        Ok((version, dest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_of_active_never_fail_or_leave_it_torn() {
        // Writers in one process stand for replicas that are all PID 1 in their containers.
        let d = tempfile::tempdir().unwrap();
        let r = std::sync::Arc::new(DiskRegistry::open(d.path()).unwrap());
        let versions = ["1", "22.22.22-long-name"];
        for v in versions {
            let dir = r.root().join("versions").join(v);
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join(CARD_FILE),
                format!(r#"{{"digest": "00", "version": "{v}"}}"#),
            )
            .unwrap();
        }
        r.set_active(versions[0], Expect::Unchanged).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (r, stop) = (r.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let v = r
                        .active()
                        .expect("ACTIVE readable")
                        .expect("ACTIVE present");
                    assert!(versions.contains(&v.as_str()), "torn ACTIVE: {v:?}");
                    reads += 1;
                }
                reads
            })
        };
        let writers: Vec<_> = (0..6)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..150 {
                        r.set_active(versions[i % 2], Expect::Unchanged)
                            .expect("set_active");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        let leftovers: Vec<_> = fs::read_dir(r.root())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
    }

    #[test]
    fn resolve_stays_inside_and_pointer_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let r = DiskRegistry::open(d.path()).unwrap();
        let v = r.root().join("versions/1.0.0");
        fs::create_dir_all(&v).unwrap();
        let e = format!("{:#}", r.resolve("1.0.0").unwrap_err());
        assert!(e.contains("no model.json"), "{e}");
        // (The digest itself is checked when the model loads; resolve wants a sealed card.)
        fs::write(v.join(CARD_FILE), r#"{"digest": "00", "version": "1.0.0"}"#).unwrap();
        assert!(r.resolve("1.0.0").is_ok());
        // A file inside the version that links out of the registry is refused.
        std::os::unix::fs::symlink("/etc/hostname", v.join("tokenizer.json")).unwrap();
        let e = format!("{:#}", r.resolve("1.0.0").unwrap_err());
        assert!(
            e.contains("symlink") && e.contains("leaves the registry"),
            "{e}"
        );
        fs::remove_file(v.join("tokenizer.json")).unwrap();
        fs::write(v.join("model.onnx"), b"x").unwrap();
        std::os::unix::fs::symlink(v.join("model.onnx"), v.join("tokenizer.json")).unwrap();
        assert!(
            r.resolve("1.0.0").is_ok(),
            "a link within the registry is fine"
        );
        assert!(r.resolve("../versions").is_err());
        assert!(r.resolve("2.0.0").is_err());
        // A symlink that escapes the root is refused.
        std::os::unix::fs::symlink("/tmp", r.root().join("versions/escape")).unwrap();
        let e = r.resolve("escape").unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert_eq!(r.active().unwrap(), None);
        r.set_active("1.0.0", Expect::Unchanged).unwrap();
        assert_eq!(r.active().unwrap().as_deref(), Some("1.0.0"));
        assert!(r.set_active("9.9.9", Expect::Unchanged).is_err());
        assert_eq!(r.active().unwrap().as_deref(), Some("1.0.0"));
    }
}
