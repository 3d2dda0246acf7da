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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
type TopicPartition = (String, i32);

#[derive(Debug)]
struct Partition {
    /// Unacknowledged offset → when it was consumed.
    pending: BTreeMap<i64, Instant>,
    /// One past the offset consumed last.
    next: Option<i64>,
    /// The highest offset acknowledged in this epoch.
    highest_acked: Option<i64>,
    /// Which reading of the partition its tokens belong to: new when the partition is first
    /// tracked (again, after a revoke) and when it rewinds.
    epoch: u64,
}

#[derive(Debug, Default)]
struct OffsetTracker {
    parts: HashMap<TopicPartition, Partition>,
    epochs: u64,
    /// Exactly-once, between an abort and the rewind that follows it: what is read meanwhile
    /// is read again after the rewind, so its tokens are stale from the start.
    frozen: bool,
}

/// The epoch of a token that never acknowledges anything (epochs start at 1).
const STALE_EPOCH: u64 = 0;

impl OffsetTracker {
    /// Tracks a consumed offset; returns the epoch its token must carry.
    fn track(&mut self, tp: &TopicPartition, offset: i64) -> u64 {
        if self.frozen {
            return STALE_EPOCH;
        }
        // The key is cloned only for a partition's first message, not for every message.
        if !self.parts.contains_key(tp) {
            self.epochs += 1;
            let p = Partition {
                pending: BTreeMap::new(),
                next: None,
                highest_acked: None,
                epoch: self.epochs,
            };
            self.parts.insert(tp.clone(), p);
        }
        let p = self.parts.get_mut(tp).expect("inserted above");
        if p.next.is_some_and(|n| offset < n) {
            // A rewind (offset reset, truncated log, recreated topic): everything from here is
            // read again, and an offset in flight from before may now name another record, so
            // the old tokens no longer acknowledge anything.
            self.epochs += 1;
            p.epoch = self.epochs;
            p.pending.clear();
            p.highest_acked = None;
        }
        p.pending.insert(offset, Instant::now());
        // The last consumed, not the highest: the commit point must not claim offsets beyond
        // what was read again.
        p.next = Some(offset + 1);
        p.epoch
    }

    /// Marks an offset delivered. Acks from another epoch (the partition was revoked, or
    /// rewound since) are ignored.
    pub(crate) fn ack(&mut self, tp: &TopicPartition, offset: i64, epoch: u64) {
        if let Some(p) = self.parts.get_mut(tp).filter(|p| p.epoch == epoch) {
            if p.pending.remove(&offset).is_some() {
                p.highest_acked = p.highest_acked.max(Some(offset));
            }
        }
    }

    /// Whether every acknowledged offset lies below its partition's commit point: then the
    /// commit points cover exactly the acknowledged messages, with nothing acknowledged beyond
    /// an unacknowledged one.
    fn acknowledged_are_a_prefix(&self) -> bool {
        self.parts.iter().all(|(tp, p)| {
            p.highest_acked
                .is_none_or(|h| self.commit_point(tp).is_some_and(|c| h < c))
        })
    }

    fn is_current(&self, tp: &TopicPartition, epoch: u64) -> bool {
        self.parts.get(tp).is_some_and(|p| p.epoch == epoch)
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
    /// When work last moved: a message acknowledged, or work arriving when none was in
    /// flight. Health measures progress from here, not from the oldest message's age, which
    /// on a backlog is queueing delay.
    /// Nanoseconds after `epoch()` (0: never), an atomic because every acknowledgement sets it.
    progress: AtomicU64,
}

/// The clock base of `Ledger::progress`.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
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
        let epoch = self.offsets().track(&partition, offset);
        if self.messages.fetch_add(1, Ordering::SeqCst) == 0 {
            self.moved();
        }
        self.bytes.fetch_add(bytes, Ordering::SeqCst);
        publish(1.0, bytes as f64);
        Ack {
            ledger: self.clone(),
            partition,
            offset,
            epoch,
            bytes,
            resolved: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn resolve(&self, a: &Ack, delivered: bool) {
        let (partition, offset, bytes) = (&a.partition, a.offset, a.bytes);
        if delivered {
            self.offsets().ack(partition, offset, a.epoch);
            self.moved();
        }
        self.messages.fetch_sub(1, Ordering::SeqCst);
        self.bytes.fetch_sub(bytes, Ordering::SeqCst);
        publish(-1.0, -(bytes as f64));
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

    /// Forgets every partition (an aborted transaction: all are read again from their
    /// committed offsets); tokens issued before are stale from now on, and so are those issued
    /// until [`Ledger::rewound`] (the source may still be reading ahead of the rewind).
    pub(crate) fn forget_all_until_rewound(&self) {
        let mut o = self.offsets();
        o.parts.clear();
        o.frozen = true;
    }

    /// The partitions were sought back to their committed offsets: whatever was read before
    /// is stale, what is read from now on is tracked again.
    pub(crate) fn rewound(&self) {
        let mut o = self.offsets();
        o.parts.clear();
        o.frozen = false;
    }

    /// Consumed offsets of these partitions not yet acknowledged.
    pub(crate) fn in_flight_on(&self, partitions: &[TopicPartition]) -> usize {
        self.offsets().in_flight_on(partitions)
    }

    /// Consumed offsets not yet acknowledged.
    pub(crate) fn unacknowledged(&self) -> usize {
        self.offsets().in_flight()
    }

    /// Whether the commit points are exactly the acknowledged messages: each partition's
    /// acknowledged offsets all lie below its first unacknowledged one (e.g. only the last
    /// messages read were left unfinished, as at a stop under a backlog).
    pub(crate) fn acknowledged_are_a_prefix(&self) -> bool {
        self.offsets().acknowledged_are_a_prefix()
    }

    /// Messages whose tokens are not resolved yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.messages.load(Ordering::SeqCst)
    }

    pub(crate) fn stalled(&self, age: Duration) -> Vec<(TopicPartition, i64)> {
        self.offsets().stalled(age)
    }

    fn moved(&self) {
        let at = epoch().elapsed().as_nanos().max(1) as u64;
        self.progress.store(at, Ordering::Relaxed);
    }

    /// Messages in flight and how long since work last moved, when that is over `limit`.
    pub(crate) fn without_progress(&self, limit: Duration) -> Option<(usize, Duration)> {
        let n = self.messages.load(Ordering::SeqCst);
        let at = self.progress.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let since = epoch().elapsed().saturating_sub(Duration::from_nanos(at));
        (n > 0 && since > limit).then_some((n, since))
    }
}

/// Moves the in-flight gauges by a step; setting them from the atomics could leave a stale
/// value when two threads publish at once.
fn publish(messages: f64, bytes: f64) {
    metrics::gauge!("emostream_in_flight_messages").increment(messages);
    metrics::gauge!("emostream_in_flight_bytes").increment(bytes);
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
    epoch: u64,
    bytes: usize,
    resolved: std::sync::atomic::AtomicBool,
}

impl Ack {
    /// Whether the partition is still read as it was when this message was consumed (not
    /// revoked, rewound or forgotten since): a stale message's outcome must not be sent.
    pub(crate) fn is_current(&self) -> bool {
        self.ledger
            .offsets()
            .is_current(&self.partition, self.epoch)
    }

    pub(crate) fn delivered(self) {
        self.acknowledge();
    }

    /// Resolves the token in place (exactly-once: under the transaction gate, at the moment
    /// its record enters the transaction). Once only; a second call does nothing.
    pub(crate) fn acknowledge(&self) {
        if !self.resolved.swap(true, Ordering::SeqCst) {
            self.ledger.resolve(self, true);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.resolved.load(Ordering::SeqCst) {
            metrics::counter!("emostream_acks_dropped_total").increment(1);
            self.ledger.resolve(self, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_messages_are_a_prefix_only_when_none_lies_beyond_an_unacknowledged_one() {
        let ledger = Arc::new(Ledger::default());
        let tp = ("t".to_string(), 0);
        let acks: Vec<Ack> = (0..4).map(|o| ledger.issue(tp.clone(), o, 1)).collect();
        let mut acks = acks.into_iter();
        let (a0, a1, a2, a3) = (
            acks.next().unwrap(),
            acks.next().unwrap(),
            acks.next().unwrap(),
            acks.next().unwrap(),
        );
        assert!(
            ledger.acknowledged_are_a_prefix(),
            "nothing acknowledged yet"
        );
        a0.delivered();
        a1.delivered();
        // The last one read was dropped unfinished (a stop): 0 and 1 are the prefix.
        drop(a3);
        assert!(ledger.acknowledged_are_a_prefix());
        assert_eq!(ledger.commit_points(), vec![(tp.clone(), 2)]);
        // 2 unfinished, 3 ... acknowledged beyond it: not a prefix.
        let b = ledger.issue(tp.clone(), 4, 1);
        b.delivered();
        assert!(
            !ledger.acknowledged_are_a_prefix(),
            "4 is acknowledged beyond unfinished 2"
        );
        a2.delivered();
        assert!(
            !ledger.acknowledged_are_a_prefix(),
            "3 was dropped: 4 lies beyond it"
        );
    }

    #[test]
    fn after_an_abort_every_token_is_stale_until_the_rewind() {
        let ledger = Arc::new(Ledger::default());
        let tp = ("t".to_string(), 0);
        let before = ledger.issue(tp.clone(), 0, 1);
        ledger.forget_all_until_rewound();
        assert!(!before.is_current(), "consumed before the abort");
        // Read ahead of the rewind: read again after it, so it must not acknowledge anything.
        let during = ledger.issue(tp.clone(), 1, 1);
        assert!(
            !during.is_current(),
            "consumed between the abort and the rewind"
        );
        during.delivered();
        assert!(ledger.commit_points().is_empty());
        ledger.rewound();
        let after = ledger.issue(tp.clone(), 0, 1);
        assert!(after.is_current());
        after.delivered();
        assert_eq!(ledger.commit_points(), vec![(tp, 1)]);
        assert_eq!(ledger.in_flight(), 1, "only the first token is unresolved");
        drop(before);
        assert_eq!(ledger.in_flight(), 0);
    }

    #[test]
    fn progress_is_acknowledgements_not_the_age_of_the_oldest_message() {
        let ledger = Arc::new(Ledger::default());
        let tp = ("t".to_string(), 0);
        let limit = Duration::from_millis(50);
        let oldest = ledger.issue(tp.clone(), 0, 1);
        let mut later: Vec<Ack> = (1..20).map(|o| ledger.issue(tp.clone(), o, 1)).collect();
        // A backlog: the oldest waits, the others are acknowledged one by one within the limit.
        for a in later.drain(..) {
            std::thread::sleep(Duration::from_millis(10));
            a.delivered();
            assert_eq!(ledger.without_progress(limit), None);
        }
        assert!(
            !ledger.stalled(limit).is_empty(),
            "the oldest is over the limit"
        );
        // Nothing acknowledged for longer than the limit while work waits: no progress.
        std::thread::sleep(Duration::from_millis(80));
        let (n, since) = ledger.without_progress(limit).expect("stuck");
        assert_eq!(n, 1);
        assert!(since > limit);
        oldest.delivered();
        assert_eq!(ledger.without_progress(limit), None, "nothing in flight");
        // Work arriving after a quiet spell starts the clock afresh.
        std::thread::sleep(Duration::from_millis(80));
        let _next = ledger.issue(tp, 20, 1);
        assert_eq!(ledger.without_progress(limit), None);
    }

    #[test]
    fn failed_offset_holds_commit_point_while_later_ones_succeed() {
        let tp = ("t".to_string(), 0);
        let mut t = OffsetTracker::default();
        let mut e = 0;
        for o in 10..15 {
            e = t.track(&tp, o);
        }
        assert_eq!(t.commit_point(&tp), Some(10));
        for o in [10, 11, 13, 14] {
            t.ack(&tp, o, e);
        }
        // 12 is not acknowledged: never commit past it.
        assert_eq!(t.commit_point(&tp), Some(12));
        t.ack(&tp, 12, e);
        assert_eq!(t.commit_point(&tp), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_rewound_partition_commits_no_further_than_it_read_again() {
        let tp = ("t".to_string(), 0);
        let mut t = OffsetTracker::default();
        let old = t.track(&tp, 100);
        for o in 101..103 {
            t.track(&tp, o);
            t.ack(&tp, o, old);
        }
        // 100 is still in flight when an offset reset sends the consumer back to 95.
        let new = t.track(&tp, 95);
        assert_ne!(new, old);
        assert_eq!(t.commit_point(&tp), Some(95));
        t.ack(&tp, 95, new);
        assert_eq!(t.commit_point(&tp), Some(96), "96..99 not read again yet");
        // The late acknowledgement of the old 100 does not acknowledge the new 100.
        for o in 96..101 {
            t.track(&tp, o);
        }
        t.ack(&tp, 100, old);
        assert_eq!(t.commit_point(&tp), Some(96));
        assert_eq!(t.in_flight_on(&[tp.clone(), ("t".into(), 9)]), 5);
    }

    #[test]
    fn revoked_partition_ignores_late_acks() {
        let tp = ("t".to_string(), 1);
        let mut t = OffsetTracker::default();
        let e = t.track(&tp, 3);
        assert_eq!(t.remove(&tp), Some(3));
        t.ack(&tp, 3, e);
        assert_eq!(t.commit_point(&tp), None);
        // Assigned again: the old token does not acknowledge the new reading of offset 3.
        t.track(&tp, 3);
        t.ack(&tp, 3, e);
        assert_eq!(t.commit_point(&tp), Some(3));
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
