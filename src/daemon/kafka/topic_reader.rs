//! Reads a whole topic once, from the beginning to the end it has when reading starts (every
//! partition to its high watermark): `train data import` reads the feedback topic so, through
//! the daemon's own client settings (secured clusters included).

use crate::daemon::kafka::client::{client_config, watermarks, ClientSettings};
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// One record of the topic.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
}

/// Every record of `topic` up to each partition's end as of now, in offset order per
/// partition; gives up after `limit` without reaching the ends.
pub fn read_all(client: &ClientSettings, topic: &str, limit: Duration) -> Result<Vec<TopicRecord>> {
    let consumer: BaseConsumer = client_config(client)
        .set(
            "group.id",
            format!("emostream-import-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating a Kafka consumer")?;
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (p, low, high) in watermarks(&consumer, topic, KAFKA_TIMEOUT)? {
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl).context("assigning the topic")?;
    let mut out = Vec::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + limit;
    while ends
        .iter()
        .any(|(p, end)| next.get(p).copied().unwrap_or(0) < *end)
    {
        if Instant::now() > deadline {
            bail!("reading {topic}: the ends {ends:?} not reached within {limit:?} (at {next:?})");
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            // Nothing came: a partition whose last offsets are not messages (transaction
            // markers) is done once its position is at its end.
            if let Ok(pos) = consumer.position() {
                for e in pos.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        let at = next.entry(e.partition()).or_insert(0);
                        *at = (*at).max(o);
                    }
                }
            }
            continue;
        };
        let m = m.with_context(|| format!("reading {topic}"))?;
        next.insert(m.partition(), m.offset() + 1);
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() < *end)
        {
            out.push(TopicRecord {
                partition: m.partition(),
                offset: m.offset(),
                payload: m.payload().map(<[u8]>::to_vec),
            });
        }
    }
    Ok(out)
}
