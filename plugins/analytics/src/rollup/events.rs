//! Each event's uid and time as `rollup_events` keeps them (12 bytes an event: the uid,
//! then the time in microseconds since 1970, both little-endian), and funnels counted over
//! them: each step is one pass over its events, in any order, keeping each user's earliest
//! event that qualifies.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use tokio_postgres::types::ToSql;

use crate::funnels::Step;
use crate::keys::KeyRecord;
use crate::query::{Micros, Queries, Range};
use crate::reply::ApiError;

/// Most bytes a segment grows to by appending (then a new one is started).
pub const SEGMENT_BYTES: usize = 65_536;
/// Bytes an event takes.
const RECORD: usize = 12;
/// Widest span of uids a funnel keeps in a dense table (32 MiB of times); wider spans
/// take a hash map.
const DENSE_SPAN: u32 = 1 << 22;

/// Appends one event.
pub fn push(out: &mut Vec<u8>, uid: u32, micros: i64) {
    out.extend_from_slice(&uid.to_le_bytes());
    out.extend_from_slice(&micros.to_le_bytes());
}

/// The events of a segment (a trailing partial record is ignored).
pub fn decode(data: &[u8]) -> impl Iterator<Item = (u32, i64)> + '_ {
    data.chunks_exact(RECORD).map(read)
}

/// The uid and time at the start of `record` (at least 12 bytes).
pub fn read(record: &[u8]) -> (u32, i64) {
    let (uid, rest) = record.split_at(4);
    (u32::from_le_bytes(uid.try_into().expect("4 bytes")), i64::from_le_bytes(rest[..8].try_into().expect("8 bytes")))
}

/// A time per user.
#[derive(Debug, Clone)]
enum PerUser {
    Dense { base: u32, at: Vec<i64> },
    Sparse(HashMap<u32, i64>),
}

/// The mark of a user with no time in a dense table.
const NONE: i64 = i64::MIN;

impl PerUser {
    /// An empty table for uids `low..=high`.
    fn spanning(low: u32, high: u32) -> PerUser {
        match high.checked_sub(low) {
            Some(span) if span < DENSE_SPAN => PerUser::Dense { base: low, at: vec![NONE; span as usize + 1] },
            _ => PerUser::Sparse(HashMap::new()),
        }
    }

    fn get(&self, uid: u32) -> Option<i64> {
        match self {
            PerUser::Dense { base, at } => uid.checked_sub(*base).and_then(|i| at.get(i as usize)).copied().filter(|t| *t != NONE),
            PerUser::Sparse(m) => m.get(&uid).copied(),
        }
    }

    /// Keeps the earlier of `t` and the user's time.
    fn keep_earliest(&mut self, uid: u32, t: i64) {
        match self {
            PerUser::Dense { base, at } => {
                if let Some(slot) = uid.checked_sub(*base).and_then(|i| at.get_mut(i as usize)) {
                    if *slot == NONE || t < *slot {
                        *slot = t;
                    }
                }
            }
            PerUser::Sparse(m) => {
                let slot = m.entry(uid).or_insert(t);
                *slot = (*slot).min(t);
            }
        }
    }

    fn each(&self) -> Box<dyn Iterator<Item = (u32, i64)> + '_> {
        match self {
            PerUser::Dense { base, at } => {
                Box::new(at.iter().enumerate().filter(|(_, t)| **t != NONE).map(move |(i, t)| (*base + i as u32, *t)))
            }
            PerUser::Sparse(m) => Box::new(m.iter().map(|(u, t)| (*u, *t))),
        }
    }

    fn empty_like(&self) -> PerUser {
        match self {
            PerUser::Dense { base, at } => PerUser::Dense { base: *base, at: vec![NONE; at.len()] },
            PerUser::Sparse(_) => PerUser::Sparse(HashMap::new()),
        }
    }
}

/// A step's users, and the mean and median seconds from the step before.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub users: i64,
    pub avg: Option<f64>,
    pub median: Option<f64>,
}

/// A funnel being counted step by step.
pub struct Funnel {
    /// Each user's entry (first step-1 event in the range).
    entry: PerUser,
    /// Each user's time at the last step counted.
    at: PerUser,
    /// Most microseconds from the entry.
    window: i64,
    counted: Vec<Counted>,
}

impl Funnel {
    /// Enters every user with a step-1 event in `range`, at their first.
    pub fn enter<'a>(segments: impl Iterator<Item = &'a [u8]> + Clone, range: Micros, window: i64) -> Funnel {
        let (mut low, mut high) = (u32::MAX, 0);
        for (uid, _) in segments.clone().flat_map(decode).filter(|(_, t)| range.holds(*t)) {
            low = low.min(uid);
            high = high.max(uid);
        }
        let mut entry = PerUser::spanning(low, high);
        for (uid, t) in segments.flat_map(decode).filter(|(_, t)| range.holds(*t)) {
            entry.keep_earliest(uid, t);
        }
        let users = entry.each().count() as i64;
        Funnel { at: entry.clone(), entry, window, counted: vec![Counted { users, avg: None, median: None }] }
    }

    /// Counts the next step: each user's first event of it strictly after their time at
    /// the step before, within the window from the entry and, with `own` (µs), within that
    /// of the step before.
    pub fn step<'a>(&mut self, segments: impl Iterator<Item = &'a [u8]>, own: Option<i64>) {
        let mut next = self.at.empty_like();
        for (uid, t) in segments.flat_map(decode) {
            let Some(before) = self.at.get(uid) else { continue };
            let entered = self.entry.get(uid).unwrap_or(before);
            if t > before && t <= entered.saturating_add(self.window) && own.is_none_or(|w| t <= before.saturating_add(w)) {
                next.keep_earliest(uid, t);
            }
        }
        let mut secs: Vec<f64> = next.each().map(|(uid, t)| (t - self.at.get(uid).unwrap_or(t)) as f64 / 1e6).collect();
        secs.sort_by(f64::total_cmp);
        let avg = (!secs.is_empty()).then(|| secs.iter().sum::<f64>() / secs.len() as f64);
        self.counted.push(Counted { users: secs.len() as i64, avg, median: median(&secs) });
        self.at = next;
    }

    /// Each step's count, in order.
    pub fn counted(self) -> Vec<Counted> {
        self.counted
    }
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

impl Queries {
    /// The segments of `event` from day `from` to day `to` (both included, open when `None`).
    async fn segments(
        &self,
        key: &KeyRecord,
        event: &str,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Vec<tokio_postgres::Row>, ApiError> {
        let sql = format!(
            "SELECT data FROM {}.rollup_events WHERE org_id = $1 AND project_id = $2 AND event_name = $3
               AND ($4::date IS NULL OR day >= $4) AND ($5::date IS NULL OR day <= $5)",
            self.schema
        );
        let params: [&(dyn ToSql + Sync); 5] = [&key.org_id, &key.project_id, &event, &from, &to];
        self.rows(&sql, &params).await
    }

    /// A funnel of steps without filters counted over `rollup_events`: one pass per step.
    pub async fn funnel_rolled(&self, key: &KeyRecord, steps: &[Step], r: &Range, window_secs: i64) -> Result<Vec<Counted>, ApiError> {
        self.caught_up().await?;
        let window = window_secs.saturating_mul(1_000_000);
        let day = |t: DateTime<Utc>| t.date_naive();
        let (from, last_entry) = (r.start.map(day), r.end.map(|e| day(e - Duration::microseconds(1))));
        let last = r.end.map(|e| day(e + Duration::microseconds(window)));
        let Some((first, rest)) = steps.split_first() else { return Ok(Vec::new()) };
        let rows = self.segments(key, &first.event_name, from, last_entry).await?;
        let mut funnel = Funnel::enter(rows.iter().map(|row| row.get::<_, &[u8]>(0)), r.micros(), window);
        drop(rows);
        for step in rest {
            let rows = self.segments(key, &step.event_name, from, last).await?;
            funnel.step(rows.iter().map(|r| r.get::<_, &[u8]>(0)), step.time_window.map(|w| w.saturating_mul(1_000_000)));
        }
        Ok(funnel.counted())
    }
}

impl Queries {
    /// Visits every event in `r` (of `event`, or of any name), as `(name, uid, µs)`, from
    /// the segments of the days it touches, streamed: the exact answer for ranges that are
    /// not whole days, without an index on the events' time.
    pub async fn each_event(
        &self,
        key: &KeyRecord,
        r: &Range,
        event: Option<&str>,
        mut visit: impl FnMut(&str, u32, i64),
    ) -> Result<(), ApiError> {
        use futures_util::StreamExt;
        self.caught_up().await?;
        let from = r.start.map(|t| t.date_naive());
        let to = r.end.map(|e| (e - Duration::microseconds(1)).date_naive());
        let range = r.micros();
        let sql = format!(
            "SELECT event_name, data FROM {}.rollup_events WHERE org_id = $1 AND project_id = $2 AND ($3::text IS NULL OR event_name = $3)
               AND ($4::date IS NULL OR day >= $4) AND ($5::date IS NULL OR day <= $5)",
            self.schema
        );
        let params: [&(dyn ToSql + Sync); 5] = [&key.org_id, &key.project_id, &event, &from, &to];
        let client = self.client().await?;
        let rows = client.query_raw(&sql, params).await.map_err(|e| self.refused("analytics query", &e))?;
        futures_util::pin_mut!(rows);
        while let Some(row) = rows.next().await {
            let row = row.map_err(|e| self.refused("analytics query", &e))?;
            let name: &str = row.get(0);
            for (uid, t) in decode(row.get(1)) {
                if range.holds(t) {
                    visit(name, uid, t);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn seg(events: &[(u32, i64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (u, t) in events {
            push(&mut out, *u, *t * S);
        }
        out
    }

    #[test]
    fn events_round_trip() {
        let data = seg(&[(1, 10), (u32::MAX, -5)]);
        assert_eq!(data.len(), 24);
        assert_eq!(decode(&data).collect::<Vec<_>>(), [(1, 10 * S), (u32::MAX, -5 * S)]);
    }

    #[test]
    fn steps_follow_in_order_within_the_window() {
        // Entry: user 1 at 10 (its first in range), user 2 at 20, user 3 at 5 is before the range.
        let entries = [seg(&[(1, 12), (1, 10), (2, 20), (3, 5)])];
        let mut f = Funnel::enter(entries.iter().map(Vec::as_slice), Micros { start: Some(10 * S), end: Some(100 * S) }, 50 * S);
        // Step 2: user 1's first after 10 is 15 (the 8 is before its entry); user 2's 80 is past its window (20 + 50).
        let second = [seg(&[(1, 30)]), seg(&[(1, 8), (1, 15), (2, 80), (3, 6)])];
        f.step(second.iter().map(Vec::as_slice), None);
        // Step 3 with its own window of 10 s from step 2: user 1 at 26 is 11 s after 15, too late; nobody converts.
        let third = [seg(&[(1, 26)])];
        f.step(third.iter().map(Vec::as_slice), Some(10 * S));
        let counted = f.counted();
        assert_eq!(counted.iter().map(|c| c.users).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!((counted[1].avg, counted[1].median), (Some(5.0), Some(5.0)));
        assert_eq!((counted[2].avg, counted[2].median), (None, None));
    }

    #[test]
    fn sparse_uids_are_counted_like_dense_ones() {
        let entries = [seg(&[(1, 10), (u32::MAX - 1, 10)])];
        let mut f = Funnel::enter(entries.iter().map(Vec::as_slice), Micros::default(), 100 * S);
        let second = [seg(&[(1, 11), (u32::MAX - 1, 14)])];
        f.step(second.iter().map(Vec::as_slice), None);
        let counted = f.counted();
        assert_eq!(counted[1], Counted { users: 2, avg: Some(2.5), median: Some(2.5) });
    }
}
