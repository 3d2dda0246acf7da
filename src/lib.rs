//! emostream: emotion labelling of comment streams (GoEmotions, 28 labels).
//!
//! Training side: `encoder` (candle), `train` (loss, optimiser, checkpoints, loop), `onnx` (export).
//! Shared: `labels`, `dataset`, `metrics`, `thresholds`, `model_dir`, `tokenize`.

pub mod dataset;
pub mod encoder;
pub mod inference;
pub mod labels;
pub mod metrics;
pub mod model;
pub mod model_dir;
pub mod onnx;
pub mod rng;
pub mod thresholds;
pub mod train;
pub mod tokenize;
