//! The daemon layer. Entry points, each reading top to bottom as its data path: `run` (the
//! Kafka daemon), `serve` (the classify API without Kafka), `stdin` (`emostream classify`);
//! `start` holds what they start the same way. The stages and what they share live in the
//! modules below; docs/architecture.md draws them and the imports each folder may make.

pub(crate) mod ack;
pub(crate) mod admin;
pub(crate) mod api;
pub mod config;
pub(crate) mod http_listener;
pub mod kafka;
pub(crate) mod pipeline;
pub mod run;
pub(crate) mod schemas;
pub mod serve;
pub(crate) mod start;
pub mod stdin;
pub(crate) mod supervise;
pub(crate) mod swap;
pub mod telemetry;
