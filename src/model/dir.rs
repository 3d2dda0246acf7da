//! The model directory, one definition for `train` (writer) and the daemon (reader):
//!
//!   model.onnx      inputs input_ids, attention_mask (+ token_type_ids for BERT), int64 [batch, seq];
//!                   output logits, float32 [batch, labels]
//!   tokenizer.json  Hugging Face tokenizers format
//!   model.json      the card: labels, thresholds, max length, precision, sha256, training, metrics
//!
//! A Hugging Face / optimum export directory (model.onnx + tokenizer.json + config.json with
//! id2label) is accepted too; its card is derived (thresholds 0.5, sha256 computed).

use crate::model::eval::calibration::ReliabilityBin;
use crate::model::eval::dataset::sha256_file;
use crate::model::eval::scores::Metrics;
use crate::model::eval::thresholds::{Shrinkage, ThresholdRule};
use crate::model::kernels::MeasuredOn;
use crate::model::labels::LabelSet;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(crate) const FORMAT_VERSION: u32 = 1;
pub const CARD_FILE: &str = "model.json";
pub(crate) const ONNX_FILE: &str = "model.onnx";
pub(crate) const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Used for every label without its own value.
    pub default: f32,
    /// One per label (in label order), chosen on dev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_label: Option<Vec<f32>>,
    /// How the thresholds were chosen (e.g. "per-label F1 on dev").
    #[serde(default)]
    pub(crate) chosen_by: String,
    /// The rule that made `per_label`, what it started from and how it was chosen
    /// (cards tuned before rules were recorded have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<ThresholdSelection>,
}

/// How per-label thresholds were chosen on dev: the rule, each label's own best threshold before
/// the rule, and the cross-validation that picked the rule's shrinkage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSelection {
    pub rule: ThresholdRule,
    /// Each label's best-F1 threshold on dev (the rule shrinks these toward `default`).
    pub own: Vec<f32>,
    /// Out-of-fold macro-F1 on dev of each shrinkage candidate (with the same precision floor).
    pub cross_validation: Vec<CrossValidated>,
    pub folds: usize,
    pub repeats: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrossValidated {
    pub shrinkage: Shrinkage,
    pub macro_f1: f64,
}

/// Per-label Platt scaling folded into model.onnx (`logits = scale * logits + shift` before the
/// output), fitted on dev: the scores events carry are calibrated with no serving change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub method: CalibrationMethod,
    /// sha256 of the split it was fitted on.
    pub fitted_on: String,
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
    /// The model.onnx it was fitted to (before folding).
    pub uncalibrated_sha256: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationMethod {
    /// A scale and a shift of each label's logit, by maximum likelihood.
    Platt,
}

/// How well scores match the rates they claim on an evaluation's split: every (comment, label)
/// pair in 15 equal-width bins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Reliability {
    /// Expected calibration error over all pairs.
    pub ece: f64,
    /// Mean over labels of each label's ECE.
    pub classwise_ece: f64,
    pub bins: Vec<ReliabilityBin>,
}

impl Thresholds {
    /// 0.5 for every label, before any tuning; `why` says where the card came from.
    pub(crate) fn untuned(why: &str) -> Thresholds {
        Thresholds {
            default: 0.5,
            per_label: None,
            chosen_by: why.into(),
            selection: None,
        }
    }

    pub fn resolved(&self, n: usize) -> Vec<f32> {
        match &self.per_label {
            Some(v) if v.len() == n => v.clone(),
            _ => vec![self.default; n],
        }
    }
}

/// Metrics of one evaluation, as stored in the card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub(crate) split: String,
    pub split_sha256: String,
    /// e.g. "per-label (dev)", "global 0.15", "global 0.34 (dev)"
    pub thresholds: String,
    /// The CPU and ONNX Runtime kernels the figures were measured with: another kernel family
    /// rounds differently, so a score at a threshold may land on the other side there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_on: Option<MeasuredOn>,
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Calibration of the scores on this split; with a calibrated model, also of the scores
    /// before its calibration (the previous model's, when only calibration changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliability: Option<Reliability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliability_uncalibrated: Option<Reliability>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub(crate) format_version: u32,
    pub name: String,
    pub version: String,
    /// bert | roberta | distilbert
    pub architecture: String,
    pub(crate) base_model: String,
    pub labels: LabelSet,
    pub thresholds: Thresholds,
    pub max_sequence_length: usize,
    /// fp32 | int8
    pub precision: String,
    pub model_sha256: String,
    /// sha256 of tokenizer.json (cards written before this field have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    /// sha256 over everything the daemon loads: model.onnx's and tokenizer.json's sha256, the
    /// labels, thresholds and max length ([`ModelCard::content_digest`]); verified on load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default)]
    pub(crate) training: serde_json::Value,
    /// File name → sha256 of the data the model was trained and evaluated on.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Present when model.onnx has calibration folded in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Keyed by evaluation: "dev", "test", "test_global_0.15", "test_global_dev_best".
    #[serde(default)]
    pub metrics: BTreeMap<String, Evaluation>,
}

impl ModelCard {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            bail!(
                "model.json format_version {} is not supported (expected {FORMAT_VERSION})",
                self.format_version
            );
        }
        let n = self.labels.len();
        if let Some(p) = &self.thresholds.per_label {
            if p.len() != n {
                bail!(
                    "model.json thresholds.per_label has {} values for {n} labels",
                    p.len()
                );
            }
        }
        for t in self.thresholds.resolved(n) {
            // 1.0 turns a label off (see thresholds::OFF).
            if !(t > 0.0 && t <= 1.0) {
                bail!("model.json threshold {t} is outside (0, 1]");
            }
        }
        if self.max_sequence_length < 2 {
            bail!(
                "model.json max_sequence_length {} is too small",
                self.max_sequence_length
            );
        }
        Ok(())
    }

    /// The digest of what the daemon loads, as this card describes it.
    pub(crate) fn content_digest(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let text = format!(
            "emostream-model-digest/1\nname {}\nversion {}\nmodel.onnx {}\ntokenizer.json {}\nlabels {}\nthresholds {}\nmax_sequence_length {}\n",
            self.name,
            self.version,
            self.model_sha256,
            self.tokenizer_sha256.as_deref().unwrap_or(""),
            serde_json::to_string(&self.labels)?,
            serde_json::to_string(&self.thresholds)?,
            self.max_sequence_length
        );
        Ok(hex::encode(Sha256::digest(text.as_bytes())))
    }

    /// Checks tokenizer.json's sha256 and the card's digest (when the card has them) against
    /// the files in `dir`. The digest catches a changed file or a hand-edited card; it is not
    /// a signature (whoever can write the registry can seal a card again), so the registry
    /// must be writable by its publisher only.
    fn verify_digest(&self, dir: &Path) -> Result<()> {
        if let Some(tok) = &self.tokenizer_sha256 {
            let got = sha256_file(&dir.join(TOKENIZER_FILE))?;
            if &got != tok {
                bail!("tokenizer.json sha256 {got} does not match model.json ({tok}): the file was changed");
            }
        }
        let Some(digest) = &self.digest else {
            return Ok(());
        };
        if self.tokenizer_sha256.is_none() {
            bail!("model.json has a digest but no tokenizer_sha256");
        }
        if &self.content_digest()? != digest {
            bail!("model.json digest does not match its labels, thresholds and files: the card was changed");
        }
        Ok(())
    }

    /// Writes the card, sealed: tokenizer.json's sha256 and the digest are computed from the
    /// directory as it is now (model.onnx's sha256 is the card's own, checked on load).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CARD_FILE);
        let tmp = dir.join(".model.json.tmp");
        let mut sealed = self.clone();
        sealed.tokenizer_sha256 = Some(sha256_file(&dir.join(TOKENIZER_FILE))?);
        sealed.digest = Some(sealed.content_digest()?);
        let mut bytes = serde_json::to_vec_pretty(&sealed)?;
        bytes.push(b'\n');
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Which model labelled something: name, version and the sha256 of its model.onnx, as label
/// events and swap reports carry it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ModelRef {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) sha256: String,
}

/// A Hugging Face directory's config.json (checkpoints, optimum exports, base models).
pub(crate) fn read_hf_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A model directory resolved on disk.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub(crate) dir: PathBuf,
    pub card: ModelCard,
}

impl ModelDir {
    pub(crate) fn onnx_path(&self) -> PathBuf {
        self.dir.join(ONNX_FILE)
    }
    pub(crate) fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(TOKENIZER_FILE)
    }

    /// Loads and validates a model directory; with `verify_sha256`, model.onnx must match the card.
    pub fn load(dir: &Path, verify_sha256: bool) -> Result<ModelDir> {
        let ctx = || format!("model directory {}", dir.display());
        for f in [ONNX_FILE, TOKENIZER_FILE] {
            if !dir.join(f).is_file() {
                bail!("{} lacks {f}", ctx());
            }
        }
        let card = if dir.join(CARD_FILE).is_file() {
            let text = std::fs::read_to_string(dir.join(CARD_FILE)).with_context(ctx)?;
            let card: ModelCard = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}/{CARD_FILE}", dir.display()))?;
            card.validate().with_context(ctx)?;
            if verify_sha256 {
                let got = sha256_file(&dir.join(ONNX_FILE))?;
                if got != card.model_sha256 {
                    bail!(
                        "{}: model.onnx sha256 {got} does not match model.json ({})",
                        ctx(),
                        card.model_sha256
                    );
                }
                card.verify_digest(dir).with_context(ctx)?;
            }
            card
        } else if dir.join("config.json").is_file() {
            Self::card_from_hf(dir).with_context(ctx)?
        } else {
            bail!(
                "{} has neither model.json nor a Hugging Face config.json",
                ctx()
            );
        };
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            card,
        })
    }

    /// Derives a card for a Hugging Face / optimum ONNX export.
    fn card_from_hf(dir: &Path) -> Result<ModelCard> {
        let hf = read_hf_config(dir)?;
        let labels = LabelSet::from_hf(&hf)?;
        let tok: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(TOKENIZER_FILE))?)
                .context("parsing tokenizer.json")?;
        let max_len = tok
            .pointer("/truncation/max_length")
            .and_then(|v| v.as_u64())
            .or_else(|| {
                hf.get("max_position_embeddings")
                    .and_then(|v| v.as_u64())
                    .map(|m| {
                        if hf.get("model_type").and_then(|t| t.as_str()) == Some("roberta") {
                            m - 2
                        } else {
                            m
                        }
                    })
            })
            .unwrap_or(512)
            .min(512) as usize;
        let card = ModelCard {
            format_version: FORMAT_VERSION,
            name: dir
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned()),
            version: "0".into(),
            architecture: hf
                .get("model_type")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .into(),
            base_model: hf
                .get("_name_or_path")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .into(),
            labels,
            thresholds: Thresholds::untuned("default 0.5 (Hugging Face export)"),
            max_sequence_length: max_len,
            precision: "fp32".into(),
            model_sha256: sha256_file(&dir.join(ONNX_FILE))?,
            tokenizer_sha256: None,
            digest: None,
            training: serde_json::Value::Null,
            data: BTreeMap::new(),
            calibration: None,
            metrics: BTreeMap::new(),
        };
        card.validate()?;
        Ok(card)
    }
}
