//! Acknowledgements. Every consumed message carries an [`Ack`] from the source to wherever it
//! ends; the sink resolves it once the output or dead-letter topic has the message. Behind the
//! tokens sits the [`Ledger`]: the offset tracker (per partition, which consumed offsets are not
//! yet acknowledged) and the in-flight budget that drives backpressure. Only the source reads
//! the ledger's commit points and commits them.
//!
//! The commit point of a partition is its lowest unacknowledged offset, or one past the highest
//! consumed when all are acknowledged: a message that was never delivered holds the commit
//! point back even when later ones succeed, so nothing is ever skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
type TopicPartition = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    /// Unacknowledged offset → when it was consumed.
    pending: BTreeMap<i64, Instant>,
    /// One past the offset consumed last.
    next: Option<i64>,
}

#[derive(Debug, Default)]
struct OffsetTracker {
    parts: HashMap<TopicPartition, Partition>,
}

impl OffsetTracker {
    fn track(&mut self, tp: &TopicPartition, offset: i64) {
        // The key is cloned only for a partition's first message, not for every message.
        if !self.parts.contains_key(tp) {
            self.parts.insert(tp.clone(), Partition::default());
        }
        let p = self.parts.get_mut(tp).expect("inserted above");
        p.pending.insert(offset, Instant::now());
        // The last consumed, not the highest: after an offset reset rewinds the partition,
        // the commit point must not claim offsets beyond what was read again.
        p.next = Some(offset + 1);
    }

    /// Marks an offset delivered. Acks for partitions no longer tracked (revoked) are ignored.
    pub(crate) fn ack(&mut self, tp: &TopicPartition, offset: i64) {
        if let Some(p) = self.parts.get_mut(tp) {
            p.pending.remove(&offset);
        }
    }

    /// The offset to commit (Kafka semantics: the next offset to read) for a partition.
    fn commit_point(&self, tp: &TopicPartition) -> Option<i64> {
        let p = self.parts.get(tp)?;
        p.pending.keys().next().copied().or(p.next)
    }

    pub(crate) fn commit_points(&self) -> Vec<(TopicPartition, i64)> {
        self.parts
            .keys()
            .filter_map(|tp| self.commit_point(tp).map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Forgets a partition (revoked); returns its final commit point.
    pub(crate) fn remove(&mut self, tp: &TopicPartition) -> Option<i64> {
        let c = self.commit_point(tp);
        self.parts.remove(tp);
        c
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }

    fn in_flight_on(&self, partitions: &[TopicPartition]) -> usize {
        partitions
            .iter()
            .filter_map(|tp| self.parts.get(tp))
            .map(|p| p.pending.len())
            .sum()
    }

    /// Partitions whose oldest unacknowledged message is older than `age`.
    pub(crate) fn stalled(&self, age: Duration) -> Vec<(TopicPartition, i64)> {
        let now = Instant::now();
        self.parts
            .iter()
            .filter_map(|(tp, p)| {
                p.pending
                    .iter()
                    .next()
                    .filter(|(_, t)| now.duration_since(**t) > age)
                    .map(|(o, _)| (tp.clone(), *o))
            })
            .collect()
    }
}

/// The offset tracker and the in-flight budget (messages and bytes consumed, not yet
/// resolved; the source pauses above its limits), behind the tokens that resolve them.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    offsets: Mutex<OffsetTracker>,
    messages: AtomicUsize,
    bytes: AtomicUsize,
    /// Signalled whenever a token resolves (the source may resume).
    released: Notify,
}

impl Ledger {
    fn offsets(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tracks a consumed message and hands out the token that will acknowledge it.
    pub(crate) fn issue(
        self: &Arc<Self>,
        partition: TopicPartition,
        offset: i64,
        bytes: usize,
    ) -> Ack {
        self.offsets().track(&partition, offset);
        let m = self.messages.fetch_add(1, Ordering::SeqCst) + 1;
        let b = self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        publish(m, b);
        Ack {
            ledger: self.clone(),
            partition,
            offset,
            bytes,
            resolved: false,
        }
    }

    fn resolve(&self, partition: &TopicPartition, offset: i64, bytes: usize, delivered: bool) {
        if delivered {
            self.offsets().ack(partition, offset);
        }
        let m = self.messages.fetch_sub(1, Ordering::SeqCst) - 1;
        let b = self.bytes.fetch_sub(bytes, Ordering::SeqCst) - bytes;
        publish(m, b);
        self.released.notify_waiters();
    }

    /// At or over either limit: time to pause.
    pub(crate) fn over(&self, max_messages: usize, max_bytes: usize) -> bool {
        self.messages.load(Ordering::SeqCst) >= max_messages
            || self.bytes.load(Ordering::SeqCst) >= max_bytes
    }

    /// At or below half of both limits: time to resume.
    pub(crate) fn drained(&self, max_messages: usize, max_bytes: usize) -> bool {
        self.messages.load(Ordering::SeqCst) <= max_messages / 2
            && self.bytes.load(Ordering::SeqCst) <= max_bytes / 2
    }

    /// Waits until some token resolves.
    pub(crate) async fn released(&self) {
        self.released.notified().await
    }

    pub(crate) fn commit_points(&self) -> Vec<(TopicPartition, i64)> {
        self.offsets().commit_points()
    }

    /// Forgets a revoked partition; its final commit point.
    pub(crate) fn revoke(&self, partition: &TopicPartition) -> Option<i64> {
        self.offsets().remove(partition)
    }

    /// Consumed offsets of these partitions not yet acknowledged.
    pub(crate) fn in_flight_on(&self, partitions: &[TopicPartition]) -> usize {
        self.offsets().in_flight_on(partitions)
    }

    /// Consumed offsets not yet acknowledged.
    pub(crate) fn unacknowledged(&self) -> usize {
        self.offsets().in_flight()
    }

    /// Messages whose tokens are not resolved yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.messages.load(Ordering::SeqCst)
    }

    pub(crate) fn stalled(&self, age: Duration) -> Vec<(TopicPartition, i64)> {
        self.offsets().stalled(age)
    }
}

fn publish(messages: usize, bytes: usize) {
    metrics::gauge!("emostream_in_flight_messages").set(messages as f64);
    metrics::gauge!("emostream_in_flight_bytes").set(bytes as f64);
}

/// A message's acknowledgement. [`Ack::delivered`] once the output or dead-letter topic has
/// the message; dropped unresolved (its stage ended without delivering it), the message's
/// budget is freed but its offset stays unacknowledged, so it is read again after a restart
/// or rebalance rather than skipped.
#[derive(Debug)]
pub(crate) struct Ack {
    ledger: Arc<Ledger>,
    partition: TopicPartition,
    offset: i64,
    bytes: usize,
    resolved: bool,
}

impl Ack {
    pub(crate) fn delivered(mut self) {
        self.resolved = true;
        self.ledger
            .resolve(&self.partition, self.offset, self.bytes, true);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.resolved {
            metrics::counter!("emostream_acks_dropped_total").increment(1);
            self.ledger
                .resolve(&self.partition, self.offset, self.bytes, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_offset_holds_commit_point_while_later_ones_succeed() {
        let tp = ("t".to_string(), 0);
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.track(&tp, o);
        }
        assert_eq!(t.commit_point(&tp), Some(10));
        for o in [10, 11, 13, 14] {
            t.ack(&tp, o);
        }
        // 12 is not acknowledged: never commit past it.
        assert_eq!(t.commit_point(&tp), Some(12));
        t.ack(&tp, 12);
        assert_eq!(t.commit_point(&tp), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_rewound_partition_commits_no_further_than_it_read_again() {
        let tp = ("t".to_string(), 0);
        let mut t = OffsetTracker::default();
        for o in 100..103 {
            t.track(&tp, o);
            t.ack(&tp, o);
        }
        assert_eq!(t.commit_point(&tp), Some(103));
        // An offset reset sends the consumer back to 40.
        t.track(&tp, 40);
        assert_eq!(t.commit_point(&tp), Some(40));
        t.ack(&tp, 40);
        assert_eq!(t.commit_point(&tp), Some(41));
        assert_eq!(t.in_flight_on(&[tp.clone()]), 0);
        t.track(&tp, 41);
        assert_eq!(t.in_flight_on(&[tp, ("t".into(), 9)]), 1);
    }

    #[test]
    fn revoked_partition_ignores_late_acks() {
        let tp = ("t".to_string(), 1);
        let mut t = OffsetTracker::default();
        t.track(&tp, 3);
        assert_eq!(t.remove(&tp), Some(3));
        t.ack(&tp, 3);
        assert_eq!(t.commit_point(&tp), None);
    }

    #[test]
    fn a_delivered_token_moves_the_commit_point_and_a_dropped_one_holds_it() {
        let ledger = Arc::new(Ledger::default());
        let tp = ("t".to_string(), 0);
        let a = ledger.issue(tp.clone(), 7, 100);
        let b = ledger.issue(tp.clone(), 8, 50);
        assert!(ledger.over(2, usize::MAX) && !ledger.over(3, usize::MAX));
        b.delivered();
        assert_eq!(ledger.commit_points(), vec![(tp.clone(), 7)]);
        drop(a);
        // The budget is free again, the offset is not acknowledged.
        assert_eq!(ledger.in_flight(), 0);
        assert_eq!(ledger.unacknowledged(), 1);
        assert_eq!(ledger.commit_points(), vec![(tp, 7)]);
    }
}
