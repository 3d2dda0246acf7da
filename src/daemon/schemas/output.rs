//! Framed events: the label event's schema (docs/label-event-v{1,2}.avsc for Avro,
//! .schema.json for JSON Schema) is registered at start-up under the configured subject
//! strategy, and every event leaves as magic byte 0 + that schema id + the Avro datum or the
//! JSON document. Registering is idempotent (the registry answers the existing id); a
//! registry that refuses the schema as incompatible stops start-up, naming subject and reason.

use super::registry::{classify, Failure, SchemaRegistry};
use crate::daemon::config::{EventEncoding, SubjectStrategy};
use crate::daemon::pipeline::workers::EventFraming;
use anyhow::{anyhow, bail, Result};
use apache_avro::types::Value as AvroValue;
use schema_registry_client::rest::models::Schema;
use schema_registry_client::rest::schema_registry_client::Client;
use schema_registry_client::serdes::serde::{SchemaId, SerdeFormat};
use serde_json::Value;
use std::time::Duration;

/// The record's full name (Avro), and the name the record strategies use for both encodings.
pub(crate) const RECORD_NAME: &str = "emostream.LabelEvent";

const AVRO_V1: &str = include_str!("../../../docs/label-event-v1.avsc");
const AVRO_V2: &str = include_str!("../../../docs/label-event-v2.avsc");
const JSON_V1: &str = include_str!("../../../docs/label-event-v1.schema.json");
const JSON_V2: &str = include_str!("../../../docs/label-event-v2.schema.json");

/// Frames events under the schema registered for them.
pub(crate) struct EventEncoder {
    /// Magic byte and schema id: the wire format's header.
    header: Vec<u8>,
    /// Avro: the schema the JSON event is converted to; JSON Schema: `None` (the event is
    /// the document).
    avro: Option<apache_avro::Schema>,
    pub(crate) id: i32,
    pub(crate) subject: String,
}

/// The subject `strategy` names for events on `topic`.
pub(crate) fn subject(strategy: SubjectStrategy, topic: &str) -> String {
    match strategy {
        SubjectStrategy::TopicName => format!("{topic}-value"),
        SubjectStrategy::RecordName => RECORD_NAME.to_string(),
        SubjectStrategy::TopicRecordName => format!("{topic}-{RECORD_NAME}"),
    }
}

impl EventEncoder {
    /// Registers (or finds) the event schema of `schema_version` in `encoding` under the
    /// subject for `topic`. A registry that does not answer is asked three times over about
    /// three timeouts; refusals end start-up at once.
    pub(crate) async fn register(
        registry: &SchemaRegistry,
        encoding: EventEncoding,
        schema_version: u32,
        topic: &str,
        strategy: SubjectStrategy,
    ) -> Result<EventEncoder> {
        let (kind, text, file) = match (encoding, schema_version) {
            (EventEncoding::Avro, 1) => ("AVRO", AVRO_V1, "docs/label-event-v1.avsc"),
            (EventEncoding::Avro, _) => ("AVRO", AVRO_V2, "docs/label-event-v2.avsc"),
            (EventEncoding::JsonSchema, 1) => ("JSON", JSON_V1, "docs/label-event-v1.schema.json"),
            (EventEncoding::JsonSchema, _) => ("JSON", JSON_V2, "docs/label-event-v2.schema.json"),
            (EventEncoding::Json, _) => bail!("plain JSON events have no registered schema"),
        };
        let avro = (encoding == EventEncoding::Avro)
            .then(|| apache_avro::Schema::parse_str(text))
            .transpose()
            .map_err(|e| anyhow!("{file} is not an Avro schema: {e}"))?;
        let subject = subject(strategy, topic);
        let schema = Schema {
            schema_type: Some(kind.to_string()),
            references: None,
            metadata: None,
            rule_set: None,
            schema: text.to_string(),
        };
        let mut attempt = 0;
        let registered = loop {
            attempt += 1;
            match registry.client.register_schema(&subject, &schema, false).await {
                Ok(r) => break r,
                Err(e) => match classify(&e, &format!("registering {file} under subject {subject:?}")) {
                    Failure::Unavailable(why) if attempt < 3 => {
                        tracing::warn!(error = %why, "the schema registry is unavailable; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Failure::Refused(why) if why.contains("HTTP 409") => bail!(
                        "the schema registry at {} refused the output schema as incompatible with subject {subject:?}'s earlier versions ({why})",
                        registry.url
                    ),
                    Failure::Credentials(why) => bail!(
                        "config keys schema_registry.username/password_* or token_*: the registry refuses them: {why}"
                    ),
                    Failure::Unavailable(why) | Failure::Refused(why) | Failure::Unknown(why) => {
                        bail!("the schema registry at {}: {why}", registry.url)
                    }
                },
            }
        };
        registry.answered();
        let id = registered.id.ok_or_else(|| {
            anyhow!("the schema registry registered {file} under {subject:?} but answered no id")
        })?;
        let header = SchemaId::new(SerdeFormat::Avro, Some(id), None, None)
            .and_then(|s| s.id_to_bytes())
            .map_err(|e| anyhow!("framing schema id {id}: {e}"))?;
        tracing::info!(subject = %subject, id, encoding = ?encoding, "event schema registered");
        Ok(EventEncoder {
            header,
            avro,
            id,
            subject,
        })
    }

    /// The Avro form of a JSON event: carried input values that are objects or arrays become
    /// their JSON text (the schema's `input` map holds scalars), whole numbers past Avro's long
    /// become doubles, then the JSON shape is resolved against the record schema.
    fn avro_datum(schema: &apache_avro::Schema, event: &[u8]) -> Result<Vec<u8>, String> {
        let mut v: Value = serde_json::from_slice(event).map_err(|e| e.to_string())?;
        if let Some(Value::Object(input)) = v.get_mut("input") {
            for value in input.values_mut() {
                if value.is_object() || value.is_array() {
                    *value = Value::String(value.to_string());
                } else if value.is_u64() && value.as_i64().is_none() {
                    *value = value.as_f64().map_or(Value::Null, Value::from);
                }
            }
        }
        let avro: AvroValue = apache_avro::to_value(&v).map_err(|e| e.to_string())?;
        let resolved = avro.resolve(schema).map_err(|e| e.to_string())?;
        apache_avro::to_avro_datum(schema, resolved).map_err(|e| e.to_string())
    }
}

impl EventFraming for EventEncoder {
    fn frame(&self, event: Vec<u8>) -> Result<Vec<u8>, String> {
        let body = match &self.avro {
            Some(schema) => Self::avro_datum(schema, &event).map_err(|e| {
                format!(
                    "the event does not fit schema {} ({}): {e}",
                    self.id, self.subject
                )
            })?,
            None => event,
        };
        let mut framed = Vec::with_capacity(self.header.len() + body.len());
        framed.extend_from_slice(&self.header);
        framed.extend_from_slice(&body);
        Ok(framed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as V;

    fn field<'a>(record: &'a AvroValue, name: &str) -> &'a AvroValue {
        match record {
            V::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap().1,
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn a_v2_event_becomes_an_avro_datum_that_reads_back_with_its_carried_values() {
        let schema = apache_avro::Schema::parse_str(AVRO_V2).unwrap();
        let event = serde_json::json!({
            "schema_version": 2, "id": "c1",
            "labels": [{"label": "joy", "score": 0.9}],
            "scores": {"joy": 0.9, "anger": 0.01},
            "model": {"name": "m", "version": "1.0.0", "sha256": "ab"},
            "source": {"topic": "t", "partition": 2, "offset": 41, "timestamp_ms": null},
            "input": {"community": "c0", "score": 3, "tags": ["a", "b"], "gone": null,
                      "huge": 18446744073709551615u64},
            "event_time": "2026-12-06T00:00:00.000Z",
            "policy": {"name": "default", "hash": "0123456789ab"},
            "processed_at": "2026-12-06T00:00:01.000Z", "truncated": false
        });
        let datum =
            EventEncoder::avro_datum(&schema, &serde_json::to_vec(&event).unwrap()).unwrap();
        let back = apache_avro::from_avro_datum(&schema, &mut &datum[..], None).unwrap();
        assert_eq!(field(&back, "id"), &V::String("c1".into()));
        assert_eq!(field(field(&back, "source"), "offset"), &V::Long(41));
        let V::Map(input) = field(&back, "input") else {
            panic!()
        };
        assert_eq!(
            input["community"],
            V::Union(4, Box::new(V::String("c0".into())))
        );
        assert_eq!(input["score"], V::Union(2, Box::new(V::Long(3))));
        // An array is carried as its JSON text (the map holds scalars).
        assert_eq!(
            input["tags"],
            V::Union(4, Box::new(V::String(r#"["a","b"]"#.into())))
        );
        assert_eq!(
            input["huge"],
            V::Union(3, Box::new(V::Double(18446744073709551615.0)))
        );
        assert_eq!(field(&back, "input_cut"), &V::Union(0, Box::new(V::Null)));
    }

    #[test]
    fn a_v1_event_fits_the_v1_schema_and_a_stray_field_shape_is_an_error_not_a_panic() {
        let schema = apache_avro::Schema::parse_str(AVRO_V1).unwrap();
        let event = serde_json::json!({
            "schema_version": 1, "id": "c1", "labels": [], "scores": {"joy": 0.1},
            "model": {"name": "m", "version": "1", "sha256": "ab"},
            "source": {"topic": "t", "partition": 0, "offset": 0, "timestamp_ms": 5},
            "processed_at": "x", "truncated": true
        });
        assert!(EventEncoder::avro_datum(&schema, &serde_json::to_vec(&event).unwrap()).is_ok());
        let wrong = serde_json::json!({"schema_version": "one"});
        assert!(EventEncoder::avro_datum(&schema, &serde_json::to_vec(&wrong).unwrap()).is_err());
        assert!(EventEncoder::avro_datum(&schema, b"not json").is_err());
    }
}
