//! The project's own transformer encoder in candle: one implementation for the BERT (incl.
//! MiniLM), RoBERTa/XLM-R and DistilBERT parameter layouts, trainable end to end.

pub mod config;
pub mod layers;
pub mod model;
pub mod names;
pub mod params;

pub use config::{Arch, EncoderConfig, Pooling};
pub use model::Encoder;
pub use params::Params;
