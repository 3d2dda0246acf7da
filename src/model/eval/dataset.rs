//! GoEmotions TSV splits: `text <TAB> label indices <TAB> id`, read into multi-hot examples.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Example {
    pub text: String,
    /// Label indices that are on.
    pub labels: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Split {
    pub path: PathBuf,
    pub sha256: String,
    pub examples: Vec<Example>,
}

/// Where the GoEmotions splits live: `$EMOSTREAM_DATA` if set, else `../shared/data/goemotions`
/// relative to the crate root (the layout this project's machines and CI use).
pub fn goemotions_dir() -> PathBuf {
    if let Ok(d) = std::env::var("EMOSTREAM_DATA") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = root.join("data/goemotions");
    if local.join("train.tsv").exists() {
        return local;
    }
    root.join("../shared/data/goemotions")
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

impl Split {
    /// Reads a split; every label index must be below `num_labels`.
    pub fn read(path: &Path, num_labels: usize) -> Result<Split> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading split {}", path.display()))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let text =
            String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
        let mut examples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let mut f = line.split('\t');
            // The third field is the comment id, which nothing here needs.
            let (Some(t), Some(l), Some(_)) = (f.next(), f.next(), f.next()) else {
                bail!(
                    "{}:{}: expected 3 tab-separated fields",
                    path.display(),
                    n + 1
                );
            };
            let mut labels = Vec::new();
            for s in l.split(',') {
                let i: usize = s.trim().parse().with_context(|| {
                    format!("{}:{}: bad label index {s:?}", path.display(), n + 1)
                })?;
                if i >= num_labels {
                    bail!(
                        "{}:{}: label index {i} >= {num_labels}",
                        path.display(),
                        n + 1
                    );
                }
                labels.push(i);
            }
            examples.push(Example {
                text: t.to_string(),
                labels,
            });
        }
        Ok(Split {
            path: path.to_path_buf(),
            sha256,
            examples,
        })
    }

    /// Multi-hot targets, row-major `[n, num_labels]`.
    pub fn targets(&self, num_labels: usize) -> Vec<Vec<bool>> {
        self.examples
            .iter()
            .map(|e| {
                let mut row = vec![false; num_labels];
                for &i in &e.labels {
                    row[i] = true;
                }
                row
            })
            .collect()
    }

    pub fn texts(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.text.as_str()).collect()
    }
}
