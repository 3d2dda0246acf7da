//! `train calibrate`: per-label Platt scaling fitted on dev logits and folded into the model
//! directory's model.onnx, so the scores events carry mean what they say. Thresholds are mapped
//! through it (each label's decisions stay the same) until they are tuned again.

use crate::backend::offline::OfflineModel;
use crate::backend::ort::RuntimeOptions;
use crate::model::dir::{Calibration, CalibrationMethod, ModelCard, Thresholds, ONNX_FILE};
use crate::model::eval::calibration::{fit_platt, Platt};
use crate::model::eval::dataset::{sha256_file, Split};
use crate::train::onnx::calibration::fold;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Fits calibration on `dev_path`, rewrites model.onnx with it and the card to match (named
/// `version` when given: model.onnx changes, so it is a new version).
pub fn calibrate(
    model_dir: &Path,
    dev_path: &Path,
    runtime: &RuntimeOptions,
    version: Option<&str>,
) -> Result<ModelCard> {
    let mut c = OfflineModel::load(model_dir, runtime, true)?;
    let mut card = c.dir.card.clone();
    if card.calibration.is_some() {
        bail!(
            "{} is calibrated already (model.json has a calibration section)",
            model_dir.display()
        );
    }
    let n = card.labels.len();
    let dev = Split::read(dev_path, n)?;
    let logits = c.logits_texts(&dev.texts(), 32)?;
    drop(c);
    let targets = dev.targets(n);
    let fits: Vec<Platt> = (0..n)
        .map(|j| {
            let z: Vec<f32> = logits.iter().map(|r| r[j]).collect();
            let y: Vec<bool> = targets.iter().map(|r| r[j]).collect();
            fit_platt(&z, &y)
        })
        .collect();

    let onnx = model_dir.join(ONNX_FILE);
    let bytes = std::fs::read(&onnx).with_context(|| format!("reading {}", onnx.display()))?;
    let scale: Vec<f32> = fits.iter().map(|p| p.scale as f32).collect();
    let shift: Vec<f32> = fits.iter().map(|p| p.shift as f32).collect();
    let folded = fold(&bytes, &scale, &shift)?;
    let tmp = model_dir.join(".model.onnx.tmp");
    std::fs::write(&tmp, &folded).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &onnx).with_context(|| format!("writing {}", onnx.display()))?;

    let before = card.thresholds.resolved(n);
    card.thresholds = Thresholds {
        default: card.thresholds.default,
        per_label: Some(
            before
                .iter()
                .zip(&fits)
                .map(|(&t, p)| p.map_threshold(t))
                .collect(),
        ),
        chosen_by: format!(
            "{} — mapped through the calibration (same decisions); tune again",
            card.thresholds.chosen_by
        ),
        selection: None,
    };
    card.calibration = Some(Calibration {
        method: CalibrationMethod::Platt,
        fitted_on: dev.sha256.clone(),
        // The graph holds f32; the card records what the graph computes.
        scale: scale.iter().map(|&x| x as f64).collect(),
        shift: shift.iter().map(|&x| x as f64).collect(),
        uncalibrated_sha256: card.model_sha256.clone(),
    });
    card.model_sha256 = sha256_file(&onnx)?;
    if let Some(v) = version {
        card.version = v.into();
    }
    // The evaluations described the uncalibrated scores and thresholds: measure them again.
    card.metrics.clear();
    card.write(model_dir)?;
    Ok(card)
}
