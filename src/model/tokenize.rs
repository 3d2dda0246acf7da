//! Text → token ids with a Hugging Face `tokenizer.json`, and dynamic padding of a batch
//! to its own longest text (never to a fixed length).

use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

/// One tokenized text.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// The text had more tokens than the model's max length and was cut.
    pub(crate) truncated: bool,
}

/// Tokenizer configured for single-sequence classification with a max length.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_len: usize,
    pad_id: u32,
}

impl TextEncoder {
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .unwrap_or(0);
        // We pad per batch ourselves and truncate with a flag, so the file's own settings go.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("tokenizer {}: {e}", path.display()))?;
        Ok(TextEncoder {
            tokenizer,
            max_len,
            pad_id,
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenizes one text with special tokens, cut to `max_len` keeping the final special token.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))
            .context("tokenizer failed on input text")?;
        let mut ids = enc.get_ids().to_vec();
        let truncated = ids.len() > self.max_len;
        if truncated {
            // Keep the leading special token and the trailing one (e.g. [SEP] / </s>).
            let special = enc.get_special_tokens_mask();
            let last = *ids.last().expect("non-empty");
            let last_is_special = *special.last().unwrap_or(&0) == 1;
            ids.truncate(self.max_len);
            if last_is_special {
                *ids.last_mut().expect("non-empty") = last;
            }
        }
        Ok(Encoded { ids, truncated })
    }
}

/// A batch padded to its longest member: row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    pub(crate) batch: usize,
    pub seq: usize,
    pub(crate) input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
}

impl PaddedBatch {
    pub fn new(rows: &[&[u32]], pad_id: u32) -> Self {
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut input_ids = Vec::with_capacity(rows.len() * seq);
        let mut attention_mask = Vec::with_capacity(rows.len() * seq);
        for r in rows {
            input_ids.extend_from_slice(r);
            attention_mask.extend(std::iter::repeat_n(1, r.len()));
            input_ids.extend(std::iter::repeat_n(pad_id, seq - r.len()));
            attention_mask.extend(std::iter::repeat_n(0, seq - r.len()));
        }
        PaddedBatch {
            batch: rows.len(),
            seq,
            input_ids,
            attention_mask,
        }
    }
}
