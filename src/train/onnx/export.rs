//! Writes the encoder as an ONNX graph equal to the candle forward (`encoder::model`).
//!
//! Graph variants:
//! - `Fp32 { fused: true }` (default): ONNX Runtime contrib ops emitted directly
//!   (`Attention`, `SkipLayerNormalization`, `BiasGelu`), so nothing depends on pattern fusion.
//! - `Fp32 { fused: false }`: standard ONNX ops only (opset 17), for other runtimes.
//! - `Int8` (opset 21): every linear layer as `MatMulIntegerToFloat` with per-column 7-bit
//!   weights and per-token uint8 activations (so scores are batch-invariant),
//!   attention through `MultiHeadAttention`, and the word-embedding table stored as int8 rows.
//!
//! Inputs: `input_ids`, `attention_mask` (and `token_type_ids` for BERT), int64 `[batch, seq]`.
//! Output: `logits`, float32 `[batch, num_labels]`.

use super::builder::*;
use super::proto::*;
use super::quantize;
use crate::train::encoder::model::MASK_FILTER_VALUE;
use crate::train::encoder::{names, Arch, EncoderConfig, Params, Pooling};
use anyhow::{Context, Result};
use candle_core::DType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Fp32 { fused: bool },
    Int8,
}

impl Variant {
    pub fn precision(self) -> &'static str {
        match self {
            Variant::Fp32 { .. } => "fp32",
            Variant::Int8 => "int8",
        }
    }
}

/// The default-domain opset of fp32 graphs.
const OPSET: i64 = 17;
/// int8 graphs use opset 21 for blocked (per-token) QuantizeLinear.
const OPSET_INT8: i64 = 21;

struct Exporter<'a> {
    g: GraphBuilder,
    params: &'a Params,
    cfg: &'a EncoderConfig,
    variant: Variant,
    /// int8: shared initializers, made on first use.
    int8_consts: Option<(String, String)>,
    /// int8: the `[b, s, 1]` uint8 zero points, the reduce axis, the scale floor and 127.
    per_token_consts: Option<[String; 4]>,
}

impl<'a> Exporter<'a> {
    fn data(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.params.get(name)?.to_dtype(DType::F32)?;
        Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
    }

    fn f32_param(&mut self, name: &str) -> Result<String> {
        let (dims, d) = self.data(name)?;
        Ok(self.g.init_f32(name, &dims, &d))
    }

    /// A `[out, in]` weight transposed to the MatMul operand `[in, out]`.
    fn weight_t(&self, name: &str) -> Result<(usize, usize, Vec<f32>)> {
        let (dims, w) = self.data(&format!("{name}.weight"))?;
        let (out, inp) = (dims[0], dims[1]);
        let mut t = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = w[o * inp + i];
            }
        }
        Ok((inp, out, t))
    }

    /// Concatenates several linear layers' transposed weights column-wise (and their biases).
    fn packed(&self, layers: &[&str]) -> Result<(usize, usize, Vec<f32>, Vec<f32>)> {
        let parts: Vec<(usize, usize, Vec<f32>)> = layers
            .iter()
            .map(|l| self.weight_t(l))
            .collect::<Result<_>>()?;
        let k = parts[0].0;
        let n: usize = parts.iter().map(|p| p.1).sum();
        let mut w = vec![0f32; k * n];
        let mut col = 0;
        for (_, pn, pw) in &parts {
            for r in 0..k {
                w[r * n + col..r * n + col + pn].copy_from_slice(&pw[r * pn..(r + 1) * pn]);
            }
            col += pn;
        }
        let mut b = Vec::with_capacity(n);
        for l in layers {
            b.extend(self.data(&format!("{l}.bias"))?.1);
        }
        Ok((k, n, w, b))
    }

    /// `x @ W` (+ bias when `with_bias`): plain MatMul in fp32, MatMulIntegerToFloat in int8.
    fn matmul(
        &mut self,
        x: &str,
        key: &str,
        k: usize,
        n: usize,
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> String {
        match self.variant {
            Variant::Int8 => {
                // Weights symmetric per output column on 7 bits (-63..=63): with uint8
                // activations, MLAS's fast u8s8 kernel on AVX2 without VNNI adds pairs of
                // products in int16 (vpmaddubsw), and 2·255·63 < 32768 cannot saturate where
                // 8-bit weights can (measured: they moved scores further from fp32 than 7 bits).
                let (q, s) = quantize::per_column_levels(w, k, n, 63.0);
                let wq = self.g.init_i8(&format!("{key}.weight_q"), &[k, n], &q);
                let ws = self.g.init_f32(&format!("{key}.weight_scale"), &[n], &s);
                let (xq, xs) = self.quantize_rows(x, key, k);
                let (one, mid) = self.int8_constants();
                let y = self.g.ms_node(
                    "MatMulIntegerToFloat",
                    &[&xq, &wq, &one, &ws, &mid],
                    vec![],
                    key,
                );
                let y = self.g.node("Mul", &[&y, &xs], vec![], key);
                match bias {
                    Some(b) => {
                        let bn = self.g.init_f32(&format!("{key}.bias"), &[n], b);
                        self.g.node("Add", &[&y, &bn], vec![], key)
                    }
                    None => y,
                }
            }
            Variant::Fp32 { .. } => {
                let wn = self.g.init_f32(&format!("{key}.weight_t"), &[k, n], w);
                let y = self.g.node("MatMul", &[x, &wn], vec![], key);
                match bias {
                    Some(b) => {
                        let bn = self.g.init_f32(&format!("{key}.bias"), &[n], b);
                        self.g.node("Add", &[&y, &bn], vec![], key)
                    }
                    None => y,
                }
            }
        }
    }

    /// Scalar 1.0 (the activation scale MatMulIntegerToFloat sees: the real per-token scale
    /// is applied after it) and the uint8 activation zero point 128, shared by every layer.
    fn int8_constants(&mut self) -> (String, String) {
        if self.int8_consts.is_none() {
            let one = self.g.init_f32("int8.unit_scale", &[], &[1.0]);
            let mid = self.g.init_u8("int8.zero_point", &[], &[128]);
            self.int8_consts = Some((one, mid));
        }
        self.int8_consts.clone().expect("set above")
    }

    /// Quantises activations `[b, s, k]` per token: scale = max|x| / 127 of that token's row,
    /// codes uint8 around 128 (blocked QuantizeLinear, one block per row). A token's codes
    /// depend on that token alone, so a comment's scores do not depend on the comments batched
    /// with it or on their padding — unlike `DynamicQuantizeMatMul`, whose one scale per tensor
    /// changed the labels of 16 of 300 test comments when their batch-mates changed.
    /// Returns the codes and the `[b, s, 1]` scales.
    fn quantize_rows(&mut self, x: &str, key: &str, k: usize) -> (String, String) {
        if self.per_token_consts.is_none() {
            // uint8 128s shaped [b, s, 1], the zero point of every row (same for all layers).
            let input = "input_ids";
            let bs = self
                .g
                .node("Shape", &[input], vec![attr_i("end", 2)], "int8");
            let one = self.g.init_i64("int8.one_dim", &[1], &[1]);
            let shape = self
                .g
                .node("Concat", &[&bs, &one], vec![attr_i("axis", 0)], "int8");
            let mid = self.g.init_u8("int8.zero_point_111", &[1, 1, 1], &[128]);
            let zp = self.g.node("Expand", &[&mid, &shape], vec![], "int8");
            let last = self.g.init_i64("int8.last_axis", &[1], &[-1]);
            let floor = self.g.init_f32("int8.scale_floor", &[], &[1e-20]);
            let levels = self.g.init_f32("int8.levels", &[], &[127.0]);
            self.per_token_consts = Some([zp, last, floor, levels]);
        }
        let [zp, last, floor, levels] = self.per_token_consts.clone().expect("set above");
        let abs = self.g.node("Abs", &[x], vec![], key);
        let max = self.g.node(
            "ReduceMax",
            &[&abs, &last],
            vec![attr_i("keepdims", 1)],
            key,
        );
        let max = self.g.node("Max", &[&max, &floor], vec![], key);
        let scale = self.g.node("Div", &[&max, &levels], vec![], key);
        let codes = self.g.node(
            "QuantizeLinear",
            &[x, &scale, &zp],
            vec![attr_i("axis", 2), attr_i("block_size", k as i64)],
            key,
        );
        (codes, scale)
    }

    fn linear(&mut self, x: &str, name: &str, with_bias: bool) -> Result<String> {
        let (k, n, w) = self.weight_t(name)?;
        let b = if with_bias {
            Some(self.data(&format!("{name}.bias"))?.1)
        } else {
            None
        };
        Ok(self.matmul(x, name, k, n, &w, b.as_deref()))
    }

    fn layer_norm(&mut self, x: &str, name: &str) -> Result<String> {
        let g = self.f32_param(&format!("{name}.weight"))?;
        let b = self.f32_param(&format!("{name}.bias"))?;
        let eps = self.cfg.layer_norm_eps as f32;
        Ok(self.g.node(
            "LayerNormalization",
            &[x, &g, &b],
            vec![attr_i("axis", -1), attr_f("epsilon", eps)],
            name,
        ))
    }

    /// LayerNorm(x + residual (+ bias)).
    fn add_norm(
        &mut self,
        x: &str,
        residual: &str,
        bias: Option<&str>,
        name: &str,
    ) -> Result<String> {
        if self.variant == (Variant::Fp32 { fused: false }) {
            let mut y = self.g.node("Add", &[x, residual], vec![], name);
            if let Some(b) = bias {
                y = self.g.node("Add", &[&y, b], vec![], name);
            }
            return self.layer_norm(&y, name);
        }
        let g = self.f32_param(&format!("{name}.weight"))?;
        let b = self.f32_param(&format!("{name}.bias"))?;
        let eps = self.cfg.layer_norm_eps as f32;
        let mut ins = vec![x, residual, g.as_str(), b.as_str()];
        if let Some(bias) = bias {
            ins.push(bias);
        }
        Ok(self.g.ms_node(
            "SkipLayerNormalization",
            &ins,
            vec![attr_f("epsilon", eps)],
            name,
        ))
    }

    fn embeddings(&mut self, ids: &str, token_types: Option<&str>) -> Result<String> {
        let e = names::embeddings(self.cfg.arch);
        let (dims, mut word) = self.data(&format!("{}.weight", e.word))?;
        let (v, h) = (dims[0], dims[1]);
        // RoBERTa/DistilBERT feed no token types: fold type-0's row (if any) into every word row,
        // which is exact because the sum precedes LayerNorm.
        if token_types.is_none() {
            if let Some(tt) = &e.token_type {
                let (_, t) = self.data(&format!("{tt}.weight"))?;
                for r in 0..v {
                    for c in 0..h {
                        word[r * h + c] += t[c];
                    }
                }
            }
        }
        let mut x = match self.variant {
            Variant::Int8 => {
                let (q, s) = quantize::per_row(&word, v, h);
                let wq = self.g.init_i8(&format!("{}.weight_q", e.word), &[v, h], &q);
                let sc = self
                    .g
                    .init_f32(&format!("{}.weight_scale", e.word), &[v, 1], &s);
                let rows = self.g.node("Gather", &[&wq, ids], vec![], &e.word);
                let rows = self.g.node(
                    "Cast",
                    &[&rows],
                    vec![attr_i("to", data_type::FLOAT as i64)],
                    &e.word,
                );
                let scales = self.g.node("Gather", &[&sc, ids], vec![], &e.word);
                self.g.node("Mul", &[&rows, &scales], vec![], &e.word)
            }
            Variant::Fp32 { .. } => {
                let w = self
                    .g
                    .init_f32(&format!("{}.weight", e.word), &[v, h], &word);
                self.g.node("Gather", &[&w, ids], vec![], &e.word)
            }
        };
        let pos_table = self.f32_param(&format!("{}.weight", e.position))?;
        let pos = match self.cfg.arch {
            Arch::Roberta => {
                // pad + cumsum(ids != pad) for real tokens, pad for padding (HF create_position_ids_from_input_ids)
                let pad = self
                    .g
                    .init_i64("pad_token_id", &[], &[self.cfg.pad_token_id as i64]);
                let eq = self.g.node("Equal", &[ids, &pad], vec![], "position_ids");
                let ne = self.g.node("Not", &[&eq], vec![], "position_ids");
                let m = self.g.node(
                    "Cast",
                    &[&ne],
                    vec![attr_i("to", data_type::INT64 as i64)],
                    "position_ids",
                );
                let axis = self.g.init_i64("axis_1", &[], &[1]);
                let cs = self.g.node("CumSum", &[&m, &axis], vec![], "position_ids");
                let cm = self.g.node("Mul", &[&cs, &m], vec![], "position_ids");
                self.g.node("Add", &[&cm, &pad], vec![], "position_ids")
            }
            _ => {
                let shape = self.g.node("Shape", &[ids], vec![], "position_ids");
                let one = self.g.init_i64("index_1", &[], &[1]);
                let seq = self.g.node(
                    "Gather",
                    &[&shape, &one],
                    vec![attr_i("axis", 0)],
                    "position_ids",
                );
                let zero = self.g.init_i64("zero_i64", &[], &[0]);
                let step = self.g.init_i64("one_i64", &[], &[1]);
                self.g
                    .node("Range", &[&zero, &seq, &step], vec![], "position_ids")
            }
        };
        let pe = self
            .g
            .node("Gather", &[&pos_table, &pos], vec![], &e.position);
        x = self.g.node("Add", &[&x, &pe], vec![], &e.position);
        if let (Some(tt), Some(types)) = (&e.token_type, token_types) {
            let table = self.f32_param(&format!("{tt}.weight"))?;
            let te = self.g.node("Gather", &[&table, types], vec![], tt);
            x = self.g.node("Add", &[&x, &te], vec![], tt);
        }
        self.layer_norm(&x, &e.norm)
    }

    fn attention(&mut self, x: &str, mask: &str, i: usize) -> Result<String> {
        let l = names::layer(self.cfg.arch, i);
        let (nh, hd, h) = (
            self.cfg.num_heads as i64,
            self.cfg.head_dim() as i64,
            self.cfg.hidden_size,
        );
        let key = names::packed_qkv(self.cfg.arch, i);
        let (k, n, w, b) = self.packed(&[&l.query, &l.key, &l.value])?;
        match self.variant {
            Variant::Fp32 { fused: true } => {
                let wn = self.g.init_f32(&format!("{key}.weight_t"), &[k, n], &w);
                let bn = self.g.init_f32(&format!("{key}.bias"), &[n], &b);
                Ok(self.g.ms_node(
                    "Attention",
                    &[x, &wn, &bn, mask],
                    vec![
                        attr_i("num_heads", nh),
                        attr_f("mask_filter_value", MASK_FILTER_VALUE as f32),
                    ],
                    &key,
                ))
            }
            Variant::Int8 => {
                // The Q|K|V bias is added inside MultiHeadAttention (one pass fewer).
                let parts = self.project_qkv(x, &key, k, n, &w, None, h);
                let bn = self.g.init_f32(&format!("{key}.bias"), &[n], &b);
                Ok(self
                    .g
                    .node_n(
                        "MultiHeadAttention",
                        MS,
                        &[&parts[0], &parts[1], &parts[2], &bn, mask],
                        1,
                        vec![
                            attr_i("num_heads", nh),
                            attr_f("mask_filter_value", MASK_FILTER_VALUE as f32),
                        ],
                        &key,
                    )
                    .remove(0))
            }
            Variant::Fp32 { fused: false } => {
                let parts = self.project_qkv(x, &key, k, n, &w, Some(&b), h);
                let heads = self
                    .g
                    .init_i64(&format!("{key}.heads_shape"), &[4], &[0, 0, nh, hd]);
                // [b, s, h] -> [b, nh, s, hd] (keys transposed to [b, nh, hd, s])
                let q = self.split_heads(&parts[0], &heads, &[0, 2, 1, 3], &key);
                let kk = self.split_heads(&parts[1], &heads, &[0, 2, 3, 1], &key);
                let v = self.split_heads(&parts[2], &heads, &[0, 2, 1, 3], &key);
                let scores = self.g.node("MatMul", &[&q, &kk], vec![], &key);
                let scale =
                    self.g
                        .init_f32(&format!("{key}.scale"), &[], &[1.0 / (hd as f32).sqrt()]);
                let scores = self.g.node("Mul", &[&scores, &scale], vec![], &key);
                let scores = self.g.node("Add", &[&scores, mask], vec![], &key);
                let probs = self
                    .g
                    .node("Softmax", &[&scores], vec![attr_i("axis", -1)], &key);
                let ctx = self.g.node("MatMul", &[&probs, &v], vec![], &key);
                let ctx = self.g.node(
                    "Transpose",
                    &[&ctx],
                    vec![attr_ints("perm", &[0, 2, 1, 3])],
                    &key,
                );
                let flat = self
                    .g
                    .init_i64(&format!("{key}.flat_shape"), &[3], &[0, 0, h as i64]);
                Ok(self.g.node("Reshape", &[&ctx, &flat], vec![], &key))
            }
        }
    }

    /// One packed Q|K|V projection (`[b, s, 3h]`), split into Q, K and V.
    #[allow(clippy::too_many_arguments)]
    fn project_qkv(
        &mut self,
        x: &str,
        key: &str,
        k: usize,
        n: usize,
        w: &[f32],
        b: Option<&[f32]>,
        h: usize,
    ) -> Vec<String> {
        let qkv = self.matmul(x, key, k, n, w, b);
        let split = self
            .g
            .init_i64(&format!("{key}.split"), &[3], &[h as i64; 3]);
        self.g.node_n(
            "Split",
            "",
            &[&qkv, &split],
            3,
            vec![attr_i("axis", 2)],
            key,
        )
    }

    fn split_heads(&mut self, x: &str, shape: &str, perm: &[i64], key: &str) -> String {
        let r = self.g.node("Reshape", &[x, shape], vec![], key);
        self.g
            .node("Transpose", &[&r], vec![attr_ints("perm", perm)], key)
    }

    fn layer(&mut self, x: &str, mask: &str, i: usize) -> Result<String> {
        let l = names::layer(self.cfg.arch, i);
        let ctx = self.attention(x, mask, i)?;
        let plain = self.variant == (Variant::Fp32 { fused: false });
        // Output projection; its bias goes into SkipLayerNormalization where that op is used.
        let proj = self.linear(&ctx, &l.attn_out, plain)?;
        let ob = if plain {
            None
        } else {
            Some(self.f32_param(&format!("{}.bias", l.attn_out))?)
        };
        let x1 = self.add_norm(&proj, x, ob.as_deref(), &l.attn_norm)?;

        let inner = self.linear(&x1, &l.ffn_in, false)?;
        let b1 = self.f32_param(&format!("{}.bias", l.ffn_in))?;
        let act = if plain {
            // 0.5·x·(1 + erf(x/√2)), the exact GELU, in a form ONNX Runtime fuses
            let y = self.g.node("Add", &[&inner, &b1], vec![], &l.ffn_in);
            let r2 = self.g.init_f32(
                &format!("{}.sqrt2", l.ffn_in),
                &[],
                &[std::f32::consts::SQRT_2],
            );
            let d = self.g.node("Div", &[&y, &r2], vec![], &l.ffn_in);
            let e = self.g.node("Erf", &[&d], vec![], &l.ffn_in);
            let one = self.g.init_f32(&format!("{}.one", l.ffn_in), &[], &[1.0]);
            let e1 = self.g.node("Add", &[&e, &one], vec![], &l.ffn_in);
            let m = self.g.node("Mul", &[&y, &e1], vec![], &l.ffn_in);
            let half = self.g.init_f32(&format!("{}.half", l.ffn_in), &[], &[0.5]);
            self.g.node("Mul", &[&m, &half], vec![], &l.ffn_in)
        } else {
            self.g
                .ms_node("BiasGelu", &[&inner, &b1], vec![], &l.ffn_in)
        };
        let out = self.linear(&act, &l.ffn_out, plain)?;
        let ob = if plain {
            None
        } else {
            Some(self.f32_param(&format!("{}.bias", l.ffn_out))?)
        };
        self.add_norm(&out, &x1, ob.as_deref(), &l.ffn_norm)
    }

    fn head(&mut self, x: &str, mask: &str) -> Result<String> {
        let hn = names::head(self.cfg.arch);
        // The head stays fp32 in every variant: it is tiny and sits right before the scores.
        let fp32 = |e: &mut Exporter, x: &str, name: &str| -> Result<String> {
            let (k, n, w) = e.weight_t(name)?;
            let wn = e.g.init_f32(&format!("{name}.weight_t"), &[k, n], &w);
            let bn = e.f32_param(&format!("{name}.bias"))?;
            let y = e.g.node("MatMul", &[x, &wn], vec![], name);
            Ok(e.g.node("Add", &[&y, &bn], vec![], name))
        };
        if self.cfg.pooling == Pooling::Mean {
            // sum(x · mask) / sum(mask) over the sequence, as the candle head computes it.
            let m = self.g.node(
                "Cast",
                &[mask],
                vec![attr_i("to", data_type::FLOAT as i64)],
                "pool",
            );
            let ax2 = self.g.init_i64("pool.axes2", &[1], &[2]);
            let m3 = self.g.node("Unsqueeze", &[&m, &ax2], vec![], "pool");
            let xm = self.g.node("Mul", &[x, &m3], vec![], "pool");
            let ax1 = self.g.init_i64("pool.axes1", &[1], &[1]);
            let keep0 = vec![attr_i("keepdims", 0)];
            let sum = self
                .g
                .node("ReduceSum", &[&xm, &ax1], keep0.clone(), "pool");
            let cnt = self.g.node("ReduceSum", &[&m3, &ax1], keep0, "pool");
            let mean = self.g.node("Div", &[&sum, &cnt], vec![], "pool");
            fp32(self, &mean, &hn.out)?;
            self.g.rename_last_output("logits");
            return Ok("logits".into());
        }
        let zero = self.g.init_i64("index_0", &[], &[0]);
        let cls = self
            .g
            .node("Gather", &[x, &zero], vec![attr_i("axis", 1)], "cls");
        let d = fp32(self, &cls, &hn.dense)?;
        let act = if self.cfg.arch == Arch::Distilbert {
            "Relu"
        } else {
            "Tanh"
        };
        let a = self.g.node(act, &[&d], vec![], &hn.dense);
        fp32(self, &a, &hn.out)?;
        self.g.rename_last_output("logits");
        Ok("logits".into())
    }
}

/// Builds the ONNX model for `params` (any dtype; exported as f32).
pub fn export(
    cfg: &EncoderConfig,
    params: &Params,
    variant: Variant,
    doc: &str,
) -> Result<ModelProto> {
    let mut e = Exporter {
        g: GraphBuilder::default(),
        params,
        cfg,
        variant,
        int8_consts: None,
        per_token_consts: None,
    };
    let ids =
        e.g.input("input_ids", data_type::INT64, &["batch", "sequence"]);
    let mask =
        e.g.input("attention_mask", data_type::INT64, &["batch", "sequence"]);
    let types = cfg.arch.has_token_types().then(|| {
        e.g.input("token_type_ids", data_type::INT64, &["batch", "sequence"])
    });

    let mut x = e
        .embeddings(&ids, types.as_deref())
        .context("exporting embeddings")?;
    let mask_in = match variant {
        Variant::Fp32 { fused: false } => {
            // (1 - mask) · -10000, shaped [batch, 1, 1, seq]
            let m = e.g.node(
                "Cast",
                &[&mask],
                vec![attr_i("to", data_type::FLOAT as i64)],
                "mask",
            );
            let one = e.g.init_f32("mask.one", &[], &[1.0]);
            let inv = e.g.node("Sub", &[&one, &m], vec![], "mask");
            let big =
                e.g.init_f32("mask.filter", &[], &[MASK_FILTER_VALUE as f32]);
            let bias = e.g.node("Mul", &[&inv, &big], vec![], "mask");
            let axes = e.g.init_i64("mask.axes", &[2], &[1, 2]);
            e.g.node("Unsqueeze", &[&bias, &axes], vec![], "mask")
        }
        _ => e.g.node(
            "Cast",
            &[&mask],
            vec![attr_i("to", data_type::INT32 as i64)],
            "mask",
        ),
    };
    for i in 0..cfg.num_layers {
        x = e
            .layer(&x, &mask_in, i)
            .with_context(|| format!("exporting layer {i}"))?;
    }
    e.head(&x, &mask)?;
    e.g.output(
        "logits",
        data_type::FLOAT,
        &["batch", &cfg.num_labels.to_string()],
    );

    let mut opset = vec![OperatorSetIdProto {
        domain: String::new(),
        version: if variant == Variant::Int8 {
            OPSET_INT8
        } else {
            OPSET
        },
    }];
    if variant != (Variant::Fp32 { fused: false }) {
        opset.push(OperatorSetIdProto {
            domain: MS.into(),
            version: 1,
        });
    }
    Ok(ModelProto {
        // opset 21 (int8) needs IR version 10
        ir_version: if variant == Variant::Int8 { 10 } else { 8 },
        producer_name: "emostream-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        graph: Some(GraphProto {
            node: e.g.nodes,
            name: format!("{}-goemotions", cfg.arch.model_type()),
            initializer: e.g.initializers,
            input: e.g.inputs,
            output: e.g.outputs,
            ..Default::default()
        }),
        opset_import: opset,
        ..Default::default()
    })
}

/// Serialised model bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}
