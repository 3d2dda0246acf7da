//! Per-community policy: named threshold sets chosen by a carried input field (e.g. the
//! subreddit), each overriding some labels' thresholds, turning labels off and setting a
//! minimum score, with one default. Read from `policy.file` (TOML or JSON by extension) at
//! start-up — a bad file is a start-up error — and again whenever the file changes: a valid
//! file replaces the policy between batches, an invalid one is refused (log, metric,
//! `/v1/model`) and the old policy keeps serving. docs/moderation.md describes the format.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One threshold set, as written in the file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    /// Label → threshold replacing the model's.
    #[serde(default)]
    pub(crate) thresholds: BTreeMap<String, f32>,
    /// Labels never reported.
    #[serde(default)]
    pub(crate) off: Vec<String>,
    /// No label is reported below this score, whatever its threshold.
    #[serde(default)]
    pub(crate) min_score: f32,
}

/// A named policy: applies to comments whose carried `field` is one of `values`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySpec {
    pub(crate) name: String,
    pub(crate) field: String,
    pub(crate) values: Vec<String>,
    #[serde(flatten)]
    pub(crate) rule: RuleSpec,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    /// Where no named policy matches (absent: the model's thresholds as they are).
    #[serde(default)]
    pub(crate) default: RuleSpec,
    #[serde(default)]
    pub(crate) policies: Vec<PolicySpec>,
}

impl PolicyFile {
    /// Reads and checks a policy file: TOML, or JSON when the name ends in `.json`. Every
    /// label named must be one of `labels`, every field one of `fields` (the carried ones).
    pub(crate) fn load(path: &Path, labels: &[String], fields: &[String]) -> Result<PolicyFile> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        PolicyFile::parse(path, &bytes, labels, fields)
    }

    /// `bytes` read from `path` (its extension says JSON or TOML), checked as in `load`.
    fn parse(
        path: &Path,
        bytes: &[u8],
        labels: &[String],
        fields: &[String],
    ) -> Result<PolicyFile> {
        let text = std::str::from_utf8(bytes)
            .with_context(|| format!("{} is not a policy file (not UTF-8)", path.display()))?;
        let file: PolicyFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text)
                .with_context(|| format!("{} is not a policy file", path.display()))?
        } else {
            toml::from_str(text)
                .with_context(|| format!("{} is not a policy file", path.display()))?
        };
        file.check(labels, fields)
            .with_context(|| format!("policy file {}", path.display()))?;
        Ok(file)
    }

    fn check(&self, labels: &[String], fields: &[String]) -> Result<()> {
        let mut names = BTreeSet::new();
        check_rule("default", &self.default, labels)?;
        for p in &self.policies {
            if p.name.is_empty() || p.name == "default" || p.name == "model" {
                bail!(
                    "policy name {:?} is empty or reserved (default, model)",
                    p.name
                );
            }
            if !names.insert(p.name.as_str()) {
                bail!("policy {:?} is named twice", p.name);
            }
            if !fields.contains(&p.field) {
                bail!(
                    "policy {:?} matches on field {:?}, which is not carried (output.carry has {fields:?})",
                    p.name,
                    p.field
                );
            }
            if p.values.is_empty() {
                bail!("policy {:?} has no values to match", p.name);
            }
            check_rule(&p.name, &p.rule, labels)?;
        }
        Ok(())
    }
}

fn check_rule(name: &str, r: &RuleSpec, labels: &[String]) -> Result<()> {
    for (label, t) in &r.thresholds {
        if !labels.contains(label) {
            bail!("policy {name:?}: unknown label {label:?} in thresholds");
        }
        if !(t.is_finite() && (0.0..=1.0).contains(t)) {
            bail!("policy {name:?}: threshold of {label:?} must be between 0 and 1 (got {t})");
        }
    }
    for label in &r.off {
        if !labels.contains(label) {
            bail!("policy {name:?}: unknown label {label:?} in off");
        }
    }
    if !(r.min_score.is_finite() && (0.0..=1.0).contains(&r.min_score)) {
        bail!(
            "policy {name:?}: min_score must be between 0 and 1 (got {})",
            r.min_score
        );
    }
    Ok(())
}

/// A rule made concrete for one model's labels: the threshold each label must reach
/// (`f32::INFINITY`: off), and a short hash of exactly that, which events carry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) thresholds: Vec<f32>,
    pub(crate) hash: String,
}

impl Rule {
    fn new(name: &str, spec: Option<&RuleSpec>, labels: &[String], model: &[f32]) -> Rule {
        let thresholds: Vec<f32> = labels
            .iter()
            .zip(model)
            .map(|(label, &t)| match spec {
                None => t,
                Some(s) if s.off.contains(label) => f32::INFINITY,
                Some(s) => s
                    .thresholds
                    .get(label)
                    .copied()
                    .unwrap_or(t)
                    .max(s.min_score),
            })
            .collect();
        let mut h = Sha256::new();
        for (label, t) in labels.iter().zip(&thresholds) {
            h.update(label.as_bytes());
            h.update(t.to_le_bytes());
        }
        let hash = format!("{:x}", h.finalize())[..12].to_string();
        Rule {
            name: name.to_string(),
            thresholds,
            hash,
        }
    }
}

/// The policy in force, resolved against one model generation.
#[derive(Debug, Clone)]
pub(crate) struct Decisions {
    /// Field → value → index into `rules` (the first policy listing the value wins).
    by_field: BTreeMap<String, BTreeMap<String, usize>>,
    /// Named rules, then the default last.
    rules: Vec<Rule>,
}

impl Decisions {
    /// `file` resolved for a model's `labels` and `thresholds`; without a file, one rule
    /// named "model": the model's own thresholds.
    pub(crate) fn resolve(
        file: Option<&PolicyFile>,
        labels: &[String],
        thresholds: &[f32],
    ) -> Decisions {
        let Some(file) = file else {
            return Decisions {
                by_field: BTreeMap::new(),
                rules: vec![Rule::new("model", None, labels, thresholds)],
            };
        };
        let mut by_field: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let mut rules = Vec::new();
        for (i, p) in file.policies.iter().enumerate() {
            rules.push(Rule::new(&p.name, Some(&p.rule), labels, thresholds));
            let values = by_field.entry(p.field.clone()).or_default();
            for v in &p.values {
                values.entry(v.clone()).or_insert(i);
            }
        }
        rules.push(Rule::new(
            "default",
            Some(&file.default),
            labels,
            thresholds,
        ));
        Decisions { by_field, rules }
    }

    /// The rule for a comment with these carried fields.
    pub(crate) fn rule_for(
        &self,
        carried: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> &Rule {
        let default = self.rules.last().expect("a default rule");
        let Some(carried) = carried else {
            return default;
        };
        let mut best: Option<usize> = None;
        for (field, values) in &self.by_field {
            // Text (the usual case) is matched as it is, without a copy.
            let value: std::borrow::Cow<'_, str> = match carried.get(field) {
                Some(serde_json::Value::String(s)) => s.as_str().into(),
                Some(serde_json::Value::Number(n)) => n.to_string().into(),
                Some(serde_json::Value::Bool(b)) => b.to_string().into(),
                _ => continue,
            };
            if let Some(&i) = values.get(value.as_ref()) {
                best = Some(best.map_or(i, |b| b.min(i)));
            }
        }
        best.map_or(default, |i| &self.rules[i])
    }
}

/// What `/v1/model` says about the policy: the file, the content in force, and the last
/// refusal.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct PolicyStatus {
    pub(crate) file: Option<PathBuf>,
    /// sha256 of the file content in force (first 12 hex digits).
    pub(crate) content_hash: Option<String>,
    pub(crate) policies: Vec<String>,
    /// The reason the newest version of the file was refused, while it is the newest.
    pub(crate) refused: Option<String>,
    /// The labels the policy in force was checked against (a hot swap to a model with other
    /// labels checks the file again).
    #[serde(skip)]
    checked_labels: Vec<String>,
}

/// The policy in force and how it changes.
pub(crate) struct PolicySource {
    current: watch::Sender<Option<Arc<PolicyFile>>>,
    status: Mutex<PolicyStatus>,
    path: Option<PathBuf>,
    fields: Vec<String>,
}

fn content_hash(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))[..12].to_string()
}

impl PolicySource {
    /// Without a file: the model's thresholds, always. With one: it must load now (a start-up
    /// error names the key otherwise).
    pub(crate) fn open(
        path: Option<&Path>,
        labels: &[String],
        fields: &[String],
    ) -> Result<PolicySource> {
        let mut status = PolicyStatus {
            file: path.map(Path::to_path_buf),
            ..Default::default()
        };
        let file = match path {
            None => None,
            Some(p) => {
                let f = PolicyFile::load(p, labels, fields).context("config key policy.file")?;
                status.content_hash = Some(content_hash(&std::fs::read(p)?));
                status.policies = f.policies.iter().map(|p| p.name.clone()).collect();
                status.checked_labels = labels.to_vec();
                Some(Arc::new(f))
            }
        };
        Ok(PolicySource {
            current: watch::channel(file).0,
            status: Mutex::new(status),
            path: path.map(Path::to_path_buf),
            fields: fields.to_vec(),
        })
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Arc<PolicyFile>>> {
        self.current.subscribe()
    }

    pub(crate) fn status(&self) -> PolicyStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again if its content changed (or the model's labels did): applies it when
    /// valid, else keeps the policy in force and records why.
    pub(crate) fn reload(&self, labels: &[String]) {
        let Some(path) = &self.path else { return };
        let Ok(bytes) = std::fs::read(path) else {
            self.refuse(format!("cannot read {}", path.display()), None);
            return;
        };
        let hash = content_hash(&bytes);
        let in_force = |s: &PolicyStatus| {
            s.content_hash.as_deref() == Some(hash.as_str())
                && s.refused.is_none()
                && s.checked_labels == labels
        };
        if in_force(&self.status.lock().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        // The bytes just hashed are the ones parsed: an edit in between waits for the next check.
        match PolicyFile::parse(path, &bytes, labels, &self.fields) {
            Ok(f) => {
                let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                if in_force(&s) {
                    return;
                }
                tracing::info!(file = %path.display(), hash = %hash, policies = f.policies.len(), "policy file applied");
                metrics::counter!("emostream_policy_reloads_total", "result" => "applied")
                    .increment(1);
                s.content_hash = Some(hash);
                s.policies = f.policies.iter().map(|p| p.name.clone()).collect();
                s.refused = None;
                s.checked_labels = labels.to_vec();
                self.current.send_replace(Some(Arc::new(f)));
            }
            Err(e) => self.refuse(format!("{e:#}"), Some(hash)),
        }
    }

    fn refuse(&self, reason: String, hash: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if s.refused.as_deref() == Some(reason.as_str()) {
            return; // said once per change
        }
        tracing::error!(reason = %reason, refused_hash = ?hash, "policy file refused; the policy in force keeps serving");
        metrics::counter!("emostream_policy_reloads_total", "result" => "refused").increment(1);
        s.refused = Some(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels() -> Vec<String> {
        ["anger", "joy", "grief"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    const FILE: &str = r#"
[default]
min_score = 0.1

[[policies]]
name = "calm"
field = "subreddit"
values = ["a", "c"]
off = ["anger"]

[[policies]]
name = "sensitive"
field = "subreddit"
values = ["b", "c"]
thresholds = { anger = 0.05, joy = 0.9 }
min_score = 0.2
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn each_community_gets_its_rule_and_the_rest_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let f = PolicyFile::load(
            &write(dir.path(), "p.toml", FILE),
            &labels(),
            &["subreddit".into()],
        )
        .unwrap();
        let d = Decisions::resolve(Some(&f), &labels(), &[0.4, 0.5, 0.02]);
        let rule = |sub: serde_json::Value| {
            let m = json!({ "subreddit": sub }).as_object().unwrap().clone();
            d.rule_for(Some(&m)).clone()
        };
        let calm = rule(json!("a"));
        assert_eq!(
            (calm.name.as_str(), calm.thresholds.clone()),
            ("calm", vec![f32::INFINITY, 0.5, 0.02])
        );
        // Overrides, then the minimum score over every threshold.
        assert_eq!(rule(json!("b")).thresholds, vec![0.2, 0.9, 0.2]);
        // A value listed by two policies: the first in the file wins.
        assert_eq!(rule(json!("c")).name, "calm");
        let default = rule(json!("d"));
        assert_eq!(
            (default.name.as_str(), default.thresholds.clone()),
            ("default", vec![0.4, 0.5, 0.1])
        );
        assert_eq!(d.rule_for(None).name, "default");
        // The hash names the rule exactly: equal rules hash alike, different ones differ.
        assert_eq!(calm.hash, rule(json!("a")).hash);
        assert_ne!(calm.hash, default.hash);
        assert_eq!(calm.hash.len(), 12);
        let none = Decisions::resolve(None, &labels(), &[0.4, 0.5, 0.02]);
        assert_eq!(none.rule_for(None).name, "model");
        assert_eq!(none.rule_for(None).thresholds, vec![0.4, 0.5, 0.02]);
    }

    #[test]
    fn a_bad_file_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let fields = vec!["subreddit".to_string()];
        let refused = |text: &str| {
            let p = write(dir.path(), "bad.toml", text);
            format!(
                "{:#}",
                PolicyFile::load(&p, &labels(), &fields).unwrap_err()
            )
        };
        assert!(refused("[default]\noff = [\"rage\"]\n").contains("unknown label \"rage\""));
        assert!(refused(&FILE.replace(
            "field = \"subreddit\"\nvalues = [\"a\"",
            "field = \"author\"\nvalues = [\"a\""
        ))
        .contains("not carried"));
        assert!(refused(&FILE.replace("\"sensitive\"", "\"calm\"")).contains("named twice"));
        assert!(refused(&FILE.replace("\"sensitive\"", "\"default\"")).contains("reserved"));
        assert!(refused(&FILE.replace("joy = 0.9", "joy = 1.5")).contains("between 0 and 1"));
        assert!(
            refused("[[policies]]\nname = \"x\"\nfield = \"subreddit\"\nvalues = []\n")
                .contains("no values")
        );
        assert!(refused("not toml at all [").contains("not a policy file"));
        assert!(refused("[default]\nof = [\"anger\"]\n").contains("not a policy file"));
        // JSON by extension.
        let p = write(
            dir.path(),
            "p.json",
            r#"{"policies":[{"name":"x","field":"subreddit","values":["a"],"off":["joy"]}]}"#,
        );
        assert_eq!(
            PolicyFile::load(&p, &labels(), &fields).unwrap().policies[0]
                .rule
                .off,
            vec!["joy"]
        );
    }

    #[test]
    fn a_reload_applies_a_valid_edit_and_keeps_the_policy_in_force_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let fields = vec!["subreddit".to_string()];
        let path = write(dir.path(), "p.toml", FILE);
        let source = PolicySource::open(Some(&path), &labels(), &fields).unwrap();
        let mut rx = source.subscribe();
        let first = rx.borrow_and_update().clone().unwrap();
        source.reload(&labels());
        assert!(
            !rx.has_changed().unwrap(),
            "an unchanged file is not applied again"
        );
        std::fs::write(&path, FILE.replace("off = [\"anger\"]", "off = [\"rage\"]")).unwrap();
        source.reload(&labels());
        assert!(!rx.has_changed().unwrap());
        let status = source.status();
        assert!(
            status
                .refused
                .as_deref()
                .unwrap()
                .contains("unknown label \"rage\""),
            "{status:?}"
        );
        assert_eq!(
            rx.borrow().as_deref(),
            Some(&*first),
            "the policy in force keeps serving"
        );
        std::fs::write(
            &path,
            FILE.replace("values = [\"a\", \"c\"]", "values = [\"a\"]"),
        )
        .unwrap();
        source.reload(&labels());
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            rx.borrow_and_update().as_ref().unwrap().policies[0].values,
            vec!["a"]
        );
        assert_eq!(source.status().refused, None);
    }
}
