//! Parameter names of each layout, in Hugging Face `*ForSequenceClassification` form.
//! The candle forward, the checkpoint loader and the ONNX exporter all read names from here.

use super::config::{Arch, EncoderConfig};

/// Names (without `.weight`/`.bias`) of one transformer layer's sub-modules.
pub(crate) struct LayerNames {
    pub(crate) query: String,
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) attn_out: String,
    pub(crate) attn_norm: String,
    pub(crate) ffn_in: String,
    pub(crate) ffn_out: String,
    pub(crate) ffn_norm: String,
}

pub(crate) struct EmbeddingNames {
    pub(crate) word: String,
    pub(crate) position: String,
    /// Absent for DistilBERT.
    pub(crate) token_type: Option<String>,
    pub(crate) norm: String,
}

/// The classification head: an optional hidden dense layer then the output projection.
pub struct HeadNames {
    /// BERT: pooler (tanh); RoBERTa: classifier.dense (tanh); DistilBERT: pre_classifier (relu).
    pub dense: String,
    pub out: String,
}

pub(crate) fn embeddings(arch: Arch) -> EmbeddingNames {
    let p = arch.prefix();
    EmbeddingNames {
        word: format!("{p}.embeddings.word_embeddings"),
        position: format!("{p}.embeddings.position_embeddings"),
        token_type: (arch != Arch::Distilbert)
            .then(|| format!("{p}.embeddings.token_type_embeddings")),
        norm: format!("{p}.embeddings.LayerNorm"),
    }
}

pub(crate) fn layer(arch: Arch, i: usize) -> LayerNames {
    let p = arch.prefix();
    match arch {
        Arch::Distilbert => {
            let l = format!("{p}.transformer.layer.{i}");
            LayerNames {
                query: format!("{l}.attention.q_lin"),
                key: format!("{l}.attention.k_lin"),
                value: format!("{l}.attention.v_lin"),
                attn_out: format!("{l}.attention.out_lin"),
                attn_norm: format!("{l}.sa_layer_norm"),
                ffn_in: format!("{l}.ffn.lin1"),
                ffn_out: format!("{l}.ffn.lin2"),
                ffn_norm: format!("{l}.output_layer_norm"),
            }
        }
        _ => {
            let l = format!("{p}.encoder.layer.{i}");
            LayerNames {
                query: format!("{l}.attention.self.query"),
                key: format!("{l}.attention.self.key"),
                value: format!("{l}.attention.self.value"),
                attn_out: format!("{l}.attention.output.dense"),
                attn_norm: format!("{l}.attention.output.LayerNorm"),
                ffn_in: format!("{l}.intermediate.dense"),
                ffn_out: format!("{l}.output.dense"),
                ffn_norm: format!("{l}.output.LayerNorm"),
            }
        }
    }
}

/// The initializer key of layer `i`'s packed Q|K|V projection in an exported model.
pub(crate) fn packed_qkv(arch: Arch, i: usize) -> String {
    let l = layer(arch, i);
    format!(
        "{}.qkv",
        l.query
            .trim_end_matches(".query")
            .trim_end_matches(".q_lin")
    )
}

pub fn head(arch: Arch) -> HeadNames {
    match arch {
        Arch::Bert => HeadNames {
            dense: "bert.pooler.dense".into(),
            out: "classifier".into(),
        },
        Arch::Roberta => HeadNames {
            dense: "classifier.dense".into(),
            out: "classifier.out_proj".into(),
        },
        Arch::Distilbert => HeadNames {
            dense: "pre_classifier".into(),
            out: "classifier".into(),
        },
    }
}

/// Every parameter of the layout with its shape.
pub fn all(cfg: &EncoderConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut v = Vec::new();
    let lin = |v: &mut Vec<(String, Vec<usize>)>, n: &str, out: usize, inp: usize| {
        v.push((format!("{n}.weight"), vec![out, inp]));
        v.push((format!("{n}.bias"), vec![out]));
    };
    let norm = |v: &mut Vec<(String, Vec<usize>)>, n: &str| {
        v.push((format!("{n}.weight"), vec![h]));
        v.push((format!("{n}.bias"), vec![h]));
    };
    let e = embeddings(cfg.arch);
    v.push((format!("{}.weight", e.word), vec![cfg.vocab_size, h]));
    v.push((
        format!("{}.weight", e.position),
        vec![cfg.max_position_embeddings, h],
    ));
    if let Some(t) = &e.token_type {
        v.push((format!("{t}.weight"), vec![cfg.type_vocab_size.max(1), h]));
    }
    norm(&mut v, &e.norm);
    for i in 0..cfg.num_layers {
        let l = layer(cfg.arch, i);
        lin(&mut v, &l.query, h, h);
        lin(&mut v, &l.key, h, h);
        lin(&mut v, &l.value, h, h);
        lin(&mut v, &l.attn_out, h, h);
        norm(&mut v, &l.attn_norm);
        lin(&mut v, &l.ffn_in, f, h);
        lin(&mut v, &l.ffn_out, h, f);
        norm(&mut v, &l.ffn_norm);
    }
    let hd = head(cfg.arch);
    lin(&mut v, &hd.dense, h, h);
    lin(&mut v, &hd.out, cfg.num_labels, h);
    v
}

/// Maps a name found in a Hugging Face checkpoint to this layout's name, if it belongs to it.
/// Handles bare `BertModel` checkpoints (no `bert.` prefix) and old `gamma`/`beta` names.
pub(crate) fn normalize(arch: Arch, name: &str) -> String {
    let mut n = name.to_string();
    if let Some(s) = n.strip_suffix(".gamma") {
        n = format!("{s}.weight");
    } else if let Some(s) = n.strip_suffix(".beta") {
        n = format!("{s}.bias");
    }
    let p = arch.prefix();
    for bare in ["embeddings.", "encoder.", "pooler.", "transformer."] {
        if n.starts_with(bare) {
            return format!("{p}.{n}");
        }
    }
    n
}
