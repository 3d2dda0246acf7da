//! emostream: emotion labelling of comment streams (GoEmotions, 28 labels).
//!
//! Training side: `encoder` (candle), `train` (loss, optimiser, checkpoints, loop), `onnx` (export).
//! Shared: `labels`, `dataset`, `metrics`, `thresholds`, `model_dir`, `tokenize`.

pub mod admin;
pub mod batcher;
pub mod config;
pub mod control;
pub mod cpu;
pub mod daemon;
pub mod dataset;
pub mod decode;
pub mod encoder;
pub mod event;
pub mod inference;
pub mod labels;
pub mod metrics;
pub mod model;
pub mod model_dir;
pub mod offsets;
pub mod onnx;
pub mod pipeline;
pub mod pointer_watch;
pub mod registry;
pub mod rng;
pub mod serving;
pub mod shadow;
pub mod sink;
pub mod source;
pub mod swap;
pub mod telemetry;
pub mod thresholds;
pub mod tokenize;
pub mod train;
pub mod workers;
