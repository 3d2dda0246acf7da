//! Trigger: the Kafka control topic. Every replica reads every control message (each replica
//! uses its own consumer group and starts at the topic's end as of start-up, so one message
//! moves the whole fleet) and answers on the same topic with the result of its swap.
//!
//! Messages (JSON): `{"type":"activate","version":"1.2.0","request_id":"...","issued_at_ms":...}`,
//! `{"type":"rollback","request_id":"...","issued_at_ms":...}`, each signed (signing.rs: HMAC
//! in the `emostream.signature` header); replies, signed too: `{"type":"result","replica":...,
//! "request_id":...,"result":"swapped|unchanged|rejected|refused","active":...,"reason":...}`
//! (`refused`: the message failed the signature, freshness or replay check).

use crate::daemon::config::Settings;
use crate::daemon::kafka::client::{client_config, watermarks, ClientSettings, KafkaProducer};
use crate::daemon::kafka::headers;
use crate::daemon::kafka::signing::{now_ms, ControlKey, Verifier, SIGNATURE_HEADER};
use crate::daemon::swap::{self, SwapRequest, Target, Trigger};
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// A control request as it travels on the topic (issued now).
pub fn activate_message(version: &str, request_id: &str) -> Value {
    json!({"type": "activate", "version": version, "request_id": request_id, "issued_at_ms": now_ms()})
}

pub fn rollback_message(request_id: &str) -> Value {
    json!({"type": "rollback", "request_id": request_id, "issued_at_ms": now_ms()})
}

/// The body and headers of a signed control record.
pub fn signed_record(key: &ControlKey, message: &Value) -> (String, OwnedHeaders) {
    let body = message.to_string();
    let sig = key.sign(body.as_bytes());
    let h = OwnedHeaders::new().insert(Header {
        key: SIGNATURE_HEADER,
        value: Some(&sig),
    });
    (body, h)
}

/// What the control-topic trigger (and `train publish`'s announcement) is built with.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub(crate) client: ClientSettings,
    /// `registry.control_topic`.
    pub(crate) topic: String,
    /// This replica's consumer group on the control topic: `<kafka.group_id>.control.<replica>`.
    pub(crate) group_id: String,
    /// `kafka.consumer_properties`.
    pub(crate) consumer_properties: BTreeMap<String, String>,
    /// `registry.control_key_file`.
    pub(crate) key_file: String,
    /// `registry.control_max_age_ms`.
    pub(crate) max_age_ms: u64,
    /// This replica's name in replies.
    pub(crate) replica: String,
}

impl ControlSettings {
    pub fn from_settings(s: &Settings) -> ControlSettings {
        let replica = s.registry.replica();
        ControlSettings {
            client: ClientSettings::from_settings(s),
            topic: s.registry.control_topic.clone(),
            group_id: format!("{}.control.{replica}", s.kafka.group_id),
            consumer_properties: s.kafka.consumer_properties.clone(),
            key_file: s.registry.control_key_file.clone(),
            max_age_ms: s.registry.control_max_age_ms,
            replica,
        }
    }

    /// The control key named by `registry.control_key_file`.
    pub fn key(&self) -> Result<ControlKey> {
        if self.key_file.is_empty() {
            bail!("config key registry.control_key_file: not set; control messages must be signed");
        }
        ControlKey::from_file(std::path::Path::new(&self.key_file))
    }
}

/// The signature header's value, read without assuming UTF-8 keys.
fn signature(msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<Vec<u8>> {
    let mut found = None;
    if let Some(h) = msg.headers() {
        headers::for_each(h, |k, v| {
            if k == SIGNATURE_HEADER.as_bytes() {
                found = v.map(<[u8]>::to_vec);
            }
        });
    }
    found
}

/// What a control message asks for; `None` for replies and other messages to skip.
pub(crate) fn parse(payload: &[u8]) -> Result<Option<(Target, Option<String>)>> {
    let v: Value = serde_json::from_slice(payload).context("control message is not JSON")?;
    let rid = v
        .get("request_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    match v.get("type").and_then(Value::as_str) {
        Some("activate") => {
            let version = v
                .get("version")
                .and_then(Value::as_str)
                .context("activate message without a \"version\" string")?;
            Ok(Some((Target::Version(version.to_string()), rid)))
        }
        Some("rollback") => Ok(Some((Target::Rollback, rid))),
        Some("result") => Ok(None),
        other => bail!("unknown control message type {other:?}"),
    }
}

/// Assigns every partition of the control topic at its current end, so this replica sees all
/// control messages sent from now on.
fn consumer_at_end(s: &ControlSettings) -> Result<StreamConsumer> {
    let topic = &s.topic;
    let mut c = client_config(&s.client);
    c.set("group.id", &s.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest");
    for (k, v) in &s.consumer_properties {
        c.set(k, v);
    }
    let consumer: StreamConsumer = c.create().context("creating the control-topic consumer")?;
    let mut tpl = TopicPartitionList::new();
    for (p, _, high) in
        watermarks(&consumer, topic, KAFKA_TIMEOUT).context("config key registry.control_topic")?
    {
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer
        .assign(&tpl)
        .context("assigning the control topic")?;
    Ok(consumer)
}

/// Starts the control-topic trigger; returns once the consumer is assigned.
pub(crate) fn spawn(
    s: &ControlSettings,
    producer: KafkaProducer,
    requests: mpsc::Sender<SwapRequest>,
) -> Result<tokio::task::JoinHandle<()>> {
    let replica = s.replica.clone();
    let topic = s.topic.clone();
    let key = s.key()?;
    let mut verifier = Verifier::new(key.clone(), s.max_age_ms, now_ms());
    let consumer = consumer_at_end(s)?;
    tracing::info!(topic = %topic, replica = %replica, "reading the control topic");
    Ok(tokio::spawn(async move {
        loop {
            let msg = match consumer.recv().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "control topic");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let payload = msg.payload().unwrap_or_default();
            let parsed = parse(payload);
            if let Ok(None) = parsed {
                continue; // a reply
            }
            let rid = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get("request_id")?.as_str().map(str::to_string));
            // Nothing unsigned, forged, stale or replayed gets near the swap controller.
            let checked = verifier.check(payload, signature(&msg).as_deref(), now_ms());
            // Only answers to accepted requests are signed: a signed "refused" for a forged
            // message would hand its sender a signed record naming any request id it chose.
            let mut sign = true;
            let reply = match (checked, parsed) {
                (Err(refusal), _) => {
                    sign = false;
                    metrics::counter!("emostream_control_refused_total").increment(1);
                    tracing::warn!(reason = %refusal, partition = msg.partition(), offset = msg.offset(), "refusing a control message");
                    json!({"result": "refused", "reason": refusal.to_string()})
                }
                (Ok(()), Err(e)) => {
                    sign = false;
                    tracing::warn!(error = %format!("{e:#}"), partition = msg.partition(), offset = msg.offset(), "refusing a bad control message");
                    json!({"result": "refused", "reason": format!("{e:#}")})
                }
                (Ok(()), Ok(None)) => continue,
                (Ok(()), Ok(Some((target, _)))) => {
                    match swap::request(&requests, target, Trigger::Control).await {
                        Ok(r) => serde_json::to_value(&r).unwrap_or_default(),
                        Err(_) => return,
                    }
                }
            };
            let mut reply = reply;
            if let Some(o) = reply.as_object_mut() {
                o.insert("type".into(), json!("result"));
                o.insert("replica".into(), json!(replica));
                o.insert("request_id".into(), json!(rid));
                o.insert("issued_at_ms".into(), json!(now_ms()));
            }
            let (body, headers) = signed_record(&key, &reply);
            let mut rec = FutureRecord::to(&topic).key(&replica).payload(&body);
            if sign {
                rec = rec.headers(headers);
            }
            if let Err((e, _)) = producer.send(rec, KAFKA_TIMEOUT).await {
                tracing::warn!(error = %e, "could not reply on the control topic");
            }
        }
    }))
}

/// Produces one control message (`train publish --control-topic`), through the daemon's own
/// client settings and control key.
pub async fn announce(s: &ControlSettings, topic: &str, message: &Value) -> Result<()> {
    let producer: FutureProducer = client_config(&s.client)
        .set("acks", "all")
        .create()
        .context("creating a Kafka producer")?;
    let (body, headers) = signed_record(&s.key()?, message);
    producer
        .send(
            FutureRecord::<(), _>::to(topic)
                .payload(&body)
                .headers(headers),
            KAFKA_TIMEOUT,
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("announcing on {topic}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_parse() {
        let (t, rid) = parse(activate_message("1.2.0", "r1").to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(t, Target::Version("1.2.0".into()));
        assert_eq!(rid.as_deref(), Some("r1"));
        let (t, _) = parse(rollback_message("r2").to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(t, Target::Rollback);
        assert!(parse(br#"{"type":"result","replica":"a"}"#)
            .unwrap()
            .is_none());
        assert!(parse(br#"{"type":"activate"}"#).is_err());
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"type":"delete_everything"}"#).is_err());
    }
}
