//! The sink: produces label events to the output topic (keyed like the input, input headers
//! carried over) and rejections to the dead-letter topic, then acknowledges the source offset.
//! An event the output topic will not take goes, after bounded attempts, to the dead-letter
//! topic (reason produce_failed); if that fails too, it is retried there with backoff for as long
//! as the daemon runs and its offset stays unacknowledged, so the commit point never passes it.

use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::{Origin, Outcome};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub(crate) struct Sink {
    pub(crate) producer: FutureProducer,
    pub(crate) output_topic: String,
    pub(crate) dead_letter_topic: String,
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
    /// Messages currently refused by both topics (readiness reports them).
    undeliverable: AtomicUsize,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Sink {
    pub(crate) fn new(
        producer: FutureProducer,
        output_topic: String,
        dead_letter_topic: String,
        attempts: u32,
        backoff: Duration,
    ) -> Sink {
        Sink {
            producer,
            output_topic,
            dead_letter_topic,
            attempts,
            backoff,
            undeliverable: AtomicUsize::new(0),
        }
    }

    /// Messages refused by both the output and the dead-letter topic right now.
    pub(crate) fn undeliverable(&self) -> usize {
        self.undeliverable.load(Ordering::SeqCst)
    }

    /// Consumes outcomes until the channel closes, then waits for every delivery to finish.
    pub(crate) async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Outcome>) {
        let mut tasks = JoinSet::new();
        while let Some(o) = rx.recv().await {
            // Enqueue in arrival order (per-key order), then await delivery concurrently.
            let sink = self.clone();
            match o {
                Outcome::Labelled { event, origin, .. } => {
                    let first = sink
                        .enqueue(&sink.output_topic, &origin, &event, origin.headers.clone())
                        .await;
                    tasks.spawn(async move { sink.deliver_event(event, origin, first).await });
                }
                Outcome::Rejected(r) => {
                    tasks
                        .spawn(async move { sink.dead_letter(r.reason, r.detail, r.origin).await });
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Hands a message to librdkafka (waiting while its queue is full).
    async fn enqueue(
        &self,
        topic: &str,
        origin: &Origin,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<DeliveryFuture, String> {
        loop {
            let mut rec = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
            if let Some(k) = &origin.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(h) = headers.clone() {
                rec = rec.headers(h);
            }
            match self.producer.send_result(rec) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
    }

    async fn deliver_event(
        &self,
        event: Vec<u8>,
        origin: Origin,
        first: Result<DeliveryFuture, String>,
    ) {
        let mut fut = first;
        let mut backoff = self.backoff;
        let mut last_err;
        for attempt in 1..=self.attempts {
            last_err = match fut {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => {
                        metrics::counter!("emostream_labelled_total").increment(1);
                        delivered(origin);
                        return;
                    }
                    Ok(Err((e, _))) => e.to_string(),
                    Err(_) => "producer dropped the delivery".into(),
                },
                Err(e) => e,
            };
            metrics::counter!("emostream_produce_errors_total", "topic" => "output").increment(1);
            tracing::warn!(attempt, error = %last_err, offset = origin.source.offset, partition = origin.source.partition, "output topic refused event");
            if attempt == self.attempts {
                self.dead_letter(
                    Reason::ProduceFailed,
                    format!("output topic {}: {last_err}", self.output_topic),
                    origin,
                )
                .await;
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            fut = self
                .enqueue(&self.output_topic, &origin, &event, origin.headers.clone())
                .await;
        }
    }

    /// Produces the original message to the dead-letter topic with a reason; retries until it
    /// is acknowledged (the offset stays unacknowledged meanwhile).
    async fn dead_letter(&self, reason: Reason, detail: String, origin: Origin) {
        let headers = dead_letter_headers(reason, &detail, &origin);
        let mut backoff = self.backoff;
        let mut refused = false;
        loop {
            let result = match self
                .enqueue(
                    &self.dead_letter_topic,
                    &origin,
                    &origin.payload,
                    Some(headers.clone()),
                )
                .await
            {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("producer dropped the delivery".to_string()),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    metrics::counter!("emostream_dead_lettered_total", "reason" => reason.as_str())
                        .increment(1);
                    if refused {
                        self.count_undeliverable(false);
                    }
                    delivered(origin);
                    return;
                }
                Err(e) => {
                    metrics::counter!("emostream_produce_errors_total", "topic" => "dead_letter")
                        .increment(1);
                    if !refused {
                        refused = true;
                        self.count_undeliverable(true);
                    }
                    tracing::error!(error = %e, reason = reason.as_str(), topic = %origin.source.topic, partition = origin.source.partition, offset = origin.source.offset,
                        "dead-letter topic refused message; its partition cannot commit past it until it is delivered");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn count_undeliverable(&self, one_more: bool) {
        let n = if one_more {
            self.undeliverable.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.undeliverable.fetch_sub(1, Ordering::SeqCst) - 1
        };
        metrics::gauge!("emostream_stalled_partitions").set(n as f64);
    }
}

/// The dead-letter record's headers: reason, detail and source coordinates, then the input's
/// own headers.
fn dead_letter_headers(reason: Reason, detail: &str, origin: &Origin) -> OwnedHeaders {
    let source = &origin.source;
    let mut h = OwnedHeaders::new()
        .insert(Header {
            key: "emostream.reason",
            value: Some(reason.as_str()),
        })
        .insert(Header {
            key: "emostream.detail",
            value: Some(detail),
        })
        .insert(Header {
            key: "emostream.source.topic",
            value: Some(source.topic.as_str()),
        })
        .insert(Header {
            key: "emostream.source.partition",
            value: Some(&source.partition.to_string()),
        })
        .insert(Header {
            key: "emostream.source.offset",
            value: Some(&source.offset.to_string()),
        });
    if let Some(ts) = source.timestamp_ms {
        h = h.insert(Header {
            key: "emostream.source.timestamp_ms",
            value: Some(&ts.to_string()),
        });
    }
    if let Some(orig) = &origin.headers {
        for x in orig.iter() {
            h = h.insert(Header {
                key: x.key,
                value: x.value,
            });
        }
    }
    h
}

/// The message is on a topic: record its end-to-end time and resolve its acknowledgement.
fn delivered(origin: Origin) {
    if let Some(ts) = origin.source.timestamp_ms {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        metrics::histogram!("emostream_end_to_end_seconds")
            .record(((now - ts).max(0)) as f64 / 1000.0);
    }
    origin.ack.delivered();
}
