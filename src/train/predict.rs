//! Batched candle inference (no dropout, no graph kept): sigmoid scores for many texts.

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
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].len());
    let mut out = vec![Vec::new(); rows.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&[u32]> = chunk.iter().map(|&i| rows[i].as_slice()).collect();
        let batch = PaddedBatch::new(&refs, pad_id);
        let l = encoder
            .forward(params, &batch, device, None)?
            .detach()
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (&i, row) in chunk.iter().zip(l) {
            out[i] = row;
        }
    }
    Ok(out)
}

pub fn scores(
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
