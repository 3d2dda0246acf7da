//! The model layer: what a model directory is (card, labels, thresholds), the registry of its
//! versions, the tokenizer around it, and how a model is evaluated on GoEmotions. Shared by the
//! daemon and `train`; imports from no other layer.

pub mod dir;
pub mod disk_registry;
pub mod eval;
pub mod kernels;
pub mod labels;
pub mod object_registry;
pub mod registry;
pub mod registry_layout;
pub mod tokenize;
