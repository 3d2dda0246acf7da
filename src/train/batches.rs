//! Seeded, deterministic epoch plans: shuffle, sort by length inside large windows so each
//! batch pads little, then shuffle the batch order. Same (seed, epoch) → same plan, so a resumed
//! run replays exactly the batches an uninterrupted one would.

use crate::train::rng::SplitMix64;

/// Examples per window sorted by length = batch_size × this.
const WINDOW_BATCHES: usize = 50;

pub(crate) fn epoch_plan(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    SplitMix64::derive(seed, epoch, 1).shuffle(&mut idx);
    let mut batches = Vec::new();
    for window in idx.chunks(batch_size * WINDOW_BATCHES) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| lengths[i]);
        batches.extend(w.chunks(batch_size).map(|c| c.to_vec()));
    }
    SplitMix64::derive(seed, epoch, 2).shuffle(&mut batches);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_a_deterministic_partition_with_little_padding() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 60 + 3).collect();
        let a = epoch_plan(&lengths, 16, 7, 0);
        assert_eq!(a, epoch_plan(&lengths, 16, 7, 0));
        assert_ne!(a, epoch_plan(&lengths, 16, 7, 1));
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let padded: usize = a
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
            .sum();
        let real: usize = lengths.iter().sum();
        assert!(
            (padded as f64) < real as f64 * 1.1,
            "padding overhead too high: {padded} vs {real}"
        );
    }
}
