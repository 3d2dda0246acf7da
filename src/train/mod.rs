//! Fine-tuning: loss, optimiser, batching plans, the training loop with checkpoints, inference.

pub(crate) mod batches;
pub(crate) mod bootstrap;
pub mod calibrate;
pub mod encoder;
pub mod evaluate;
pub mod feedback;
pub mod gate;
pub mod loss;
pub mod mix;
pub mod onnx;
pub mod optim;
pub mod package;
pub mod predict;
pub mod report;
pub mod rng;
pub(crate) mod trainer;

pub use trainer::{TrainConfig, Trainer};
