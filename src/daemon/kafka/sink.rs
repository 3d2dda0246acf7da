//! The sink: produces label events to the output topic (keyed like the input, input headers
//! carried over) and rejections to the dead-letter topic, then acknowledges the source offset.
//! An event the output topic will not take goes, after bounded attempts, to the dead-letter
//! topic (reason produce_failed); if that fails too, it is retried there with backoff for as long
//! as the daemon runs and its offset stays unacknowledged, so the commit point never passes it.

use crate::daemon::ack::OffsetTracker;
use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::{Origin, Outcome};
use crate::daemon::telemetry::InFlight;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub struct Sink {
    pub producer: FutureProducer,
    pub output_topic: String,
    pub dead_letter_topic: String,
    pub attempts: u32,
    pub backoff: Duration,
    pub tracker: Arc<Mutex<OffsetTracker>>,
    pub in_flight: Arc<InFlight>,
    /// Messages currently failing on both topics.
    pub stalled: Arc<AtomicUsize>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Sink {
    /// Consumes outcomes until the channel closes, then waits for every delivery to finish.
    pub async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Outcome>) {
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
                Outcome::Rejected {
                    reason,
                    detail,
                    origin,
                } => {
                    tasks.spawn(async move { sink.dead_letter(reason, detail, origin).await });
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
                        self.complete(&origin);
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
        let mut h = OwnedHeaders::new()
            .insert(Header {
                key: "emostream.reason",
                value: Some(reason.as_str()),
            })
            .insert(Header {
                key: "emostream.detail",
                value: Some(detail.as_str()),
            })
            .insert(Header {
                key: "emostream.source.topic",
                value: Some(origin.source.topic.as_str()),
            })
            .insert(Header {
                key: "emostream.source.partition",
                value: Some(&origin.source.partition.to_string()),
            })
            .insert(Header {
                key: "emostream.source.offset",
                value: Some(&origin.source.offset.to_string()),
            });
        if let Some(ts) = origin.source.timestamp_ms {
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
        let mut backoff = self.backoff;
        let mut stalled = false;
        loop {
            let result = match self
                .enqueue(
                    &self.dead_letter_topic,
                    &origin,
                    &origin.payload,
                    Some(h.clone()),
                )
                .await
            {
                Ok(f) => f
                    .await
                    .unwrap_or_else(|_| {
                        Err((
                            KafkaError::Canceled,
                            rdkafka::message::OwnedMessage::new(
                                None,
                                None,
                                String::new(),
                                rdkafka::Timestamp::NotAvailable,
                                0,
                                0,
                                None,
                            ),
                        ))
                    })
                    .map_err(|(e, _)| e.to_string()),
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => {
                    metrics::counter!("emostream_dead_lettered_total", "reason" => reason.as_str())
                        .increment(1);
                    if stalled {
                        let n = self.stalled.fetch_sub(1, Ordering::SeqCst) - 1;
                        metrics::gauge!("emostream_stalled_partitions").set(n as f64);
                    }
                    self.complete(&origin);
                    return;
                }
                Err(e) => {
                    metrics::counter!("emostream_produce_errors_total", "topic" => "dead_letter")
                        .increment(1);
                    if !stalled {
                        stalled = true;
                        let n = self.stalled.fetch_add(1, Ordering::SeqCst) + 1;
                        metrics::gauge!("emostream_stalled_partitions").set(n as f64);
                    }
                    tracing::error!(error = %e, reason = reason.as_str(), topic = %origin.source.topic, partition = origin.source.partition, offset = origin.source.offset,
                        "dead-letter topic refused message; its partition cannot commit past it until it is delivered");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn complete(&self, origin: &Origin) {
        let tp = (origin.source.topic.clone(), origin.source.partition);
        self.tracker
            .lock()
            .expect("offset tracker lock")
            .ack(&tp, origin.source.offset);
        self.in_flight.release(origin.payload.len());
        if let Some(ts) = origin.source.timestamp_ms {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            metrics::histogram!("emostream_end_to_end_seconds")
                .record(((now - ts).max(0)) as f64 / 1000.0);
        }
    }
}
