//! Rollups the queries read instead of the raw events, kept by PostgreSQL itself: a
//! statement trigger on the events table (with its transition table, so it sees exactly the
//! rows the `postgres` sink's `INSERT … ON CONFLICT DO NOTHING` stored, never a duplicate,
//! in the same transaction) adds each batch to
//!
//! - `rollup_daily`: events per tenant, UTC day and event name;
//! - `rollup_user_days`: per tenant, user, month and event name (and `''` for any event), a
//!   31-bit mask of the days of that month the user had such an event;
//! - `rollup_daily_users`: users per tenant, UTC day and event name (and `''`), counted
//!   when a day's bit first appears in a user's mask: the mask's upsert keeps the value it
//!   replaced (`prev`) and returns the new bits, and skips masks that gain none (writers
//!   take turns at the trigger, so no two see the same mask at once).
//!
//! Unique users per day are then one row per day; over any whole-day range, per week or
//! month, and retention cohorts, they are counted from the masks (one row per user and
//! month) rather than from every event.
//! When the trigger is first created, the events already stored are rolled up in the same
//! transaction, under a lock that holds writers back meanwhile.

use chrono::{Datelike, Duration, NaiveDate};

/// The trigger's name; a new version of the rollups has a new name, and replaces the
/// trigger of the version before, rolling up again what is stored.
const TRIGGER: &str = "weir_analytics_rollup_v3";
/// Triggers of earlier versions.
const OLD_TRIGGERS: [&str; 2] = ["weir_analytics_rollup", "weir_analytics_rollup_v2"];

/// The statements that add the rows of `weir_new_rows` to the rollups.
fn statements(schema: &str) -> String {
    format!(
        "PERFORM pg_advisory_xact_lock(hashtext('{schema}.weir_rollups'));
         INSERT INTO {schema}.rollup_daily AS r (org_id, project_id, day, event_name, events)
           SELECT org_id, project_id, (timestamp AT TIME ZONE 'UTC')::date, event_name, count(*) FROM weir_new_rows
           GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
           ON CONFLICT (org_id, project_id, day, event_name) DO UPDATE SET events = r.events + excluded.events;
         WITH masks AS (
             INSERT INTO {schema}.rollup_user_days AS u (org_id, project_id, event_name, month, user_id, days, prev)
               SELECT org_id, project_id, n.name, date_trunc('month', timestamp AT TIME ZONE 'UTC')::date, user_id,
                      bit_or(1 << (extract(day FROM timestamp AT TIME ZONE 'UTC')::int - 1)), 0
               FROM weir_new_rows CROSS JOIN LATERAL (VALUES (event_name), ('')) AS n(name)
               GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
               ON CONFLICT (org_id, project_id, event_name, month, user_id) DO UPDATE SET prev = u.days, days = u.days | excluded.days
                 WHERE u.days | excluded.days <> u.days
               RETURNING org_id, project_id, event_name, month, days & ~prev AS new_days)
         INSERT INTO {schema}.rollup_daily_users AS d (org_id, project_id, day, event_name, users)
           SELECT org_id, project_id, month + b, event_name, count(*) FROM masks, generate_series(0, 30) AS b
           WHERE new_days & (1 << b) <> 0 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
           ON CONFLICT (org_id, project_id, day, event_name) DO UPDATE SET users = d.users + excluded.users;"
    )
}

/// The rollup tables, the trigger function and the backfill function (idempotent).
pub fn ddl(schema: &str) -> String {
    let add = statements(schema);
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}.rollup_daily (
           org_id TEXT NOT NULL, project_id TEXT NOT NULL, day DATE NOT NULL, event_name TEXT NOT NULL, events BIGINT NOT NULL,
           PRIMARY KEY (org_id, project_id, day, event_name));
         CREATE TABLE IF NOT EXISTS {schema}.rollup_daily_users (
           org_id TEXT NOT NULL, project_id TEXT NOT NULL, day DATE NOT NULL, event_name TEXT NOT NULL, users BIGINT NOT NULL,
           PRIMARY KEY (org_id, project_id, day, event_name));
         CREATE TABLE IF NOT EXISTS {schema}.rollup_user_days (
           org_id TEXT NOT NULL, project_id TEXT NOT NULL, event_name TEXT NOT NULL, month DATE NOT NULL, user_id TEXT NOT NULL,
           days INTEGER NOT NULL, prev INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (org_id, project_id, event_name, month, user_id));
         ALTER TABLE {schema}.rollup_user_days ADD COLUMN IF NOT EXISTS prev INTEGER NOT NULL DEFAULT 0;
         CREATE OR REPLACE FUNCTION {schema}.weir_rollup_events() RETURNS trigger LANGUAGE plpgsql AS $body$
           BEGIN {add} RETURN NULL; END $body$;
         CREATE OR REPLACE FUNCTION {schema}.weir_rollup_backfill() RETURNS void LANGUAGE plpgsql AS $body$
           BEGIN {add} END $body$;"
    )
}

/// Creates the trigger on the events table and rolls up what is already stored, once (in
/// the caller's transaction, after [`ddl`], once the events table exists).
pub fn attach(schema: &str, events: &str) -> String {
    let drop_old: String = OLD_TRIGGERS.iter().map(|t| format!("DROP TRIGGER IF EXISTS {t} ON {events};")).collect();
    format!(
        "DO $attach$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{TRIGGER}' AND tgrelid = '{events}'::regclass) THEN
             LOCK TABLE {events} IN SHARE ROW EXCLUSIVE MODE;
             {drop_old}
             DELETE FROM {schema}.rollup_daily;
             DELETE FROM {schema}.rollup_daily_users;
             DELETE FROM {schema}.rollup_user_days;
             CREATE TEMP TABLE weir_new_rows ON COMMIT DROP AS SELECT * FROM {events};
             PERFORM {schema}.weir_rollup_backfill();
             CREATE TRIGGER {TRIGGER} AFTER INSERT ON {events} REFERENCING NEW TABLE AS weir_new_rows
               FOR EACH STATEMENT EXECUTE FUNCTION {schema}.weir_rollup_events();
           END IF;
         END $attach$;"
    )
}

/// The months a whole-day range `[start, end)` touches, each with the mask of its days inside.
pub fn months(start: NaiveDate, end: NaiveDate) -> Vec<(NaiveDate, i32)> {
    let mut out: Vec<(NaiveDate, i32)> = Vec::new();
    let mut d = start;
    while d < end {
        let month = d.with_day(1).expect("the first exists");
        let bit = 1i32 << (d.day() - 1);
        match out.last_mut() {
            Some((m, mask)) if *m == month => *mask |= bit,
            _ => out.push((month, bit)),
        }
        d += Duration::days(1);
    }
    out
}

/// The days a monthly mask marks.
pub fn days_of(month: NaiveDate, mask: i32) -> impl Iterator<Item = NaiveDate> {
    (0..31).filter(move |b| mask & (1 << b) != 0).filter_map(move |b| month.checked_add_signed(Duration::days(b)))
}

/// A whole-day range: both ends at midnight UTC (dates, as the API's `YYYY-MM-DD` gives them).
pub fn whole_days(r: &crate::query::Range) -> Option<(NaiveDate, NaiveDate)> {
    let midnight = |t: chrono::DateTime<chrono::Utc>| (t.time() == chrono::NaiveTime::MIN).then(|| t.date_naive());
    Some((midnight(r.start?)?, midnight(r.end?)?))
}

/// What the rollups can answer for `r`: all time (`Some(None)`), whole days
/// (`Some(Some(days))`), or nothing when a bound is a time within a day (`None`).
pub fn bounds(r: &crate::query::Range) -> Option<Option<(NaiveDate, NaiveDate)>> {
    match (r.start, r.end) {
        (None, None) => Some(None),
        _ => whole_days(r).map(Some),
    }
}

/// One user's masks for one event name: `(month, days)` rows, by user.
pub type Masks = std::collections::HashMap<String, Vec<(NaiveDate, i32)>>;

impl crate::query::Queries {
    /// Every user's masks for `event` (`""`: any event) in `months` (all months when empty).
    pub async fn masks(&self, key: &crate::keys::KeyRecord, event: &str, months: &[NaiveDate]) -> Result<Masks, crate::reply::ApiError> {
        let sql = format!(
            "SELECT user_id, month, days FROM {}.rollup_user_days
             WHERE org_id = $1 AND project_id = $2 AND event_name = $3 AND (cardinality($4::date[]) = 0 OR month = ANY($4))",
            self.schema
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&key.org_id, &key.project_id, &event, &months];
        let rows = self.rows(&sql, &params).await?;
        let mut out = Masks::with_capacity(rows.len());
        for row in rows {
            out.entry(row.get(0)).or_default().push((row.get(1), row.get(2)));
        }
        Ok(out)
    }

    /// Users per day for `event` (`""`: any event) in `[start, end)`, from `rollup_daily_users`.
    pub async fn daily_users(
        &self,
        key: &crate::keys::KeyRecord,
        event: &str,
        (start, end): (NaiveDate, NaiveDate),
    ) -> Result<Vec<(NaiveDate, i64)>, crate::reply::ApiError> {
        let sql = format!(
            "SELECT day, users FROM {}.rollup_daily_users WHERE org_id = $1 AND project_id = $2 AND event_name = $3 AND day >= $4 AND day < $5",
            self.schema
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [&key.org_id, &key.project_id, &event, &start, &end];
        Ok(self.rows(&sql, &params).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every `(month, days)` mask for `event` (`""`: any event) in `months`, without the user.
    pub async fn month_masks(
        &self,
        key: &crate::keys::KeyRecord,
        event: &str,
        months: &[NaiveDate],
    ) -> Result<Vec<(NaiveDate, i32)>, crate::reply::ApiError> {
        let sql = format!(
            "SELECT month, days FROM {}.rollup_user_days WHERE org_id = $1 AND project_id = $2 AND event_name = $3 AND month = ANY($4)",
            self.schema
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&key.org_id, &key.project_id, &event, &months];
        Ok(self.rows(&sql, &params).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Events per day and event name from `rollup_daily` in `[start, end)` (all days when `None`).
    pub async fn daily(
        &self,
        key: &crate::keys::KeyRecord,
        days: Option<(NaiveDate, NaiveDate)>,
    ) -> Result<Vec<(NaiveDate, String, i64)>, crate::reply::ApiError> {
        let (start, end) = (days.map(|d| d.0), days.map(|d| d.1));
        let sql = format!(
            "SELECT day, event_name, events FROM {}.rollup_daily
             WHERE org_id = $1 AND project_id = $2 AND ($3::date IS NULL OR day >= $3) AND ($4::date IS NULL OR day < $4)",
            self.schema
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&key.org_id, &key.project_id, &start, &end];
        let rows = self.rows(&sql, &params).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Users with any event in `[start, end)` (all time when `None`).
    pub async fn active_users(
        &self,
        key: &crate::keys::KeyRecord,
        days: Option<(NaiveDate, NaiveDate)>,
    ) -> Result<i64, crate::reply::ApiError> {
        let (months, masks): (Vec<NaiveDate>, Vec<i32>) = days.map(|(s, e)| months(s, e)).unwrap_or_default().into_iter().unzip();
        let sql = format!(
            "SELECT count(DISTINCT u.user_id)::bigint FROM {}.rollup_user_days u
             LEFT JOIN unnest($3::date[], $4::int[]) AS m(month, mask) ON u.month = m.month
             WHERE u.org_id = $1 AND u.project_id = $2 AND u.event_name = ''
               AND ($5 OR u.days & m.mask <> 0)",
            self.schema
        );
        let unbounded = days.is_none();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [&key.org_id, &key.project_id, &months, &masks, &unbounded];
        let rows = self.rows(&sql, &params).await?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_range_becomes_month_masks() {
        assert_eq!(months(d("2024-01-30"), d("2024-02-03")), vec![(d("2024-01-01"), (1 << 29) | (1 << 30)), (d("2024-02-01"), 0b11)]);
        assert!(months(d("2024-01-02"), d("2024-01-02")).is_empty());
        let days: Vec<NaiveDate> = days_of(d("2024-02-01"), 0b101).collect();
        assert_eq!(days, [d("2024-02-01"), d("2024-02-03")]);
    }

    #[test]
    fn the_trigger_and_the_backfill_run_the_same_statements() {
        let ddl = ddl("s");
        assert_eq!(ddl.matches("INSERT INTO s.rollup_user_days").count(), 2, "{ddl}");
        assert_eq!(ddl.matches("INSERT INTO s.rollup_daily_users").count(), 2, "{ddl}");
        assert!(attach("s", "s.event_log").contains("'s.event_log'::regclass"));
    }
}
