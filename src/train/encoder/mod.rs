//! The project's own transformer encoder in candle: one implementation for the BERT (incl.
//! MiniLM), RoBERTa/XLM-R and DistilBERT parameter layouts, trainable end to end.

pub(crate) mod config;
pub(crate) mod layers;
pub(crate) mod model;
pub mod names;
pub(crate) mod params;

pub use config::{Arch, EncoderConfig, Pooling};
pub use model::Encoder;
pub use params::Params;
