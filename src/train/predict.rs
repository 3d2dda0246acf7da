//! Batched candle inference (no dropout, no graph kept): sigmoid scores for many texts.

use crate::backend::batching::{in_length_order, Cut};
use crate::model::eval::scores::sigmoid;
use crate::model::tokenize::PaddedBatch;
use crate::train::encoder::{Encoder, Params};
use anyhow::Result;
use candle_core::{DType, Device};

/// Raw logits `[n][num_labels]` for token id rows, run in length-sorted batches.
pub fn logits(
    encoder: &Encoder,
    params: &Params,
    rows: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    in_length_order(&refs, Cut::Every(batch_size), |part| {
        Ok(encoder
            .forward(params, &PaddedBatch::new(part, pad_id), device, None)?
            .detach()
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?)
    })
}

pub(crate) fn scores(
    encoder: &Encoder,
    params: &Params,
    rows: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    Ok(logits(encoder, params, rows, pad_id, batch_size, device)?
        .into_iter()
        .map(|r| r.into_iter().map(sigmoid).collect())
        .collect())
}
