//! Test support: tiny random-weight checkpoints of each layout (BERT, RoBERTa, DistilBERT) with
//! tokenizers trained by the tokenizers crate on GoEmotions train text, so no download is needed.
#![allow(dead_code)]

pub mod daemon;
pub mod http;
pub mod kafka;
pub mod s3;
pub mod schema_registry;

use candle_core::{Device, Tensor};
use emostream::model::eval::dataset::{goemotions_dir, Split};
use emostream::model::labels::LabelSet;
use emostream::train::encoder::{names, Arch, EncoderConfig};
use emostream::train::optim::AdamWConfig;
use emostream::train::rng::SplitMix64;
use emostream::train::{TrainConfig, Trainer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::{BertNormalizer, NormalizerWrapper};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, TokenizerBuilder, TokenizerImpl};

pub type Tok = TokenizerImpl<
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

pub fn data_dir() -> PathBuf {
    goemotions_dir()
}

pub fn split(name: &str) -> Split {
    Split::read(&data_dir().join(format!("{name}.tsv")), 28)
        .expect("GoEmotions split (see README: data lives in ../shared/data/goemotions)")
}

pub fn texts(name: &str, n: usize) -> Vec<String> {
    split(name)
        .examples
        .into_iter()
        .take(n)
        .map(|e| e.text)
        .collect()
}

/// Trains a small tokenizer on the first `n` training texts and writes tokenizer.json.
fn train_tokenizer(arch: Arch, path: &Path, n: usize) -> usize {
    let lines = texts("train", n);
    let mut tok: Tok = match arch {
        Arch::Roberta => {
            let specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"];
            let mut trainer: TrainerWrapper = BpeTrainer::builder()
                .vocab_size(400)
                .show_progress(false)
                .special_tokens(
                    specials
                        .iter()
                        .map(|s| AddedToken::from(*s, true))
                        .collect(),
                )
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build()
                .into();
            let mut tok = TokenizerBuilder::new()
                .with_model(ModelWrapper::from(BPE::default()))
                .with_normalizer(None::<NormalizerWrapper>)
                .with_pre_tokenizer(Some(PreTokenizerWrapper::from(ByteLevel::new(
                    false, true, true,
                ))))
                .with_post_processor(Some(PostProcessorWrapper::from(RobertaProcessing::new(
                    ("</s>".into(), 2),
                    ("<s>".into(), 0),
                ))))
                .with_decoder(Some(DecoderWrapper::from(ByteLevel::default())))
                .build()
                .unwrap();
            tok.train(&mut trainer, lines.iter()).unwrap();
            tok
        }
        _ => {
            let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
            let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
                .vocab_size(400)
                .show_progress(false)
                .special_tokens(
                    specials
                        .iter()
                        .map(|s| AddedToken::from(*s, true))
                        .collect(),
                )
                .build()
                .into();
            let mut tok = TokenizerBuilder::new()
                .with_model(ModelWrapper::from(WordPiece::default()))
                .with_normalizer(Some(NormalizerWrapper::from(BertNormalizer::default())))
                .with_pre_tokenizer(Some(PreTokenizerWrapper::from(BertPreTokenizer)))
                .with_post_processor(Some(PostProcessorWrapper::from(BertProcessing::new(
                    ("[SEP]".into(), 3),
                    ("[CLS]".into(), 2),
                ))))
                .with_decoder(None::<DecoderWrapper>)
                .build()
                .unwrap();
            tok.train(&mut trainer, lines.iter()).unwrap();
            tok
        }
    };
    tok.save(path, false).unwrap();
    let _ = &mut tok;
    tok.get_vocab_size(true)
}

/// An encoder's size: hidden width, layers, attention heads, feed-forward width.
pub struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
}

/// Writes a tiny random checkpoint (config.json, model.safetensors, tokenizer.json) into `dir`.
pub fn tiny_checkpoint(arch: Arch, dir: &Path, seed: u64) -> EncoderConfig {
    let tiny = Dims {
        hidden: 32,
        layers: 2,
        heads: 4,
        intermediate: 64,
    };
    shaped_checkpoint(arch, dir, seed, &tiny)
}

/// A random checkpoint of `arch` with the given size (e.g. RoBERTa-base's 768/12/12/3072, for
/// speed measurements: the weights are random, the shapes and the work are real).
pub fn shaped_checkpoint(arch: Arch, dir: &Path, seed: u64, dims: &Dims) -> EncoderConfig {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = train_tokenizer(arch, &dir.join("tokenizer.json"), 3000);
    let pad = if arch == Arch::Roberta { 1 } else { 0 };
    let cfg = EncoderConfig {
        arch,
        vocab_size: vocab,
        hidden_size: dims.hidden,
        num_layers: dims.layers,
        num_heads: dims.heads,
        intermediate_size: dims.intermediate,
        max_position_embeddings: if arch == Arch::Roberta { 130 } else { 128 },
        type_vocab_size: if arch == Arch::Distilbert {
            0
        } else if arch == Arch::Roberta {
            1
        } else {
            2
        },
        layer_norm_eps: if arch == Arch::Roberta { 1e-5 } else { 1e-12 },
        pad_token_id: pad,
        hidden_dropout: 0.1,
        attention_dropout: 0.1,
        classifier_dropout: 0.1,
        num_labels: 28,
        pooling: Default::default(),
    };
    let labels = LabelSet::goemotions();
    let mut hf = cfg.to_hf(labels.names());
    // A base checkpoint carries no labels.
    hf.as_object_mut().unwrap().remove("id2label");
    hf.as_object_mut().unwrap().remove("label2id");
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&hf).unwrap(),
    )
    .unwrap();
    let mut rng = SplitMix64::new(seed);
    let head = names::head(arch);
    let mut tensors = HashMap::new();
    for (name, shape) in names::all(&cfg) {
        // BERT's output projection is left out, as in a pretrained base, so the loader's
        // initialisation path runs; the other layouts carry a full head with large weights.
        if arch == Arch::Bert && name.starts_with(&head.out) {
            continue;
        }
        let n: usize = shape.iter().product();
        let is_norm = name.contains("LayerNorm") || name.contains("layer_norm");
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let z = rng.normal() as f32;
                if is_norm && name.ends_with(".weight") {
                    1.0 + 0.1 * z
                } else {
                    0.3 * z
                }
            })
            .collect();
        // HF base checkpoints store BERT weights without the `bert.` prefix: exercise that path.
        let key = if arch == Arch::Bert {
            name.trim_start_matches("bert.").to_string()
        } else {
            name.clone()
        };
        tensors.insert(
            key,
            Tensor::from_vec(data, shape.as_slice(), &Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    EncoderConfig::from_dir(&dir, 28).unwrap()
}

/// A fresh training run on a tiny checkpoint of `arch` over the first `examples` train rows.
pub fn tiny_run(arch: Arch, root: &Path, examples: usize, batch: usize, epochs: u64) -> Trainer {
    tiny_run_with(arch, root, examples, batch, epochs, |_| {})
}

/// `tiny_run` with changes to its training config.
pub fn tiny_run_with(
    arch: Arch,
    root: &Path,
    examples: usize,
    batch: usize,
    epochs: u64,
    tweak: impl FnOnce(&mut TrainConfig),
) -> Trainer {
    let base = root.join("base");
    tiny_checkpoint(arch, &base, 7);
    run_from_with(&base, &root.join("run"), examples, batch, epochs, tweak)
}

/// A fresh training run in `run` from the checkpoint directory `base`.
pub fn run_from(base: &Path, run: &Path, examples: usize, batch: usize, epochs: u64) -> Trainer {
    run_from_with(base, run, examples, batch, epochs, |_| {})
}

pub fn run_from_with(
    base: &Path,
    run: &Path,
    examples: usize,
    batch: usize,
    epochs: u64,
    tweak: impl FnOnce(&mut TrainConfig),
) -> Trainer {
    let train = split("train");
    let dev = split("dev");
    let total = Trainer::total_steps(examples, batch, epochs);
    let cfg = TrainConfig {
        base_model: "tiny-random".into(),
        train_path: train.path.clone(),
        dev_path: dev.path.clone(),
        train_sha256: train.sha256.clone(),
        dev_sha256: dev.sha256.clone(),
        epochs,
        batch_size: batch,
        max_len: 64,
        seed: 11,
        freeze_embeddings: false,
        pos_weight: None,
        eval_every_steps: None,
        checkpoint_every_steps: 1000,
        shards: 2,
        optimizer: AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            warmup_steps: 2,
            total_steps: total,
            layer_decay: 1.0,
            num_layers: 0,
        },
        loss: Default::default(),
        limit_train_examples: Some(examples),
        pooling: Default::default(),
        prior_bias: false,
        mix: None,
    };
    let mut cfg = cfg;
    tweak(&mut cfg);
    Trainer::create(run, base, cfg, LabelSet::goemotions(), Device::Cpu).unwrap()
}

/// The shipped default model, models/goemotions-minilm-l6 (int8 MiniLM-L6 fine-tuned here).
/// `emostream classify --model MODEL ARGS` of `lines` (one message per line): its label events,
/// in input order. The lines are written from a thread, so a long input cannot fill the pipe
/// while the events wait to be read.
pub fn classify_cli(model: &Path, args: &[&str], lines: &[String]) -> Vec<serde_json::Value> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_emostream"))
        .args(["classify", "--model"])
        .arg(model)
        .args(args)
        .env("EMOSTREAM__LOG__LEVEL", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = lines.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "emostream classify failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn shipped_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/goemotions-minilm-l6")
}

/// The shipped model's card as JSON (its version, thresholds and measured figures).
pub fn shipped_card() -> serde_json::Value {
    let path = shipped_model_dir().join("model.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A tiny trained-shape model directory (random BERT weights, fp32 export) for pipeline tests:
/// fast, and real ONNX Runtime all the same.
pub fn tiny_model_dir(root: &Path) -> PathBuf {
    tiny_model_dir_with(root, |_| {})
}

/// A tiny model whose word embedding for one whole-word token (not used by the load-time
/// canaries nor by `avoid`) is +inf, so any text containing that word scores NaN: a real model
/// failing on real input. Returns the model directory and the word.
pub fn poisoned_tiny_model_dir(root: &Path, avoid: &[&str]) -> (PathBuf, String) {
    let mut word = String::new();
    let dir = tiny_model_dir_with(root, |base| {
        let tok = tokenizers::Tokenizer::from_file(base.join("tokenizer.json")).unwrap();
        let mut used = std::collections::HashSet::new();
        for t in emostream::backend::generation::CANARIES.iter().chain(avoid) {
            used.extend(tok.encode(*t, true).unwrap().get_ids().to_vec());
        }
        let mut vocab: Vec<(String, u32)> = tok.get_vocab(false).into_iter().collect();
        vocab.sort_by_key(|(_, id)| std::cmp::Reverse(*id));
        let (w, id) = vocab
            .into_iter()
            .find(|(w, id)| {
                w.len() >= 4 && w.chars().all(|c| c.is_ascii_lowercase()) && !used.contains(id)
            })
            .expect("a whole-word token");
        let path = base.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let key = tensors
            .keys()
            .find(|k| k.ends_with("word_embeddings.weight"))
            .unwrap()
            .clone();
        let table = &tensors[&key];
        let (rows, dim) = table.dims2().unwrap();
        let mut data = table.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        data[id as usize * dim..(id as usize + 1) * dim].fill(f32::INFINITY);
        tensors.insert(
            key,
            Tensor::from_vec(data, (rows, dim), &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&tensors, &path).unwrap();
        word = w;
    });
    (dir, word)
}

/// `tiny_model_dir`, with a change to the base checkpoint directory before export.
pub fn tiny_model_dir_with(root: &Path, change: impl FnOnce(&Path)) -> PathBuf {
    let base = root.join("tiny-base");
    tiny_checkpoint(Arch::Bert, &base, 5);
    change(&base);
    let hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    let cfg = EncoderConfig::from_hf(&hf, 28).unwrap();
    std::fs::write(
        base.join("config.json"),
        serde_json::to_vec(&cfg.to_hf(LabelSet::goemotions().names())).unwrap(),
    )
    .unwrap();
    let out = root.join("tiny-model");
    emostream::train::package::export_model_dir(&emostream::train::package::ExportRequest {
        checkpoint: &base,
        out: &out,
        variant: emostream::train::onnx::Variant::Fp32 { fused: true },
        name: "tiny-test",
        version: "0.0.1",
        max_len: 64,
        run: None,
    })
    .unwrap();
    out
}
