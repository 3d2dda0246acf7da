//! The offset tracker: per partition, which consumed offsets are not yet acknowledged (produced
//! to the output or the dead-letter topic). The commit point is the lowest unacknowledged
//! offset, or one past the highest consumed when all are acknowledged: a failed message holds
//! the commit point back even when later ones succeed, so nothing is ever skipped.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

pub type TopicPartition = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    /// Unacknowledged offset → when it was consumed.
    pending: BTreeMap<i64, Instant>,
    /// One past the highest offset consumed.
    next: Option<i64>,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<TopicPartition, Partition>,
}

impl OffsetTracker {
    pub fn track(&mut self, tp: &TopicPartition, offset: i64) {
        let p = self.parts.entry(tp.clone()).or_default();
        p.pending.insert(offset, Instant::now());
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Marks an offset delivered. Acks for partitions no longer tracked (revoked) are ignored.
    pub fn ack(&mut self, tp: &TopicPartition, offset: i64) {
        if let Some(p) = self.parts.get_mut(tp) {
            p.pending.remove(&offset);
        }
    }

    /// The offset to commit (Kafka semantics: the next offset to read) for a partition.
    pub fn commit_point(&self, tp: &TopicPartition) -> Option<i64> {
        let p = self.parts.get(tp)?;
        p.pending.keys().next().copied().or(p.next)
    }

    pub fn commit_points(&self) -> Vec<(TopicPartition, i64)> {
        self.parts
            .keys()
            .filter_map(|tp| self.commit_point(tp).map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Forgets a partition (revoked); returns its final commit point.
    pub fn remove(&mut self, tp: &TopicPartition) -> Option<i64> {
        let c = self.commit_point(tp);
        self.parts.remove(tp);
        c
    }

    pub fn in_flight(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }

    /// Partitions whose oldest unacknowledged message is older than `age`.
    pub fn stalled(&self, age: Duration) -> Vec<(TopicPartition, i64)> {
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
    fn revoked_partition_ignores_late_acks() {
        let tp = ("t".to_string(), 1);
        let mut t = OffsetTracker::default();
        t.track(&tp, 3);
        assert_eq!(t.remove(&tp), Some(3));
        t.ack(&tp, 3);
        assert_eq!(t.commit_point(&tp), None);
    }
}
