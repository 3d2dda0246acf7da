//! From an exported model directory back to a trainable Hugging Face checkpoint: the inverse of
//! `export.rs`, so a fine-tune can start from the model now in production when only its ONNX
//! file was kept (the registry holds ONNX, and 1.0.0 shipped without weights beside it).
//!
//! int8 weights come back as code × scale: within half a quantisation step of the weights that
//! were exported (per output column for matrices, per row for the word table), and exporting the
//! recovered weights to int8 again gives the same codes. Everything else (biases, LayerNorms,
//! position and token-type tables, the fp32 head) is copied exactly. A calibrated model's
//! `logits · scale + shift` is folded into the classifier, so the checkpoint computes the scores
//! that were served.

use super::proto::{data_type, ModelProto, NodeProto, TensorProto};
use crate::model::dir::{ModelDir, TOKENIZER_FILE};
use crate::train::encoder::{names, Arch, EncoderConfig, Pooling};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// What `recover` wrote and how.
#[derive(Debug, serde::Serialize)]
pub struct Recovered {
    pub from_name: String,
    pub from_version: String,
    pub from_model_sha256: String,
    pub precision: String,
    /// Weight matrices rebuilt from int8 codes (the rest were stored in fp32).
    pub dequantized: usize,
    pub calibration_folded: bool,
    pub parameters: usize,
}

/// One initializer's data as f32 (int8 and uint8 widened), with its dims.
struct Initializers(HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Initializers {
    fn read(graph_inits: &[TensorProto]) -> Result<Self> {
        let mut m = HashMap::new();
        for t in graph_inits {
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            let data: Vec<f32> = match t.data_type {
                data_type::FLOAT if !t.raw_data.is_empty() => t
                    .raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                data_type::FLOAT => t.float_data.clone(),
                data_type::INT8 => t.raw_data.iter().map(|&b| b as i8 as f32).collect(),
                // shapes and ids (small integers, exact in f32)
                data_type::INT64 => t
                    .raw_data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
                _ => continue, // zero points: not parameters
            };
            if data.len() != dims.iter().product::<usize>() {
                bail!(
                    "initializer {} holds {} values for dims {dims:?}",
                    t.name,
                    data.len()
                );
            }
            m.insert(t.name.clone(), (dims, data));
        }
        Ok(Initializers(m))
    }

    fn get(&self, name: &str) -> Result<&(Vec<usize>, Vec<f32>)> {
        self.0
            .get(name)
            .with_context(|| format!("model.onnx has no initializer {name}"))
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The `[in, out]` MatMul operand stored under `key`: fp32 `weight_t`, or int8 `weight_q`
    /// with per-column `weight_scale`. Returns (in, out, data, was int8).
    fn matmul_operand(&self, key: &str) -> Result<(usize, usize, Vec<f32>, bool)> {
        if let Some((dims, w)) = self.0.get(&format!("{key}.weight_t")) {
            return Ok((dims[0], dims[1], w.clone(), false));
        }
        let (dims, q) = self.get(&format!("{key}.weight_q"))?;
        let (_, s) = self.get(&format!("{key}.weight_scale"))?;
        let (k, n) = (dims[0], dims[1]);
        if s.len() != n {
            bail!("{key}.weight_scale has {} values for {n} columns", s.len());
        }
        let w = (0..k * n).map(|i| q[i] * s[i % n]).collect();
        Ok((k, n, w, true))
    }
}

/// `[in, out]` columns `from..from+cols` as a Hugging Face `[out, in]` weight.
fn transpose_columns(w: &[f32], k: usize, n: usize, from: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; cols * k];
    for o in 0..cols {
        for i in 0..k {
            t[o * k + i] = w[i * n + from + o];
        }
    }
    t
}

fn attr_of(nodes: &[NodeProto], ops: &[&str], attr: &str) -> Option<(i64, f32)> {
    nodes
        .iter()
        .filter(|n| ops.contains(&n.op_type.as_str()))
        .flat_map(|n| n.attribute.iter())
        .find(|a| a.name == attr)
        .map(|a| (a.i, a.f))
}

/// Writes `out/{config.json, model.safetensors, tokenizer.json, recovered.json}` from the model
/// directory `model` (as exported by `train export`, any variant).
pub fn recover(model: &Path, out: &Path) -> Result<Recovered> {
    let dir = ModelDir::load(model, true)?;
    let card = &dir.card;
    let bytes = std::fs::read(dir.onnx_path())
        .with_context(|| format!("reading {}", dir.onnx_path().display()))?;
    let proto: ModelProto =
        prost::Message::decode(bytes.as_slice()).context("parsing model.onnx")?;
    let graph = proto.graph.context("model.onnx has no graph")?;
    let inits = Initializers::read(&graph.initializer)?;
    let arch = match card.architecture.as_str() {
        "bert" => Arch::Bert,
        "roberta" => Arch::Roberta,
        "distilbert" => Arch::Distilbert,
        a => bail!(
            "{}: architecture {a:?} cannot be recovered",
            model.display()
        ),
    };
    let e = names::embeddings(arch);
    let word_key = &e.word;
    let (vocab, hidden) = {
        let (d, _) = inits
            .get(&format!("{word_key}.weight_q"))
            .or_else(|_| inits.get(&format!("{word_key}.weight")))?;
        (d[0], d[1])
    };
    let num_layers = (0..)
        .take_while(|&i| inits.has(&format!("{}.bias", names::layer(arch, i).ffn_in)))
        .count();
    if num_layers == 0 {
        bail!(
            "{}: model.onnx holds no encoder layers this exporter wrote",
            model.display()
        );
    }
    let intermediate = inits
        .get(&format!("{}.bias", names::layer(arch, 0).ffn_in))?
        .1
        .len();
    let num_heads = attr_of(
        &graph.node,
        &["MultiHeadAttention", "Attention"],
        "num_heads",
    )
    .map(|(i, _)| i as usize)
    .or_else(|| {
        // plain fp32: the [0, 0, heads, head_dim] reshape constant of layer 0
        let key = names::packed_qkv(arch, 0);
        let (_, v) = inits.0.get(&format!("{key}.heads_shape"))?;
        Some(v[2] as usize)
    })
    .context("model.onnx names no attention head count")?;
    let eps = attr_of(
        &graph.node,
        &["LayerNormalization", "SkipLayerNormalization"],
        "epsilon",
    )
    .map_or(1e-12, |(_, f)| f as f64);
    let max_pos = inits.get(&format!("{}.weight", e.position))?.0[0];
    let type_vocab = match &e.token_type {
        Some(t) if inits.has(&format!("{t}.weight")) => inits.get(&format!("{t}.weight"))?.0[0],
        _ => 1,
    };
    let pooling = if graph.node.iter().any(|n| n.name.starts_with("pool/")) {
        Pooling::Mean
    } else {
        Pooling::Cls
    };
    let labels = card.labels.clone();
    let cfg = EncoderConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        num_layers,
        num_heads,
        intermediate_size: intermediate,
        max_position_embeddings: max_pos,
        type_vocab_size: type_vocab,
        layer_norm_eps: eps,
        // RoBERTa exports its padding id (positions count from it); the others pad with 0.
        pad_token_id: inits
            .0
            .get("pad_token_id")
            .map_or(if arch == Arch::Roberta { 1 } else { 0 }, |(_, v)| {
                v[0] as u32
            }),
        hidden_dropout: 0.1,
        attention_dropout: 0.1,
        classifier_dropout: 0.1,
        num_labels: labels.len(),
        pooling,
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut dequantized = 0;
    let mut put = |name: String, dims: &[usize], data: Vec<f32>| -> Result<()> {
        tensors.insert(name, Tensor::from_vec(data, dims, &Device::Cpu)?);
        Ok(())
    };
    // Embeddings (RoBERTa/DistilBERT exports folded token type 0 into every word row: the
    // recovered table keeps that sum and the token-type table is zero, the same function).
    let word = match inits.0.get(&format!("{word_key}.weight_q")) {
        Some((_, q)) => {
            let (_, s) = inits.get(&format!("{word_key}.weight_scale"))?;
            dequantized += 1;
            (0..vocab * hidden).map(|i| q[i] * s[i / hidden]).collect()
        }
        None => inits.get(&format!("{word_key}.weight"))?.1.clone(),
    };
    put(format!("{word_key}.weight"), &[vocab, hidden], word)?;
    let pos = inits.get(&format!("{}.weight", e.position))?;
    put(format!("{}.weight", e.position), &pos.0, pos.1.clone())?;
    if let Some(t) = &e.token_type {
        match inits.0.get(&format!("{t}.weight")) {
            Some((d, v)) => put(format!("{t}.weight"), d, v.clone())?,
            None => put(format!("{t}.weight"), &[1, hidden], vec![0.0; hidden])?,
        }
    }
    let copy = |name: &str, put: &mut dyn FnMut(String, &[usize], Vec<f32>) -> Result<()>| {
        let (d, v) = inits.get(name)?;
        put(name.to_string(), d, v.clone())
    };
    for p in ["weight", "bias"] {
        copy(&format!("{}.{p}", e.norm), &mut put)?;
    }
    for i in 0..num_layers {
        let l = names::layer(arch, i);
        let key = names::packed_qkv(arch, i);
        let (k, n, w, q) = inits.matmul_operand(&key)?;
        dequantized += q as usize;
        let (_, b) = inits.get(&format!("{key}.bias"))?;
        for (j, part) in [&l.query, &l.key, &l.value].into_iter().enumerate() {
            put(
                format!("{part}.weight"),
                &[hidden, k],
                transpose_columns(&w, k, n, j * hidden, hidden),
            )?;
            put(
                format!("{part}.bias"),
                &[hidden],
                b[j * hidden..(j + 1) * hidden].to_vec(),
            )?;
        }
        for lin in [&l.attn_out, &l.ffn_in, &l.ffn_out] {
            let (k, n, w, q) = inits.matmul_operand(lin)?;
            dequantized += q as usize;
            put(
                format!("{lin}.weight"),
                &[n, k],
                transpose_columns(&w, k, n, 0, n),
            )?;
            copy(&format!("{lin}.bias"), &mut put)?;
        }
        for norm in [&l.attn_norm, &l.ffn_norm] {
            for p in ["weight", "bias"] {
                copy(&format!("{norm}.{p}"), &mut put)?;
            }
        }
    }
    let head = names::head(arch);
    if pooling == Pooling::Cls {
        let (k, n, w, _) = inits.matmul_operand(&head.dense)?;
        put(
            format!("{}.weight", head.dense),
            &[n, k],
            transpose_columns(&w, k, n, 0, n),
        )?;
        copy(&format!("{}.bias", head.dense), &mut put)?;
    }
    let (k, n, w, _) = inits.matmul_operand(&head.out)?;
    let mut wo = transpose_columns(&w, k, n, 0, n);
    let mut bo = inits.get(&format!("{}.bias", head.out))?.1.clone();
    let calibrated = inits.has("calibration.scale");
    if calibrated {
        // logits·s + c = (s·W) x + (s·b + c), label by label
        let s = &inits.get("calibration.scale")?.1;
        let c = &inits.get("calibration.shift")?.1;
        for o in 0..n {
            wo[o * k..(o + 1) * k].iter_mut().for_each(|x| *x *= s[o]);
            bo[o] = bo[o] * s[o] + c[o];
        }
    }
    put(format!("{}.weight", head.out), &[n, k], wo)?;
    put(format!("{}.bias", head.out), &[n], bo)?;
    if n != labels.len() {
        bail!(
            "{}: the classifier has {n} outputs, the card {} labels",
            model.display(),
            labels.len()
        );
    }

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let parameters = tensors.values().map(|t| t.elem_count()).sum();
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))
        .with_context(|| format!("writing {}/model.safetensors", out.display()))?;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_vec_pretty(&cfg.to_hf(labels.names()))?,
    )?;
    std::fs::copy(dir.tokenizer_path(), out.join(TOKENIZER_FILE))
        .with_context(|| format!("copying {}", dir.tokenizer_path().display()))?;
    let r = Recovered {
        from_name: card.name.clone(),
        from_version: card.version.clone(),
        from_model_sha256: card.model_sha256.clone(),
        precision: card.precision.clone(),
        dequantized,
        calibration_folded: calibrated,
        parameters,
    };
    std::fs::write(out.join("recovered.json"), serde_json::to_vec_pretty(&r)?)?;
    Ok(r)
}
