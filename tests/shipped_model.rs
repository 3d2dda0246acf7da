//! The shipped default model, models/goemotions-minilm-l6, through real ONNX Runtime on the
//! real GoEmotions splits: its card's test metrics are reproduced from test.tsv, its
//! thresholds are reproduced by tuning on dev (nothing was chosen on test), and its scores do
//! not depend on what a comment is batched with.

mod common;

use emostream::inference::Classifier;
use emostream::model::RuntimeOptions;
use emostream::model_dir::ModelDir;
use emostream::train::publish;
use std::path::PathBuf;

fn shipped() -> PathBuf {
    common::shipped_model_dir()
}

#[test]
fn card_is_complete_and_the_model_fits_in_thirty_megabytes() {
    let dir = ModelDir::load(&shipped(), true).expect("shipped model loads, sha256 matches");
    let card = &dir.card;
    assert_eq!(card.labels.len(), 28);
    assert_eq!(
        card.labels.names().last().map(String::as_str),
        Some("neutral")
    );
    assert_eq!(card.precision, "int8");
    let per = card
        .thresholds
        .per_label
        .as_ref()
        .expect("per-label thresholds");
    assert_eq!(per.len(), 28);
    for key in ["dev", "test", "test_global_0.15", "test_global_dev_best"] {
        assert!(
            card.metrics.contains_key(key),
            "model.json lacks metrics.{key}"
        );
    }
    for split in ["train.tsv", "dev.tsv", "test.tsv"] {
        assert!(
            card.data.contains_key(split),
            "model.json lacks data.{split}"
        );
    }
    let size = std::fs::metadata(shipped().join("model.onnx"))
        .unwrap()
        .len();
    assert!(size <= 30_000_000, "model.onnx is {size} bytes");
    for f in ["report.md", "curves.png", "tokenizer.json"] {
        assert!(shipped().join(f).is_file(), "{f} missing");
    }
}

#[test]
fn test_split_reproduces_the_card_metrics() {
    let dir = ModelDir::load(&shipped(), true).unwrap();
    let test = common::data_dir().join("test.tsv");
    let got = publish::evaluate_test(&shipped(), &test, &RuntimeOptions::default(), false)
        .expect("evaluate the shipped model on test.tsv");
    for (key, eval) in &got {
        let card = &dir.card.metrics[key];
        assert_eq!(
            eval.split_sha256, card.split_sha256,
            "{key}: test.tsv differs from the one the card was measured on"
        );
        let (a, b) = (eval.metrics.macro_f1, card.metrics.macro_f1);
        eprintln!("{key}: macro-F1 {a:.4} (card {b:.4})");
        assert!((a - b).abs() <= 1e-4, "{key}: macro-F1 {a} vs card {b}");
        assert!((eval.metrics.micro_f1 - card.metrics.micro_f1).abs() <= 1e-4);
        for (x, y) in eval.metrics.per_label.iter().zip(&card.metrics.per_label) {
            assert_eq!(x.label, y.label);
            assert_eq!(x.support, y.support);
            assert!(
                (x.f1 - y.f1).abs() <= 1e-4,
                "{}: F1 {} vs {}",
                x.label,
                x.f1,
                y.f1
            );
        }
    }
    // The model beats the reference's global 0.15 with its dev-tuned thresholds.
    assert!(got["test"].metrics.macro_f1 >= got["test_global_0.15"].metrics.macro_f1);
}

#[test]
fn thresholds_are_reproduced_by_tuning_on_dev() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "model.json", "tokenizer.json"] {
        std::fs::copy(shipped().join(f), tmp.path().join(f)).unwrap();
    }
    let dev = common::data_dir().join("dev.tsv");
    let tuned = publish::tune_thresholds(tmp.path(), &dev, &RuntimeOptions::default()).unwrap();
    let card = ModelDir::load(&shipped(), false).unwrap().card;
    assert_eq!(tuned.thresholds.default, card.thresholds.default);
    assert_eq!(tuned.thresholds.per_label, card.thresholds.per_label);
    let (a, b) = (
        tuned.metrics["dev"].metrics.macro_f1,
        card.metrics["dev"].metrics.macro_f1,
    );
    assert!((a - b).abs() <= 1e-4, "dev macro-F1 {a} vs card {b}");
}

#[test]
fn a_comment_scores_the_same_whatever_it_is_batched_with() {
    // int8 activations are quantised per token, so neither batch-mates nor their padding move
    // a comment's scores (a per-tensor scale flipped labels of ~5% of comments).
    let mut c = Classifier::load(&shipped(), &RuntimeOptions::default(), true).unwrap();
    let owned = common::texts("test", 200);
    let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| c.score_texts(&[t], 1).unwrap().remove(0))
        .collect();
    let mut reversed = texts.clone();
    reversed.reverse();
    let mut batched = c.score_texts(&reversed, 64).unwrap();
    batched.reverse();
    let mut worst = 0f32;
    for (a, b) in alone.iter().zip(&batched) {
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("max |alone - batched| score difference: {worst:e}");
    assert!(worst <= 1e-5, "scores depend on the batch by {worst}");
}

#[test]
fn labels_obvious_comments_sensibly() {
    let mut c = Classifier::load(&shipped(), &RuntimeOptions::default(), true).unwrap();
    let names = c.dir.card.labels.names().to_vec();
    let th = c.dir.card.thresholds.resolved(names.len());
    let cases = [
        ("Thank you so much, this really helped!", "gratitude"),
        ("I love this song so much", "love"),
        ("Why would anyone do that? I don't get it.", "confusion"),
        ("I'm so sorry for your loss.", "sadness"),
    ];
    let texts: Vec<&str> = cases.iter().map(|(t, _)| *t).collect();
    let scores = c.score_texts(&texts, 8).unwrap();
    for ((text, want), s) in cases.iter().zip(&scores) {
        let on: Vec<&str> = (0..names.len())
            .filter(|&i| s[i] >= th[i])
            .map(|i| names[i].as_str())
            .collect();
        assert!(
            on.contains(want),
            "{text:?}: labels {on:?}, expected {want}"
        );
    }
}
