//! The stages a message walks through and the types that flow between them: source → batcher
//! → inference workers → sink. Every consumed message — comment or reject — takes the same
//! path and yields exactly one [`Outcome`], in input order per key; its [`Ack`] rides along in
//! its [`Origin`]. The `classify` command runs the same stages with stdin/stdout at the ends;
//! a comment posted to the HTTP API (daemon/api) rides the same stages with a [`Reply`] in its
//! origin, and its outcome goes back to the request instead of the sink.

pub(crate) mod batcher;
pub(crate) mod context;
pub(crate) mod core;
pub(crate) mod decode;
pub(crate) mod event;
pub(crate) mod lanes;
pub(crate) mod policy;
pub(crate) mod workers;

use crate::backend::generation::Generation;
use crate::daemon::ack::{Ack, Ledger};
use crate::daemon::config::InputSettings;
use decode::{decode, Reason};
use event::Position;
use rdkafka::message::OwnedHeaders;
use std::sync::Arc;

/// A consumed message and everything needed to answer for it.
#[derive(Debug)]
pub(crate) struct Origin {
    pub(crate) position: Position,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: Option<OwnedHeaders>,
    /// Size and key check of `headers`, read once where the message is consumed.
    pub(crate) header_summary: HeaderSummary,
    /// The original bytes, kept for the dead-letter topic (`None`: a tombstone).
    pub(crate) payload: Option<Vec<u8>>,
    /// A value in the Schema Registry wire format, decoded by its schema into JSON text: what
    /// the pointers, carried fields and event time read (the dead-letter topic still gets
    /// `payload`).
    pub(crate) decoded: Option<Vec<u8>>,
    /// Resolved when the message is delivered to the output or dead-letter topic.
    pub(crate) ack: Ack,
    /// Set for a comment posted to the HTTP API: its outcome answers the request.
    pub(crate) reply: Option<Reply>,
}

/// What admission needs to know about a message's headers (kafka/headers.rs reads it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderSummary {
    /// Keys plus values, in bytes (what the headers cost in memory).
    pub(crate) bytes: usize,
    /// Index of the first header whose key is not UTF-8.
    pub(crate) bad_key: Option<usize>,
}

/// Where the outcome of a comment posted to the HTTP API goes.
pub(crate) type Reply = tokio::sync::oneshot::Sender<Outcome>;

impl Origin {
    /// A message that did not come from Kafka (a stdin line, a test): no key or headers, at
    /// `topic`/0/`offset`, tracked by `ledger` (which gives it the token every message carries).
    pub(crate) fn unkeyed(
        ledger: &Arc<Ledger>,
        topic: &str,
        offset: i64,
        payload: Option<Vec<u8>>,
    ) -> Origin {
        let bytes = payload.as_ref().map_or(0, Vec::len);
        Origin {
            position: Position {
                topic: topic.to_string(),
                partition: 0,
                offset,
                timestamp_ms: None,
            },
            key: None,
            headers: None,
            header_summary: Default::default(),
            ack: ledger.issue((topic.to_string(), 0), offset, bytes),
            payload,
            decoded: None,
            reply: None,
        }
    }

    /// A comment posted to the HTTP API whose request gave up (timed out, client gone).
    pub(crate) fn is_abandoned(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.is_closed())
    }

    /// Drops an abandoned comment: nobody waits for its outcome, so it is done.
    pub(crate) fn abandon(self) {
        metrics::counter!("emostream_api_abandoned_total").increment(1);
        self.ack.delivered();
    }

    /// The comment as the pipeline reads it: the decoded value of a framed message, else the
    /// payload itself.
    pub(crate) fn comment_bytes(&self) -> Option<&[u8]> {
        self.decoded.as_deref().or(self.payload.as_deref())
    }

    /// `topic/partition/offset`: the id of a comment whose payload carried none.
    pub(crate) fn position_id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.position.topic, self.position.partition, self.position.offset
        )
    }
}

/// A decoded comment waiting to be batched.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) id: String,
    pub(crate) text: String,
    pub(crate) origin: Origin,
}

/// A message that goes to the dead-letter topic, and why.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub(crate) reason: Reason,
    pub(crate) detail: String,
    pub(crate) origin: Origin,
}

impl Rejection {
    pub(crate) fn new(reason: Reason, detail: String, origin: Origin) -> Rejection {
        Rejection {
            reason,
            detail,
            origin,
        }
    }
}

/// What the source hands the batcher: a comment, or a message already rejected (it keeps its
/// place in the stream, so a key's outcomes leave in input order).
pub(crate) type Admitted = Result<Pending, Rejection>;

/// A tokenized comment inside a batch.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) id: String,
    /// Kept for a shadow candidate, which tokenizes with its own tokenizer.
    pub(crate) text: String,
    pub(crate) ids: Vec<u32>,
    pub(crate) truncated: bool,
    pub(crate) origin: Origin,
}

/// One message's place in a batch.
#[derive(Debug)]
pub(crate) enum Entry {
    Comment(Item),
    Rejected(Rejection),
}

/// Messages tokenized by one model generation, which is also the one that labels them, in
/// input order.
pub(crate) struct Batch {
    pub(crate) model: Arc<Generation>,
    pub(crate) entries: Vec<Entry>,
    /// Comments among the entries (what inference runs on) and their tokens.
    pub(crate) comments: usize,
    pub(crate) tokens: usize,
}

impl Batch {
    pub(crate) fn new(model: Arc<Generation>) -> Batch {
        Batch {
            model,
            entries: Vec::new(),
            comments: 0,
            tokens: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Outcome {
    /// Whether a request waits for this outcome (a comment posted to the HTTP API).
    pub(crate) fn has_reply(&self) -> bool {
        self.origin().reply.is_some()
    }

    fn origin(&self) -> &Origin {
        match self {
            Outcome::Labelled { origin, .. } => origin,
            Outcome::Rejected(r) => &r.origin,
        }
    }

    /// The request waiting for this outcome, taken out (the outcome then goes there, not to
    /// the sink).
    pub(crate) fn take_reply(&mut self) -> Option<Reply> {
        match self {
            Outcome::Labelled { origin, .. } => origin.reply.take(),
            Outcome::Rejected(r) => r.origin.reply.take(),
        }
    }

    /// Resolves the message's acknowledgement: its outcome went where it had to.
    pub(crate) fn done(self) {
        match self {
            Outcome::Labelled { origin, .. } => origin.ack.delivered(),
            Outcome::Rejected(r) => r.origin.ack.delivered(),
        }
    }
}

/// What became of a message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Labelled: the serialised label event, and the counters of its labels (incremented once
    /// the event is delivered — in exactly-once mode, once its transaction commits:
    /// `emostream_labels_total{label}`).
    Labelled {
        event: Vec<u8>,
        origin: Origin,
        fired: Vec<metrics::Counter>,
        /// Headers the event gets besides the input's (CloudEvents binary mode); headers of
        /// the same names in the input are not carried over then.
        headers: Vec<(&'static str, String)>,
    },
    /// Goes to the dead-letter topic.
    Rejected(Rejection),
}

/// Decodes a consumed message into a comment to label, or a rejection for the dead-letter
/// topic. A comment without an id in its payload is named by its source coordinates. Headers
/// are checked first: a key that is not UTF-8 or headers over `input.max_header_bytes` reject
/// the message (events carry the input headers on).
pub(crate) fn admit(origin: Origin, input: &InputSettings) -> Admitted {
    let h = origin.header_summary;
    let refused = if let Some(i) = h.bad_key {
        Some((
            Reason::InvalidHeaders,
            format!("header {i} has a key that is not UTF-8"),
        ))
    } else if h.bytes > input.max_header_bytes {
        Some((
            Reason::TooLarge,
            format!(
                "headers are {} bytes > input.max_header_bytes {}",
                h.bytes, input.max_header_bytes
            ),
        ))
    } else {
        None
    };
    if let Some((reason, detail)) = refused {
        return Err(Rejection {
            reason,
            detail,
            origin,
        });
    }
    match decode(origin.comment_bytes(), input) {
        Ok(c) => Ok(Pending {
            id: c.id.unwrap_or_else(|| origin.position_id()),
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
