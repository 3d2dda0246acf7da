//! Evaluation on GoEmotions: dataset splits, per-label and macro/micro F1, and thresholds
//! chosen on dev.

pub mod dataset;
pub mod scores;
pub(crate) mod thresholds;
