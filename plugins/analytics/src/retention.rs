//! `GET /api/v1/retention?cohort=EVENT&days=N&startDate&endDate[&returnEvent][&mode]`.
//!
//! A cohort is the users whose **first** `cohort` event (ever) falls on one UTC day inside
//! the range; `retained[k]` counts the users of the cohort with a return event (any event,
//! or `returnEvent`) on day k after it (`mode=on`, the default) or on day k or later
//! (`mode=on_or_after`), day 0 being the cohort day itself, wherever the return falls
//! (after `endDate` too). With both dates every day of the range is a cohort, empty or not.

use std::collections::{BTreeMap, HashMap};

use chrono::{Duration, NaiveDate};
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
        let counts = match crate::rollup::bounds(&r).filter(|_| self.rolled()) {
            Some(bounds) => self.cohorts_rolled(key, cohort, returning.map(String::as_str), days, mode, bounds).await?,
            None => self.cohorts_raw(key, cohort, returning, days, mode, &r).await?,
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

/// Per cohort day: `(day, -1, users)`, and `(day, k, users)` back on day k (mode on) or
/// whose latest return is on day k (mode on_or_after, k capped at `days`).
type Counts = Vec<(NaiveDate, i32, i64)>;

impl Queries {
    /// The cohorts counted over the events.
    async fn cohorts_raw(
        &self,
        key: &KeyRecord,
        cohort: &str,
        returning: Option<&String>,
        days: i32,
        mode: Mode,
        r: &crate::query::Range,
    ) -> Result<Counts, ApiError> {
        let t = &self.table;
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
        let sql = match mode {
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
        let rows = self.rows(&sql, &[&key.org_id, &key.project_id, &cohort, &r.start, &r.end, &returning, &days]).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
    }

    /// The cohorts counted from the rollups' day masks: each user's first `cohort` day, then
    /// the days they came back.
    async fn cohorts_rolled(
        &self,
        key: &KeyRecord,
        cohort: &str,
        returning: Option<&str>,
        days: i32,
        mode: Mode,
        bounds: Option<(NaiveDate, NaiveDate)>,
    ) -> Result<Counts, ApiError> {
        let first_day = |rows: &[(NaiveDate, i32)]| {
            rows.iter().filter(|(_, m)| *m != 0).map(|(month, m)| *month + Duration::days(i64::from(m.trailing_zeros()))).min()
        };
        let cohorts: Vec<(String, NaiveDate)> = self
            .masks(key, cohort, &[])
            .await?
            .into_iter()
            .filter_map(|(user, rows)| first_day(&rows).map(|d| (user, d)))
            .filter(|(_, d)| bounds.is_none_or(|(s, e)| *d >= s && *d < e))
            .collect();
        let back = self.masks(key, returning.unwrap_or(""), &[]).await?;
        let mut counts: std::collections::HashMap<(NaiveDate, i32), i64> = std::collections::HashMap::new();
        for (user, day) in cohorts {
            *counts.entry((day, -1)).or_default() += 1;
            let Some(rows) = back.get(&user) else { continue };
            let active = rows.iter().flat_map(|(month, m)| crate::rollup::days_of(*month, *m)).filter(|d| *d >= day);
            match mode {
                Mode::On => {
                    let mut ks: Vec<i32> = active.map(|d| (d - day).num_days() as i32).filter(|k| *k <= days).collect();
                    ks.sort_unstable();
                    ks.dedup();
                    for k in ks {
                        *counts.entry((day, k)).or_default() += 1;
                    }
                }
                Mode::OnOrAfter => {
                    if let Some(latest) = active.max() {
                        *counts.entry((day, ((latest - day).num_days() as i32).min(days))).or_default() += 1;
                    }
                }
            }
        }
        Ok(counts.into_iter().map(|((d, k), n)| (d, k, n)).collect())
    }
}
