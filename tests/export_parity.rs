//! Each layout: fine-tune a tiny checkpoint a few steps with `Trainer`, export to ONNX, and check
//! ONNX Runtime's logits (through `ort`, as the daemon runs them) against candle's on real
//! GoEmotions texts: max |Δ| ≤ 1e-4 in fp32; int8 stays close.

mod common;

use candle_core::Device;
use emostream::encoder::{Arch, Encoder};
use emostream::inference::Classifier;
use emostream::model::RuntimeOptions;
use emostream::onnx::Variant;
use emostream::tokenize::PaddedBatch;
use emostream::train::publish::{export_model_dir, load_checkpoint, ExportRequest};
use emostream::train::predict;

enum Tolerance {
    MaxAbs(f32),
    Correlation(f64),
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va.sqrt() * vb.sqrt())
}

fn check_layout(arch: Arch) {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = common::tiny_run(arch, tmp.path(), 64, 16, 1);
    t.run(None, false).unwrap();
    assert_eq!(t.state.step, 4);
    let best = t.dir.join("best");
    let (cfg, _, params) = load_checkpoint(&best).unwrap();
    let encoder = Encoder::new(cfg.clone());
    let texts = common::texts("test", 128);

    for (variant, tol) in [
        (Variant::Fp32 { fused: true }, Tolerance::MaxAbs(1e-4)),
        (Variant::Fp32 { fused: false }, Tolerance::MaxAbs(1e-4)),
        (Variant::Int8, Tolerance::Correlation(0.95)),
    ] {
        let out = tmp.path().join(format!("model-{}-{:?}", variant.precision(), variant).replace([' ', '{', '}', ':'], ""));
        export_model_dir(&ExportRequest { checkpoint: &best, out: &out, variant, name: "tiny", version: "0.0.1", max_len: 64, run: Some(&t.dir) }).unwrap();
        let mut c = Classifier::load(&out, &RuntimeOptions::default(), true).unwrap();
        let rows: Vec<Vec<u32>> = texts.iter().map(|s| c.encode(s).unwrap().ids).collect();
        let candle_logits = predict::logits(&encoder, &params, &rows, c.text.pad_id(), 32, &Device::Cpu).unwrap();
        let mut worst = 0f32;
        let mut spread = 0f32;
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for chunk in (0..rows.len()).collect::<Vec<_>>().chunks(32) {
            let refs: Vec<&[u32]> = chunk.iter().map(|&i| rows[i].as_slice()).collect();
            let batch = PaddedBatch::new(&refs, c.text.pad_id());
            let ort = c.model.logits(&batch).unwrap();
            for (k, &i) in chunk.iter().enumerate() {
                for j in 0..cfg.num_labels {
                    let a = ort[k * cfg.num_labels + j];
                    let b = candle_logits[i][j];
                    assert!(a.is_finite());
                    xs.push(a as f64);
                    ys.push(b as f64);
                    worst = worst.max((a - b).abs());
                    spread = spread.max(b.abs());
                }
            }
        }
        let r = pearson(&xs, &ys);
        eprintln!("{arch:?} {variant:?}: max |ORT - candle| = {worst:.2e} (logit scale {spread:.2}), correlation {r:.5}");
        assert!(spread > 0.05, "logits too flat to test parity");
        match tol {
            Tolerance::MaxAbs(tol) => assert!(worst <= tol, "{arch:?} {variant:?}: max abs logit difference {worst} > {tol}"),
            // int8 dynamic quantisation of a random network is not exact; it must still track it.
            Tolerance::Correlation(min) => assert!(r >= min, "{arch:?} {variant:?}: correlation {r} < {min}"),
        }
    }
}

#[test]
fn bert_layout_exports_with_parity() {
    check_layout(Arch::Bert);
}

#[test]
fn roberta_layout_exports_with_parity() {
    check_layout(Arch::Roberta);
}

#[test]
fn distilbert_layout_exports_with_parity() {
    check_layout(Arch::Distilbert);
}
