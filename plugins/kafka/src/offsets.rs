//! Which offsets a consumer may commit: per partition, the offsets handed to the pipeline
//! in order, and which of them the pipeline acknowledged. A partition's commit position
//! only moves past offsets whose records were handled, so a crash or a rebalance can
//! repeat records but never skip one. A position is offered for commit again until the
//! broker confirms it: a commit lost to a busy coordinator or a rebalance is not the last
//! word on a partition that receives nothing more.

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
    /// The commit position the acknowledgements reached (the next offset to read).
    reached: Option<i64>,
    /// The position the broker confirmed.
    confirmed: Option<i64>,
    /// The position last sent for commit, and when.
    sent: Option<(i64, Instant)>,
}

impl Partition {
    /// The pipeline is done with `offset`, read in `epoch` (an acknowledgement from an older
    /// epoch is ignored). `handled` is false when its record failed: the commit position then
    /// stays before it, so it is delivered again after a restart.
    fn done(&mut self, epoch: u64, offset: i64, handled: bool) {
        if self.epoch != epoch {
            return;
        }
        if handled {
            if let Some(slot) = self.in_flight.iter_mut().find(|(o, _)| *o == offset) {
                slot.1 = true;
            }
        }
        while let Some(&(o, true)) = self.in_flight.front() {
            self.in_flight.pop_front();
            self.reached = Some(o + 1);
        }
    }

    fn reset(&mut self) {
        self.epoch += 1;
        self.in_flight.clear();
        (self.reached, self.confirmed, self.sent) = (None, None, None);
    }
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
        parts.entry(tp).or_default().reset();
    }

    /// A partition was revoked: forget it; late acknowledgements are ignored.
    pub fn revoke(&self, tp: &Tp) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = parts.get_mut(tp) {
            p.reset();
        }
    }

    /// Records that `offset` of `tp` went to the pipeline; returns the epoch to hand back
    /// with its acknowledgement (the tests' way; the source tracks whole batches).
    #[cfg(test)]
    pub fn track(&self, tp: &Tp, offset: i64) -> u64 {
        self.track_all(std::iter::once((tp, offset)));
        self.epoch(tp)
    }

    /// Records that a batch's records (partition and offset, in order) went to the pipeline,
    /// under one lock.
    pub fn track_all<'a>(&self, records: impl Iterator<Item = (&'a Tp, i64)>) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, offset) in records {
            if !parts.contains_key(tp) {
                parts.insert(tp.clone(), Partition::default());
            }
            parts.get_mut(tp).expect("just inserted").in_flight.push_back((offset, false));
        }
    }

    /// Takes back the last tracking of each of `records`' offsets, in the order given, under
    /// one lock: their records were not taken after all (the pipeline was full), so nothing
    /// waits for them.
    pub fn untrack_all<'a>(&self, records: impl Iterator<Item = (&'a Tp, i64)>) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, offset) in records {
            if let Some(p) = parts.get_mut(tp) {
                if let Some(i) = p.in_flight.iter().rposition(|&(o, done)| o == offset && !done) {
                    p.in_flight.remove(i);
                }
            }
        }
    }

    /// The partition's current epoch (0 before its first assignment).
    pub fn epoch(&self, tp: &Tp) -> u64 {
        self.parts.lock().unwrap_or_else(|p| p.into_inner()).get(tp).map_or(0, |p| p.epoch)
    }

    /// For each record read in `(partition, epoch)`, whether that is still the partition's
    /// epoch (one look under one lock, for a whole batch).
    pub fn current<'a>(&self, records: impl Iterator<Item = (&'a Tp, u64)>) -> Vec<bool> {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        records.map(|(tp, epoch)| parts.get(tp).map_or(0, |p| p.epoch) == epoch).collect()
    }

    /// The pipeline is done with `offset`. `handled` is false when its record failed: the
    /// commit position then stays before it, so it is delivered again after a restart.
    #[cfg(test)]
    pub fn done(&self, tp: &Tp, epoch: u64, offset: i64, handled: bool) {
        self.done_all(std::iter::once((tp, epoch, offset, handled)));
    }

    /// The pipeline is done with each of a batch's records (partition, epoch, offset, and
    /// whether handled: see [`Partition::done`]), under one lock.
    pub fn done_all<'a>(&self, records: impl Iterator<Item = (&'a Tp, u64, i64, bool)>) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, epoch, offset, handled) in records {
            if let Some(p) = parts.get_mut(tp) {
                p.done(epoch, offset, handled);
            }
        }
        self.changed.notify_all();
    }

    /// Commit positions to send: those that moved since they were last sent, and those sent
    /// at least `resend` ago and not confirmed yet.
    pub fn take_ready(&self, resend: Duration) -> Vec<(Tp, i64)> {
        let now = Instant::now();
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let mut ready = Vec::new();
        for (tp, p) in parts.iter_mut() {
            let Some(reached) = p.reached else { continue };
            let waiting = p.sent.is_some_and(|(o, at)| o == reached && now.duration_since(at) < resend);
            if p.confirmed != Some(reached) && !waiting {
                p.sent = Some((reached, now));
                ready.push((tp.clone(), reached));
            }
        }
        ready
    }

    /// The broker confirmed `offset` as `tp`'s commit position.
    pub fn confirm(&self, tp: &Tp, offset: i64) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = parts.get_mut(tp) {
            p.confirmed = p.confirmed.max(Some(offset));
        }
    }

    /// The commit position each of `tps` settled (the broker's or the acknowledgements'),
    /// for those that settled one in their present assignment.
    pub fn positions(&self, tps: &[Tp]) -> BTreeMap<Tp, i64> {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        tps.iter().filter_map(|tp| Some((tp.clone(), parts.get(tp).and_then(|p| p.reached.max(p.confirmed))?))).collect()
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
        let hour = Duration::from_secs(3600);
        let e = (0..4).map(|o| t.track(&tp(0), o)).last().unwrap();
        t.done(&tp(0), e, 1, true);
        assert!(t.take_ready(hour).is_empty(), "offset 0 is still in flight");
        t.done(&tp(0), e, 0, true);
        assert_eq!(t.take_ready(hour), vec![(tp(0), 2)]);
        t.done(&tp(0), e, 3, true);
        assert!(t.take_ready(hour).is_empty());
        t.done(&tp(0), e, 2, true);
        assert_eq!(t.take_ready(hour), vec![(tp(0), 4)]);
    }

    #[test]
    fn a_position_is_sent_again_until_the_broker_confirms_it() {
        let t = Tracker::default();
        t.assign(tp(0));
        let e = t.track(&tp(0), 0);
        t.done(&tp(0), e, 0, true);
        let hour = Duration::from_secs(3600);
        assert_eq!(t.take_ready(hour), vec![(tp(0), 1)]);
        assert!(t.take_ready(hour).is_empty(), "sent just now");
        assert_eq!(t.take_ready(Duration::ZERO), vec![(tp(0), 1)], "not confirmed: sent again");
        t.confirm(&tp(0), 1);
        assert!(t.take_ready(Duration::ZERO).is_empty(), "confirmed");
        let e = t.track(&tp(0), 1);
        t.done(&tp(0), e, 1, true);
        assert_eq!(t.take_ready(hour), vec![(tp(0), 2)], "moved since it was sent");
    }

    #[test]
    fn a_record_not_taken_after_all_holds_nothing() {
        let t = Tracker::default();
        t.assign(tp(0));
        let e = t.track(&tp(0), 0);
        t.track(&tp(0), 1);
        t.untrack_all([(&tp(0), 1)].into_iter());
        assert!(!t.wait_idle(&[tp(0)], Duration::ZERO), "offset 0 was taken");
        t.done(&tp(0), e, 0, true);
        assert!(t.wait_idle(&[tp(0)], Duration::ZERO), "offset 1 is not waited for");
        assert_eq!(t.take_ready(Duration::ZERO), vec![(tp(0), 1)]);
    }

    #[test]
    fn a_batch_is_tracked_and_settled_as_its_records_one_by_one() {
        let (one, all) = (Tracker::default(), Tracker::default());
        for t in [&one, &all] {
            t.assign(tp(0));
            t.assign(tp(1));
        }
        let records: Vec<(Tp, i64)> = vec![(tp(0), 5), (tp(1), 7), (tp(0), 6), (tp(1), 8), (tp(0), 7)];
        let e = records.iter().map(|(p, o)| one.track(p, *o)).last().unwrap();
        all.track_all(records.iter().map(|(p, o)| (p, *o)));
        // Settled out of order, one failed: the positions stop before it.
        let settled = [(tp(1), 8, true), (tp(0), 5, true), (tp(1), 7, true), (tp(0), 7, true), (tp(0), 6, false)];
        for (p, o, handled) in &settled {
            one.done(p, e, *o, *handled);
        }
        all.done_all(settled.iter().map(|(p, o, handled)| (p, e, *o, *handled)));
        assert_eq!(all.take_ready(Duration::ZERO), one.take_ready(Duration::ZERO));
        assert_eq!(all.take_ready(Duration::ZERO), vec![(tp(0), 6), (tp(1), 9)]);
        assert_eq!(all.in_flight(), one.in_flight());
    }

    #[test]
    fn a_failed_record_holds_the_commit_position() {
        let t = Tracker::default();
        t.assign(tp(1));
        let e = t.track(&tp(1), 10);
        t.track(&tp(1), 11);
        t.done(&tp(1), e, 10, false);
        t.done(&tp(1), e, 11, true);
        assert!(t.take_ready(Duration::ZERO).is_empty());
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
        assert!(t.take_ready(Duration::ZERO).is_empty());
        assert!(!t.wait_idle(&[tp(0)], Duration::from_millis(10)));
    }
}
