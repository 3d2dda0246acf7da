//! From a trained checkpoint to a model directory: ONNX export (fp32 or int8), tokenizer,
//! and the card; then threshold tuning on dev and evaluation, recorded in the card.

use crate::backend::classifier::Classifier;
use crate::backend::ort::RuntimeOptions;
use crate::model::dir::{
    Evaluation, ModelCard, Thresholds, FORMAT_VERSION, ONNX_FILE, TOKENIZER_FILE,
};
use crate::model::eval::dataset::{sha256_file, Split};
use crate::model::eval::scores::{evaluate, Metrics};
use crate::model::eval::thresholds;
use crate::train::encoder::{EncoderConfig, Params};
use crate::train::onnx::{self, Variant};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::Path;

pub struct ExportRequest<'a> {
    /// Hugging Face layout directory: config.json (with id2label), model.safetensors, tokenizer.json.
    pub checkpoint: &'a Path,
    pub out: &'a Path,
    pub variant: Variant,
    pub name: &'a str,
    pub version: &'a str,
    pub max_len: usize,
    /// The run directory, whose train.json is copied into the card.
    pub run: Option<&'a Path>,
}

/// Loads a checkpoint directory's encoder config, labels and parameters.
pub fn load_checkpoint(
    dir: &Path,
) -> Result<(EncoderConfig, crate::model::labels::LabelSet, Params)> {
    let hf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json"))
            .with_context(|| format!("reading {}/config.json", dir.display()))?,
    )?;
    let labels = crate::model::labels::LabelSet::from_hf(&hf)?;
    let cfg = EncoderConfig::from_hf(&hf, labels.len())?;
    let params = Params::load_safetensors(
        &cfg,
        &dir.join("model.safetensors"),
        DType::F32,
        &Device::Cpu,
        0,
    )?;
    Ok((cfg, labels, params))
}

pub fn export_model_dir(req: &ExportRequest) -> Result<ModelCard> {
    let (cfg, labels, params) = load_checkpoint(req.checkpoint)?;
    std::fs::create_dir_all(req.out).with_context(|| format!("creating {}", req.out.display()))?;
    let model = onnx::export(
        &cfg,
        &params,
        req.variant,
        &format!("{} {} GoEmotions classifier", req.name, req.version),
    )?;
    let onnx_path = req.out.join(ONNX_FILE);
    std::fs::write(&onnx_path, onnx::to_bytes(&model))
        .with_context(|| format!("writing {}", onnx_path.display()))?;
    std::fs::copy(
        req.checkpoint.join(TOKENIZER_FILE),
        req.out.join(TOKENIZER_FILE),
    )?;
    let (training, data) = match req.run {
        Some(run) => {
            let t: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(run.join("train.json"))?)?;
            let mut d = BTreeMap::new();
            for (k, file) in [("train_sha256", "train.tsv"), ("dev_sha256", "dev.tsv")] {
                if let Some(v) = t.get(k).and_then(|v| v.as_str()) {
                    d.insert(file.to_string(), v.to_string());
                }
            }
            let state: serde_json::Value =
                std::fs::read_to_string(run.join("checkpoint/state.json"))
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or(serde_json::Value::Null);
            let mut t = t;
            if let Some(o) = t.as_object_mut() {
                // Keep the card portable: no machine paths.
                o.remove("train_path");
                o.remove("dev_path");
                o.insert(
                    "best_dev".into(),
                    state.get("best").cloned().unwrap_or_default(),
                );
                o.insert(
                    "steps_done".into(),
                    state.get("step").cloned().unwrap_or_default(),
                );
                o.insert(
                    "train_seconds".into(),
                    state.get("train_seconds").cloned().unwrap_or_default(),
                );
            }
            (t, d)
        }
        None => (serde_json::Value::Null, BTreeMap::new()),
    };
    let card = ModelCard {
        format_version: FORMAT_VERSION,
        name: req.name.into(),
        version: req.version.into(),
        architecture: cfg.arch.model_type().into(),
        base_model: training
            .get("base_model")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .into(),
        labels,
        thresholds: Thresholds {
            default: 0.5,
            per_label: None,
            chosen_by: "not tuned".into(),
        },
        max_sequence_length: req.max_len,
        precision: req.variant.precision().into(),
        model_sha256: sha256_file(&onnx_path)?,
        training,
        data,
        metrics: BTreeMap::new(),
    };
    card.write(req.out)?;
    Ok(card)
}

fn eval_entry(split: &Split, desc: String, m: Metrics) -> Evaluation {
    Evaluation {
        split: split
            .path
            .file_name()
            .map_or("?".into(), |f| f.to_string_lossy().into_owned()),
        split_sha256: split.sha256.clone(),
        thresholds: desc,
        // Called after a Classifier loaded ONNX Runtime, so its build string is there to read.
        measured_on: Some(crate::model::cpu::this_machine(ort::info())),
        metrics: m,
    }
}

/// Scores a split with the model directory's ONNX model through ONNX Runtime.
pub fn score_split(
    model_dir: &Path,
    split_path: &Path,
    runtime: &RuntimeOptions,
) -> Result<(Classifier, Split, Vec<Vec<f32>>)> {
    let mut c = Classifier::load(model_dir, runtime, true)?;
    let split = Split::read(split_path, c.dir.card.labels.len())?;
    let scores = c.score_texts(&split.texts(), 32)?;
    Ok((c, split, scores))
}

/// Chooses thresholds on dev (best global → `default`, best per label → `per_label`) and
/// records dev metrics in the card.
pub fn tune_thresholds(
    model_dir: &Path,
    dev_path: &Path,
    runtime: &RuntimeOptions,
) -> Result<ModelCard> {
    let (c, dev, scores) = score_split(model_dir, dev_path, runtime)?;
    let card = tuned_on_dev(&c.dir.card, &dev, &scores);
    card.write(model_dir)?;
    Ok(card)
}

/// The card with thresholds chosen on dev `scores` and the dev metrics they give.
pub fn tuned_on_dev(card: &ModelCard, dev: &Split, scores: &[Vec<f32>]) -> ModelCard {
    let mut card = card.clone();
    let n = card.labels.len();
    let targets = dev.targets(n);
    let (global, _) = thresholds::best_global(scores, &targets, n);
    let per = thresholds::best_per_label(scores, &targets, n, global);
    card.thresholds = Thresholds {
        default: global,
        per_label: Some(per.clone()),
        chosen_by: "dev.tsv: default = best global macro-F1, per_label = best F1 of each label"
            .into(),
    };
    card.data.insert("dev.tsv".into(), dev.sha256.clone());
    card.metrics.insert(
        "dev".into(),
        eval_entry(
            dev,
            "per-label (dev)".into(),
            evaluate(scores, &targets, &per, card.labels.names()),
        ),
    );
    card.metrics.insert(
        "dev_global_dev_best".into(),
        eval_entry(
            dev,
            format!("global {global:.2} (dev)"),
            evaluate(scores, &targets, &vec![global; n], card.labels.names()),
        ),
    );
    card
}

/// Evaluates on test with the card's thresholds, the reference's global 0.15 and the dev-best
/// global threshold; with `write`, stores the three in the card.
pub fn evaluate_test(
    model_dir: &Path,
    test_path: &Path,
    runtime: &RuntimeOptions,
    write: bool,
) -> Result<BTreeMap<String, Evaluation>> {
    let (c, test, scores) = score_split(model_dir, test_path, runtime)?;
    let mut card = c.dir.card.clone();
    let out = test_evaluations(&card, &test, &scores);
    if write {
        card.data.insert("test.tsv".into(), test.sha256.clone());
        card.metrics.extend(out.clone());
        card.write(model_dir)?;
    }
    Ok(out)
}

/// The card's three test evaluations of `scores` on `test`: its own thresholds, the
/// reference's global 0.15 and the dev-best global threshold.
pub fn test_evaluations(
    card: &ModelCard,
    test: &Split,
    scores: &[Vec<f32>],
) -> BTreeMap<String, Evaluation> {
    let n = card.labels.len();
    let targets = test.targets(n);
    let names = card.labels.names().to_vec();
    let mut out = BTreeMap::new();
    let per = card.thresholds.resolved(n);
    let desc = if card.thresholds.per_label.is_some() {
        "per-label (dev)".to_string()
    } else {
        format!("global {:.2}", card.thresholds.default)
    };
    out.insert(
        "test".to_string(),
        eval_entry(test, desc, evaluate(scores, &targets, &per, &names)),
    );
    out.insert(
        "test_global_0.15".to_string(),
        eval_entry(
            test,
            "global 0.15 (reference)".into(),
            evaluate(scores, &targets, &vec![0.15; n], &names),
        ),
    );
    out.insert(
        "test_global_dev_best".to_string(),
        eval_entry(
            test,
            format!("global {:.2} (dev)", card.thresholds.default),
            evaluate(scores, &targets, &vec![card.thresholds.default; n], &names),
        ),
    );
    out
}
