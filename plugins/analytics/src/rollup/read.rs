//! Reading the rollups, for the queries.

use chrono::{DateTime, NaiveDate, Utc};
use roaring::RoaringBitmap;
use tokio_postgres::types::ToSql;

use crate::keys::KeyRecord;
use crate::query::Queries;
use crate::reply::ApiError;

/// One day and event name (`""`: any event) of a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct DayCount {
    pub day: NaiveDate,
    pub name: String,
    pub events: i64,
    pub users: i64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

/// Users per day of one event name, in day order.
pub type DaySets = Vec<(NaiveDate, RoaringBitmap)>;

impl Queries {
    /// Rolls up what is queued, so that the rollups hold every stored event (503 when it
    /// cannot, the reason logged).
    pub async fn caught_up(&self) -> Result<(), ApiError> {
        self.rollups.drain(&self.db).await.map(drop).map_err(|e| {
            self.ctx.warn(&e);
            ApiError::unavailable()
        })
    }

    /// Every day and event name in `[start, end)` (all days when `None`), in day order.
    pub async fn day_counts(&self, key: &KeyRecord, days: Option<(NaiveDate, NaiveDate)>) -> Result<Vec<DayCount>, ApiError> {
        let (start, end) = (days.map(|d| d.0), days.map(|d| d.1));
        let sql = format!(
            "SELECT day, event_name, events, users, first_at, last_at FROM {}.rollup_days
             WHERE org_id = $1 AND project_id = $2 AND ($3::date IS NULL OR day >= $3) AND ($4::date IS NULL OR day < $4) ORDER BY day",
            self.schema
        );
        let params: [&(dyn ToSql + Sync); 4] = [&key.org_id, &key.project_id, &start, &end];
        let rows = self.rows(&sql, &params).await?;
        Ok(rows
            .iter()
            .map(|r| DayCount { day: r.get(0), name: r.get(1), events: r.get(2), users: r.get(3), first: r.get(4), last: r.get(5) })
            .collect())
    }

    /// The users of each day with an `event` (`""`: any event) from `from` (inclusive) to
    /// `to` (exclusive), either end open when `None`, in day order.
    pub async fn day_sets(
        &self,
        key: &KeyRecord,
        event: &str,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<DaySets, ApiError> {
        let sql = format!(
            "SELECT day, user_set FROM {}.rollup_days WHERE org_id = $1 AND project_id = $2 AND event_name = $3
               AND ($4::date IS NULL OR day >= $4) AND ($5::date IS NULL OR day < $5) ORDER BY day",
            self.schema
        );
        let params: [&(dyn ToSql + Sync); 5] = [&key.org_id, &key.project_id, &event, &from, &to];
        let rows = self.rows(&sql, &params).await?;
        rows.iter()
            .map(|r| {
                let users = RoaringBitmap::deserialize_from(r.get::<_, &[u8]>(1)).map_err(|e| {
                    self.ctx.warn(&format!("a set of users in {}.rollup_days cannot be read: {e}", self.schema));
                    ApiError::unavailable()
                })?;
                Ok((r.get(0), users))
            })
            .collect()
    }
}

/// The union of `sets`.
pub fn union<'a>(sets: impl IntoIterator<Item = &'a RoaringBitmap>) -> RoaringBitmap {
    let mut out = RoaringBitmap::new();
    for s in sets {
        out |= s;
    }
    out
}
