//! Input decoding: a Kafka payload becomes a comment (id + text) or a rejection with the
//! dead-letter reason. Never panics on input.

use crate::daemon::config::{InputFormat, InputSettings};
use serde_json::Value;

/// Why a message went to the dead-letter topic (the `reason` header and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    InvalidJson,
    MissingText,
    NotUtf8,
    EmptyText,
    TooLarge,
    /// A null payload (a Kafka tombstone): nothing to label.
    Tombstone,
    /// A header key that is not UTF-8 (Kafka header keys are strings).
    InvalidHeaders,
    InferenceError,
    ProduceFailed,
    /// input.format = "schema_registry": not in the wire format.
    NotFramed,
    /// A schema id the registry does not hold.
    UnknownSchema,
    /// A value that does not match its schema (or an event that does not fit the output's).
    SchemaMismatch,
    /// The registry refused the schema lookup (other than not found, and not an outage).
    RegistryError,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::MissingText => "missing_text",
            Reason::NotUtf8 => "not_utf8",
            Reason::EmptyText => "empty_text",
            Reason::TooLarge => "too_large",
            Reason::Tombstone => "tombstone",
            Reason::InvalidHeaders => "invalid_headers",
            Reason::InferenceError => "inference_error",
            Reason::ProduceFailed => "produce_failed",
            Reason::NotFramed => "not_framed",
            Reason::UnknownSchema => "unknown_schema",
            Reason::SchemaMismatch => "schema_mismatch",
            Reason::RegistryError => "registry_error",
        }
    }
}

/// Why a payload is not a comment (the pipeline's `Rejection` adds the message it came with).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Undecodable {
    pub(crate) reason: Reason,
    pub(crate) detail: String,
}

fn reject(reason: Reason, detail: impl Into<String>) -> Undecodable {
    Undecodable {
        reason,
        detail: detail.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Comment {
    /// From the id pointer, else `None` (the caller falls back to source coordinates).
    pub(crate) id: Option<String>,
    pub(crate) text: String,
}

/// Decodes one payload (`None` is a Kafka tombstone).
pub(crate) fn decode(payload: Option<&[u8]>, cfg: &InputSettings) -> Result<Comment, Undecodable> {
    let Some(bytes) = payload else {
        return Err(reject(Reason::Tombstone, "null payload (a tombstone)"));
    };
    if bytes.len() > cfg.max_message_bytes {
        return Err(reject(
            Reason::TooLarge,
            format!(
                "{} bytes > input.max_message_bytes {}",
                bytes.len(),
                cfg.max_message_bytes
            ),
        ));
    }
    let s = std::str::from_utf8(bytes)
        .map_err(|e| reject(Reason::NotUtf8, format!("payload is not UTF-8: {e}")))?;
    let (id, text) = match cfg.format {
        InputFormat::Text => (None, s.to_string()),
        // Framed input arrives here decoded: the JSON object its schema describes.
        InputFormat::Json | InputFormat::SchemaRegistry => {
            if s.trim().is_empty() {
                return Err(reject(Reason::EmptyText, "empty payload"));
            }
            let v: Value = serde_json::from_str(s)
                .map_err(|e| reject(Reason::InvalidJson, format!("payload is not JSON: {e}")))?;
            if !v.is_object() {
                return Err(reject(
                    Reason::InvalidJson,
                    "payload is JSON but not an object",
                ));
            }
            let text = match v.pointer(&cfg.text_pointer) {
                Some(Value::String(t)) => t.clone(),
                Some(other) => {
                    return Err(reject(
                        Reason::MissingText,
                        format!("{} is {} , not a string", cfg.text_pointer, kind(other)),
                    ))
                }
                None => {
                    return Err(reject(
                        Reason::MissingText,
                        format!("no text at {}", cfg.text_pointer),
                    ))
                }
            };
            let id = if cfg.id_pointer.is_empty() {
                None
            } else {
                match v.pointer(&cfg.id_pointer) {
                    Some(Value::String(i)) if !i.is_empty() => Some(i.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                }
            };
            (id, text)
        }
    };
    if text.trim().is_empty() {
        return Err(reject(Reason::EmptyText, "text is empty or whitespace"));
    }
    Ok(Comment { id, text })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(format: InputFormat) -> InputSettings {
        InputSettings {
            format,
            text_pointer: "/text".into(),
            id_pointer: "/id".into(),
            max_message_bytes: 64,
            max_header_bytes: 64,
        }
    }

    #[test]
    fn each_bad_input_gets_its_reason() {
        let c = cfg(InputFormat::Json);
        let r = |p: &[u8]| decode(Some(p), &c).unwrap_err().reason;
        assert_eq!(r(b"{not json"), Reason::InvalidJson);
        assert_eq!(r(b"[1,2]"), Reason::InvalidJson);
        assert_eq!(r(br#"{"id":"a"}"#), Reason::MissingText);
        assert_eq!(r(br#"{"text":5}"#), Reason::MissingText);
        assert_eq!(r(b"\xff\xfe{}"), Reason::NotUtf8);
        assert_eq!(r(br#"{"text":"   "}"#), Reason::EmptyText);
        assert_eq!(r(&[b'a'; 65]), Reason::TooLarge);
        assert_eq!(r(b""), Reason::EmptyText);
        assert_eq!(decode(None, &c).unwrap_err().reason, Reason::Tombstone);
    }

    #[test]
    fn json_and_text_decode() {
        let c = cfg(InputFormat::Json);
        assert_eq!(
            decode(Some(br#"{"id":"x1","text":"hi"}"#), &c).unwrap(),
            Comment {
                id: Some("x1".into()),
                text: "hi".into()
            }
        );
        assert_eq!(
            decode(Some(br#"{"id":42,"text":"hi"}"#), &c)
                .unwrap()
                .id
                .as_deref(),
            Some("42")
        );
        assert_eq!(decode(Some(br#"{"text":"hi"}"#), &c).unwrap().id, None);
        let t = cfg(InputFormat::Text);
        assert_eq!(
            decode(Some(b"plain words"), &t).unwrap(),
            Comment {
                id: None,
                text: "plain words".into()
            }
        );
    }
}
