//! The Schema Registry layer: the client (registry.rs), decoding framed input by its schema id
//! (input.rs) and framing label events under a registered schema (output.rs). The wire format,
//! the REST client and the Avro / JSON Schema serdes are `schema-registry-client`'s (a port of
//! Confluent's own serdes); this layer adds what a stream needs around them: which failures
//! are the registry's outage (wait) and which are the message's (dead-letter), and a guard
//! that no payload reaches the crate's framing code too short to read.

mod guard;
pub(crate) mod input;
pub(crate) mod output;
pub(crate) mod registry;
