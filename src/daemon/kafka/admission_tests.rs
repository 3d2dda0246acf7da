//! Property test: random and mutated payloads and headers through admission and the shipped
//! tokenizer never panic, and each message is either a comment or a rejection with a reason
//! that matches what is wrong with it.

use crate::daemon::ack::Ledger;
use crate::daemon::config::{InputFormat, InputSettings};
use crate::daemon::kafka::headers;
use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::event::Position;
use crate::daemon::pipeline::{admit, HeaderSummary, Origin};
use crate::model::tokenize::TextEncoder;
use rdkafka::message::OwnedHeaders;
use std::sync::Arc;

/// xorshift64*: a fixed seed makes every failure reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max - 1` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
}

/// Well-formed and nearly well-formed payloads the mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
    vec![
        br#"{"id":"a1","text":"I love this so much!"}"#.to_vec(),
        br#"{"id":7,"text":"what? no way"}"#.to_vec(),
        br#"{"text":"caf\u00e9 \ud83d\ude00 ok"}"#.to_vec(),
        br#"{"text":"nul \u0000 inside"}"#.to_vec(),
        b"{\"text\":\"raw nul \x00 byte\"}".to_vec(),
        br#"{"text":{"nested":"object"}}"#.to_vec(),
        br#"{"text":null,"id":null}"#.to_vec(),
        deep(100_000),
        format!(r#"{{"text":{}"x"{}}}"#, "[".repeat(500), "]".repeat(500)).into_bytes(),
        format!(r#"{{"text":"{}"}}"#, "w".repeat((1 << 20) - 64)).into_bytes(),
        format!(r#"{{"text":"{}"}}"#, "w".repeat(1 << 20)).into_bytes(),
        b"\xff\xfe\xfd".to_vec(),
        Vec::new(),
        b"   ".to_vec(),
    ]
}

fn mutate(rng: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(3) {
        match rng.below(6) {
            0 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] = rng.next() as u8;
            }
            1 if !p.is_empty() => {
                let at = rng.below(p.len());
                p.truncate(at);
            }
            2 => {
                let at = rng.below(p.len() + 1);
                let n = rng.below(16);
                let insert = rng.bytes(n);
                p.splice(at..at, insert);
            }
            3 => p = rng.some_bytes(300),
            _ => p.extend_from_slice(&p.clone()[..p.len().min(64)]),
        }
    }
    p
}

fn random_headers(rng: &mut Rng) -> Option<OwnedHeaders> {
    if rng.below(3) != 0 {
        return None;
    }
    let mut h = OwnedHeaders::new();
    for _ in 0..rng.below(5) {
        let key = match rng.below(10) {
            0 => rng.some_bytes(8).into_iter().chain([b'k']).collect(),
            1 => b"\xc3\x28bad".to_vec(),
            _ => b"trace-id".to_vec(),
        };
        let value = match rng.below(20) {
            0 => None,
            1 => Some(rng.bytes(100_000)),
            _ => Some(rng.some_bytes(40)),
        };
        h = headers::add(h, &key, value.as_deref());
    }
    Some(h)
}

/// A tombstone, random bytes, or a mutated seed (half of those from the first four seeds,
/// the well-formed comments).
fn random_payload(rng: &mut Rng, seeds: &[Vec<u8>]) -> Option<Vec<u8>> {
    match rng.below(20) {
        0 => None,
        1 => Some(rng.some_bytes(2000)),
        _ => {
            let pick = if rng.below(2) == 0 { 4 } else { seeds.len() };
            let seed = seeds[rng.below(pick)].clone();
            Some(mutate(rng, seed))
        }
    }
}

/// The reason a message must be rejected with, when its headers or a missing payload decide
/// it before the payload is read (`None`: the payload's content decides).
fn expected_reason(
    summary: &HeaderSummary,
    tombstone: bool,
    input: &InputSettings,
) -> Option<Reason> {
    if summary.bad_key.is_some() {
        Some(Reason::InvalidHeaders)
    } else if summary.bytes > input.max_header_bytes {
        Some(Reason::TooLarge)
    } else if tombstone {
        Some(Reason::Tombstone)
    } else {
        None
    }
}

#[test]
fn ten_thousand_random_and_mutated_messages_are_each_admitted_or_rejected_with_their_reason() {
    let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/goemotions-minilm-l6/tokenizer.json");
    let text = TextEncoder::from_file(&tokenizer, 128).expect("shipped tokenizer");
    let input = InputSettings {
        format: InputFormat::Json,
        text_pointer: "/text".into(),
        id_pointer: "/id".into(),
        max_message_bytes: 1 << 20,
        max_header_bytes: 65_536,
    };
    let ledger = Arc::new(Ledger::default());
    let seeds = seeds();
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let (mut comments, mut rejected) = (0, 0);
    for n in 0..10_000i64 {
        let payload = random_payload(&mut rng, &seeds);
        let hdrs = random_headers(&mut rng);
        let summary = headers::summary(hdrs.as_ref());
        let origin = Origin {
            decoded: None,
            position: Position {
                topic: "fuzz".into(),
                partition: 0,
                offset: n,
                timestamp_ms: None,
            },
            key: None,
            header_summary: summary,
            headers: hdrs,
            ack: ledger.issue(("fuzz".into(), 0), n, 0),
            payload: payload.clone(),
            reply: None,
        };
        match admit(origin, &input) {
            Ok(p) => {
                comments += 1;
                assert!(summary.bad_key.is_none() && summary.bytes <= input.max_header_bytes);
                assert!(
                    !p.text.trim().is_empty(),
                    "message {n}: empty text admitted"
                );
                let e = text.encode(&p.text).expect("admitted text tokenizes");
                assert!(e.ids.len() <= 128 && !e.ids.is_empty());
                p.origin.ack.delivered();
            }
            Err(r) => {
                rejected += 1;
                assert!(
                    !r.detail.is_empty(),
                    "message {n}: rejection without detail"
                );
                if let Some(want) = expected_reason(&summary, payload.is_none(), &input) {
                    assert_eq!(r.reason, want, "message {n}: {}", r.detail);
                }
                r.origin.ack.delivered();
            }
        }
    }
    // Both sides were exercised, and every token resolved.
    assert!(
        comments > 1000 && rejected > 1000,
        "{comments} / {rejected}"
    );
    assert_eq!(ledger.in_flight(), 0);
    assert_eq!(ledger.unacknowledged(), 0);
}
