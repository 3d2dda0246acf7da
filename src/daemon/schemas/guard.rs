//! Writer schemas the daemon refuses to decode with, whatever the value: they would let one
//! message stop the stream rather than be dead-lettered. Avro: a recursive schema (a value may
//! nest deep enough to overflow the stack — an abort no panic guard catches) and arrays whose
//! items take no bytes (a few bytes may declare millions of them). JSON Schema: a `$ref` to
//! another host or a file (the validator would fetch it, blocking, at run time).

use apache_avro::schema::{Name, Schema as Avro};
use serde_json::Value;

/// Why a writer schema is refused, if it is.
pub(crate) fn refusal(schema_type: Option<&str>, text: &str) -> Option<String> {
    match schema_type {
        None | Some("AVRO") => {
            // One the parser refuses is left to the deserializer, which reports why.
            let schema = Avro::parse_str(text).ok()?;
            avro_refusal(&schema, &mut Vec::new())
        }
        Some("JSON") => {
            let v: Value = serde_json::from_str(text).ok()?;
            remote_ref(&v).map(|r| {
                format!("its JSON Schema refers to {r:?}, which would be fetched at run time")
            })
        }
        _ => None,
    }
}

fn avro_refusal(s: &Avro, enclosing: &mut Vec<Name>) -> Option<String> {
    match s {
        Avro::Record(r) => {
            enclosing.push(r.name.clone());
            let found = r
                .fields
                .iter()
                .find_map(|f| avro_refusal(&f.schema, enclosing));
            enclosing.pop();
            found
        }
        Avro::Array(a) if zero_width(&a.items) => Some(
            "an array of items that take no bytes (a short value could declare millions)".into(),
        ),
        Avro::Array(a) => avro_refusal(&a.items, enclosing),
        Avro::Map(m) => avro_refusal(&m.types, enclosing),
        Avro::Union(u) => u.variants().iter().find_map(|v| avro_refusal(v, enclosing)),
        Avro::Ref { name } if enclosing.contains(name) => Some(format!(
            "the schema is recursive ({}): a value could nest deeper than the stack",
            name.fullname(None)
        )),
        _ => None,
    }
}

/// A value of `s` can be encoded in zero bytes.
fn zero_width(s: &Avro) -> bool {
    match s {
        Avro::Null => true,
        Avro::Record(r) => r.fields.iter().all(|f| zero_width(&f.schema)),
        Avro::Fixed(f) => f.size == 0,
        _ => false,
    }
}

/// A `$ref` anywhere in `v` that names a scheme (another document: `http:`, `https:`, `file:`).
fn remote_ref(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m
            .get("$ref")
            .and_then(Value::as_str)
            .filter(|r| {
                let scheme = r.split_once(':').map(|(s, _)| s);
                scheme.is_some_and(|s| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
                })
            })
            .map(str::to_string)
            .or_else(|| m.values().find_map(remote_ref)),
        Value::Array(a) => a.iter().find_map(remote_ref),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn recursive_and_zero_width_avro_and_remote_json_refs_are_refused_ordinary_schemas_pass() {
        let comment = r#"{"type":"record","name":"C","fields":[{"name":"text","type":"string"},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"meta","type":["null",{"type":"map","values":"long"}]}]}"#;
        assert_eq!(refusal(None, comment), None);
        assert_eq!(refusal(Some("AVRO"), comment), None);
        let recursive = r#"{"type":"record","name":"C","fields":[{"name":"text","type":"string"},
            {"name":"replies","type":{"type":"array","items":"C"}}]}"#;
        assert!(refusal(Some("AVRO"), recursive)
            .unwrap()
            .contains("recursive"));
        let nulls = r#"{"type":"record","name":"C","fields":[{"name":"n","type":{"type":"array","items":"null"}}]}"#;
        assert!(refusal(None, nulls).unwrap().contains("no bytes"));
        let empty = r#"{"type":"record","name":"C","fields":[{"name":"n","type":{"type":"array","items":{"type":"record","name":"E","fields":[]}}}]}"#;
        assert!(refusal(None, empty).is_some());
        // A named type used twice, not inside itself, is fine.
        let reuse = r#"{"type":"record","name":"C","fields":[{"name":"a","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}},{"name":"b","type":"P"}]}"#;
        assert_eq!(refusal(None, reuse), None);
        let local = r##"{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"a":{"$ref":"#/definitions/x"}},"definitions":{"x":{"type":"string"}}}"##;
        assert_eq!(refusal(Some("JSON"), local), None);
        let remote =
            r#"{"type":"object","properties":{"a":{"$ref":"https://evil.example/s.json"}}}"#;
        assert!(refusal(Some("JSON"), remote)
            .unwrap()
            .contains("evil.example"));
        let file = r#"{"allOf":[{"$ref":"file:///etc/passwd"}]}"#;
        assert!(refusal(Some("JSON"), file).is_some());
    }
}
