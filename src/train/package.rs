//! From a trained checkpoint to a model directory: ONNX export (fp32 or int8), the tokenizer
//! and the card (training record, data sha256s; thresholds untuned).

use crate::model::dir::{ModelCard, Thresholds, FORMAT_VERSION, ONNX_FILE, TOKENIZER_FILE};
use crate::model::eval::dataset::sha256_file;
use crate::model::labels::LabelSet;
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
pub fn load_checkpoint(dir: &Path) -> Result<(EncoderConfig, LabelSet, Params)> {
    let hf = crate::model::dir::read_hf_config(dir)?;
    let labels = LabelSet::from_hf(&hf)?;
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
        thresholds: Thresholds::untuned("not tuned"),
        max_sequence_length: req.max_len,
        precision: req.variant.precision().into(),
        model_sha256: sha256_file(&onnx_path)?,
        tokenizer_sha256: None,
        digest: None,
        training,
        data,
        calibration: None,
        metrics: BTreeMap::new(),
    };
    card.write(req.out)?;
    // As written: sealed with tokenizer.json's sha256 and the digest.
    Ok(crate::model::dir::ModelDir::load(req.out, false)?.card)
}
