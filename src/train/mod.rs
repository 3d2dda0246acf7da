//! Fine-tuning: loss, optimiser, batching plans, the training loop with checkpoints, inference.

pub mod batches;
pub mod loss;
pub mod optim;
pub mod predict;
pub mod publish;
pub mod report;
pub mod trainer;

pub use trainer::{TrainConfig, Trainer};
