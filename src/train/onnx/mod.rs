//! ONNX export of the encoder, written in Rust: protobuf schema, graph builder, int8
//! quantisation, calibration folded into an exported graph, and the way back (recover).

pub(crate) mod builder;
pub mod calibration;
pub mod export;
pub mod proto;
pub(crate) mod quantize;
pub mod recover;

pub use export::{export, to_bytes, Variant};
