//! Each event's uid, time and `id` as `rollup_journeys` keeps them, per tenant and bucket
//! of [`BUCKET`] uids (20 bytes an event: the 12 of [`super::events`], then the `id`, all
//! little-endian), and a user's journey read from them: the bucket's entries, the user's
//! kept, sorted by time and `id`, and a page of their rows fetched by primary key.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::keys::KeyRecord;
use crate::query::{Queries, Range};
use crate::reply::ApiError;

/// uids a bucket holds: a journey reads its bucket, about `BUCKET / users` of the tenant's
/// entries.
pub const BUCKET: u32 = 256;
/// Most bytes a segment grows to by appending (a segment stays in its row, uncompressed);
/// a drain's own larger share of a bucket is a segment of its own.
pub const SEGMENT_BYTES: usize = 1_900;
/// Bytes an entry takes.
const RECORD: usize = 20;
/// The columns a journey's page reads, in the order its answer takes them, whether from
/// the rollups or (with the rollups off) from the events table alone.
pub const COLUMNS: &str = "event_name, timestamp, properties, session_id, page_url, id";

/// The bucket of user `uid`.
pub fn bucket(uid: u32) -> i32 {
    (uid / BUCKET) as i32
}

/// Appends one entry.
pub fn push(out: &mut Vec<u8>, uid: u32, micros: i64, id: i64) {
    super::events::push(out, uid, micros);
    out.extend_from_slice(&id.to_le_bytes());
}

/// The entries of a segment, as `(uid, µs, id)` (a trailing partial entry is ignored).
pub fn decode(data: &[u8]) -> impl Iterator<Item = (u32, i64, i64)> + '_ {
    data.chunks_exact(RECORD).map(|c| {
        let (head, id) = c.split_at(RECORD - 8);
        let (uid, at) = super::events::read(head);
        (uid, at, i64::from_le_bytes(id.try_into().expect("8 bytes")))
    })
}

/// Where a page starts: after this time and `id` (a cursor), or at the range's start.
pub type After = Option<(DateTime<Utc>, i64)>;

/// The `(µs, id)` of `uid`'s entries in `segments` within `[start, end)` (µs, open when
/// `None`) and after `after`, in time then `id` order.
pub fn entries<'a>(segments: impl Iterator<Item = &'a [u8]>, uid: u32, r: &Range, after: After) -> Vec<(i64, i64)> {
    let range = r.micros();
    let after = after.map(|(t, id)| (t.timestamp_micros(), id));
    let mut found: Vec<(i64, i64)> = segments
        .flat_map(decode)
        .filter(|(u, t, id)| *u == uid && range.holds(*t) && after.is_none_or(|a| (*t, *id) > a))
        .map(|(_, t, id)| (t, id))
        .collect();
    found.sort_unstable();
    found
}

impl Queries {
    /// A page of at most `limit` of `user`'s events in `r` after `after`, from the rollups:
    /// their rows ([`COLUMNS`]) in time order, and where the next page starts when there is
    /// one. A row deleted since it was rolled up (by a retention sweep) is left out of its
    /// page.
    pub async fn journey_rolled(
        &self,
        key: &KeyRecord,
        user: &str,
        r: &Range,
        after: After,
        limit: usize,
    ) -> Result<(Vec<Row>, After), ApiError> {
        self.caught_up().await?;
        let s = &self.schema;
        // The user's number first (a join on `uid / BUCKET` would not be an index condition
        // on the bucket, and reads every bucket of the tenant).
        let sql = format!(
            "WITH u AS MATERIALIZED (SELECT uid FROM {s}.rollup_users WHERE org_id = $1 AND project_id = $2 AND user_id = $3)
             SELECT (SELECT uid FROM u), data FROM {s}.rollup_journeys
             WHERE org_id = $1 AND project_id = $2 AND bucket = (SELECT uid / {BUCKET} FROM u)"
        );
        let segments = self.rows(&sql, &[&key.org_id, &key.project_id, &user]).await?;
        let Some(uid) = segments.first().map(|row| row.get::<_, i32>(0) as u32) else { return Ok((Vec::new(), None)) };
        let found = entries(segments.iter().map(|row| row.get::<_, &[u8]>(1)), uid, r, after);
        let page = &found[..found.len().min(limit)];
        let next = match page.last() {
            Some((t, id)) if found.len() > limit => DateTime::<Utc>::from_timestamp_micros(*t).map(|t| (t, *id)),
            _ => None,
        };
        let ids: Vec<i64> = page.iter().map(|(_, id)| *id).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM {}
             WHERE org_id = $1 AND project_id = $2 AND user_id = $3 AND id = ANY($4) ORDER BY timestamp, id",
            self.table
        );
        let params: [&(dyn ToSql + Sync); 4] = [&key.org_id, &key.project_id, &user, &ids];
        Ok((self.rows(&sql, &params).await?, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn a_users_entries_in_range_after_the_cursor_in_time_then_id_order() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        push(&mut a, 7, 30_000_000, 5);
        push(&mut a, 8, 10_000_000, 1);
        push(&mut a, 7, 10_000_000, 9);
        push(&mut b, 7, 10_000_000, 3);
        push(&mut b, 7, 50_000_000, 4);
        push(&mut b, 7, 5_000_000, 2);
        assert_eq!(a.len(), 60);
        assert_eq!(decode(&a).nth(1), Some((8, 10_000_000, 1)));
        let segments = || [a.as_slice(), b.as_slice()].into_iter();
        let all = Range::default();
        assert_eq!(
            entries(segments(), 7, &all, None),
            [(5_000_000, 2), (10_000_000, 3), (10_000_000, 9), (30_000_000, 5), (50_000_000, 4)]
        );
        // The range is half-open; the cursor is the last entry of the page before.
        let r = Range { start: Some(t(10)), end: Some(t(50)) };
        assert_eq!(entries(segments(), 7, &r, Some((t(10), 3))), [(10_000_000, 9), (30_000_000, 5)]);
        assert_eq!(entries(segments(), 9, &all, None), []);
    }

    #[test]
    fn users_share_a_bucket_by_their_numbers() {
        assert_eq!((bucket(0), bucket(BUCKET - 1), bucket(BUCKET)), (0, 0, 1));
        assert_eq!(bucket(u32::MAX), (u32::MAX / BUCKET) as i32);
    }
}
