//! The stages a message walks through and the types that flow between them: source → batcher
//! → inference workers → sink. Every consumed message — comment or reject — takes the same
//! path and yields exactly one [`Outcome`], in input order per key; its [`Ack`] rides along in
//! its [`Origin`]. The `classify` command runs the same stages with stdin/stdout at the ends.

pub mod batcher;
pub mod decode;
pub mod event;
pub mod workers;

use crate::backend::generation::Generation;
use crate::daemon::ack::Ack;
use crate::daemon::config::InputSettings;
use decode::{decode, Reason};
use event::Source;
use rdkafka::message::OwnedHeaders;
use std::sync::Arc;

/// A consumed message and everything needed to answer for it.
#[derive(Debug)]
pub struct Origin {
    pub source: Source,
    pub key: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    /// The original bytes, kept for the dead-letter topic.
    pub payload: Vec<u8>,
    /// Resolved when the message is delivered to the output or dead-letter topic.
    pub ack: Ack,
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

/// A message that goes to the dead-letter topic, and why.
#[derive(Debug)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    pub origin: Origin,
}

/// What the source hands the batcher: a comment, or a message already rejected (it keeps its
/// place in the stream, so a key's outcomes leave in input order).
pub type Admitted = Result<Pending, Rejection>;

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

/// One message's place in a batch.
#[derive(Debug)]
pub enum Entry {
    Comment(Item),
    Rejected(Rejection),
}

/// Messages tokenized by one model generation, which is also the one that labels them, in
/// input order.
pub struct Batch {
    pub model: Arc<Generation>,
    pub entries: Vec<Entry>,
    pub tokens: usize,
}

impl Batch {
    pub fn new(model: Arc<Generation>) -> Batch {
        Batch {
            model,
            entries: Vec::new(),
            tokens: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What became of a message.
#[derive(Debug)]
pub enum Outcome {
    /// Labelled: the serialised label event.
    Labelled { event: Vec<u8>, origin: Origin },
    /// Goes to the dead-letter topic.
    Rejected(Rejection),
}

impl Outcome {
    pub fn origin(&self) -> &Origin {
        match self {
            Outcome::Labelled { origin, .. } | Outcome::Rejected(Rejection { origin, .. }) => {
                origin
            }
        }
    }
}

/// Decodes a consumed message into a comment to label, or a rejection for the dead-letter
/// topic. A comment without an id in its payload is named by its source coordinates.
pub fn admit(origin: Origin, input: &InputSettings) -> Admitted {
    match decode(Some(&origin.payload), input) {
        Ok(c) => Ok(Pending {
            id: c.id.unwrap_or_else(|| origin.coordinates()),
            text: c.text,
            origin,
        }),
        Err(r) => Err(Rejection {
            reason: r.reason,
            detail: r.detail,
            origin,
        }),
    }
}
