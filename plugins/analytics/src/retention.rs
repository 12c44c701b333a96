//! `GET /api/v1/retention?cohort=EVENT&days=N&startDate&endDate[&returnEvent][&mode]`.
//!
//! A cohort is the users whose **first** `cohort` event (ever) falls on one UTC day inside
//! the range; `retained[k]` counts the users of the cohort with a return event (any event,
//! or `returnEvent`) on day k after it (`mode=on`, the default) or on day k or later
//! (`mode=on_or_after`), day 0 being the cohort day itself, wherever the return falls
//! (after `endDate` too). With both dates every day of the range is a cohort, empty or not.

use std::collections::{BTreeMap, HashMap};

use chrono::{Duration, NaiveDate};
use roaring::RoaringBitmap;
use weir_plugin::serde_json::{json, Value};

use crate::keys::KeyRecord;
use crate::query::{range, Queries};
use crate::reply::ApiError;

/// Most days a retention answer follows.
const MAX_DAYS: i32 = 365;
/// Most cohorts (days) one answer lists.
const MAX_COHORTS: i64 = 3660;

/// Whether a return counts on day k only or on day k or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    On,
    OnOrAfter,
}

impl Queries {
    /// Cohorts by first `cohort` event, and how many of each came back on each day after.
    pub async fn retention(&self, key: &KeyRecord, params: &HashMap<String, String>) -> Result<Value, ApiError> {
        let cohort = params
            .get("cohort")
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| ApiError::parameter("cohort is required: the event that puts a user in a cohort (e.g. signup)"))?;
        let days = match params.get("days") {
            None => 7,
            Some(d) => d
                .parse::<i32>()
                .ok()
                .filter(|d| (0..=MAX_DAYS).contains(d))
                .ok_or_else(|| ApiError::parameter(format!("days {d:?} must be a whole number from 0 to {MAX_DAYS}")))?,
        };
        let mode = match params.get("mode").map(String::as_str) {
            None | Some("on") => Mode::On,
            Some("on_or_after") => Mode::OnOrAfter,
            Some(other) => return Err(ApiError::parameter(format!("mode {other:?} must be on or on_or_after"))),
        };
        let returning = params.get("returnEvent").filter(|r| !r.is_empty());
        let r = range(params)?;
        if let (Some(s), Some(e)) = (r.start, r.end) {
            if (e - s).num_days() > MAX_COHORTS {
                return Err(ApiError::parameter(format!("the range holds more than {MAX_COHORTS} days of cohorts; shorten it")));
            }
        }
        let ask = Ask { cohort, returning: returning.map(String::as_str), days, mode };
        let counts = match crate::rollup::bounds(&r) {
            Some(bounds) if self.rolled() => self.cohorts_rolled(key, ask, bounds).await?,
            None if self.rolled() => self.cohorts_exact(key, ask, &r).await?,
            _ => self.cohorts_raw(key, ask, &r).await?,
        };
        let width = days as usize + 1;
        let mut by_day: BTreeMap<NaiveDate, (i64, Vec<i64>)> = BTreeMap::new();
        if let (Some(s), Some(e)) = (r.start, r.end) {
            let mut d = s.date_naive();
            while d < e.date_naive() || (d == e.date_naive() && e.time() != chrono::NaiveTime::MIN) {
                by_day.insert(d, (0, vec![0; width]));
                d += Duration::days(1);
            }
        }
        for (day, k, n) in counts {
            let entry = by_day.entry(day).or_insert_with(|| (0, vec![0; width]));
            match k {
                -1 => entry.0 = n,
                k if (0..width as i32).contains(&k) => entry.1[k as usize] += n,
                _ => {}
            }
        }
        let cohorts: Vec<Value> = by_day
            .into_iter()
            .map(|(day, (users, mut retained))| {
                if mode == Mode::OnOrAfter {
                    // Counted at each user's latest return day: on or after k is the sum from k on.
                    for k in (0..width.saturating_sub(1)).rev() {
                        retained[k] += retained[k + 1];
                    }
                }
                let rates: Vec<f64> = retained.iter().map(|n| if users == 0 { 0.0 } else { *n as f64 / users as f64 }).collect();
                json!({"date": day.format("%Y-%m-%d").to_string(), "users": users, "retained": retained, "rates": rates})
            })
            .collect();
        Ok(json!({
            "cohortEvent": cohort, "returnEvent": returning, "days": days,
            "mode": if mode == Mode::On { "on" } else { "on_or_after" }, "cohorts": cohorts,
        }))
    }
}

/// What a retention request asks.
#[derive(Debug, Clone, Copy)]
struct Ask<'a> {
    /// The event that puts a user in a cohort.
    cohort: &'a str,
    /// The event that counts as a return (`None`: any event).
    returning: Option<&'a str>,
    /// Days followed after the cohort day.
    days: i32,
    mode: Mode,
}

/// Per cohort day: `(day, -1, users)`, and `(day, k, users)` back on day k (mode on) or
/// whose latest return is on day k (mode on_or_after, k capped at `days`).
type Counts = Vec<(NaiveDate, i32, i64)>;

impl Queries {
    /// The cohorts counted over the events.
    async fn cohorts_raw(&self, key: &KeyRecord, ask: Ask<'_>, r: &crate::query::Range) -> Result<Counts, ApiError> {
        let (t, days, returning) = (&self.table, ask.days, ask.returning);
        // Each user's cohort day; then, per cohort day and day offset k, users with a return
        // on day k (mode on, k ≤ days) or each user's latest return day (mode on_or_after).
        let cohorts_sql = format!(
            "WITH firsts AS (SELECT user_id, min(timestamp) AS first FROM {t} WHERE org_id = $1 AND project_id = $2 AND event_name = $3 GROUP BY user_id),
                  cohort AS (SELECT user_id, (first AT TIME ZONE 'UTC')::date AS day FROM firsts
                             WHERE ($4::timestamptz IS NULL OR first >= $4) AND ($5::timestamptz IS NULL OR first < $5))"
        );
        let returns = format!(
            "SELECT c.day, c.user_id, ((e.timestamp AT TIME ZONE 'UTC')::date - c.day) AS k FROM cohort c JOIN {t} e
               ON e.org_id = $1 AND e.project_id = $2 AND e.user_id = c.user_id AND ($6::text IS NULL OR e.event_name = $6)
              AND e.timestamp >= (c.day::timestamp AT TIME ZONE 'UTC')"
        );
        let sql = match ask.mode {
            Mode::On => format!(
                "{cohorts_sql}, r AS ({returns} AND e.timestamp < ((c.day + $7::int + 1)::timestamp AT TIME ZONE 'UTC'))
                 SELECT day, -1 AS k, count(*)::bigint FROM cohort GROUP BY day
                 UNION ALL SELECT day, k, count(DISTINCT user_id)::bigint FROM r GROUP BY day, k"
            ),
            Mode::OnOrAfter => format!(
                "{cohorts_sql}, r AS ({returns}), latest AS (SELECT day, user_id, max(k) AS k FROM r GROUP BY day, user_id)
                 SELECT day, -1 AS k, count(*)::bigint FROM cohort GROUP BY day
                 UNION ALL SELECT day, LEAST(k, $7::int), count(*)::bigint FROM latest GROUP BY day, LEAST(k, $7::int)"
            ),
        };
        let rows = self.rows(&sql, &[&key.org_id, &key.project_id, &ask.cohort, &r.start, &r.end, &returning, &days]).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
    }

    /// The cohorts counted from the rollups' sets of users per day: each day's newcomers to
    /// `cohort`, then their returns.
    async fn cohorts_rolled(&self, key: &KeyRecord, ask: Ask<'_>, bounds: Option<(NaiveDate, NaiveDate)>) -> Result<Counts, ApiError> {
        self.caught_up().await?;
        let (from, to) = (bounds.map(|b| b.0), bounds.map(|b| b.1));
        let mut seen = RoaringBitmap::new();
        let mut firsts: Vec<(NaiveDate, RoaringBitmap)> = Vec::new();
        for (day, users) in self.day_sets(key, ask.cohort, None, to).await? {
            let first = &users - &seen;
            seen |= users;
            if from.is_none_or(|s| day >= s) && !first.is_empty() {
                firsts.push((day, first));
            }
        }
        self.returns_of(key, firsts, ask).await
    }
}

impl Queries {
    /// The cohorts of a range that is not whole days: each user's first `cohort` event from
    /// the rollups' events, then their returns from the sets of users per day.
    async fn cohorts_exact(&self, key: &KeyRecord, ask: Ask<'_>, r: &crate::query::Range) -> Result<Counts, ApiError> {
        let mut firsts: HashMap<u32, i64> = HashMap::new();
        let before_end = crate::query::Range { start: None, end: r.end };
        self.each_event(key, &before_end, Some(ask.cohort), |_, uid, t| {
            let first = firsts.entry(uid).or_insert(t);
            *first = (*first).min(t);
        })
        .await?;
        let mut by_day: BTreeMap<NaiveDate, RoaringBitmap> = BTreeMap::new();
        for (uid, t) in firsts {
            let Some(at) = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t) else { continue };
            if r.start.is_none_or(|s| at >= s) {
                by_day.entry(at.date_naive()).or_default().insert(uid);
            }
        }
        let firsts: Vec<(NaiveDate, RoaringBitmap)> = by_day.into_iter().collect();
        self.returns_of(key, firsts, ask).await
    }
}

impl Queries {
    /// Counts the returns of the cohorts `firsts` (users by cohort day, in day order).
    async fn returns_of(&self, key: &KeyRecord, firsts: Vec<(NaiveDate, RoaringBitmap)>, ask: Ask<'_>) -> Result<Counts, ApiError> {
        let Some(earliest) = firsts.first().map(|f| f.0) else { return Ok(Vec::new()) };
        let back = self.day_sets(key, ask.returning.unwrap_or(""), Some(earliest), None).await?;
        Ok(counted(&firsts, back, ask.days, ask.mode))
    }
}

/// Counts each cohort's returns: `firsts` are the cohorts' users by day, `back` the users
/// with a return event by day (both in day order).
fn counted(firsts: &[(NaiveDate, RoaringBitmap)], back: crate::rollup::DaySets, days: i32, mode: Mode) -> Counts {
    let mut out = Counts::new();
    match mode {
        Mode::On => {
            let back: BTreeMap<NaiveDate, RoaringBitmap> = back.into_iter().collect();
            for (day, users) in firsts {
                out.push((*day, -1, users.len() as i64));
                for k in 0..=days {
                    if let Some(b) = back.get(&(*day + Duration::days(i64::from(k)))) {
                        out.push((*day, k, users.intersection_len(b) as i64));
                    }
                }
            }
        }
        Mode::OnOrAfter => {
            // The users back on each day or later.
            let mut later: BTreeMap<NaiveDate, RoaringBitmap> = BTreeMap::new();
            let mut acc = RoaringBitmap::new();
            for (day, users) in back.into_iter().rev() {
                acc |= users;
                later.insert(day, acc.clone());
            }
            let empty = RoaringBitmap::new();
            for (day, users) in firsts {
                out.push((*day, -1, users.len() as i64));
                let from = |k: i32| {
                    let at = *day + Duration::days(i64::from(k));
                    users.intersection_len(later.range(at..).next().map_or(&empty, |(_, s)| s)) as i64
                };
                // Counted at each user's latest return day (capped at `days`), as the caller sums them up.
                let at_least: Vec<i64> = (0..=days).map(from).collect();
                for k in 0..=days as usize {
                    out.push((*day, k as i32, at_least[k] - at_least.get(k + 1).copied().unwrap_or(0)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 1, day).unwrap()
    }

    fn set(uids: &[u32]) -> RoaringBitmap {
        uids.iter().copied().collect()
    }

    #[test]
    fn returns_count_on_their_day_or_from_it_on() {
        let firsts = vec![(d(1), set(&[1, 2, 3]))];
        let back = vec![(d(1), set(&[1, 2, 3])), (d(2), set(&[1])), (d(4), set(&[2]))];
        let mut on = counted(&firsts, back.clone(), 2, Mode::On);
        on.sort();
        assert_eq!(on, vec![(d(1), -1, 3), (d(1), 0, 3), (d(1), 1, 1)]);
        // Latest returns: user 3 on day 0, user 1 on day 1, user 2 on day 3 (capped at 2).
        let mut after = counted(&firsts, back, 2, Mode::OnOrAfter);
        after.sort();
        assert_eq!(after, vec![(d(1), -1, 3), (d(1), 0, 1), (d(1), 1, 1), (d(1), 2, 1)]);
    }
}
