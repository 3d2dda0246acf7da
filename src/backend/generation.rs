//! A served model generation: one model directory loaded, validated and ready — its tokenizer,
//! one ONNX Runtime session per inference worker, labels in the order events use, and thresholds.
//! Batches carry an `Arc` of the generation that tokenized them, so a batch never mixes models
//! and in-flight batches finish on the model they started with; the sessions are freed when the
//! last batch holding the old generation is done.

use crate::backend::batching::{in_length_order, CallLimits, Cut};
use crate::backend::ort::{OrtSession, RuntimeOptions};
use crate::model::dir::ModelDir;
use crate::model::dir::ModelRef;
use crate::model::eval::scores::sigmoid;
use crate::model::tokenize::{PaddedBatch, TextEncoder};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Texts every candidate must score with finite values before it may serve.
pub const CANARIES: [&str; 8] = [
    "Thank you so much, this made my day!",
    "I can't believe they did that, it's disgusting.",
    "Wait, what? How does that even work?",
    "I'm so sorry for your loss.",
    "lol",
    "",
    "This is the best news I've heard all year!!! 🎉🎉",
    "ugh. whatever. I don't care anymore, do what you want",
];

/// The canaries run as one call.
const CANARY_CALLS: CallLimits = CallLimits {
    max_rows: CANARIES.len(),
    max_tokens: usize::MAX,
};

/// What a candidate must agree with to replace the running model.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expectations {
    /// Label names in the running model's order; `None` for the first model.
    pub(crate) labels: Option<Vec<String>>,
    /// Candidate label name → running label name, for renamed labels.
    pub(crate) label_map: BTreeMap<String, String>,
}

pub(crate) struct Generation {
    pub(crate) dir: PathBuf,
    pub(crate) model_ref: ModelRef,
    pub(crate) text: TextEncoder,
    /// Label names in the order of `scores` (the running order when mapped).
    pub(crate) labels: Vec<String>,
    pub(crate) thresholds: Vec<f32>,
    /// `perm[i]` = the model output that feeds label `i`.
    perm: Vec<usize>,
    sessions: Vec<Mutex<OrtSession>>,
}

impl Generation {
    /// The execution provider its sessions run on (cpu after a GPU fallback).
    pub(crate) fn provider(&self) -> &'static str {
        self.sessions.first().map_or("cpu", |s| {
            s.lock().unwrap_or_else(|p| p.into_inner()).provider
        })
    }

    /// Loads `dir` with `workers` sessions and validates it: sha256 of model.onnx against the
    /// card, ONNX inputs/outputs, labels against `expect`, finite scores on the canaries from
    /// every session (which also warms each one up).
    pub(crate) fn load(
        dir: &Path,
        runtime: &RuntimeOptions,
        workers: usize,
        expect: &Expectations,
    ) -> Result<Generation> {
        let md = ModelDir::load(dir, true)?;
        let card = &md.card;
        let text = TextEncoder::from_file(&md.tokenizer_path(), card.max_sequence_length)?;
        let own: Vec<String> = card
            .labels
            .names()
            .iter()
            .map(|n| {
                expect
                    .label_map
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| n.clone())
            })
            .collect();
        let labels = expect.labels.clone().unwrap_or_else(|| own.clone());
        let perm = label_permutation(&own, &labels)?;
        let resolved = card.thresholds.resolved(own.len());
        let thresholds = perm.iter().map(|&j| resolved[j]).collect();
        let mut sessions = Vec::with_capacity(workers);
        for _ in 0..workers.max(1) {
            let s = OrtSession::load(&md.onnx_path(), runtime)?;
            if s.num_labels() != own.len() {
                bail!(
                    "model.onnx outputs {} scores but model.json lists {} labels",
                    s.num_labels(),
                    own.len()
                );
            }
            sessions.push(Mutex::new(s));
        }
        let m = Generation {
            dir: md.dir.clone(),
            model_ref: ModelRef {
                name: card.name.clone(),
                version: card.version.clone(),
                sha256: card.model_sha256.clone(),
            },
            text,
            labels,
            thresholds,
            perm,
            sessions,
        };
        m.check_canaries()?;
        Ok(m)
    }

    fn check_canaries(&self) -> Result<()> {
        let rows: Vec<Vec<u32>> = CANARIES
            .iter()
            .map(|t| self.text.encode(t).map(|e| e.ids))
            .collect::<Result<_>>()
            .context("tokenizing the canary texts")?;
        let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        for w in 0..self.sessions.len() {
            let scores = self
                .score(w, &refs, CANARY_CALLS)
                .with_context(|| format!("canary batch on session {w}"))?;
            for (t, s) in CANARIES.iter().zip(&scores) {
                if s.len() != self.labels.len() || s.iter().any(|x| !x.is_finite()) {
                    bail!("canary {t:?} got non-finite scores: {s:?}");
                }
            }
        }
        Ok(())
    }

    pub(crate) fn version(&self) -> &str {
        &self.model_ref.version
    }

    pub(crate) fn workers(&self) -> usize {
        self.sessions.len()
    }

    /// Sigmoid scores (running label order) for rows, in length-sorted calls within `limits`
    /// on the session of `worker`; returned in input order.
    pub(crate) fn score(
        &self,
        worker: usize,
        rows: &[&[u32]],
        limits: CallLimits,
    ) -> Result<Vec<Vec<f32>>> {
        let mut session = self.sessions[worker % self.sessions.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let l = self.perm.len();
        in_length_order(rows, Cut::Planned(limits), |part| {
            let logits = session.logits(&PaddedBatch::new(part, self.text.pad_id()))?;
            Ok(logits
                .chunks(l)
                .map(|row| self.perm.iter().map(|&j| sigmoid(row[j])).collect())
                .collect())
        })
    }

    /// Labels over threshold for each score row.
    pub(crate) fn label_sets(&self, scores: &[Vec<f32>]) -> Vec<Vec<usize>> {
        scores
            .iter()
            .map(|s| {
                s.iter()
                    .zip(&self.thresholds)
                    .enumerate()
                    .filter(|(_, (x, t))| x >= t)
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect()
    }
}

/// Where each running label comes from in the candidate's outputs; the sets must be equal.
fn label_permutation(candidate: &[String], running: &[String]) -> Result<Vec<usize>> {
    let mut perm = Vec::with_capacity(running.len());
    for name in running {
        match candidate.iter().position(|c| c == name) {
            Some(j) => perm.push(j),
            None => bail!(
                "label set differs from the running model: {name:?} is missing (candidate labels: {}; map renamed labels with registry.label_map)",
                candidate.join(",")
            ),
        }
    }
    if let Some(extra) = candidate.iter().find(|c| !running.contains(c)) {
        bail!("label set differs from the running model: {extra:?} is not a running label (map renamed labels with registry.label_map)");
    }
    Ok(perm)
}

/// The generation new batches are tokenized with. Replacing it is the swap: the batcher reads
/// it at each batch boundary.
pub(crate) type Active = watch::Sender<Arc<Generation>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn permutation_maps_reordered_labels_and_refuses_other_sets() {
        assert_eq!(
            label_permutation(&s(&["a", "b", "c"]), &s(&["c", "a", "b"])).unwrap(),
            vec![2, 0, 1]
        );
        let e = label_permutation(&s(&["a", "b"]), &s(&["a", "x"])).unwrap_err();
        assert!(e.to_string().contains("\"x\" is missing"), "{e}");
        let e = label_permutation(&s(&["a", "b", "c"]), &s(&["a", "b"])).unwrap_err();
        assert!(
            e.to_string().contains("\"c\" is not a running label"),
            "{e}"
        );
    }
}
