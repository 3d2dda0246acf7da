//! ONNX export of the encoder, written in Rust: protobuf schema, graph builder, int8
//! quantisation, and calibration folded into an exported graph.

pub(crate) mod builder;
pub mod calibration;
pub mod export;
pub mod proto;
pub(crate) mod quantize;

pub use export::{export, to_bytes, Variant};
