//! Rollups the queries read instead of the raw events, kept off the insert path.
//!
//! A statement trigger on the events table (with its transition table, so it sees exactly
//! the rows the `postgres` sink stored, never a duplicate, in the same transaction) copies
//! each stored event's tenant, user, name, time and `id` into `rollup_queue`: one plain insert
//! into a table without an index. The API drains the queue ([`Rollups::drain`]), every
//! `rollup_every_ms` and before each query that reads the rollups, and adds what it took to
//!
//! - `rollup_users`: each tenant's users, numbered (`uid`), so that sets of users are
//!   bitmaps;
//! - `rollup_days`: per tenant, UTC day and event name (and `''` for any event), the
//!   number of events, the first and last event's time, and the set of users (a roaring
//!   bitmap of uids) with its size;
//! - `rollup_events`: per tenant, event name and UTC day, each event's uid and time, 12
//!   bytes an event, in segments of up to 64 KiB: what a funnel reads instead of the
//!   events table and its indexes ([`events`]);
//! - `rollup_journeys`: per tenant and bucket of [`journey::BUCKET`] uids, each event's
//!   uid, time and `id`, 20 bytes an event: what a user's journey reads to find the ids of
//!   its events, so that the events table needs no index on its users ([`journey`]).
//!
//! The drain deletes what it takes and writes the rollups in one transaction, under an
//! advisory lock, so every stored event is counted once even with several API instances
//! or a crash half-way. Unique users over any whole-day range, per week or month, and
//! retention cohorts are unions and intersections of the day sets.
//! When the trigger is first created, the events already stored are queued in the same
//! transaction, under a lock that holds writers back meanwhile.

mod drain;
pub mod events;
pub mod journey;
mod read;

pub use drain::Rollups;
pub use read::{union, DaySets};

use chrono::NaiveDate;

/// The trigger's name; a new version of the rollups has a new name, and replaces the
/// trigger of the version before, rolling up again what is stored.
const TRIGGER: &str = "weir_analytics_rollup_v5";
/// Triggers of earlier versions.
const OLD_TRIGGERS: [&str; 4] =
    ["weir_analytics_rollup", "weir_analytics_rollup_v2", "weir_analytics_rollup_v3", "weir_analytics_rollup_v4"];
/// What the trigger, and the attach for what is already stored, copy into the queue.
const QUEUED: &str = "org_id, project_id, user_id, event_name, timestamp, id";

/// The rollup tables and the trigger function (idempotent).
pub fn ddl(schema: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}.rollup_queue (
           org_id TEXT NOT NULL, project_id TEXT NOT NULL, user_id TEXT NOT NULL, event_name TEXT NOT NULL, timestamp TIMESTAMPTZ NOT NULL, id BIGINT)
           WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 100000);
         ALTER TABLE {schema}.rollup_queue ADD COLUMN IF NOT EXISTS id BIGINT;
         CREATE SEQUENCE IF NOT EXISTS {schema}.rollup_uid AS integer;
         CREATE TABLE IF NOT EXISTS {schema}.rollup_users (
           org_id TEXT NOT NULL, project_id TEXT NOT NULL, user_id TEXT NOT NULL, uid INTEGER NOT NULL,
           PRIMARY KEY (org_id, project_id, user_id));
         CREATE TABLE IF NOT EXISTS {schema}.rollup_days (
           org_id TEXT NOT NULL, project_id TEXT NOT NULL, day DATE NOT NULL, event_name TEXT NOT NULL,
           events BIGINT NOT NULL, users BIGINT NOT NULL, first_at TIMESTAMPTZ NOT NULL, last_at TIMESTAMPTZ NOT NULL,
           user_set BYTEA NOT NULL, PRIMARY KEY (org_id, project_id, day, event_name));
         ALTER TABLE {schema}.rollup_days ALTER COLUMN user_set SET STORAGE EXTERNAL;
         CREATE TABLE IF NOT EXISTS {schema}.rollup_events (
           org_id TEXT NOT NULL, project_id TEXT NOT NULL, event_name TEXT NOT NULL, day DATE NOT NULL,
           seq BIGINT GENERATED ALWAYS AS IDENTITY, data BYTEA NOT NULL, PRIMARY KEY (org_id, project_id, event_name, day, seq));
         ALTER TABLE {schema}.rollup_events ALTER COLUMN data SET STORAGE EXTERNAL;
         CREATE TABLE IF NOT EXISTS {schema}.rollup_journeys (
           org_id TEXT NOT NULL, project_id TEXT NOT NULL, bucket INTEGER NOT NULL,
           seq BIGINT GENERATED ALWAYS AS IDENTITY, data BYTEA NOT NULL, PRIMARY KEY (org_id, project_id, bucket, seq));
         ALTER TABLE {schema}.rollup_journeys ALTER COLUMN data SET STORAGE EXTERNAL;
         CREATE OR REPLACE FUNCTION {schema}.weir_rollup_queue() RETURNS trigger LANGUAGE plpgsql AS $body$
           BEGIN
             INSERT INTO {schema}.rollup_queue SELECT {QUEUED} FROM weir_new_rows;
             RETURN NULL;
           END $body$;"
    )
}

/// Creates the trigger on the events table and queues what is already stored, once (in
/// the caller's transaction, after [`ddl`], once the events table exists). The rollups of
/// earlier versions are dropped.
pub fn attach(schema: &str, events: &str) -> String {
    let drop_old: String = OLD_TRIGGERS.iter().map(|t| format!("DROP TRIGGER IF EXISTS {t} ON {events};")).collect();
    format!(
        "DO $attach$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{TRIGGER}' AND tgrelid = '{events}'::regclass) THEN
             LOCK TABLE {events} IN SHARE ROW EXCLUSIVE MODE;
             {drop_old}
             DROP TABLE IF EXISTS {schema}.rollup_daily, {schema}.rollup_daily_users, {schema}.rollup_user_days;
             DROP FUNCTION IF EXISTS {schema}.weir_rollup_events();
             DROP FUNCTION IF EXISTS {schema}.weir_rollup_backfill();
             DELETE FROM {schema}.rollup_days;
             DELETE FROM {schema}.rollup_events;
             DELETE FROM {schema}.rollup_journeys;
             DELETE FROM {schema}.rollup_queue;
             INSERT INTO {schema}.rollup_queue SELECT {QUEUED} FROM {events};
             CREATE TRIGGER {TRIGGER} AFTER INSERT ON {events} REFERENCING NEW TABLE AS weir_new_rows
               FOR EACH STATEMENT EXECUTE FUNCTION {schema}.weir_rollup_queue();
           END IF;
         END $attach$;"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_queues_what_the_attach_queues() {
        let ddl = ddl("s");
        assert!(ddl.contains("INSERT INTO s.rollup_queue SELECT org_id, project_id, user_id, event_name, timestamp, id FROM weir_new_rows"));
        let attach = attach("s", "s.event_log");
        assert!(attach.contains("'s.event_log'::regclass"));
        assert!(
            attach.contains("INSERT INTO s.rollup_queue SELECT org_id, project_id, user_id, event_name, timestamp, id FROM s.event_log")
        );
        assert_eq!(attach.matches("DROP TRIGGER IF EXISTS").count(), OLD_TRIGGERS.len());
    }
}
