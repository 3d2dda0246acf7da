//! `report.md`, `curves.png` and `reliability.png` for a model directory: metric tables from
//! the card (with bootstrap intervals, the threshold rule's cross-validation, calibration error
//! and, given the previous version, a before/after table), the training-loss and dev macro-F1
//! curves from the run's checkpoint state, and the reliability diagram from the card.

use crate::model::dir::{Evaluation, ModelCard, ModelDir, Reliability};
use crate::model::eval::calibration;
use crate::model::eval::scores::LabelMetrics;
use crate::train::gate::{self, ship_criteria, Gate, Verdict};
use crate::train::trainer::TrainState;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    let path = std::env::var("EMOSTREAM_FONT")
        .ok()
        .or_else(|| {
            FONT_CANDIDATES
                .iter()
                .find(|p| Path::new(p).exists())
                .map(|p| p.to_string())
        })
        .context(
            "no TrueType font for curves.png: install fonts-dejavu-core or set EMOSTREAM_FONT",
        )?;
    let bytes: &'static [u8] = Box::leak(
        std::fs::read(&path)
            .with_context(|| format!("reading font {path}"))?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

/// Training loss and dev macro-F1 against optimiser steps, side by side.
fn plot_curves(state: &TrainState, path: &Path) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(600);
    let max_step = state
        .loss_curve
        .last()
        .map_or(1, |p| p.0)
        .max(state.dev_curve.last().map_or(1, |p| p.step)) as f64;
    let max_loss = state
        .loss_curve
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1e-3);
    let mut c = ChartBuilder::on(&left)
        .caption("training loss (BCE, mean of 20 steps)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_step, 0f64..max_loss * 1.05)
        .map_err(|e| anyhow!("{e}"))?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    c.draw_series(LineSeries::new(
        state.loss_curve.iter().map(|&(s, l)| (s as f64, l)),
        &BLUE,
    ))
    .map_err(|e| anyhow!("{e}"))?;
    let f1_max = state
        .dev_curve
        .iter()
        .map(|p| p.macro_f1_best_global)
        .fold(0.0, f64::max)
        .max(0.1);
    let mut c = ChartBuilder::on(&right)
        .caption("dev macro-F1", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_step, 0f64..(f1_max * 1.15).min(1.0))
        .map_err(|e| anyhow!("{e}"))?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc("macro-F1")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    c.draw_series(LineSeries::new(
        state
            .dev_curve
            .iter()
            .map(|p| (p.step as f64, p.macro_f1_best_global)),
        &RED,
    ))
    .map_err(|e| anyhow!("{e}"))?
    .label("best global threshold")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    c.draw_series(LineSeries::new(
        state
            .dev_curve
            .iter()
            .map(|p| (p.step as f64, p.macro_f1_at_0_5)),
        &BLACK,
    ))
    .map_err(|e| anyhow!("{e}"))?
    .label("threshold 0.5")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    c.draw_series(
        state
            .dev_curve
            .iter()
            .map(|p| Circle::new((p.step as f64, p.macro_f1_best_global), 4, RED.filled())),
    )
    .map_err(|e| anyhow!("{e}"))?;
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// Reliability diagram: positive rate against mean score per bin, before and after
/// calibration, with the diagonal a calibrated model follows; beside it, how many pairs each
/// bin holds (log scale).
fn plot_reliability(after: &Reliability, before: Option<&Reliability>, path: &Path) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut series: Vec<(&Reliability, RGBColor, String)> =
        vec![(after, RED, format!("after (ECE {:.4})", after.ece))];
    if let Some(b) = before {
        series.insert(0, (b, BLUE, format!("before (ECE {:.4})", b.ece)));
    }
    let (left, right) = root.split_horizontally(600);
    let mut c = ChartBuilder::on(&left)
        .caption(
            "reliability on test (all comment x label pairs)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(|e| anyhow!("{e}"))?;
    c.configure_mesh()
        .x_desc("mean score in bin")
        .y_desc("share labelled so")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    c.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4)))
        .map_err(|e| anyhow!("{e}"))?
        .label("calibrated")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    for (r, colour, name) in &series {
        let points: Vec<(f64, f64)> = r
            .bins
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.mean_score, b.positive_rate))
            .collect();
        c.draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], *colour));
        c.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let max = after
        .bins
        .iter()
        .chain(before.map_or(&[][..], |b| &b.bins[..]))
        .map(|b| b.count)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut c = ChartBuilder::on(&right)
        .caption("pairs per score bin", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, (1f64..max * 2.0).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    c.configure_mesh()
        .x_desc("score")
        .y_desc("pairs")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (r, colour, name) in &series {
        c.draw_series(LineSeries::new(
            r.bins
                .iter()
                .map(|b| ((b.lo + b.hi) / 2.0, (b.count as f64).max(1.0))),
            colour.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label(name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], *colour));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// A threshold as the tables show it: "off" for a label turned off.
fn threshold(t: f32) -> String {
    if t >= crate::model::eval::thresholds::OFF {
        "off".into()
    } else {
        format!("{t:.2}")
    }
}

fn ci(v: Option<[f64; 2]>) -> String {
    v.map_or(String::new(), |[lo, hi]| format!("{lo:.3}–{hi:.3}"))
}

/// Firings (predicted on) per 1,000 comments, from a card's confusion counts.
fn per_thousand(l: &LabelMetrics, examples: usize) -> String {
    match (l.tp, l.fp) {
        (Some(tp), Some(fp)) if examples > 0 => {
            format!("{:.1}", 1000.0 * (tp + fp) as f64 / examples as f64)
        }
        _ => "?".into(),
    }
}

/// The threshold rule, its cross-validation and the calibration section.
fn thresholds_and_calibration(out: &mut String, card: &ModelCard, before: Option<&ModelCard>) {
    if let Some(sel) = &card.thresholds.selection {
        let _ = writeln!(
            out,
            "## Thresholds\n\n{}.\n\nEach label's own best threshold on dev is shrunk toward the global one (`t = w·t_label + (1−w)·t_global`, `w = n/(n+k)`, n = the label's dev positives), so a label seen a dozen times on dev does not keep a threshold fitted to its noise; k is chosen by {}× repeated {}-fold cross-validation on dev (thresholds tuned on four folds decide the fifth; the decisions of all folds are pooled before F1). Out-of-fold dev macro-F1 of each candidate:\n\n| shrinkage | out-of-fold dev macro-F1 |\n|---|---:|",
            card.thresholds.chosen_by, sel.repeats, sel.folds
        );
        for cv in &sel.cross_validation {
            let mark = if cv.shrinkage == sel.rule.shrinkage {
                " **(chosen)**"
            } else {
                ""
            };
            let _ = writeln!(out, "| {}{mark} | {:.4} |", cv.shrinkage, cv.macro_f1);
        }
        let _ = writeln!(out);
    }
    if let Some(cal) = &card.calibration {
        let _ = writeln!(
            out,
            "## Calibration\n\nPer-label Platt scaling (`score = sigmoid(a·logit + b)`, a > 0) fitted on dev (sha256 `{}`) and folded into model.onnx, so the scores in label events are calibrated with no change to serving; it keeps each label's order of scores, so thresholds map through it. Expected calibration error (15 equal-width bins over all comment × label pairs; classwise = the mean of each label's own):\n\n| split | ECE before | ECE after | classwise ECE before | classwise ECE after |\n|---|---:|---:|---:|---:|",
            cal.fitted_on
        );
        for key in ["test", "dev"] {
            if let Some(e) = card.metrics.get(key) {
                if let (Some(a), Some(b)) = (&e.reliability, &e.reliability_uncalibrated) {
                    let _ = writeln!(
                        out,
                        "| {key} | {:.4} | {:.4} | {:.4} | {:.4} |",
                        b.ece, a.ece, b.classwise_ece, a.classwise_ece
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\n\"Before\" is the uncalibrated model (model.onnx sha256 `{}`{}).\n\n![reliability diagram on test, before and after calibration](reliability.png)\n",
            cal.uncalibrated_sha256,
            before
                .filter(|b| b.model_sha256 == cal.uncalibrated_sha256)
                .map_or(String::new(), |b| format!(", i.e. {} {}", b.name, b.version))
        );
        let _ = writeln!(out, "| label | a | b |\n|---|---:|---:|");
        for (j, name) in card.labels.names().iter().enumerate() {
            let _ = writeln!(
                out,
                "| {name} | {:.3} | {:+.3} |",
                cal.scale[j], cal.shift[j]
            );
        }
        let _ = writeln!(out);
    }
}

/// Per label on test: this version's figures with intervals, beside the previous version's.
fn per_label_table(out: &mut String, test: &Evaluation, before: Option<&ModelCard>) {
    let prev = before.and_then(|b| b.metrics.get("test").map(|e| (b, e)));
    let m = &test.metrics;
    match prev {
        Some((b, pe)) => {
            let _ = writeln!(
                out,
                "## Per label on test: {v0} → this version\n\nThresholds from dev only. Firings = comments the label is predicted on, per 1,000 test comments. Intervals: bootstrap 95% (1,000 resamples of the test comments) — a label with a handful of test examples has an F1 that is mostly noise.\n\n| label | support | threshold {v0} | P {v0} | R {v0} | F1 {v0} | firings/1k {v0} | threshold | P | R | F1 | F1 95% CI | firings/1k |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
                v0 = b.version
            );
            for (l, p) in m.per_label.iter().zip(&pe.metrics.per_label) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {} |",
                    l.label,
                    l.support,
                    threshold(p.threshold),
                    p.precision,
                    p.recall,
                    p.f1,
                    per_thousand(p, pe.metrics.examples),
                    threshold(l.threshold),
                    l.precision,
                    l.recall,
                    l.f1,
                    ci(l.f1_ci95),
                    per_thousand(l, m.examples)
                );
            }
            let _ = writeln!(
                out,
                "| **macro** | | | {:.3} | {:.3} | **{:.4}** | | | {:.3} | {:.3} | **{:.4}** | {} | |\n",
                pe.metrics.macro_precision,
                pe.metrics.macro_recall,
                pe.metrics.macro_f1,
                m.macro_precision,
                m.macro_recall,
                m.macro_f1,
                ci(m.macro_f1_ci95)
            );
        }
        None => {
            let _ = writeln!(out, "## Per label (test, per-label thresholds from dev)\n\n| label | threshold | precision | recall | F1 | F1 95% CI | support | firings/1k |\n|---|---:|---:|---:|---:|---|---:|---:|");
            for l in &m.per_label {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
                    l.label,
                    threshold(l.threshold),
                    l.precision,
                    l.recall,
                    l.f1,
                    ci(l.f1_ci95),
                    l.support,
                    per_thousand(l, m.examples)
                );
            }
            let _ = writeln!(out);
        }
    }
}

fn ship_section(out: &mut String, v: &Verdict, card: &ModelCard, paired: Option<(f64, [f64; 2])>) {
    let criteria = &v.criteria;
    if criteria.is_empty() {
        return;
    }
    if v.gate == Gate::Refresh {
        refresh_section(out, v, paired);
        return;
    }
    let before = &v.before;
    let verdict = if v.passed {
        format!(
            "{} meets every condition to replace {} as the default.",
            card.version, before.version
        )
    } else {
        format!(
            "**{} does not meet every condition to replace {} as the default**, so {} stays the default.",
            card.version, before.version, before.version
        )
    };
    let _ = writeln!(
        out,
        "## Replacing {} {}\n\n{verdict}\n\n| condition | met | figures |\n|---|---|---|",
        before.name, before.version
    );
    for c in criteria {
        let met = if c.met { "yes" } else { "**no**" };
        let _ = writeln!(out, "| {} | {met} | {} |", c.name, c.detail);
    }
    if let Some((d, [lo, hi])) = paired {
        let _ = writeln!(
            out,
            "\nPaired bootstrap of the test macro-F1 difference ({} − {}; both models' decisions on the same 1,000 resamples of the test comments): {d:+.4}, 95% interval {lo:+.4} to {hi:+.4}.",
            card.version, before.version
        );
    }
    let _ = writeln!(out);
}

/// A fine-tune of the model in production on moderators' corrections, judged for going live.
fn refresh_section(out: &mut String, v: &Verdict, paired: Option<(f64, [f64; 2])>) {
    let verdict = if v.passed {
        format!(
            "{} meets every condition to replace {} in production.",
            v.candidate.version, v.before.version
        )
    } else {
        format!("**{} does not meet every condition to replace {} in production**: `train publish` refuses it (unless `--force`).", v.candidate.version, v.before.version)
    };
    let _ = writeln!(
        out,
        "## Replacing {} {} in production (refresh from moderators' corrections)\n\n{verdict}\n\n| condition | met | figures |\n|---|---|---|",
        v.before.name, v.before.version
    );
    for c in &v.criteria {
        let met = if c.met { "yes" } else { "**no**" };
        let _ = writeln!(out, "| {} | {met} | {} |", c.name, c.detail);
    }
    if let Some(f) = &v.feedback {
        let _ = writeln!(
            out,
            "\nOn the imported corrections (`{}`), at each model's own thresholds:\n\n| comments | n | micro-F1 {} | micro-F1 {} | mean score of the moderators' labels {} | … {} |\n|---|---:|---:|---:|---:|---:|",
            f.dataset, v.candidate.version, v.before.version, v.candidate.version, v.before.version
        );
        for (name, s) in [
            ("held out (never trained on)", &f.heldout),
            ("trained on", &f.trained_on),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {} | {:.4} | {:.4} | {:.3} | {:.3} |",
                s.comments,
                s.micro_f1[0],
                s.micro_f1[1],
                s.mean_corrected_score[0],
                s.mean_corrected_score[1]
            );
        }
    }
    if let Some((d, [lo, hi])) = paired {
        let _ = writeln!(
            out,
            "\nPaired bootstrap of the GoEmotions test macro-F1 difference ({} − {}; 1,000 resamples of the test comments): {d:+.4}, 95% interval {lo:+.4} to {hi:+.4}.",
            v.candidate.version, v.before.version
        );
    }
    let _ = writeln!(out);
}

/// Both models scored on test.tsv (the one their cards were measured on): the paired bootstrap
/// of their macro-F1 difference at each card's thresholds, and the previous model's test ECE as
/// measured here (a card older than calibration records none).
fn paired_on_test(
    model_dir: &Path,
    before_dir: &Path,
    card: &ModelCard,
) -> Result<((f64, [f64; 2]), f64)> {
    let test = crate::model::eval::dataset::goemotions_dir().join("test.tsv");
    let runtime = crate::backend::ort::RuntimeOptions::default();
    let (_, split, new) = crate::train::evaluate::score_split(model_dir, &test, &runtime)?;
    let (old_c, _, old) = crate::train::evaluate::score_split(before_dir, &test, &runtime)?;
    if card
        .metrics
        .get("test")
        .is_some_and(|e| e.split_sha256 != split.sha256)
    {
        anyhow::bail!(
            "{} is not the test.tsv the card was measured on",
            test.display()
        );
    }
    let n = card.labels.len();
    let targets = split.targets(n);
    let (a, b) = (
        card.thresholds.resolved(n),
        old_c.dir.card.thresholds.resolved(n),
    );
    let paired =
        crate::train::bootstrap::paired_macro_f1_difference((&new, &a), (&old, &b), &targets);
    let before_ece = calibration::ece(&calibration::reliability(&old, &targets));
    Ok((paired, before_ece))
}

fn row(out: &mut String, key: &str, e: &Evaluation) {
    let _ = writeln!(
        out,
        "| {key} | {} | {:.4} | {} | {:.4} | {:.4} | {:.4} |",
        e.thresholds,
        e.metrics.macro_f1,
        ci(e.metrics.macro_f1_ci95),
        e.metrics.micro_f1,
        e.metrics.macro_precision,
        e.metrics.macro_recall
    );
}

/// Writes report.md (and curves.png when the run directory is given) into the model directory.
/// With `compare` (another export of the same checkpoint, e.g. fp32 beside this int8 model),
/// adds a table of both models' test macro-F1 under each threshold choice.
/// With `before` (the previous version's directory), the per-label table shows both versions.
/// Writes report.md (and its plots); with `before`, also the gate's verdict (gate.json), the
/// refresh gate when `feedback` (a `train data import` dataset) is given, else the default one.
pub fn write_report(
    model_dir: &Path,
    run: Option<&Path>,
    compare: Option<&Path>,
    before: Option<&Path>,
    feedback: Option<&Path>,
) -> Result<Option<Verdict>> {
    let m = ModelDir::load(model_dir, true)?;
    let before_dir = before;
    let before = before
        .map(|b| ModelDir::load(b, false).map(|d| d.card))
        .transpose()?;
    let card = &m.card;
    let size = std::fs::metadata(m.onnx_path())?.len();
    let mut out = String::new();
    let _ = writeln!(out, "# {} {}\n", card.name, card.version);
    let _ = writeln!(out, "GoEmotions (28 labels, multi-label) classifier: {} layout fine-tuned from `{}`, exported to ONNX ({}, {:.1} MB, sha256 `{}`). Max sequence length {}.\n", card.architecture, card.base_model, card.precision, size as f64 / 1e6, card.model_sha256, card.max_sequence_length);
    let _ = writeln!(
        out,
        "## Metrics\n\nThresholds are chosen on dev only; test is never used for any choice.\n"
    );
    let _ = writeln!(out, "| evaluation | thresholds | macro-F1 | macro-F1 95% CI | micro-F1 | macro-P | macro-R |\n|---|---|---:|---|---:|---:|---:|");
    for key in [
        "test",
        "test_global_dev_best",
        "test_global_0.15",
        "dev",
        "dev_global_dev_best",
    ] {
        if let Some(e) = card.metrics.get(key) {
            row(&mut out, key, e);
        }
    }
    let _ = writeln!(out, "\nReference points (test macro-F1): GoEmotions paper BERT-base 0.46; reference study DistilBERT 0.45, RoBERTa-base 0.469, RoBERTa-large 0.53.\n");
    if let Some(other) = compare {
        let o = ModelDir::load(other, true)?;
        let _ = writeln!(
            out,
            "## {} vs {} export of the same checkpoint\n\nEach tuned on dev and evaluated on test the same way (`{}` sha256 `{}`).\n\n| evaluation | {} macro-F1 | {} macro-F1 | difference (points) |\n|---|---:|---:|---:|",
            card.precision, o.card.precision, o.card.precision, o.card.model_sha256,
            card.precision, o.card.precision
        );
        for key in ["test", "test_global_dev_best", "test_global_0.15"] {
            if let (Some(a), Some(b)) = (card.metrics.get(key), o.card.metrics.get(key)) {
                let _ = writeln!(
                    out,
                    "| {key} | {:.4} | {:.4} | {:+.2} |",
                    a.metrics.macro_f1,
                    b.metrics.macro_f1,
                    100.0 * (a.metrics.macro_f1 - b.metrics.macro_f1)
                );
            }
        }
        let _ = writeln!(out);
    }
    let mut verdict = None;
    if let (Some(b), Some(dir)) = (&before, before_dir) {
        let on_test = paired_on_test(model_dir, dir, card)
            .map_err(|e| tracing::warn!("no paired comparison on test: {e:#}"))
            .ok();
        let paired = on_test.map(|(p, _)| p);
        let v = match feedback {
            Some(data) => {
                let f = gate::compare_on_feedback(model_dir, dir, data)?;
                let criteria = gate::refresh_criteria(card, b, paired, &f);
                Verdict::new(Gate::Refresh, card, b, criteria, Some(f))
            }
            None => {
                let criteria = ship_criteria(card, b, on_test.map(|(_, ece)| ece));
                Verdict::new(Gate::Default, card, b, criteria, None)
            }
        };
        ship_section(&mut out, &v, card, paired);
        v.write(model_dir)?;
        verdict = Some(v);
    } else if feedback.is_some() {
        anyhow::bail!("--feedback needs --before (the model the candidate would replace)");
    }
    thresholds_and_calibration(&mut out, card, before.as_ref());
    if let Some(t) = card.metrics.get("test") {
        per_label_table(&mut out, t, before.as_ref());
        if let Some(r) = &t.reliability {
            plot_reliability(
                r,
                t.reliability_uncalibrated.as_ref(),
                &model_dir.join("reliability.png"),
            )?;
        }
    }
    let _ = writeln!(
        out,
        "\n## Training\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(&card.training)?
    );
    if let Some(run) = run {
        let text = std::fs::read_to_string(run.join("checkpoint/state.json"))
            .with_context(|| format!("reading {}/checkpoint/state.json", run.display()))?;
        let state: TrainState = serde_json::from_str(&text)?;
        plot_curves(&state, &model_dir.join("curves.png"))?;
        let _ = writeln!(out, "![training loss and dev macro-F1](curves.png)\n\n| step | epoch | dev macro-F1 (best global) | threshold | dev macro-F1 @0.5 |\n|---:|---:|---:|---:|---:|");
        for p in &state.dev_curve {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.4} | {:.2} | {:.4} |",
                p.step, p.epoch, p.macro_f1_best_global, p.best_global_threshold, p.macro_f1_at_0_5
            );
        }
        let _ = writeln!(
            out,
            "\nTraining time: {:.0} s of optimiser steps ({} steps).",
            state.train_seconds, state.step
        );
    } else if model_dir.join("curves.png").exists() {
        let _ = writeln!(
            out,
            "![training loss and dev macro-F1](curves.png)\n\n(Drawn from the training run when these weights were exported; the run's per-step table is in the report of the version that first shipped them.)"
        );
    }
    std::fs::write(model_dir.join("report.md"), out)
        .with_context(|| format!("writing {}/report.md", model_dir.display()))?;
    Ok(verdict)
}
