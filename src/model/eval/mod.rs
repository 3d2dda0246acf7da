//! Evaluation on GoEmotions: dataset splits, per-label and macro/micro F1, and thresholds
//! chosen on dev.

pub mod calibration;
pub mod dataset;
pub mod scores;
pub mod thresholds;
