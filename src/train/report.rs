//! `report.md` and `curves.png` for a model directory: metric tables from the card, and the
//! training-loss and dev macro-F1 curves from the run's checkpoint state.

use crate::model::dir::{Evaluation, ModelDir};
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

fn row(out: &mut String, key: &str, e: &Evaluation) {
    let _ = writeln!(
        out,
        "| {key} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
        e.thresholds,
        e.metrics.macro_f1,
        e.metrics.micro_f1,
        e.metrics.macro_precision,
        e.metrics.macro_recall
    );
}

/// Writes report.md (and curves.png when the run directory is given) into the model directory.
/// With `compare` (another export of the same checkpoint, e.g. fp32 beside this int8 model),
/// adds a table of both models' test macro-F1 under each threshold choice.
pub fn write_report(model_dir: &Path, run: Option<&Path>, compare: Option<&Path>) -> Result<()> {
    let m = ModelDir::load(model_dir, true)?;
    let card = &m.card;
    let size = std::fs::metadata(m.onnx_path())?.len();
    let mut out = String::new();
    let _ = writeln!(out, "# {} {}\n", card.name, card.version);
    let _ = writeln!(out, "GoEmotions (28 labels, multi-label) classifier: {} layout fine-tuned from `{}`, exported to ONNX ({}, {:.1} MB, sha256 `{}`). Max sequence length {}.\n", card.architecture, card.base_model, card.precision, size as f64 / 1e6, card.model_sha256, card.max_sequence_length);
    let _ = writeln!(
        out,
        "## Metrics\n\nThresholds are chosen on dev only; test is never used for any choice.\n"
    );
    let _ = writeln!(out, "| evaluation | thresholds | macro-F1 | micro-F1 | macro-P | macro-R |\n|---|---|---:|---:|---:|---:|");
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
    if let Some(t) = card.metrics.get("test") {
        let _ = writeln!(out, "## Per label (test, per-label thresholds from dev)\n\n| label | threshold | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|---:|");
        for l in &t.metrics.per_label {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.3} | {:.3} | {:.3} | {} |",
                l.label, l.threshold, l.precision, l.recall, l.f1, l.support
            );
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
    }
    std::fs::write(model_dir.join("report.md"), out)
        .with_context(|| format!("writing {}/report.md", model_dir.display()))
}
