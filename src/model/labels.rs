//! The GoEmotions label set: 27 emotions plus `neutral`, in the dataset's index order.
//! One definition shared by `train`, the model directory and the daemon.

use anyhow::{bail, Context, Result};

/// Label indices by descending score.
pub fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// The labels of `ranked` whose score reaches its threshold (a label is on at `>=`), in rank
/// order.
pub fn over_threshold(ranked: &[usize], scores: &[f32], thresholds: &[f32]) -> Vec<usize> {
    ranked
        .iter()
        .copied()
        .filter(|&i| scores[i] >= thresholds[i])
        .collect()
}
use std::path::Path;

/// Label names in GoEmotions index order (line i of the dataset's labels.txt).
const GOEMOTIONS: [&str; 28] = [
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
];

/// An ordered list of label names; position = output column of the model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LabelSet(Vec<String>);

impl LabelSet {
    /// Label names from a Hugging Face config's `id2label`.
    pub(crate) fn from_hf(hf: &serde_json::Value) -> Result<LabelSet> {
        let map = hf
            .get("id2label")
            .and_then(|v| v.as_object())
            .context("config.json lacks id2label")?;
        let mut names = vec![String::new(); map.len()];
        for (k, v) in map {
            let i: usize = k
                .parse()
                .with_context(|| format!("id2label key {k:?} is not an index"))?;
            let n = v
                .as_str()
                .with_context(|| format!("id2label[{k}] is not a string"))?;
            *names
                .get_mut(i)
                .with_context(|| format!("id2label index {i} out of range"))? = n.to_string();
        }
        LabelSet::new(names)
    }

    pub fn goemotions() -> Self {
        LabelSet(GOEMOTIONS.iter().map(|s| s.to_string()).collect())
    }

    pub(crate) fn new(names: Vec<String>) -> Result<Self> {
        if names.is_empty() {
            bail!("label set is empty");
        }
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if n.trim().is_empty() {
                bail!("label set has an empty name");
            }
            if !seen.insert(n) {
                bail!("label set names {n:?} twice");
            }
        }
        Ok(LabelSet(names))
    }

    /// Reads a labels.txt (one name a line, in index order).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading label file {}", path.display()))?;
        Self::new(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        )
        .with_context(|| format!("in label file {}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn names(&self) -> &[String] {
        &self.0
    }
    pub fn name(&self, i: usize) -> &str {
        &self.0[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn goemotions_matches_dataset_labels_file() {
        let p = crate::model::eval::dataset::goemotions_dir().join("labels.txt");
        if let Ok(ls) = LabelSet::from_file(&p) {
            assert_eq!(ls, LabelSet::goemotions());
        } else {
            panic!("GoEmotions data not found at {}", p.display());
        }
    }
    #[test]
    fn duplicates_rejected() {
        assert!(LabelSet::new(vec!["a".into(), "a".into()]).is_err());
    }
}
