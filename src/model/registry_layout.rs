//! The registry's layout and words, shared by both kinds of registry (a directory, an object
//! store) and the facade over them: the names under the root, what a version name may be, and
//! what an activation expects of `ACTIVE`.

use crate::model::dir::{ModelDir, CARD_FILE};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub(crate) const POINTER_FILE: &str = "ACTIVE";
/// What served before the active model, oldest first, one entry a line: a version, or
/// `dir <path>` for a directory outside the registry (`model.dir`). Rollback reads it, so a
/// rollback works after a restart.
pub(crate) const HISTORY_FILE: &str = "HISTORY";
pub(crate) const VERSIONS_DIR: &str = "versions";

/// A version name is one path component of safe characters: no separators, no `..`.
pub(crate) fn check_version_name(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && !v.contains("..");
    if !ok {
        bail!("invalid model version {v:?}: use letters, digits and . - _ + (one path component, no \"..\")");
    }
    Ok(())
}

/// A model directory that may be published, and the version it goes in as (`version`, else its
/// card's): it loads with a matching sha256, has a card, and the name is a safe version name.
pub(crate) fn publishable(src: &Path, version: Option<&str>) -> Result<(ModelDir, String)> {
    let md = ModelDir::load(src, true).with_context(|| format!("publishing {}", src.display()))?;
    if !src.join(CARD_FILE).exists() {
        bail!(
            "{} has no {CARD_FILE}: only emostream model directories can be published",
            src.display()
        );
    }
    let version = version.unwrap_or(&md.card.version).to_string();
    check_version_name(&version)?;
    Ok((md, version))
}

/// What an activation requires of `ACTIVE` when it writes.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// Whatever it holds, as long as nobody changes it between our read and our write.
    Unchanged,
    /// It must name this version (or be absent, for `None`): a publisher judged its candidate
    /// against it.
    Names(Option<&'a str>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_are_one_safe_component() {
        for ok in ["1.0.0", "v2", "2026-11-26_a", "1.0.0+int8"] {
            check_version_name(ok).unwrap();
        }
        for bad in [
            "", "../x", "..", "a/b", "/etc", ".hidden", "a\\b", "x..y", "a b",
        ] {
            assert!(check_version_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
