//! Training mechanics on tiny checkpoints of every layout: autograd matches finite differences
//! for every parameter, and a stopped-and-resumed run equals an uninterrupted one.

mod common;

use candle_core::{DType, Device, Tensor};
use emostream::encoder::{Arch, Encoder, EncoderConfig, Params};
use emostream::tokenize::{PaddedBatch, TextEncoder};
use emostream::train::loss::bce_with_logits;

fn loss_f64(enc: &Encoder, p: &Params, batch: &PaddedBatch, targets: &Tensor) -> Tensor {
    let logits = enc.forward(p, batch, &Device::Cpu, None).unwrap();
    bce_with_logits(&logits, targets, None).unwrap()
}

fn gradient_check(arch: Arch) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg: EncoderConfig = common::tiny_checkpoint(arch, tmp.path(), 3);
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
    for (name, var) in params.iter() {
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
    assert!(checked >= 3 * emostream::encoder::names::all(&cfg).len());
}

#[test]
fn bert_gradients_match_finite_differences() {
    gradient_check(Arch::Bert);
}

#[test]
fn roberta_gradients_match_finite_differences() {
    gradient_check(Arch::Roberta);
}

#[test]
fn distilbert_gradients_match_finite_differences() {
    gradient_check(Arch::Distilbert);
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
