//! Framed input: a value in the Schema Registry wire format (magic byte 0, the schema id as 4
//! bytes big-endian, then an Avro datum or a JSON document) becomes the JSON object the
//! pipeline's pointers read. The schema is fetched once per id (the client caches it); a JSON
//! document is validated against its schema, an Avro datum is read by its writer schema.

use super::registry::{Failure, SchemaRegistry};
use schema_registry_client::rest::schema_registry_client::Client;
use schema_registry_client::rest::schema_registry_client::SchemaRegistryClient;
use schema_registry_client::serdes::avro::AvroDeserializer;
use schema_registry_client::serdes::config::DeserializerConfig;
use schema_registry_client::serdes::json::JsonDeserializer;
use schema_registry_client::serdes::serde::{
    SchemaId, SerdeError, SerdeFormat, SerdeType, SerializationContext, SubjectNameStrategyType,
};
use std::sync::Arc;

/// Why a framed value did not become a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The registry cannot answer now: the message waits (never dead-lettered for this).
    Unavailable(String),
    /// Not in the wire format (too short, another magic byte).
    NotFramed(String),
    /// The schema id is not in the registry.
    UnknownSchema(String),
    /// The payload does not match its schema (or its schema is of a kind not read here).
    Mismatch(String),
    /// The registry refused the lookup for another reason.
    Registry(String),
}

pub(crate) struct InputSchemas {
    registry: Arc<SchemaRegistry>,
    avro: AvroDeserializer<'static, SchemaRegistryClient>,
    json: JsonDeserializer<'static, SchemaRegistryClient>,
    /// Schema ids seen, and why each one's schema is refused (`None`: read with it).
    vetted: std::sync::Mutex<std::collections::HashMap<i32, Option<String>>>,
}

const MAGIC_BYTE: u8 = 0;

/// The largest single allocation an Avro datum may ask for (a string or array length).
const AVRO_MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// The schema id of a framed value, checked before the crate reads it (its framing code
/// indexes the first five bytes without checking the length).
pub(crate) fn schema_id(payload: &[u8]) -> Result<i32, DecodeError> {
    match payload.first() {
        None => Err(DecodeError::NotFramed("empty value".into())),
        Some(&MAGIC_BYTE) if payload.len() >= 5 => {
            let mut id = SchemaId::new(SerdeFormat::Avro, None, None, None)
                .map_err(|e| DecodeError::NotFramed(e.to_string()))?;
            id.read_from_bytes(payload)
                .map_err(|e| DecodeError::NotFramed(e.to_string()))?;
            id.id
                .ok_or_else(|| DecodeError::NotFramed("no schema id".into()))
        }
        Some(&MAGIC_BYTE) => Err(DecodeError::NotFramed(format!(
            "{} bytes: the wire format's header alone is 5 (magic byte 0 + a 4-byte schema id)",
            payload.len()
        ))),
        Some(b) => Err(DecodeError::NotFramed(format!(
            "magic byte {b:#04x}, not 0: not a value in the Schema Registry wire format"
        ))),
    }
}

impl InputSchemas {
    pub(crate) fn new(registry: Arc<SchemaRegistry>) -> anyhow::Result<InputSchemas> {
        // A hostile length prefix in an Avro datum must not make a large allocation.
        apache_avro::util::max_allocation_bytes(AVRO_MAX_ALLOCATION_BYTES);
        // The subject by topic (what the lookup above caches under), not the crate's default
        // "associated" strategy, which asks the registry's /associations first.
        let config = || DeserializerConfig {
            subject_name_strategy_type: SubjectNameStrategyType::Topic,
            ..DeserializerConfig::new(None, true, Default::default())
        };
        let client = registry.client;
        Ok(InputSchemas {
            avro: AvroDeserializer::new(client, None, config())
                .map_err(|e| anyhow::anyhow!("Avro deserializer: {e}"))?,
            json: JsonDeserializer::new(client, None, config())
                .map_err(|e| anyhow::anyhow!("JSON Schema deserializer: {e}"))?,
            vetted: Default::default(),
            registry,
        })
    }

    /// The value of a message consumed from `topic`, as JSON text. A panic in the decoding
    /// crates on a hostile value is that value's fault: it is dead-lettered, the stream goes on.
    pub(crate) async fn decode(&self, topic: &str, payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
        use futures::FutureExt;
        std::panic::AssertUnwindSafe(self.decode_unguarded(topic, payload))
            .catch_unwind()
            .await
            .unwrap_or_else(|p| {
                let why = crate::daemon::supervise::panic_message(&*p);
                Err(DecodeError::Mismatch(format!(
                    "the decoder panicked on this value: {why}"
                )))
            })
    }

    async fn decode_unguarded(&self, topic: &str, payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let id = schema_id(payload)?;
        // The subject the deserializers look the id up under, so this lookup fills the cache
        // they read.
        let subject = format!("{topic}-value");
        let schema = self
            .registry
            .client
            .get_by_subject_and_id(Some(&subject), id, None)
            .await
            .map_err(|e| self.lookup_failed(&e, id))?;
        self.vet(id, schema.schema_type.as_deref(), &schema.schema)?;
        let ctx = |format| SerializationContext {
            topic: topic.to_string(),
            serde_type: SerdeType::Value,
            serde_format: format,
            headers: None,
        };
        let value = match schema.schema_type.as_deref() {
            None | Some("AVRO") => {
                let v = self
                    .avro
                    .deserialize(&ctx(SerdeFormat::Avro), payload)
                    .await
                    .map_err(|e| self.serde_failed(e, id))?;
                serde_json::Value::try_from(v.value).map_err(|e| {
                    DecodeError::Mismatch(format!("schema {id}: Avro value not JSON-able: {e}"))
                })?
            }
            Some("JSON") => self
                .json
                .deserialize(&ctx(SerdeFormat::Json), payload)
                .await
                .map_err(|e| self.serde_failed(e, id))?,
            Some(other) => {
                return Err(DecodeError::Mismatch(format!(
                    "schema {id} is {other}; Avro and JSON Schema values are read"
                )))
            }
        };
        serde_json::to_vec(&value)
            .map_err(|e| DecodeError::Mismatch(format!("schema {id}: value not JSON-able: {e}")))
    }

    /// The first time an id is seen (its lookup went to the registry, which answered), its
    /// writer schema is vetted (schemas/guard.rs); the verdict is kept for the id.
    fn vet(&self, id: i32, schema_type: Option<&str>, text: &str) -> Result<(), DecodeError> {
        let mut seen = self.vetted.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = seen.entry(id).or_insert_with(|| {
            self.registry.answered();
            super::guard::refusal(schema_type, text)
        });
        match verdict {
            None => Ok(()),
            Some(why) => Err(DecodeError::Mismatch(format!(
                "schema {id} is not read: {why}"
            ))),
        }
    }

    fn lookup_failed(&self, e: &schema_registry_client::rest::apis::Error, id: i32) -> DecodeError {
        match self
            .registry
            .failure(e, &format!("looking up schema id {id}"))
        {
            Failure::Unavailable(w) | Failure::Credentials(w) => DecodeError::Unavailable(w),
            Failure::Unknown(w) => DecodeError::UnknownSchema(w),
            Failure::Refused(w) => DecodeError::Registry(w),
        }
    }

    fn serde_failed(&self, e: SerdeError, id: i32) -> DecodeError {
        match e {
            SerdeError::Rest(r) => self.lookup_failed(&r, id),
            other => DecodeError::Mismatch(format!("does not match schema {id}: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_too_short_or_unframed_is_refused_before_the_crate_reads_it() {
        let not_framed = |p: &[u8]| matches!(schema_id(p), Err(DecodeError::NotFramed(_)));
        assert!(not_framed(b""));
        assert!(not_framed(&[0]));
        assert!(not_framed(&[0, 0, 0, 1]));
        assert!(not_framed(&[1, 2, 3, 4, 5, 6]));
        assert!(not_framed(br#"{"text":"hi"}"#));
        assert_eq!(schema_id(&[0, 0, 0, 1, 2]), Ok(258));
        assert_eq!(schema_id(&[0, 0, 0, 0, 7, b'x']), Ok(7));
    }

    #[test]
    fn random_bytes_under_a_comment_schema_are_errors_not_panics_or_huge_allocations() {
        apache_avro::util::max_allocation_bytes(AVRO_MAX_ALLOCATION_BYTES);
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"C","fields":[{"name":"id","type":"string"},
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"meta","type":{"type":"map","values":["null","long","string"]}},
                {"name":"text","type":"string"}]}"#,
        )
        .unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = apache_avro::from_avro_datum(&schema, &mut &bytes[..], None);
        }
    }
}
