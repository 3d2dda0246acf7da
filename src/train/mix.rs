//! The training set of a fine-tune on a team's own data: every row `train data import` wrote
//! plus a replay sample of GoEmotions train (`replay_ratio` GoEmotions rows per imported row,
//! drawn without replacement by the run's seed), shuffled together into one TSV in the run
//! directory. Replay keeps the model from forgetting the 28-label task while it learns the
//! corrections (the usual remedy for catastrophic forgetting in continual fine-tuning).

use crate::model::eval::dataset::{sha256_file, Split};
use crate::train::rng::SplitMix64;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How a run's training set was mixed; kept in train.json and the card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MixRecord {
    /// The imported dataset's train.tsv and its sha256.
    pub feedback_train: PathBuf,
    pub feedback_sha256: String,
    pub feedback_rows: usize,
    /// GoEmotions train.tsv (the replay source) and its sha256.
    pub replay_source_sha256: String,
    pub replay_ratio: f64,
    pub replay_rows: usize,
}

/// Writes `out` (the mixed TSV) and says what went in.
pub fn write_mix(
    feedback_train: &Path,
    goemotions_train: &Split,
    num_labels: usize,
    replay_ratio: f64,
    seed: u64,
    out: &Path,
) -> Result<MixRecord> {
    ensure!(
        replay_ratio.is_finite() && replay_ratio >= 0.0,
        "--replay-ratio must be 0 or more (got {replay_ratio})"
    );
    let own = Split::read(feedback_train, num_labels)?;
    ensure!(
        !own.examples.is_empty(),
        "{} holds no rows to learn from",
        feedback_train.display()
    );
    let replay = ((own.examples.len() as f64 * replay_ratio).round() as usize)
        .min(goemotions_train.examples.len());
    let mut rng = SplitMix64::derive(seed, 0x004d_4958, 0);
    // Partial Fisher-Yates: the first `replay` indices of a seeded permutation.
    let mut idx: Vec<usize> = (0..goemotions_train.examples.len()).collect();
    for i in 0..replay {
        let j = i + rng.below(idx.len() - i);
        idx.swap(i, j);
    }
    let mut rows: Vec<String> = own
        .examples
        .iter()
        .enumerate()
        .map(|(i, e)| row(&e.text, &e.labels, &format!("own-{i}")))
        .chain(idx[..replay].iter().map(|&i| {
            let e = &goemotions_train.examples[i];
            row(&e.text, &e.labels, &format!("replay-{i}"))
        }))
        .collect();
    rng.shuffle(&mut rows);
    std::fs::write(out, rows.concat()).with_context(|| format!("writing {}", out.display()))?;
    Ok(MixRecord {
        feedback_train: std::fs::canonicalize(feedback_train)?,
        feedback_sha256: sha256_file(feedback_train)?,
        feedback_rows: own.examples.len(),
        replay_source_sha256: goemotions_train.sha256.clone(),
        replay_ratio,
        replay_rows: replay,
    })
}

fn row(text: &str, labels: &[usize], id: &str) -> String {
    let l: Vec<String> = labels.iter().map(usize::to_string).collect();
    format!("{text}\t{}\t{id}\n", l.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_holds_every_imported_row_and_ratio_times_as_many_distinct_replay_rows() {
        let dir = std::env::temp_dir().join(format!("emostream-mix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let own = dir.join("own.tsv");
        std::fs::write(&own, "mine one\t3\ta\nmine two\t5,7\tb\n").unwrap();
        let ge = dir.join("ge.tsv");
        let ge_rows: String = (0..50)
            .map(|i| format!("ge {i}\t{}\tg{i}\n", i % 28))
            .collect();
        std::fs::write(&ge, ge_rows).unwrap();
        let ge = Split::read(&ge, 28).unwrap();
        let out = dir.join("mix.tsv");
        let rec = write_mix(&own, &ge, 28, 3.0, 7, &out).unwrap();
        assert_eq!((rec.feedback_rows, rec.replay_rows), (2, 6));
        let mixed = Split::read(&out, 28).unwrap();
        let texts: std::collections::BTreeSet<&str> = mixed.texts().into_iter().collect();
        assert_eq!(texts.len(), 8, "distinct rows");
        assert!(texts.contains("mine one") && texts.contains("mine two"));
        // Same seed, same mix; another seed, another sample.
        let again = dir.join("again.tsv");
        write_mix(&own, &ge, 28, 3.0, 7, &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
        write_mix(&own, &ge, 28, 3.0, 8, &again).unwrap();
        assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
        assert!(write_mix(&own, &ge, 28, -1.0, 7, &again).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
