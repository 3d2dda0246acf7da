//! A model directory on GoEmotions through ONNX Runtime: thresholds chosen on dev (by a rule
//! whose shrinkage is cross-validated on dev) and the test evaluations with bootstrap intervals
//! and calibration error, recorded in its card with the CPU they were measured on.

use crate::backend::offline::OfflineModel;
use crate::backend::ort::RuntimeOptions;
use crate::model::dir::{
    CrossValidated, Evaluation, ModelCard, Reliability, ThresholdSelection, Thresholds,
};
use crate::model::eval::calibration::{classwise_ece, ece, reliability};
use crate::model::eval::dataset::Split;
use crate::model::eval::scores::{evaluate, sigmoid, Metrics};
use crate::model::eval::thresholds::{self, Shrinkage, ThresholdRule};
use crate::model::kernels;
use crate::train::bootstrap;
use crate::train::rng::SplitMix64;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;

/// Cross-validation of the threshold rule: folds, repeats (fresh shuffles) and their seed.
const FOLDS: usize = 5;
const REPEATS: usize = 3;
const FOLD_SEED: u64 = 15;

fn eval_entry(split: &Split, desc: String, m: Metrics) -> Evaluation {
    Evaluation {
        split: split
            .path
            .file_name()
            .map_or("?".into(), |f| f.to_string_lossy().into_owned()),
        split_sha256: split.sha256.clone(),
        thresholds: desc,
        // Called after an OfflineModel loaded ONNX Runtime, so its build string is there to read.
        measured_on: Some(kernels::this_machine(ort::info())),
        metrics: m,
        reliability: None,
        reliability_uncalibrated: None,
    }
}

/// Scores a split with the model directory's ONNX model through ONNX Runtime.
pub fn score_split(
    model_dir: &Path,
    split_path: &Path,
    runtime: &RuntimeOptions,
) -> Result<(OfflineModel, Split, Vec<Vec<f32>>)> {
    let mut c = OfflineModel::load(model_dir, runtime, true)?;
    let split = Split::read(split_path, c.dir.card.labels.len())?;
    let scores = c.score_texts(&split.texts(), 32)?;
    Ok((c, split, scores))
}

/// ECE, classwise ECE and the reliability bins of `scores`.
fn reliability_of(scores: &[Vec<f32>], targets: &[Vec<bool>], labels: usize) -> Reliability {
    let bins = reliability(scores, targets);
    Reliability {
        ece: ece(&bins),
        classwise_ece: classwise_ece(scores, targets, labels),
        bins,
    }
}

/// A calibrated model's scores taken back through its calibration: the scores of the model
/// before calibration, up to f32 rounding.
fn uncalibrated(card: &ModelCard, scores: &[Vec<f32>]) -> Option<Vec<Vec<f32>>> {
    let c = card.calibration.as_ref()?;
    Some(
        scores
            .iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .map(|(j, &s)| {
                        let s = (s as f64).clamp(1e-12, 1.0 - 1e-12);
                        let z = (s / (1.0 - s)).ln();
                        sigmoid(((z - c.shift[j]) / c.scale[j]) as f32)
                    })
                    .collect()
            })
            .collect(),
    )
}

/// Adds the reliability of `scores` (and of the scores before calibration) to `e`.
fn with_reliability(
    mut e: Evaluation,
    card: &ModelCard,
    scores: &[Vec<f32>],
    targets: &[Vec<bool>],
) -> Evaluation {
    let n = card.labels.len();
    e.reliability = Some(reliability_of(scores, targets, n));
    e.reliability_uncalibrated = uncalibrated(card, scores).map(|u| reliability_of(&u, targets, n));
    e
}

/// How `tune_thresholds` picks its rule.
pub enum RuleChoice {
    /// Shrinkage by cross-validation on dev (see [`tuned_on_dev`]), with this precision floor.
    CrossValidated { min_precision: f64 },
    /// This rule as it is.
    Fixed(ThresholdRule),
}

/// Chooses thresholds on dev and records them and the dev metrics in the card.
pub fn tune_thresholds(
    model_dir: &Path,
    dev_path: &Path,
    runtime: &RuntimeOptions,
    rule: RuleChoice,
) -> Result<ModelCard> {
    let (c, dev, scores) = score_split(model_dir, dev_path, runtime)?;
    let card = match rule {
        RuleChoice::CrossValidated { min_precision } => {
            tuned_on_dev(&c.dir.card, &dev, &scores, min_precision)
        }
        RuleChoice::Fixed(rule) => tuned_by_rule(&c.dir.card, &dev, &scores, &rule, Vec::new()),
    };
    card.write(model_dir)?;
    Ok(card)
}

/// `REPEATS` shuffles of `n` comments into `FOLDS` folds: `folds[r][i]` is comment i's fold.
fn fold_assignments(n: usize) -> Vec<Vec<usize>> {
    (0..REPEATS as u64)
        .map(|r| {
            let mut order: Vec<usize> = (0..n).collect();
            SplitMix64::derive(FOLD_SEED, r, 0).shuffle(&mut order);
            let mut fold = vec![0; n];
            order
                .iter()
                .enumerate()
                .for_each(|(k, &i)| fold[i] = k % FOLDS);
            fold
        })
        .collect()
}

/// The card with thresholds chosen on dev `scores`: each label's best threshold shrunk toward
/// the global best by its dev support, with the shrinkage chosen by cross-validation on dev,
/// then raised where needed until the label's dev precision reaches `min_precision`; and the
/// dev metrics they give.
pub fn tuned_on_dev(
    card: &ModelCard,
    dev: &Split,
    scores: &[Vec<f32>],
    min_precision: f64,
) -> ModelCard {
    let n = card.labels.len();
    let targets = dev.targets(n);
    let folds = fold_assignments(scores.len());
    let (rule, cv) = thresholds::choose_rule(scores, &targets, n, min_precision, &folds, FOLDS);
    tuned_by_rule(card, dev, scores, &rule, cv)
}

/// The rule a card's thresholds were chosen by: its recorded one, or for a card tuned before
/// rules were recorded, each label's own best (no shrinkage, no floor).
pub fn rule_of(card: &ModelCard) -> ThresholdRule {
    card.thresholds
        .selection
        .as_ref()
        .map_or(ThresholdRule::PER_LABEL, |s| s.rule)
}

/// The card with thresholds tuned on dev `scores` by `rule` (`cv`: the cross-validation that
/// chose it), and the dev metrics they give.
pub fn tuned_by_rule(
    card: &ModelCard,
    dev: &Split,
    scores: &[Vec<f32>],
    rule: &ThresholdRule,
    cv: Vec<(Shrinkage, f64)>,
) -> ModelCard {
    let mut card = card.clone();
    let rule = *rule;
    let n = card.labels.len();
    let targets = dev.targets(n);
    let tuned = thresholds::by_rule(scores, &targets, n, &rule);
    card.thresholds = Thresholds {
        default: tuned.global,
        per_label: Some(tuned.per_label.clone()),
        chosen_by: format!(
            "dev.tsv: default = best global macro-F1; per_label = each label's best F1 shrunk toward the default by dev support ({}; {}), then raised until dev precision >= {} (or off where no threshold reaches it)",
            rule.shrinkage,
            if cv.is_empty() {
                "given".to_string()
            } else {
                format!("chosen by {REPEATS}x{FOLDS}-fold cross-validation on dev")
            },
            rule.min_precision
        ),
        selection: Some(ThresholdSelection {
            rule,
            own: tuned.own.clone(),
            cross_validation: cv
                .into_iter()
                .map(|(shrinkage, macro_f1)| CrossValidated {
                    shrinkage,
                    macro_f1,
                })
                .collect(),
            folds: FOLDS,
            repeats: REPEATS,
            seed: FOLD_SEED,
        }),
    };
    card.data.insert("dev.tsv".into(), dev.sha256.clone());
    let names = card.labels.names().to_vec();
    let dev_eval = with_reliability(
        eval_entry(
            dev,
            "per-label (dev)".into(),
            evaluate(scores, &targets, &tuned.per_label, &names),
        ),
        &card,
        scores,
        &targets,
    );
    card.metrics.insert("dev".into(), dev_eval);
    card.metrics.insert(
        "dev_global_dev_best".into(),
        eval_entry(
            dev,
            format!("global {:.2} (dev)", tuned.global),
            evaluate(scores, &targets, &vec![tuned.global; n], &names),
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

/// The card's three test evaluations of `scores` on `test`: its own thresholds (with bootstrap
/// intervals and calibration error), the reference's global 0.15 and the dev-best global
/// threshold.
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
    let mut own = evaluate(scores, &targets, &per, &names);
    bootstrap::add_intervals(&mut own, scores, &targets);
    out.insert(
        "test".to_string(),
        with_reliability(eval_entry(test, desc, own), card, scores, &targets),
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
