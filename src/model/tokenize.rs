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

/// Characters tokenized per token of the model's max length (see [`TextEncoder::encode`]).
const CHARS_PER_TOKEN: usize = 256;

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
    /// Only the first `max_len * CHARS_PER_TOKEN` characters are tokenized: far more than
    /// `max_len` tokens ever span in text (a Reddit comment is at most 10,000 characters), so a
    /// megabyte of text costs no more than a long comment. A text cut there is `truncated`.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let budget = self.max_len * CHARS_PER_TOKEN;
        // Bytes >= characters: most texts are settled without counting.
        let cut_at = if text.len() > budget {
            text.char_indices().nth(budget).map(|(at, _)| at)
        } else {
            None
        };
        let (text, cut) = match cut_at {
            Some(at) => (&text[..at], true),
            None => (text, false),
        };
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))
            .context("tokenizer failed on input text")?;
        let mut ids = enc.get_ids().to_vec();
        let truncated = cut || ids.len() > self.max_len;
        if ids.len() > self.max_len {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> TextEncoder {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/goemotions-minilm-l6/tokenizer.json");
        TextEncoder::from_file(&path, 128).unwrap()
    }

    #[test]
    fn a_megabyte_of_text_tokenizes_like_its_first_characters_and_is_flagged() {
        let enc = shipped();
        let text = "I am so happy today ".repeat(52_429);
        assert!(text.len() > 1 << 20);
        let long = enc.encode(&text).unwrap();
        let head = enc.encode(&text[..2_000]).unwrap();
        assert_eq!(long.ids, head.ids);
        assert!(long.truncated && head.truncated);
        assert_eq!(long.ids.len(), 128);
        assert!(!enc.encode("I am so happy today").unwrap().truncated);
    }

    #[test]
    fn the_cut_keeps_whole_characters_of_one_huge_word() {
        let enc = shipped();
        // One 2 MB word of two-byte characters: cut on a character boundary, one token or a
        // few, flagged.
        let word = "é".repeat(1 << 20);
        let e = enc.encode(&word).unwrap();
        assert!(e.truncated);
        assert!(e.ids.len() <= 128);
    }
}
