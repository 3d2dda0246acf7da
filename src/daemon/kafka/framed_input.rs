//! The source's admission of a consumed message when input is in the Schema Registry wire
//! format (input.format = "schema_registry"): its value is decoded by its schema before the
//! pipeline's own rules apply. A registry outage holds the message — and the stream behind
//! it, so order per key holds — while commits go on with the tick; nothing is dead-lettered
//! for it. The message's own faults (unframed, unknown schema id, a value its schema does not
//! describe) are dead-lettered with their reason.

use crate::daemon::kafka::source::{Admission, Settling, SourceStage};
use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::{admit, Origin, Rejection};
use crate::daemon::schemas::input::DecodeError;
use std::time::Duration;

/// The first wait for the registry, doubled up to the last.
const FIRST_WAIT: Duration = Duration::from_millis(100);
const LONGEST_WAIT: Duration = Duration::from_secs(2);

impl SourceStage {
    /// Decodes a framed value (if input is framed) and admits the message.
    pub(super) async fn admission(
        &self,
        mut origin: Origin,
        tick: &mut tokio::time::Interval,
        settling: &mut Settling,
    ) -> Admission {
        let input = &self.settings.input;
        let framed = self.schemas.as_ref().zip(origin.payload.as_deref());
        // A tombstone or an oversized value is refused by admit's own rules, undecoded.
        let Some((schemas, payload)) = framed.filter(|(_, p)| p.len() <= input.max_message_bytes)
        else {
            return Admission::Admitted(admit(origin, input));
        };
        let mut wait = FIRST_WAIT;
        let refused = loop {
            match schemas.decode(&origin.position.topic, payload).await {
                Ok(json) => {
                    origin.decoded = Some(json);
                    break None;
                }
                Err(DecodeError::Unavailable(_)) => {
                    metrics::counter!("emostream_schema_registry_waits_total").increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = tick.tick() => { self.periodic_commit(settling); }
                        _ = self.stop.notified() => return Admission::Stop,
                    }
                    wait = (wait * 2).min(LONGEST_WAIT);
                    if self.rewind_pending() {
                        return Admission::Stale;
                    }
                }
                Err(DecodeError::NotFramed(d)) => break Some((Reason::NotFramed, d)),
                Err(DecodeError::UnknownSchema(d)) => break Some((Reason::UnknownSchema, d)),
                Err(DecodeError::Mismatch(d)) => break Some((Reason::SchemaMismatch, d)),
                Err(DecodeError::Registry(d)) => break Some((Reason::RegistryError, d)),
            }
        };
        Admission::Admitted(match refused {
            None => admit(origin, input),
            Some((reason, detail)) => Err(Rejection {
                reason,
                detail,
                origin,
            }),
        })
    }
}
