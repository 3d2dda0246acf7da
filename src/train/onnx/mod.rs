//! ONNX export of the encoder, written in Rust: protobuf schema, graph builder, int8 quantisation.

pub mod builder;
pub mod export;
pub mod proto;
pub mod quantize;

pub use export::{export, to_bytes, Variant};
