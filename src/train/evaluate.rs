//! A model directory on GoEmotions through ONNX Runtime: thresholds chosen on dev and the
//! test evaluations, recorded in its card with the CPU they were measured on.

use crate::backend::classifier::Classifier;
use crate::backend::ort::RuntimeOptions;
use crate::model::cpu;
use crate::model::dir::{Evaluation, ModelCard, Thresholds};
use crate::model::eval::dataset::Split;
use crate::model::eval::scores::{evaluate, Metrics};
use crate::model::eval::thresholds;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;

fn eval_entry(split: &Split, desc: String, m: Metrics) -> Evaluation {
    Evaluation {
        split: split
            .path
            .file_name()
            .map_or("?".into(), |f| f.to_string_lossy().into_owned()),
        split_sha256: split.sha256.clone(),
        thresholds: desc,
        // Called after a Classifier loaded ONNX Runtime, so its build string is there to read.
        measured_on: Some(cpu::this_machine(ort::info())),
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
