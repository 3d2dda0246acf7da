//! A comment's context for its label event (schema v2) and for policy matching: the input
//! fields named in `output.carry`, copied with their JSON types and bounded in size, and when
//! the comment happened. Read from the message's own payload when it is labelled, so decoding
//! stays the same whatever is carried.

use crate::daemon::config::OutputSettings;
use serde_json::{Map, Value};

/// What an event carries of its input.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Context {
    /// Event field name → the input's value (absent when the input has none).
    pub(crate) input: Map<String, Value>,
    /// Fields whose value was over `output.max_carry_bytes` and was cut (text) or dropped
    /// (other JSON values, kept as null).
    pub(crate) cut: Vec<String>,
    /// RFC 3339, milliseconds: from `output.event_time_pointer`, else the Kafka timestamp.
    pub(crate) event_time: Option<String>,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut_to(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// RFC 3339 text in UTC (`Z`; an offset such as `+01:00` is not read), or epoch seconds
/// (below 1e11) or milliseconds, as RFC 3339 with milliseconds; `None` for anything else.
fn event_time(v: &Value) -> Option<String> {
    let ms: i64 = match v {
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s).ok()?;
            let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
            i64::try_from(d.as_millis()).ok()?
        }
        Value::Number(n) => {
            let x = n.as_f64()?;
            if !x.is_finite() || x < 0.0 {
                return None;
            }
            if x < 1e11 {
                (x * 1000.0) as i64
            } else {
                x as i64
            }
        }
        _ => return None,
    };
    millis_rfc3339(ms)
}

/// The first millisecond RFC 3339 cannot write (year 10000).
const YEAR_10000_MS: u64 = 253_402_300_800_000;

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds); `None` outside years 1970 to
/// 9999 (a time no input should carry, and one the formatter refuses).
pub(crate) fn millis_rfc3339(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok().filter(|&m| m < YEAR_10000_MS)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(t).to_string())
}

/// The context of a comment whose payload is `payload` (a JSON object when carrying from
/// JSON), consumed with Kafka timestamp `timestamp_ms`.
pub(crate) fn read(
    payload: Option<&[u8]>,
    from_json: bool,
    timestamp_ms: Option<i64>,
    out: &OutputSettings,
) -> Context {
    let mut c = Context::default();
    let object = from_json
        .then(|| payload.and_then(|p| serde_json::from_slice::<Value>(p).ok()))
        .flatten()
        .filter(Value::is_object);
    if let Some(doc) = &object {
        for (name, pointer) in &out.carry {
            let Some(v) = doc.pointer(pointer) else {
                continue;
            };
            // Text by its own bytes, anything else by its JSON.
            let size = match v {
                Value::String(s) => s.len(),
                _ => serde_json::to_vec(v).map_or(usize::MAX, |b| b.len()),
            };
            let value = if size <= out.max_carry_bytes {
                v.clone()
            } else {
                c.cut.push(name.clone());
                match v {
                    Value::String(s) => Value::String(cut_to(s, out.max_carry_bytes).to_string()),
                    _ => Value::Null,
                }
            };
            c.input.insert(name.clone(), value);
        }
    }
    let from_input = (!out.event_time_pointer.is_empty())
        .then(|| {
            object
                .as_ref()?
                .pointer(&out.event_time_pointer)
                .and_then(event_time)
        })
        .flatten();
    c.event_time = from_input.or_else(|| timestamp_ms.and_then(millis_rfc3339));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(carry: &[(&str, &str)], time: &str) -> OutputSettings {
        OutputSettings {
            scores: crate::daemon::config::ScoreMode::All,
            top_k: 5,
            schema_version: 2,
            encoding: crate::daemon::config::EventEncoding::Json,
            max_carry_bytes: 16,
            event_time_pointer: time.into(),
            cloudevents: false,
            cloudevents_source: "/emostream".into(),
            carry: carry
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn fields_keep_their_json_types_and_long_values_are_cut_and_named() {
        let out = output(
            &[
                ("sub", "/subreddit"),
                ("n", "/meta/score"),
                ("long", "/body"),
                ("tags", "/tags"),
                ("gone", "/nothing"),
                ("exact", "/e"),
            ],
            "",
        );
        let payload = json!({
            "subreddit": "pics", "meta": {"score": 12}, "body": "ééééééééééé", "tags": ["a-long-tag", "another-one"], "e": "sixteen bytes ok"
        })
        .to_string();
        let c = read(
            Some(payload.as_bytes()),
            true,
            Some(1_700_000_000_000),
            &out,
        );
        assert_eq!(c.input["sub"], json!("pics"));
        assert_eq!(c.input["n"], json!(12));
        // 11 two-byte characters are 22 bytes: cut to whole characters within 16.
        assert_eq!(c.input["long"], json!("éééééééé"));
        assert_eq!(c.input["tags"], serde_json::Value::Null);
        assert!(!c.input.contains_key("gone"));
        // Exactly max_carry_bytes of text: kept whole, not named as cut.
        assert_eq!(c.input["exact"], json!("sixteen bytes ok"));
        assert_eq!(c.cut, vec!["long", "tags"]);
        assert_eq!(c.event_time.as_deref(), Some("2023-11-14T22:13:20.000Z"));
        // Not JSON input: nothing carried; no Kafka timestamp either: no time.
        let c = read(Some(payload.as_bytes()), false, None, &out);
        assert!(c.input.is_empty() && c.event_time.is_none());
    }

    #[test]
    fn event_time_comes_from_the_input_in_seconds_milliseconds_or_rfc3339_else_kafka() {
        let out = output(&[], "/t");
        let at = |t: serde_json::Value| {
            let p = json!({ "t": t }).to_string();
            read(Some(p.as_bytes()), true, Some(5_000), &out).event_time
        };
        assert_eq!(
            at(json!(1_700_000_000)).as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
        assert_eq!(
            at(json!(1_700_000_000_123i64)).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(
            at(json!("2023-11-14T22:13:20Z")).as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
        // Unreadable: the Kafka timestamp.
        assert_eq!(
            at(json!("yesterday")).as_deref(),
            Some("1970-01-01T00:00:05.000Z")
        );
        assert_eq!(at(json!(-3)).as_deref(), Some("1970-01-01T00:00:05.000Z"));
        // Past year 9999 (the formatter cannot write it): the Kafka timestamp, no panic.
        assert_eq!(at(json!(1e15)).as_deref(), Some("1970-01-01T00:00:05.000Z"));
        let p = json!({ "t": "x" }).to_string();
        assert_eq!(
            read(Some(p.as_bytes()), true, Some(i64::MAX), &out).event_time,
            None
        );
    }
}
