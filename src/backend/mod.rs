//! The inference backend: ONNX Runtime sessions and the model generations built on them. It
//! knows nothing of Kafka, batching policy or training; callers hand it token rows and get
//! sigmoid scores back.

pub mod batching;
pub mod generation;
pub mod offline;
pub mod ort;
