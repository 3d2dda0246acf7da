//! Encoder hyper-parameters read from a Hugging Face `config.json` (BERT, RoBERTa/XLM-R, DistilBERT).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Parameter layout family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// BERT and BERT-shaped models (MiniLM).
    Bert,
    /// RoBERTa and XLM-R: positions start past the padding index, `<s>` head.
    Roberta,
    /// DistilBERT: no token types, `q_lin`/`k_lin` naming, pre-classifier head.
    Distilbert,
}

impl Arch {
    /// Prefix of encoder parameters in Hugging Face `*ForSequenceClassification` checkpoints.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::Roberta => "roberta",
            Arch::Distilbert => "distilbert",
        }
    }
    pub(crate) fn has_token_types(self) -> bool {
        matches!(self, Arch::Bert)
    }
    pub(crate) fn model_type(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::Roberta => "roberta",
            Arch::Distilbert => "distilbert",
        }
    }
}

/// How the head reads the sequence (`train fit --pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token through the architecture's Hugging Face head (pooler/dense + tanh or
    /// relu, then the classifier).
    #[default]
    Cls,
    /// The mean of the last hidden states over real tokens, then the classifier directly:
    /// how sentence-transformers checkpoints (all-MiniLM-L6-v2) were trained to be read.
    Mean,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub hidden_dropout: f32,
    pub attention_dropout: f32,
    pub classifier_dropout: f32,
    pub num_labels: usize,
    #[serde(default)]
    pub pooling: Pooling,
}

fn get_usize(v: &Value, keys: &[&str]) -> Result<usize> {
    for k in keys {
        if let Some(x) = v.get(*k).and_then(Value::as_u64) {
            return Ok(x as usize);
        }
    }
    bail!("config.json lacks {}", keys.join(" / "))
}

fn get_f64(v: &Value, keys: &[&str], default: f64) -> f64 {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_f64))
        .unwrap_or(default)
}

impl EncoderConfig {
    pub(crate) fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Parses a Hugging Face config.json value; `num_labels` is the classifier width to build.
    pub fn from_hf(v: &Value, num_labels: usize) -> Result<Self> {
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("bert");
        let arch = match model_type {
            "bert" => Arch::Bert,
            "roberta" | "xlm-roberta" | "camembert" => Arch::Roberta,
            "distilbert" => Arch::Distilbert,
            other => bail!("unsupported model_type {other:?} (supported: bert, roberta, xlm-roberta, distilbert)"),
        };
        let act = v
            .get("hidden_act")
            .or_else(|| v.get("activation"))
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        if act != "gelu" {
            bail!("unsupported activation {act:?}: only exact (erf) gelu is implemented");
        }
        let hidden_dropout = get_f64(v, &["hidden_dropout_prob", "dropout"], 0.1) as f32;
        let cfg = EncoderConfig {
            arch,
            vocab_size: get_usize(v, &["vocab_size"])?,
            hidden_size: get_usize(v, &["hidden_size", "dim"])?,
            num_layers: get_usize(v, &["num_hidden_layers", "n_layers"])?,
            num_heads: get_usize(v, &["num_attention_heads", "n_heads"])?,
            intermediate_size: get_usize(v, &["intermediate_size", "hidden_dim"])?,
            max_position_embeddings: get_usize(v, &["max_position_embeddings"])?,
            type_vocab_size: if arch == Arch::Distilbert {
                0
            } else {
                get_usize(v, &["type_vocab_size"]).unwrap_or(2)
            },
            layer_norm_eps: get_f64(v, &["layer_norm_eps"], 1e-12),
            pad_token_id: v
                .get("pad_token_id")
                .and_then(Value::as_u64)
                .unwrap_or(if arch == Arch::Roberta { 1 } else { 0 })
                as u32,
            hidden_dropout,
            attention_dropout: get_f64(
                v,
                &["attention_probs_dropout_prob", "attention_dropout"],
                0.1,
            ) as f32,
            classifier_dropout: v
                .get("classifier_dropout")
                .and_then(Value::as_f64)
                .or_else(|| v.get("seq_classif_dropout").and_then(Value::as_f64))
                .map(|x| x as f32)
                .unwrap_or(hidden_dropout),
            num_labels,
            pooling: match v.get("emostream_pooling").and_then(Value::as_str) {
                None | Some("cls") => Pooling::Cls,
                Some("mean") => Pooling::Mean,
                Some(other) => bail!("emostream_pooling {other:?} is not cls or mean"),
            },
        };
        if cfg.hidden_size % cfg.num_heads != 0 {
            bail!(
                "hidden size {} is not a multiple of {} heads",
                cfg.hidden_size,
                cfg.num_heads
            );
        }
        Ok(cfg)
    }

    /// The encoder config of a Hugging Face directory (its config.json).
    pub fn from_dir(dir: &Path, num_labels: usize) -> Result<Self> {
        let v = crate::model::dir::read_hf_config(dir)?;
        Self::from_hf(&v, num_labels).with_context(|| format!("in {}/config.json", dir.display()))
    }

    /// A Hugging Face config.json for this encoder with a 28-way multi-label head.
    pub fn to_hf(&self, labels: &[String]) -> Value {
        let id2label: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), Value::from(l.as_str())))
            .collect();
        let label2id: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), Value::from(i)))
            .collect();
        let mut v = match self.arch {
            Arch::Distilbert => serde_json::json!({
                "model_type": "distilbert", "architectures": ["DistilBertForSequenceClassification"],
                "dim": self.hidden_size, "n_layers": self.num_layers, "n_heads": self.num_heads,
                "hidden_dim": self.intermediate_size, "dropout": self.hidden_dropout,
                "attention_dropout": self.attention_dropout, "seq_classif_dropout": self.classifier_dropout,
                "activation": "gelu",
            }),
            a => serde_json::json!({
                "model_type": a.model_type(),
                "architectures": [if a == Arch::Bert { "BertForSequenceClassification" } else { "RobertaForSequenceClassification" }],
                "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads, "intermediate_size": self.intermediate_size,
                "type_vocab_size": self.type_vocab_size, "layer_norm_eps": self.layer_norm_eps,
                "hidden_dropout_prob": self.hidden_dropout, "attention_probs_dropout_prob": self.attention_dropout,
                "classifier_dropout": self.classifier_dropout, "hidden_act": "gelu",
            }),
        };
        let o = v.as_object_mut().expect("object");
        o.insert("vocab_size".into(), self.vocab_size.into());
        o.insert(
            "max_position_embeddings".into(),
            self.max_position_embeddings.into(),
        );
        o.insert("pad_token_id".into(), self.pad_token_id.into());
        o.insert("problem_type".into(), "multi_label_classification".into());
        if self.pooling == Pooling::Mean {
            // Our own key: Hugging Face ignores it, our loader and exporter read it.
            o.insert("emostream_pooling".into(), "mean".into());
        }
        o.insert("id2label".into(), Value::Object(id2label));
        o.insert("label2id".into(), Value::Object(label2id));
        v
    }
}
