//! Types that flow between the daemon's stages: source → batcher → inference workers → sink,
//! and the outcome each message ends as. The `classify` command uses the same stages with
//! stdin/stdout at the ends.

pub mod batcher;
pub mod decode;
pub mod event;
pub mod workers;

use crate::backend::generation::ServingModel;
use crate::daemon::config::InputSettings;
use crate::daemon::pipeline::decode::{decode, Reason};
use crate::daemon::pipeline::event::Source;
use rdkafka::message::OwnedHeaders;
use std::sync::Arc;
use std::time::Instant;

/// A consumed message and everything needed to answer for it.
#[derive(Debug)]
pub struct Origin {
    pub source: Source,
    pub key: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    /// The original bytes, kept for the dead-letter topic.
    pub payload: Vec<u8>,
    pub received: Instant,
}

impl Origin {
    /// `topic/partition/offset`: the id of a comment whose payload carried none.
    pub fn coordinates(&self) -> String {
        format!(
            "{}/{}/{}",
            self.source.topic, self.source.partition, self.source.offset
        )
    }
}

/// A decoded comment waiting to be batched.
#[derive(Debug)]
pub struct Pending {
    pub id: String,
    pub text: String,
    pub origin: Origin,
}

/// A tokenized comment inside a batch.
#[derive(Debug)]
pub struct Item {
    pub id: String,
    /// Kept for a shadow candidate, which tokenizes with its own tokenizer.
    pub text: String,
    pub ids: Vec<u32>,
    pub truncated: bool,
    pub origin: Origin,
}

/// Comments tokenized by one model generation, which is also the one that labels them.
pub struct Batch {
    pub model: Arc<ServingModel>,
    pub items: Vec<Item>,
    /// Tokenizer failures, passed through to the sink as rejections.
    pub failed: Vec<(Origin, String)>,
    pub tokens: usize,
}

impl Batch {
    pub fn new(model: Arc<ServingModel>) -> Batch {
        Batch {
            model,
            items: Vec::new(),
            failed: Vec::new(),
            tokens: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len() + self.failed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What became of a message.
#[derive(Debug)]
pub enum Outcome {
    /// Labelled: the serialised label event.
    Labelled {
        id: String,
        event: Vec<u8>,
        origin: Origin,
    },
    /// Goes to the dead-letter topic.
    Rejected {
        reason: Reason,
        detail: String,
        origin: Origin,
    },
}

impl Outcome {
    pub fn origin(&self) -> &Origin {
        match self {
            Outcome::Labelled { origin, .. } | Outcome::Rejected { origin, .. } => origin,
        }
    }
}

/// Decodes a consumed message into a comment to label, or a rejection for the dead-letter
/// topic. A comment without an id in its payload is named by its source coordinates.
pub fn admit(origin: Origin, input: &InputSettings) -> Result<Pending, Outcome> {
    match decode(Some(&origin.payload), input) {
        Ok(c) => Ok(Pending {
            id: c.id.unwrap_or_else(|| origin.coordinates()),
            text: c.text,
            origin,
        }),
        Err(r) => Err(Outcome::Rejected {
            reason: r.reason,
            detail: r.detail,
            origin,
        }),
    }
}
