//! emostream: emotion labelling of comment streams (GoEmotions, 28 labels, multi-label).
//!
//! Four layers; each imports only from the layers below it (tests/architecture.rs checks):
//!
//! ```text
//!   daemon/   the Kafka labeller: config, pipeline (decode → batcher → workers → events),
//!             kafka (client, source, sink, control topic), ack (offsets + in-flight budget),
//!             swap (controller, shadow, pointer watch), admin HTTP, api (classify over HTTP,
//!             live view, pages), serve (the API without Kafka), telemetry
//!   train/    fine-tuning with candle: encoder/, loss, optimiser, trainer, onnx/ export,
//!             export/evaluation of model directories, reports
//!        ↓ both use
//!   backend/  ONNX Runtime behind a transport-free surface: a session (ort), a served
//!             generation (tokenizer + sessions + labels), an offline model for scoring text lists,
//!             length-sorted sub-batching
//!        ↓
//!   model/    the model directory format (card, labels, thresholds), the registry of versions,
//!             tokenizer wrapper, evaluation (dataset splits, F1 scores, threshold rules,
//!             calibration)
//! ```
//!
//! The daemon never touches candle (`train`), and `train` never touches Kafka (`daemon`).

pub mod backend;
pub mod daemon;
pub mod model;
pub mod train;
