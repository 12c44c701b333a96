//! The analytics queries over the events table, always within the key's tenant:
//! `events/summary`, `metrics` and a user's `journey`.
//!
//! Dates are `YYYY-MM-DD` (whole UTC days, `endDate` inclusive) or RFC 3339 times (then
//! `endDate` is the last instant included). Without `startDate` / `endDate` a query covers
//! all time.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use tokio_postgres::types::ToSql;
use weir_plugin::serde_json::{json, Map, Value};
use weir_plugin::Context;

use crate::db::{detail, Db};
use crate::ingest::parse_time;
use crate::keys::{iso, KeyRecord};
use crate::reply::ApiError;
use crate::rollup::journey::After;

/// Most buckets one metrics answer holds.
const MAX_BUCKETS: usize = 10_000;

/// A half-open time range `[start, end)`; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    /// First instant included.
    pub start: Option<DateTime<Utc>>,
    /// First instant after the range.
    pub end: Option<DateTime<Utc>>,
}

impl Range {
    /// The range in microseconds since 1970, as the rollups keep times.
    pub fn micros(&self) -> Micros {
        Micros { start: self.start.map(|t| t.timestamp_micros()), end: self.end.map(|t| t.timestamp_micros()) }
    }
}

/// A half-open range `[start, end)` of microseconds since 1970; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Micros {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl Micros {
    /// Whether `t` falls within the range.
    pub fn holds(&self, t: i64) -> bool {
        self.start.is_none_or(|s| t >= s) && self.end.is_none_or(|e| t < e)
    }
}

fn day(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// Reads `startDate` / `endDate`.
pub fn range(params: &HashMap<String, String>) -> Result<Range, ApiError> {
    let read = |name: &str, end: bool| -> Result<Option<DateTime<Utc>>, ApiError> {
        let Some(text) = params.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) else { return Ok(None) };
        if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Some(if end { day(date) + Duration::days(1) } else { day(date) }));
        }
        match parse_time(text) {
            Some(t) if end => Ok(Some(t + Duration::microseconds(1))),
            Some(t) => Ok(Some(t)),
            None => Err(ApiError::parameter(format!("{name} {text:?} is not a date (YYYY-MM-DD) or an ISO-8601 time"))),
        }
    };
    let r = Range { start: read("startDate", false)?, end: read("endDate", true)? };
    if let (Some(s), Some(e)) = (r.start, r.end) {
        if s >= e {
            return Err(ApiError::parameter("startDate is after endDate"));
        }
    }
    Ok(r)
}

/// The queries' shared parts.
pub struct Queries {
    /// The connection.
    pub db: std::sync::Arc<Db>,
    /// The events table.
    pub table: String,
    /// The schema of the tables the API keeps (funnels, rollups).
    pub schema: String,
    /// Whether the rollups are kept (the trigger is on the events table): queries over whole
    /// days then read them instead of the events.
    pub rolled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The rollups, drained before each query that reads them.
    pub rollups: std::sync::Arc<crate::rollup::Rollups>,
    /// For logging database errors (which clients do not see).
    pub ctx: Context,
}

/// The tenant and range condition on parameters `$1`–`$4`.
const SCOPE: &str =
    "org_id = $1 AND project_id = $2 AND ($3::timestamptz IS NULL OR timestamp >= $3) AND ($4::timestamptz IS NULL OR timestamp < $4)";

impl Queries {
    /// The answer for a query PostgreSQL refused: 422 when a value cannot be compared (a
    /// data exception, such as the NUL character in a parameter), 503 otherwise (logged).
    pub fn refused(&self, what: &str, e: &tokio_postgres::Error) -> ApiError {
        if e.code().is_some_and(|c| c.code().starts_with("22")) {
            return ApiError::parameter(format!(
                "a parameter holds a value PostgreSQL cannot take ({}); remove NUL characters and keep numbers in range",
                e.as_db_error().map(|d| d.message()).unwrap_or("a data exception")
            ));
        }
        self.ctx.warn(&format!("{what} failed: {}", detail(e)));
        ApiError::unavailable()
    }

    /// The shared connection, or 503 (the reason logged).
    pub(crate) async fn client(&self) -> Result<std::sync::Arc<tokio_postgres::Client>, ApiError> {
        self.db.client().await.map_err(|e| {
            self.ctx.warn(&e);
            ApiError::unavailable()
        })
    }

    /// A query's rows; none while the events table does not exist yet.
    pub(crate) async fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, ApiError> {
        match self.client().await?.query(sql, params).await {
            Ok(rows) => Ok(rows),
            // The table appears with the first batch the postgres sink writes.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
            Err(e) => Err(self.refused("analytics query", &e)),
        }
    }

    /// Whether the rollups can be read.
    pub fn rolled(&self) -> bool {
        self.rolled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `GET /api/v1/events/summary`: from the rollups over whole days or all time, else from the events.
    pub async fn summary(&self, key: &KeyRecord, params: &HashMap<String, String>) -> Result<Value, ApiError> {
        let r = range(params)?;
        if self.rolled() {
            let Some(days) = crate::rollup::bounds(&r) else { return self.summary_exact(key, &r).await };
            self.caught_up().await?;
            let mut by_name: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
            let (mut first, mut last): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
            for c in self.day_counts(key, days).await? {
                if c.name.is_empty() {
                    first = Some(first.map_or(c.first, |f| f.min(c.first)));
                    last = Some(last.map_or(c.last, |l| l.max(c.last)));
                } else {
                    *by_name.entry(c.name).or_default() += c.events;
                }
            }
            let sets = self.day_sets(key, "", days.map(|d| d.0), days.map(|d| d.1)).await?;
            let users = crate::rollup::union(sets.iter().map(|(_, s)| s)).len();
            return Ok(json!({
                "totalEvents": by_name.values().sum::<i64>(), "uniqueUsers": users, "eventsByName": by_name,
                "firstEventAt": first.map(iso), "lastEventAt": last.map(iso),
            }));
        }
        let scope: [&(dyn ToSql + Sync); 4] = [&key.org_id, &key.project_id, &r.start, &r.end];
        let t = &self.table;
        let totals = self
            .rows(
                &format!("SELECT count(*)::bigint, count(DISTINCT user_id)::bigint, min(timestamp), max(timestamp) FROM {t} WHERE {SCOPE}"),
                &scope,
            )
            .await?;
        let names = self
            .rows(&format!("SELECT event_name, count(*)::bigint FROM {t} WHERE {SCOPE} GROUP BY event_name ORDER BY event_name"), &scope)
            .await?;
        let mut by_name = Map::new();
        for row in &names {
            by_name.insert(row.get::<_, String>(0), json!(row.get::<_, i64>(1)));
        }
        let (total, users, first, last) = match totals.first() {
            Some(row) => {
                (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, Option<DateTime<Utc>>>(2), row.get::<_, Option<DateTime<Utc>>>(3))
            }
            None => (0, 0, None, None),
        };
        Ok(json!({
            "totalEvents": total, "uniqueUsers": users, "eventsByName": by_name,
            "firstEventAt": first.map(iso), "lastEventAt": last.map(iso),
        }))
    }

    /// `GET /api/v1/metrics`: counts and unique users per bucket; with both dates, every
    /// bucket of the range is listed (empty ones with 0).
    pub async fn metrics(&self, key: &KeyRecord, params: &HashMap<String, String>) -> Result<Value, ApiError> {
        let r = range(params)?;
        let interval = params.get("interval").map(String::as_str).unwrap_or("daily");
        let unit = Unit::parse(interval)?;
        let event = params.get("event").filter(|e| !e.is_empty());
        if let (Some(s), Some(e)) = (r.start, r.end) {
            if unit.count(s, e) > MAX_BUCKETS {
                return Err(ApiError::parameter(format!(
                    "the range holds more than {MAX_BUCKETS} {interval} buckets; choose a longer interval or a shorter range"
                )));
            }
        }
        let found = match crate::rollup::whole_days(&r).filter(|_| self.rolled() && unit != Unit::Hour) {
            Some(days) => self.buckets_rolled(key, unit, days, event.map(String::as_str)).await?,
            None if self.rolled() => self.buckets_exact(key, unit, &r, event.map(String::as_str)).await?,
            None => {
                let sql = format!(
                    "SELECT date_trunc('{}', timestamp AT TIME ZONE 'UTC') AS b, count(*)::bigint, count(DISTINCT user_id)::bigint
                     FROM {} WHERE {SCOPE} AND ($5::text IS NULL OR event_name = $5) GROUP BY b ORDER BY b",
                    unit.sql(),
                    self.table
                );
                let rows = self.rows(&sql, &[&key.org_id, &key.project_id, &r.start, &r.end, &event]).await?;
                rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect()
            }
        };
        let bucket = |start: NaiveDateTime, count: i64, users: i64| json!({"start": iso(Utc.from_utc_datetime(&start)), "count": count, "uniqueUsers": users});
        let buckets: Vec<Value> = match (r.start, r.end) {
            (Some(s), Some(e)) => {
                let mut at = unit.floor(s.naive_utc());
                let mut rows = found.iter().peekable();
                let mut out = Vec::new();
                while at < e.naive_utc() {
                    match rows.peek() {
                        Some((b, c, u)) if *b == at => {
                            out.push(bucket(at, *c, *u));
                            rows.next();
                        }
                        _ => out.push(bucket(at, 0, 0)),
                    }
                    at = unit.next(at);
                }
                out
            }
            _ => found.iter().map(|(b, c, u)| bucket(*b, *c, *u)).collect(),
        };
        Ok(json!({"event": event, "interval": interval, "buckets": buckets}))
    }

    /// `GET /api/v1/users/{userId}/journey`: the user's events in time order, a page at a
    /// time (`limit`, and `cursor` from the previous page's `nextCursor`).
    pub async fn journey(&self, key: &KeyRecord, user: &str, params: &HashMap<String, String>, most: u32) -> Result<Value, ApiError> {
        let r = range(params)?;
        let limit = match params.get("limit") {
            None => most,
            Some(l) => match l.parse::<u32>() {
                Ok(n) if (1..=most).contains(&n) => n,
                _ => return Err(ApiError::parameter(format!("limit {l:?} must be a whole number from 1 to {most}"))),
            },
        };
        let after = match params.get("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => {
                let parsed = c
                    .split_once('_')
                    .and_then(|(t, id)| Some((DateTime::<Utc>::from_timestamp_micros(t.parse::<i64>().ok()?)?, id.parse::<i64>().ok()?)));
                Some(parsed.ok_or_else(|| ApiError::parameter("cursor is not one this API gave; use nextCursor as it came"))?)
            }
        };
        let (page, next) = match self.rolled() {
            true => self.journey_rolled(key, user, &r, after, limit as usize).await?,
            false => self.journey_scanned(key, user, &r, after, limit as usize).await?,
        };
        let events: Vec<Value> = page
            .iter()
            .map(|row| {
                json!({
                    "eventName": row.get::<_, String>(0), "timestamp": iso(row.get(1)),
                    "properties": row.get::<_, Option<Value>>(2).unwrap_or_else(|| json!({})),
                    "sessionId": row.get::<_, Option<String>>(3), "pageUrl": row.get::<_, Option<String>>(4),
                })
            })
            .collect();
        let next = next.map(|(t, id)| format!("{}_{id}", t.timestamp_micros()));
        Ok(json!({"userId": user, "events": events, "nextCursor": next}))
    }

    /// A page of a journey read from the events table (while the rollups are not kept),
    /// as [`Queries::journey_rolled`] gives it.
    async fn journey_scanned(
        &self,
        key: &KeyRecord,
        user: &str,
        r: &Range,
        after: After,
        limit: usize,
    ) -> Result<(Vec<tokio_postgres::Row>, After), ApiError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE {SCOPE} AND user_id = $5
             AND ($6::timestamptz IS NULL OR (timestamp, id) > ($6, $7)) ORDER BY timestamp, id LIMIT $8",
            crate::rollup::journey::COLUMNS,
            self.table
        );
        let (after_time, after_id) = (after.map(|a| a.0), after.map(|a| a.1));
        let fetch = limit as i64 + 1;
        let mut rows = self.rows(&sql, &[&key.org_id, &key.project_id, &r.start, &r.end, &user, &after_time, &after_id, &fetch]).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = rows.last().filter(|_| more).map(|row| (row.get::<_, DateTime<Utc>>(1), row.get::<_, i64>(5)));
        Ok((rows, next))
    }
}

impl Queries {
    /// Events and unique users per bucket of whole days `[start, end)`, from the rollups:
    /// counts and users per day, and the union of the days' users per week or month.
    async fn buckets_rolled(
        &self,
        key: &KeyRecord,
        unit: Unit,
        (start, end): (NaiveDate, NaiveDate),
        event: Option<&str>,
    ) -> Result<Vec<(NaiveDateTime, i64, i64)>, ApiError> {
        self.caught_up().await?;
        let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight exists");
        let name = event.unwrap_or("");
        let mut counts: std::collections::BTreeMap<NaiveDateTime, (i64, i64)> = std::collections::BTreeMap::new();
        for c in self.day_counts(key, Some((start, end))).await?.into_iter().filter(|c| c.name == name) {
            let bucket = counts.entry(unit.floor(midnight(c.day))).or_default();
            bucket.0 += c.events;
            if unit == Unit::Day {
                bucket.1 += c.users;
            }
        }
        if unit != Unit::Day {
            let mut users: std::collections::BTreeMap<NaiveDateTime, roaring::RoaringBitmap> = std::collections::BTreeMap::new();
            for (day, set) in self.day_sets(key, name, Some(start), Some(end)).await? {
                *users.entry(unit.floor(midnight(day))).or_default() |= set;
            }
            for (bucket, set) in users {
                counts.entry(bucket).or_default().1 += set.len() as i64;
            }
        }
        Ok(counts.into_iter().map(|(b, (c, u))| (b, c, u)).collect())
    }
}

impl Queries {
    /// The summary of a range that is not whole days, from the rollups' events.
    async fn summary_exact(&self, key: &KeyRecord, r: &Range) -> Result<Value, ApiError> {
        let mut by_name: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        let mut users = roaring::RoaringBitmap::new();
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        self.each_event(key, r, None, |name, uid, t| {
            match by_name.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    by_name.insert(name.to_owned(), 1);
                }
            }
            users.insert(uid);
            first = first.min(t);
            last = last.max(t);
        })
        .await?;
        let at = |t: i64| (t != i64::MAX && t != i64::MIN).then(|| DateTime::<Utc>::from_timestamp_micros(t)).flatten().map(iso);
        Ok(json!({
            "totalEvents": by_name.values().sum::<i64>(), "uniqueUsers": users.len(), "eventsByName": by_name,
            "firstEventAt": at(first), "lastEventAt": at(last),
        }))
    }

    /// Events and unique users per bucket of a range that is not whole days, or per hour,
    /// from the rollups' events.
    async fn buckets_exact(
        &self,
        key: &KeyRecord,
        unit: Unit,
        r: &Range,
        event: Option<&str>,
    ) -> Result<Vec<(NaiveDateTime, i64, i64)>, ApiError> {
        let mut buckets: std::collections::BTreeMap<NaiveDateTime, (i64, roaring::RoaringBitmap)> = std::collections::BTreeMap::new();
        self.each_event(key, r, event, |_, uid, t| {
            if let Some(at) = DateTime::<Utc>::from_timestamp_micros(t) {
                let bucket = buckets.entry(unit.floor(at.naive_utc())).or_default();
                bucket.0 += 1;
                bucket.1.insert(uid);
            }
        })
        .await?;
        Ok(buckets.into_iter().map(|(b, (n, users))| (b, n, users.len() as i64)).collect())
    }
}

/// A metrics bucket's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Hour,
    Day,
    Week,
    Month,
}

impl Unit {
    fn parse(interval: &str) -> Result<Unit, ApiError> {
        Ok(match interval {
            "hourly" => Unit::Hour,
            "daily" => Unit::Day,
            "weekly" => Unit::Week,
            "monthly" => Unit::Month,
            other => return Err(ApiError::parameter(format!("interval {other:?} must be hourly, daily, weekly or monthly"))),
        })
    }

    fn sql(self) -> &'static str {
        match self {
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
        }
    }

    /// The start of the bucket holding `t` (weeks start on Monday, as PostgreSQL's).
    fn floor(self, t: NaiveDateTime) -> NaiveDateTime {
        let date = t.date();
        let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight exists");
        match self {
            Unit::Hour => date.and_hms_opt(t.hour(), 0, 0).expect("an hour exists"),
            Unit::Day => midnight(date),
            Unit::Week => midnight(date - Duration::days(i64::from(date.weekday().num_days_from_monday()))),
            Unit::Month => midnight(date.with_day(1).expect("the first exists")),
        }
    }

    fn next(self, t: NaiveDateTime) -> NaiveDateTime {
        match self {
            Unit::Hour => t + Duration::hours(1),
            Unit::Day => t + Duration::days(1),
            Unit::Week => t + Duration::weeks(1),
            Unit::Month => {
                let d = t.date();
                let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
                NaiveDate::from_ymd_opt(y, m, 1).expect("a first of the month").and_hms_opt(0, 0, 0).expect("midnight exists")
            }
        }
    }

    /// Buckets from `start` to `end`, counted up to just past [`MAX_BUCKETS`].
    fn count(self, start: DateTime<Utc>, end: DateTime<Utc>) -> usize {
        let (mut at, end) = (self.floor(start.naive_utc()), end.naive_utc());
        let mut n = 0;
        while at < end && n <= MAX_BUCKETS {
            at = self.next(at);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn dates_are_whole_utc_days_with_end_inclusive() {
        let r = range(&params(&[("startDate", "2024-01-01"), ("endDate", "2024-01-31")])).unwrap();
        assert_eq!(iso(r.start.unwrap()), "2024-01-01T00:00:00.000Z");
        assert_eq!(iso(r.end.unwrap()), "2024-02-01T00:00:00.000Z");
        assert_eq!(range(&params(&[])).unwrap(), Range::default());
        let e = range(&params(&[("startDate", "Jan 1")])).unwrap_err();
        assert!(e.message.starts_with("startDate"), "{e:?}");
        assert_eq!(e.status.as_u16(), 422);
        assert!(range(&params(&[("startDate", "2024-02-01"), ("endDate", "2024-01-01")])).is_err());
    }

    #[test]
    fn buckets_step_through_months_and_weeks() {
        let t = |s: &str| parse_time(s).unwrap().naive_utc();
        assert_eq!(Unit::Week.floor(t("2024-01-03T10:00:00Z")), t("2024-01-01T00:00:00Z"));
        assert_eq!(Unit::Month.next(t("2024-12-01T00:00:00Z")), t("2025-01-01T00:00:00Z"));
        assert_eq!(Unit::Hour.floor(t("2024-01-03T10:59:59Z")), t("2024-01-03T10:00:00Z"));
        assert_eq!(Unit::Day.count(parse_time("2024-01-01T00:00:00Z").unwrap(), parse_time("2024-02-01T00:00:00Z").unwrap()), 31);
        assert!(Unit::parse("yearly").unwrap_err().message.contains("interval"));
    }
}
