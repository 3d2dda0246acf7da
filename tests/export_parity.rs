//! Each layout: fine-tune a tiny checkpoint a few steps with `Trainer`, export to ONNX, and check
//! ONNX Runtime's logits (through `ort`, as the daemon runs them) against candle's on real
//! GoEmotions texts: max |Δ| ≤ 1e-4 in fp32; int8 stays close.

mod common;

use candle_core::Device;
use emostream::backend::offline::OfflineModel;
use emostream::backend::ort::RuntimeOptions;
use emostream::model::tokenize::PaddedBatch;
use emostream::train::encoder::{Arch, Encoder, Pooling};
use emostream::train::onnx::Variant;
use emostream::train::package::{export_model_dir, load_checkpoint, ExportRequest};
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

fn check_layout(arch: Arch, pooling: Pooling) {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = common::tiny_run_with(arch, tmp.path(), 64, 16, 1, |c| {
        c.pooling = pooling;
        c.prior_bias = pooling == Pooling::Mean;
    });
    assert_eq!(t.encoder.cfg.pooling, pooling);
    if pooling == Pooling::Mean {
        // --prior-bias: the fresh classifier bias is each label's log prior odds on train, so
        // the most frequent label (neutral, 27) starts far above a rare one (grief, 16).
        let b: Vec<f32> = t.params.get("classifier.bias").unwrap().to_vec1().unwrap();
        assert!(b[27] > -1.5 && b[16] < -5.0, "{b:?}");
    }
    t.run(None, false).unwrap();
    assert_eq!(t.state.step, 4);
    let best = t.dir.join("best");
    let (cfg, _, params) = load_checkpoint(&best).unwrap();
    assert_eq!(
        cfg.pooling, pooling,
        "the checkpoint's config.json keeps the pooling"
    );
    let encoder = Encoder::new(cfg.clone());
    let texts = common::texts("test", 128);

    for (variant, tol) in [
        (Variant::Fp32 { fused: true }, Tolerance::MaxAbs(1e-4)),
        (Variant::Fp32 { fused: false }, Tolerance::MaxAbs(1e-4)),
        (Variant::Int8, Tolerance::Correlation(0.95)),
    ] {
        let out = tmp.path().join(
            format!("model-{}-{:?}", variant.precision(), variant)
                .replace([' ', '{', '}', ':'], ""),
        );
        export_model_dir(&ExportRequest {
            checkpoint: &best,
            out: &out,
            variant,
            name: "tiny",
            version: "0.0.1",
            max_len: 64,
            run: Some(&t.dir),
        })
        .unwrap();
        let mut c = OfflineModel::load(&out, &RuntimeOptions::default(), true).unwrap();
        let rows: Vec<Vec<u32>> = texts.iter().map(|s| c.encode(s).unwrap().ids).collect();
        let candle_logits =
            predict::logits(&encoder, &params, &rows, c.text.pad_id(), 32, &Device::Cpu).unwrap();
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
            Tolerance::MaxAbs(tol) => assert!(
                worst <= tol,
                "{arch:?} {variant:?}: max abs logit difference {worst} > {tol}"
            ),
            // int8 dynamic quantisation of a random network is not exact; it must still track it.
            Tolerance::Correlation(min) => {
                assert!(r >= min, "{arch:?} {variant:?}: correlation {r} < {min}")
            }
        }
    }
}

/// Op types of a model file, with counts.
fn op_histogram(path: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let bytes = std::fs::read(path).unwrap();
    let model: emostream::train::onnx::proto::ModelProto =
        prost::Message::decode(bytes.as_slice()).unwrap();
    let mut h = std::collections::BTreeMap::new();
    for n in model.graph.unwrap().node {
        *h.entry(n.op_type).or_insert(0) += 1;
    }
    h
}

/// Saves ONNX Runtime's optimised graph of both fp32 exports and reads what fused.
/// Finding (recorded in BENCHMARKS.md): from standard ops ORT 1.31 fuses the erf-GELU with its
/// bias into BiasGelu and bias-adds into Gemm/FusedMatMul, but neither the attention block nor
/// residual + LayerNormalization; so the default export emits Attention and
/// SkipLayerNormalization itself, and they survive optimisation intact.
#[test]
fn ort_optimised_graphs_show_what_fused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    common::tiny_checkpoint(Arch::Bert, &base, 1);
    // A base checkpoint has no labels: add them as a trained checkpoint would.
    let mut hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    let labels = emostream::model::labels::LabelSet::goemotions();
    let cfg = emostream::train::encoder::EncoderConfig::from_hf(&hf, 28).unwrap();
    hf = cfg.to_hf(labels.names());
    std::fs::write(base.join("config.json"), serde_json::to_vec(&hf).unwrap()).unwrap();
    let optimise = |variant: Variant, tag: &str| {
        let out = tmp.path().join(tag);
        export_model_dir(&ExportRequest {
            checkpoint: &base,
            out: &out,
            variant,
            name: "tiny",
            version: "0",
            max_len: 64,
            run: None,
        })
        .unwrap();
        let before = op_histogram(&out.join("model.onnx"));
        let optimized = tmp.path().join(format!("{tag}-optimized.onnx"));
        let rt = RuntimeOptions {
            optimized_model_path: Some(optimized.clone()),
            ..Default::default()
        };
        OfflineModel::load(&out, &rt, true).unwrap();
        let after = op_histogram(&optimized);
        eprintln!("{tag} exported: {before:?}\n{tag} after ORT optimisation: {after:?}");
        (before, after)
    };
    let (before, after) = optimise(Variant::Fp32 { fused: false }, "plain");
    assert!(before.contains_key("Erf"));
    assert_eq!(after.get("BiasGelu"), Some(&2), "GELU + bias not fused");
    assert!(!after.contains_key("Erf"));
    let (_, after) = optimise(Variant::Fp32 { fused: true }, "fused");
    assert_eq!(after.get("Attention"), Some(&2));
    assert_eq!(
        after.get("SkipLayerNormalization"),
        Some(&4),
        "2 layers x 2 residual LayerNorms"
    );
    assert_eq!(after.get("BiasGelu"), Some(&2));
    assert!(!after.contains_key("Softmax") && !after.contains_key("Erf"));
}

#[test]
fn bert_layout_exports_with_parity() {
    check_layout(Arch::Bert, Pooling::Cls);
}

#[test]
fn mean_pooled_bert_exports_with_parity() {
    check_layout(Arch::Bert, Pooling::Mean);
}

#[test]
fn roberta_layout_exports_with_parity() {
    check_layout(Arch::Roberta, Pooling::Cls);
}

#[test]
fn distilbert_layout_exports_with_parity() {
    check_layout(Arch::Distilbert, Pooling::Cls);
}

/// Not a check: writes a RoBERTa-base-shaped model directory (768 wide, 12 layers, 12 heads,
/// 3072 feed-forward; random weights, fp32, our fused export) to `$EMOSTREAM_SHAPED_OUT`, for
/// `benches/sizing.sh` to measure a base-sized model's comments/s. Run through that script.
#[test]
#[ignore]
fn write_a_roberta_base_shaped_model_for_the_sizing_bench() {
    let out = std::path::PathBuf::from(
        std::env::var("EMOSTREAM_SHAPED_OUT").expect("EMOSTREAM_SHAPED_OUT: where to write it"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let dims = common::Dims {
        hidden: 768,
        layers: 12,
        heads: 12,
        intermediate: 3072,
    };
    common::shaped_checkpoint(Arch::Roberta, &base, 7, &dims);
    let mut hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    let labels = emostream::model::labels::LabelSet::goemotions();
    let cfg = emostream::train::encoder::EncoderConfig::from_hf(&hf, 28).unwrap();
    hf = cfg.to_hf(labels.names());
    std::fs::write(base.join("config.json"), serde_json::to_vec(&hf).unwrap()).unwrap();
    export_model_dir(&ExportRequest {
        checkpoint: &base,
        out: &out,
        variant: Variant::Fp32 { fused: true },
        name: "roberta-base-shaped",
        version: "0.0.0",
        max_len: 128,
        run: None,
    })
    .unwrap();
}
