//! Everything that talks to Kafka: the one client builder, the source (consumer group), the
//! sink (output and dead-letter topics) and the control topic.

pub mod client;
pub mod control;
mod framed_input;
pub(crate) mod headers;
pub mod signing;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod topic_limits;
pub mod topic_reader;
pub mod topics;
pub(crate) mod transaction;

#[cfg(test)]
mod admission_tests;
