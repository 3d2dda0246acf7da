//! Folds per-label calibration into an existing ONNX model: the node that wrote `logits` now
//! writes `logits_uncalibrated`, and `logits = logits_uncalibrated * scale + shift` follows, so
//! every consumer of model.onnx (the daemon included) gets calibrated logits unchanged.

use super::builder::GraphBuilder;
use super::proto::ModelProto;
use anyhow::{bail, Context, Result};

const OUTPUT: &str = "logits";
const UNCALIBRATED: &str = "logits_uncalibrated";
const SCALE: &str = "calibration.scale";
const SHIFT: &str = "calibration.shift";

/// `model` (serialized ONNX) with `logits * scale + shift` per label before its output.
pub fn fold(model: &[u8], scale: &[f32], shift: &[f32]) -> Result<Vec<u8>> {
    let mut m: ModelProto = prost::Message::decode(model).context("parsing model.onnx")?;
    let graph = m.graph.as_mut().context("model.onnx has no graph")?;
    if !graph.output.iter().any(|o| o.name == OUTPUT) {
        bail!("model.onnx has no output named {OUTPUT:?}");
    }
    if graph
        .node
        .iter()
        .any(|n| n.output.iter().any(|o| o == UNCALIBRATED))
    {
        bail!("model.onnx is calibrated already ({UNCALIBRATED} exists)");
    }
    let mut writers = 0;
    for node in &mut graph.node {
        for name in node.input.iter_mut().chain(node.output.iter_mut()) {
            if name == OUTPUT {
                *name = UNCALIBRATED.into();
                writers += 1;
            }
        }
    }
    if writers != 1 {
        bail!("model.onnx: {writers} node inputs/outputs name {OUTPUT:?}, expected one writer");
    }
    let mut g = GraphBuilder::default();
    let n = scale.len();
    let s = g.init_f32(SCALE, &[n], scale);
    let b = g.init_f32(SHIFT, &[n], shift);
    let scaled = g.node("Mul", &[UNCALIBRATED, &s], vec![], "calibration");
    g.node("Add", &[&scaled, &b], vec![], "calibration");
    g.rename_last_output(OUTPUT);
    graph.node.extend(g.nodes);
    graph.initializer.extend(g.initializers);
    Ok(prost::Message::encode_to_vec(&m))
}

/// The inverse of [`fold`]: `model` with its calibration's `Mul`/`Add` removed and the node that
/// wrote `logits_uncalibrated` writing `logits` again (the graph as it was before calibrating).
pub fn unfold(model: &[u8]) -> Result<Vec<u8>> {
    let mut m: ModelProto = prost::Message::decode(model).context("parsing model.onnx")?;
    let graph = m.graph.as_mut().context("model.onnx has no graph")?;
    let before = graph.node.len();
    // The Mul reads logits_uncalibrated; the Add writes logits.
    graph.node.retain(|n| {
        !(n.input.iter().any(|i| i == UNCALIBRATED) || n.output.iter().any(|o| o == OUTPUT))
    });
    if before - graph.node.len() != 2 {
        bail!("model.onnx is not calibrated as `train calibrate` folds it (no Mul/Add after {UNCALIBRATED})");
    }
    for name in graph.node.iter_mut().flat_map(|n| n.output.iter_mut()) {
        if name == UNCALIBRATED {
            *name = OUTPUT.into();
        }
    }
    graph
        .initializer
        .retain(|t| t.name != SCALE && t.name != SHIFT);
    Ok(prost::Message::encode_to_vec(&m))
}
