//! Training mechanics on tiny checkpoints of every layout: autograd matches finite differences
//! for every parameter, and a stopped-and-resumed run equals an uninterrupted one; and the
//! pretrained all-MiniLM-L6-v2 forward reproduces its published sentence similarities.

mod common;

use candle_core::{DType, Device, Tensor};
use emostream::model::tokenize::{PaddedBatch, TextEncoder};
use emostream::train::encoder::{Arch, Encoder, EncoderConfig, Params, Pooling};
use emostream::train::loss::bce_with_logits;

fn loss_f64(enc: &Encoder, p: &Params, batch: &PaddedBatch, targets: &Tensor) -> Tensor {
    let logits = enc.forward(p, batch, &Device::Cpu, None).unwrap();
    bce_with_logits(&logits, targets, None).unwrap()
}

fn gradient_check(arch: Arch, pooling: Pooling) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: EncoderConfig = common::tiny_checkpoint(arch, tmp.path(), 3);
    cfg.pooling = pooling;
    // Mean pooling feeds the classifier directly: the CLS head's dense layer is unused.
    let unused = (pooling == Pooling::Mean)
        .then(|| format!("{}.", emostream::train::encoder::names::head(arch).dense));
    let params = Params::load_safetensors(
        &cfg,
        &tmp.path().join("model.safetensors"),
        DType::F64,
        &Device::Cpu,
        5,
    )
    .unwrap();
    let enc = Encoder::new(cfg.clone());
    let text = TextEncoder::from_file(&tmp.path().join("tokenizer.json"), 24).unwrap();
    // Three texts of different token lengths, so the batch has padding.
    let mut ex = Vec::new();
    let mut rows: Vec<Vec<u32>> = Vec::new();
    for e in common::split("train").examples {
        let ids = text.encode(&e.text).unwrap().ids;
        if rows.iter().all(|r| r.len() != ids.len()) && ids.len() < 24 {
            rows.push(ids);
            ex.push(e);
        }
        if rows.len() == 3 {
            break;
        }
    }
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let batch = PaddedBatch::new(&refs, text.pad_id());
    assert!(
        batch.attention_mask.contains(&0),
        "the batch should include padding"
    );
    let mut t = vec![0f64; 3 * 28];
    for (r, e) in ex.iter().enumerate() {
        e.labels.iter().for_each(|&j| t[r * 28 + j] = 1.0);
    }
    let targets = Tensor::from_vec(t, (3, 28), &Device::Cpu).unwrap();

    let grads = loss_f64(&enc, &params, &batch, &targets)
        .backward()
        .unwrap();
    let h = 1e-6;
    let mut checked = 0;
    let mut skipped = 0;
    for (name, var) in params.iter() {
        if unused.as_deref().is_some_and(|u| name.starts_with(u)) {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{name} should be unused"
            );
            skipped += 1;
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{arch:?}: no gradient reached {name}"));
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        // The three largest-gradient elements: proves the gradient is non-zero and checks it.
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        assert!(
            g[idx[0]].abs() > 0.0,
            "{arch:?}: gradient of {name} is all zero"
        );
        let orig = var.as_tensor().copy().unwrap();
        let flat: Vec<f64> = orig.flatten_all().unwrap().to_vec1().unwrap();
        for &i in idx.iter().take(3) {
            let eval = |delta: f64| {
                let mut v = flat.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_f64(&enc, &params, &batch, &targets)
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            var.set(&orig).unwrap();
            let analytic = g[i];
            assert!(
                (numeric - analytic).abs() <= 1e-7 + 1e-5 * numeric.abs().max(analytic.abs()),
                "{arch:?} {name}[{i}]: autograd {analytic:e} vs finite difference {numeric:e}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3 * (emostream::train::encoder::names::all(&cfg).len() - skipped));
}

#[test]
fn bert_gradients_match_finite_differences() {
    gradient_check(Arch::Bert, Pooling::Cls);
}

#[test]
fn mean_pooled_gradients_match_finite_differences() {
    gradient_check(Arch::Bert, Pooling::Mean);
}

#[test]
fn roberta_gradients_match_finite_differences() {
    gradient_check(Arch::Roberta, Pooling::Cls);
}

#[test]
fn distilbert_gradients_match_finite_differences() {
    gradient_check(Arch::Distilbert, Pooling::Cls);
}

fn max_param_diff(a: &Params, b: &Params) -> f32 {
    let mut worst = 0f32;
    for (name, va) in a.iter() {
        let vb = b.var(name).unwrap();
        let d = (va.as_tensor() - vb.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        worst = worst.max(d);
    }
    worst
}

#[test]
fn stop_and_resume_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    // 96 examples, batch 16, 2 epochs = 12 steps; stop after 5 (mid-epoch) and resume.
    let base = tmp.path().join("base");
    common::tiny_checkpoint(Arch::Bert, &base, 7);
    let mut whole = common::run_from(&base, &tmp.path().join("a"), 96, 16, 2);
    whole.run(None, false).unwrap();
    assert_eq!(whole.state.step, 12);

    let mut first = common::run_from(&base, &tmp.path().join("b"), 96, 16, 2);
    first.run(Some(5), false).unwrap();
    assert_eq!(first.state.step, 5);
    let dir = first.dir.clone();
    drop(first);
    let mut resumed = emostream::train::Trainer::resume(&dir, Device::Cpu).unwrap();
    assert_eq!(resumed.state.step, 5);
    resumed.run(None, false).unwrap();
    assert_eq!(resumed.state.step, 12);

    let d = max_param_diff(&whole.params, &resumed.params);
    assert!(d <= 1e-6, "resumed weights differ by {d}");
    // and training did move the weights
    let fresh = common::run_from(&base, &tmp.path().join("c"), 96, 16, 2);
    assert!(max_param_diff(&whole.params, &fresh.params) > 1e-3);
    assert_eq!(whole.state.loss_curve, resumed.state.loss_curve);
    assert_eq!(whole.state.dev_curve.len(), 2);
}

/// The recipe's options (issue 29): an ASL run with layer-wise learning-rate decay is
/// resumable to the same weights, records its loss in train.json, and trains differently from
/// BCE at one rate (so the options reach the loss and the optimiser).
#[test]
fn an_asl_run_with_layer_decay_stops_and_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let layers = common::tiny_checkpoint(Arch::Bert, &base, 7).num_layers;
    let recipe = |c: &mut emostream::train::TrainConfig| {
        c.loss = emostream::train::loss::LossConfig::Asymmetric {
            gamma_pos: 1.0,
            gamma_neg: 4.0,
            clip: 0.05,
        };
        c.optimizer.layer_decay = 0.8;
        c.optimizer.num_layers = layers;
    };
    let mut whole = common::run_from_with(&base, &tmp.path().join("a"), 64, 16, 2, recipe);
    whole.run(None, false).unwrap();
    assert_eq!(whole.state.step, 8);
    let mut first = common::run_from_with(&base, &tmp.path().join("b"), 64, 16, 2, recipe);
    first.run(Some(3), false).unwrap();
    let dir = first.dir.clone();
    drop(first);
    let mut resumed = emostream::train::Trainer::resume(&dir, Device::Cpu).unwrap();
    resumed.run(None, false).unwrap();
    let d = max_param_diff(&whole.params, &resumed.params);
    assert!(d <= 1e-6, "resumed weights differ by {d}");
    assert_eq!(whole.state.loss_curve, resumed.state.loss_curve);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap();
    assert_eq!(saved["loss"]["kind"], "asymmetric", "{saved}");
    assert_eq!(saved["optimizer"]["layer_decay"], 0.8, "{saved}");
    let mut plain = common::run_from(&base, &tmp.path().join("c"), 64, 16, 2);
    plain.run(None, false).unwrap();
    assert!(max_param_diff(&whole.params, &plain.params) > 1e-4);
}

/// The pretrained all-MiniLM-L6-v2 through our encoder: mean-pooled, normalised embeddings give
/// the cosine similarities published with the model (sentence-transformers documentation:
/// 0.7553 and 0.8939 for these pairs). A wrong layer, name mapping or LayerNorm would move them.
#[test]
fn pretrained_minilm_forward_reproduces_published_similarities() {
    let dir =
        std::path::PathBuf::from(std::env::var("EMOSTREAM_BASE_MODEL").unwrap_or_else(|_| {
            format!(
                "{}/.cache/base/all-MiniLM-L6-v2",
                env!("CARGO_MANIFEST_DIR")
            )
        }));
    assert!(
        dir.join("model.safetensors").exists(),
        "{} missing: run scripts/fetch-base-model.sh (scripts/test.sh does)",
        dir.display()
    );
    let mut cfg = EncoderConfig::from_dir(&dir, 28).unwrap();
    cfg.pooling = Pooling::Mean;
    let params = Params::load_safetensors(
        &cfg,
        &dir.join("model.safetensors"),
        DType::F32,
        &Device::Cpu,
        1,
    )
    .unwrap();
    let text = TextEncoder::from_file(&dir.join("tokenizer.json"), 128).unwrap();
    let pairs = [
        (
            "A man is eating food.",
            "A man is eating a piece of bread.",
            0.7553,
        ),
        (
            "The new movie is awesome",
            "The new movie is so great",
            0.8939,
        ),
    ];
    let enc = Encoder::new(cfg.clone());
    for (a, b, want) in pairs {
        let rows: Vec<Vec<u32>> = [a, b].iter().map(|t| text.encode(t).unwrap().ids).collect();
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let batch = PaddedBatch::new(&refs, text.pad_id());
        let x = enc
            .hidden_states(&params, &batch, &Device::Cpu, None)
            .unwrap()
            .reshape((2, batch.seq, cfg.hidden_size))
            .unwrap();
        let m: Vec<f32> = batch.attention_mask.iter().map(|&v| v as f32).collect();
        let m = Tensor::from_vec(m, (2, batch.seq, 1), &Device::Cpu).unwrap();
        let mean = x
            .broadcast_mul(&m)
            .unwrap()
            .sum(1)
            .unwrap()
            .broadcast_div(&m.sum(1).unwrap())
            .unwrap();
        let v: Vec<Vec<f32>> = mean.to_vec2().unwrap();
        let dot: f32 = v[0].iter().zip(&v[1]).map(|(x, y)| x * y).sum();
        let norm = |u: &[f32]| u.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(&v[0]) * norm(&v[1]));
        assert!(
            (cos as f64 - want).abs() < 2e-3,
            "{a:?} vs {b:?}: cosine {cos:.4}, published {want}"
        );
    }
}

/// Exports `base` (a checkpoint with the 28 labels) as `variant` into `out`.
fn export_as(
    base: &std::path::Path,
    out: &std::path::Path,
    variant: emostream::train::onnx::Variant,
) -> String {
    emostream::train::package::export_model_dir(&emostream::train::package::ExportRequest {
        checkpoint: base,
        out,
        variant,
        name: "recover-test",
        version: "0.0.1",
        max_len: 64,
        run: None,
    })
    .unwrap()
    .model_sha256
}

#[test]
fn recovering_the_shipped_model_and_exporting_it_again_gives_the_same_onnx_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut shipped = common::shipped_model_dir();
    let mut card = emostream::model::dir::ModelDir::load(&shipped, true)
        .unwrap()
        .card;
    if let Some(cal) = card.calibration.clone() {
        // A calibrated model's calibration is folded into the recovered classifier (a fine-tune
        // starts from the scores that were served), so its export has no calibration nodes: it
        // is the graph before `train calibrate` that must come back byte for byte.
        let r =
            emostream::train::onnx::recover::recover(&shipped, &tmp.path().join("folded")).unwrap();
        assert!(r.calibration_folded);
        let bytes = std::fs::read(shipped.join("model.onnx")).unwrap();
        let raw = emostream::train::onnx::calibration::unfold(&bytes).unwrap();
        let plain = tmp.path().join("uncalibrated");
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("model.onnx"), &raw).unwrap();
        std::fs::copy(shipped.join("tokenizer.json"), plain.join("tokenizer.json")).unwrap();
        card.calibration = None;
        card.model_sha256 = cal.uncalibrated_sha256.clone();
        // Altered on purpose: the seal over the card's contents would refuse it.
        card.digest = None;
        assert_eq!(
            emostream::model::eval::dataset::sha256_file(&plain.join("model.onnx")).unwrap(),
            cal.uncalibrated_sha256,
            "the graph without its calibration is the one the card says was calibrated"
        );
        std::fs::write(
            plain.join("model.json"),
            serde_json::to_vec_pretty(&card).unwrap(),
        )
        .unwrap();
        shipped = plain;
    }
    let ck = tmp.path().join("recovered");
    let r = emostream::train::onnx::recover::recover(&shipped, &ck).unwrap();
    assert_eq!(
        r.dequantized, 25,
        "6 layers x (QKV, attention out, FFN in, FFN out) + words"
    );
    let again =
        emostream::train::package::export_model_dir(&emostream::train::package::ExportRequest {
            checkpoint: &ck,
            out: &tmp.path().join("again"),
            variant: emostream::train::onnx::Variant::Int8,
            name: &card.name,
            version: &card.version,
            max_len: card.max_sequence_length,
            run: None,
        })
        .unwrap();
    assert_eq!(
        again.model_sha256, card.model_sha256,
        "same model.onnx bytes"
    );
}

#[test]
fn every_layout_and_variant_recovers_to_weights_that_export_to_the_same_bytes() {
    use emostream::train::onnx::Variant;
    let tmp = tempfile::tempdir().unwrap();
    for arch in [Arch::Bert, Arch::Roberta, Arch::Distilbert] {
        let base = tmp.path().join(format!("{arch:?}-base"));
        let cfg = common::tiny_checkpoint(arch, &base, 11);
        let labels = emostream::model::labels::LabelSet::goemotions();
        std::fs::write(
            base.join("config.json"),
            serde_json::to_vec(&cfg.to_hf(labels.names())).unwrap(),
        )
        .unwrap();
        for variant in [
            Variant::Fp32 { fused: true },
            Variant::Fp32 { fused: false },
            Variant::Int8,
        ] {
            let tag = format!("{arch:?}-{}", variant.precision())
                + if variant == (Variant::Fp32 { fused: false }) {
                    "-plain"
                } else {
                    ""
                };
            let first = tmp.path().join(format!("{tag}-model"));
            let sha = export_as(&base, &first, variant);
            let ck = tmp.path().join(format!("{tag}-recovered"));
            emostream::train::onnx::recover::recover(&first, &ck)
                .unwrap_or_else(|e| panic!("{tag}: {e:#}"));
            let again = export_as(&ck, &tmp.path().join(format!("{tag}-again")), variant);
            assert_eq!(again, sha, "{tag}: re-export of the recovered weights");
        }
    }
}
