//! Which offsets a consumer may commit: per partition, the offsets handed to the pipeline
//! in order, and which of them the pipeline acknowledged. A partition's commit position
//! only moves past offsets whose records were handled, so a crash or a rebalance can
//! repeat records but never skip one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A topic and partition.
pub type Tp = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    /// Bumped on each assignment; acks from an older epoch are ignored.
    epoch: u64,
    /// Offsets handed to the pipeline, in order, and whether each is done.
    in_flight: VecDeque<(i64, bool)>,
    /// Next offset to commit, when it moved since the last commit.
    ready: Option<i64>,
}

/// Shared between the consumer thread, the acknowledgement callbacks and the rebalance
/// callback.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: Mutex<BTreeMap<Tp, Partition>>,
    changed: Condvar,
}

impl Tracker {
    /// A partition was assigned: start a new epoch for it.
    pub fn assign(&self, tp: Tp) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let p = parts.entry(tp).or_default();
        p.epoch += 1;
        p.in_flight.clear();
        p.ready = None;
    }

    /// A partition was revoked: forget it; late acknowledgements are ignored.
    pub fn revoke(&self, tp: &Tp) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = parts.get_mut(tp) {
            p.epoch += 1;
            p.in_flight.clear();
            p.ready = None;
        }
    }

    /// Records that `offset` of `tp` went to the pipeline; returns the epoch to hand back
    /// with its acknowledgement.
    pub fn track(&self, tp: &Tp, offset: i64) -> u64 {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let p = parts.entry(tp.clone()).or_default();
        p.in_flight.push_back((offset, false));
        p.epoch
    }

    /// The pipeline is done with `offset`. `handled` is false when its record failed: the
    /// commit position then stays before it, so it is delivered again after a restart.
    pub fn done(&self, tp: &Tp, epoch: u64, offset: i64, handled: bool) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = parts.get_mut(tp) else { return };
        if p.epoch != epoch {
            return;
        }
        if handled {
            if let Some(slot) = p.in_flight.iter_mut().find(|(o, _)| *o == offset) {
                slot.1 = true;
            }
        }
        while let Some(&(o, true)) = p.in_flight.front() {
            p.in_flight.pop_front();
            p.ready = Some(o + 1);
        }
        self.changed.notify_all();
    }

    /// Commit positions that moved since the last call.
    pub fn take_ready(&self) -> Vec<(Tp, i64)> {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        parts.iter_mut().filter_map(|(tp, p)| p.ready.take().map(|o| (tp.clone(), o))).collect()
    }

    /// Waits up to `limit` until none of `tps` has records in flight; returns whether so.
    pub fn wait_idle(&self, tps: &[Tp], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let busy = tps.iter().any(|tp| parts.get(tp).is_some_and(|p| !p.in_flight.is_empty()));
            if !busy {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            parts = self.changed.wait_timeout(parts, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Records handed to the pipeline and not yet acknowledged, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.parts.lock().unwrap_or_else(|p| p.into_inner()).values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".into(), p)
    }

    #[test]
    fn commits_move_only_past_contiguous_done_offsets() {
        let t = Tracker::default();
        t.assign(tp(0));
        let e = (0..4).map(|o| t.track(&tp(0), o)).last().unwrap();
        t.done(&tp(0), e, 1, true);
        assert!(t.take_ready().is_empty(), "offset 0 is still in flight");
        t.done(&tp(0), e, 0, true);
        assert_eq!(t.take_ready(), vec![(tp(0), 2)]);
        t.done(&tp(0), e, 3, true);
        assert!(t.take_ready().is_empty());
        t.done(&tp(0), e, 2, true);
        assert_eq!(t.take_ready(), vec![(tp(0), 4)]);
    }

    #[test]
    fn a_failed_record_holds_the_commit_position() {
        let t = Tracker::default();
        t.assign(tp(1));
        let e = t.track(&tp(1), 10);
        t.track(&tp(1), 11);
        t.done(&tp(1), e, 10, false);
        t.done(&tp(1), e, 11, true);
        assert!(t.take_ready().is_empty());
        assert_eq!(t.in_flight(), 2);
    }

    #[test]
    fn acks_from_before_a_rebalance_are_ignored() {
        let t = Tracker::default();
        t.assign(tp(0));
        let old = t.track(&tp(0), 5);
        t.revoke(&tp(0));
        t.assign(tp(0));
        t.track(&tp(0), 7);
        t.done(&tp(0), old, 5, true);
        assert!(t.take_ready().is_empty());
        assert!(!t.wait_idle(&[tp(0)], Duration::from_millis(10)));
    }
}
