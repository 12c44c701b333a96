//! Draining `rollup_queue` into `rollup_users`, `rollup_days`, `rollup_events` and
//! `rollup_journeys`.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use roaring::RoaringBitmap;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

use crate::db::{detail, Db};

/// Most queued events one transaction takes.
const CHUNK: usize = 200_000;
/// Events taken from the queue after which the drain vacuums it: each drain reads the
/// queue from its first page, and would otherwise step over every row taken since the
/// last autovacuum (a bulk load's millions).
const VACUUM_AFTER: u64 = 100_000;
/// Events this instance rolls up before it first analyzes the rollup tables; then again
/// each time that count has doubled. The drain's statements join the rollups by their keys,
/// and without statistics (autovacuum off, or not yet come by) PostgreSQL plans those joins
/// as scans of every segment of the tenant, at every drain.
const ANALYZE_FIRST: u64 = 100_000;

/// The drain's maps, looked up several times per event: hashed with foldhash (seeded per
/// process, so user ids cannot be chosen to collide) instead of SipHash.
type Map<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

/// A tenant's users and their uids.
type Uids = Map<String, u32>;

/// Keeps the rollups: one per API instance, shared by its queries and its background drain.
pub struct Rollups {
    schema: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The drain's own connection (a transaction cannot share the API's pipelined ones).
    client: Option<Client>,
    /// The uids known per tenant, loaded whole at a tenant's first drain.
    uids: HashMap<(String, String), Uids>,
    /// Events taken from the queue since it was last vacuumed.
    unvacuumed: u64,
    /// Events this instance has rolled up, and the count at which it next analyzes.
    rolled: u64,
    analyze_at: u64,
}

/// What a chunk adds to one day, event name and tenant.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Day {
    pub events: i64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub users: RoaringBitmap,
}

impl Day {
    fn new(uid: u32, at: DateTime<Utc>) -> Day {
        Day { events: 1, first: at, last: at, users: RoaringBitmap::from_iter([uid]) }
    }

    fn add(&mut self, uid: u32, at: DateTime<Utc>) {
        self.events += 1;
        self.first = self.first.min(at);
        self.last = self.last.max(at);
        self.users.insert(uid);
    }

    fn merge(&mut self, other: Day) {
        self.events += other.events;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
        self.users |= other.users;
    }
}

/// A chunk's additions for one tenant, by day and event name (`""`: any event).
pub(super) type Days = HashMap<(NaiveDate, String), Day>;

/// A chunk's additions for one tenant, by event name (`""`: any event), then day: the
/// name is looked up without being copied.
type ByName<T> = Map<String, Map<NaiveDate, T>>;

/// A chunk's additions for one tenant.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// What each day adds to `rollup_days`.
    days: ByName<Option<Day>>,
    /// The events of each day, as [`super::events`] encodes them.
    segments: ByName<Vec<u8>>,
    /// The entries of each bucket of users, as [`super::journey`] encodes them.
    journeys: Map<i32, Vec<u8>>,
}

/// The slot of `name` and `day` in `map`, made on first use.
fn slot<'a, T: Default>(map: &'a mut ByName<T>, name: &str, day: NaiveDate) -> &'a mut T {
    if !map.contains_key(name) {
        map.insert(name.to_owned(), Map::default());
    }
    map.get_mut(name).expect("inserted above").entry(day).or_default()
}

/// `map` keyed by day and name.
fn flat<T>(map: ByName<T>) -> HashMap<(NaiveDate, String), T> {
    map.into_iter().flat_map(|(name, days)| days.into_iter().map(move |(day, v)| ((day, name.clone()), v))).collect()
}

impl Tally {
    /// Adds one event of user `uid`: to the days under its name and under `""`, to the
    /// segment of its name, and (with its `id`) to its bucket's journey entries.
    pub fn add(&mut self, uid: u32, name: &str, at: DateTime<Utc>, id: Option<i64>) {
        let day = at.date_naive();
        for name in [name, ""] {
            let d: &mut Option<Day> = slot(&mut self.days, name, day);
            match d {
                Some(d) => d.add(uid, at),
                None => *d = Some(Day::new(uid, at)),
            }
        }
        super::events::push(slot(&mut self.segments, name, day), uid, at.timestamp_micros());
        if let Some(id) = id {
            super::journey::push(self.journeys.entry(super::journey::bucket(uid)).or_default(), uid, at.timestamp_micros(), id);
        }
    }

    /// What the days add, by day and name.
    pub fn days(&mut self) -> Days {
        flat(std::mem::take(&mut self.days)).into_iter().filter_map(|(k, d)| Some((k, d?))).collect()
    }
}

/// A queued event of a tenant, read in place from the row the queue gave.
struct Queued<'a> {
    user: &'a str,
    name: &'a str,
    at: DateTime<Utc>,
    /// Its row's `id` (none when queued by an earlier version's trigger).
    id: Option<i64>,
}

impl Rollups {
    /// The rollups in `schema`.
    pub fn new(schema: &str) -> Rollups {
        Rollups { schema: schema.to_owned(), state: Mutex::new(State::default()) }
    }

    /// Rolls up everything queued so far (in transactions of at most [`CHUNK`] events);
    /// returns how many events it took.
    pub async fn drain(&self, db: &Db) -> Result<u64, String> {
        let mut state = self.state.lock().await;
        let mut total = 0;
        loop {
            let mut client = match state.client.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => db.dedicated().await?,
            };
            let taken = match client.transaction().await {
                Ok(tx) => self.chunk(tx, &mut state.uids).await,
                Err(e) => Err(detail(&e)),
            };
            state.client = Some(client);
            match taken {
                Ok(n) => {
                    total += n as u64;
                    state.unvacuumed += n as u64;
                    state.rolled += n as u64;
                    if n < CHUNK {
                        let s = &self.schema;
                        // Each on its own: VACUUM cannot share a statement string.
                        let mut upkeep = Vec::new();
                        if state.unvacuumed >= VACUUM_AFTER {
                            state.unvacuumed = 0;
                            upkeep.push(format!("VACUUM {s}.rollup_queue"));
                        }
                        if state.rolled >= state.analyze_at.max(ANALYZE_FIRST) {
                            state.analyze_at = state.rolled * 2;
                            upkeep.push(format!("ANALYZE {s}.rollup_users, {s}.rollup_days, {s}.rollup_events, {s}.rollup_journeys"));
                        }
                        if let Some(client) = &state.client {
                            for sql in upkeep {
                                // Autovacuum still comes by when this fails.
                                let _ = client.batch_execute(&sql).await;
                            }
                        }
                        return Ok(total);
                    }
                }
                Err(e) => {
                    // uids handed out in the transaction that failed are not stored.
                    state.uids.clear();
                    return Err(format!("cannot roll up the queued events: {e}"));
                }
            }
        }
    }

    /// Takes one chunk of the queue and adds it to the rollups, in `tx`.
    async fn chunk(&self, tx: Transaction<'_>, uids: &mut HashMap<(String, String), Uids>) -> Result<usize, String> {
        let s = &self.schema;
        let db = |e: tokio_postgres::Error| detail(&e);
        tx.execute(&format!("SELECT pg_advisory_xact_lock(hashtext('{s}.weir_rollups'))"), &[]).await.map_err(db)?;
        let rows = tx
            .query(
                &format!(
                    "DELETE FROM {s}.rollup_queue WHERE ctid = ANY(ARRAY(SELECT ctid FROM {s}.rollup_queue LIMIT {CHUNK}))
                     RETURNING org_id, project_id, user_id, event_name, timestamp, id"
                ),
                &[],
            )
            .await
            .map_err(db)?;
        let taken = rows.len();
        if taken == 0 {
            tx.commit().await.map_err(db)?;
            return Ok(0);
        }
        let mut tenants: Map<(&str, &str), Vec<Queued>> = Map::default();
        for row in &rows {
            let queued = Queued { user: row.get(2), name: row.get(3), at: row.get(4), id: row.get(5) };
            tenants.entry((row.get(0), row.get(1))).or_default().push(queued);
        }
        for ((org, project), mine) in &tenants {
            let tenant = &(org.to_string(), project.to_string());
            let known = match uids.get_mut(tenant) {
                Some(known) => known,
                None => {
                    let loaded = self.known_users(&tx, tenant).await.map_err(db)?;
                    uids.entry(tenant.clone()).or_insert(loaded)
                }
            };
            self.number_new_users(&tx, tenant, known, mine).await.map_err(db)?;
            let mut tally = Tally::default();
            for q in mine {
                let uid = known.get(q.user).ok_or_else(|| format!("user {:?} was given no number in {s}.rollup_users", q.user))?;
                tally.add(*uid, q.name, q.at, q.id);
            }
            self.merge(&tx, tenant, tally.days()).await?;
            let (mut days, mut names, mut data): (Vec<NaiveDate>, Vec<String>, Vec<Vec<u8>>) = Default::default();
            for ((day, name), bytes) in flat(tally.segments) {
                days.push(day);
                names.push(name);
                data.push(bytes);
            }
            let keys = [("day", "date"), ("event_name", "text")];
            self.append(&tx, tenant, "rollup_events", &keys, &[&days, &names, &data], super::events::SEGMENT_BYTES).await.map_err(db)?;
            let (buckets, data): (Vec<i32>, Vec<Vec<u8>>) = tally.journeys.into_iter().unzip();
            let keys = [("bucket", "int4")];
            self.append(&tx, tenant, "rollup_journeys", &keys, &[&buckets, &data], super::journey::SEGMENT_BYTES).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(taken)
    }

    /// A tenant's users and their uids.
    async fn known_users(&self, tx: &Transaction<'_>, (org, project): &(String, String)) -> Result<Uids, tokio_postgres::Error> {
        let sql = format!("SELECT user_id, uid FROM {}.rollup_users WHERE org_id = $1 AND project_id = $2", self.schema);
        let rows = tx.query(&sql, &[org, project]).await?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1) as u32)).collect())
    }

    /// Numbers the users of `events` that `known` lacks (stored, or found stored by another
    /// instance), adding them to `known`.
    async fn number_new_users(
        &self,
        tx: &Transaction<'_>,
        (org, project): &(String, String),
        known: &mut Uids,
        events: &[Queued<'_>],
    ) -> Result<(), tokio_postgres::Error> {
        let mut new: Vec<&str> = events.iter().map(|q| q.user).filter(|u| !known.contains_key(*u)).collect();
        if new.is_empty() {
            return Ok(());
        }
        new.sort_unstable();
        new.dedup();
        let s = &self.schema;
        tx.execute(
            &format!(
                "INSERT INTO {s}.rollup_users (org_id, project_id, user_id, uid)
                 SELECT $1, $2, u, nextval('{s}.rollup_uid') FROM unnest($3::text[]) AS u ON CONFLICT DO NOTHING"
            ),
            &[org, project, &new],
        )
        .await?;
        let rows = tx
            .query(
                &format!("SELECT user_id, uid FROM {s}.rollup_users WHERE org_id = $1 AND project_id = $2 AND user_id = ANY($3)"),
                &[org, project, &new],
            )
            .await?;
        known.extend(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1) as u32)));
        Ok(())
    }

    /// Adds `days` to what `rollup_days` holds for the tenant.
    async fn merge(&self, tx: &Transaction<'_>, (org, project): &(String, String), mut days: Days) -> Result<(), String> {
        let s = &self.schema;
        let (dates, names): (Vec<NaiveDate>, Vec<String>) = days.keys().cloned().unzip();
        let stored = tx
            .query(
                &format!(
                    "SELECT r.day, r.event_name, r.events, r.first_at, r.last_at, r.user_set FROM {s}.rollup_days r
                     JOIN unnest($3::date[], $4::text[]) AS k(day, event_name) USING (day, event_name)
                     WHERE r.org_id = $1 AND r.project_id = $2"
                ),
                &[org, project, &dates, &names],
            )
            .await
            .map_err(|e| detail(&e))?;
        for row in stored {
            let users = RoaringBitmap::deserialize_from(row.get::<_, &[u8]>(5))
                .map_err(|e| format!("a stored set of users in {s}.rollup_days cannot be read ({e})"))?;
            let before = Day { events: row.get(2), first: row.get(3), last: row.get(4), users };
            if let Some(day) = days.get_mut(&(row.get(0), row.get(1))) {
                day.merge(before);
            }
        }
        let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((date, name), day) in days {
            let mut bytes = Vec::with_capacity(day.users.serialized_size());
            day.users.serialize_into(&mut bytes).map_err(|e| e.to_string())?;
            cols.0.push(date);
            cols.1.push(name);
            cols.2.push(day.events);
            cols.3.push(day.users.len() as i64);
            cols.4.push(day.first);
            cols.5.push(day.last);
            cols.6.push(bytes);
        }
        tx.execute(
            &format!(
                "INSERT INTO {s}.rollup_days AS r (org_id, project_id, day, event_name, events, users, first_at, last_at, user_set)
                 SELECT $1, $2, * FROM unnest($3::date[], $4::text[], $5::int8[], $6::int8[], $7::timestamptz[], $8::timestamptz[], $9::bytea[])
                 ON CONFLICT (org_id, project_id, day, event_name) DO UPDATE SET events = excluded.events, users = excluded.users,
                   first_at = excluded.first_at, last_at = excluded.last_at, user_set = excluded.user_set"
            ),
            &[org, project, &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &cols.6],
        )
        .await
        .map_err(|e| detail(&e))?;
        Ok(())
    }
}

impl Rollups {
    /// Appends segments to `table`, in one statement: each to the tenant's newest segment
    /// with the same key while that stays within `most` bytes, else as a new segment.
    /// `keys` are the key's columns and their types; `columns` holds an array for each,
    /// then the segments' data.
    async fn append(
        &self,
        tx: &Transaction<'_>,
        (org, project): &(String, String),
        table: &str,
        keys: &[(&str, &str)],
        columns: &[&(dyn ToSql + Sync)],
        most: usize,
    ) -> Result<(), tokio_postgres::Error> {
        let s = &self.schema;
        let names: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
        let arrays: Vec<String> = keys.iter().enumerate().map(|(i, (_, ty))| format!("${}::{ty}[]", i + 3)).collect();
        let data = keys.len() + 3;
        let same = |a: &str, b: &str| names.iter().map(|k| format!(" AND {a}.{k} = {b}.{k}")).collect::<String>();
        let (same_new, same_newest) = (same("r", "n"), same("m", "n"));
        let (names, arrays) = (names.join(", "), arrays.join(", "));
        let sql = format!(
            "WITH n AS (SELECT * FROM unnest({arrays}, ${data}::bytea[]) WITH ORDINALITY AS n({names}, data, i)),
             grown AS (UPDATE {s}.{table} r SET data = r.data || n.data FROM n
               WHERE r.org_id = $1 AND r.project_id = $2{same_new}
                 AND r.seq = (SELECT max(m.seq) FROM {s}.{table} m WHERE m.org_id = $1 AND m.project_id = $2{same_newest})
                 AND length(r.data) + length(n.data) <= {most}
               RETURNING n.i)
             INSERT INTO {s}.{table} (org_id, project_id, {names}, data)
             SELECT $1, $2, {names}, data FROM n WHERE i NOT IN (SELECT i FROM grown)"
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![org, project];
        params.extend_from_slice(columns);
        tx.execute(&sql, &params).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn an_event_counts_under_its_name_and_any_event_on_its_utc_day() {
        let mut tally = Tally::default();
        tally.add(7, "signup", t("2024-01-01T23:59:59Z"), Some(1));
        tally.add(7, "login", t("2024-01-01T10:00:00Z"), Some(2));
        tally.add(300, "login", t("2024-01-02T00:00:00Z"), None);
        let days = &tally.days();
        let d1 = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        let any = &days[&(d1, String::new())];
        assert_eq!((any.events, any.users.len()), (2, 1));
        assert_eq!((any.first, any.last), (t("2024-01-01T10:00:00Z"), t("2024-01-01T23:59:59Z")));
        assert_eq!(days[&(d1, "signup".to_owned())].events, 1);
        assert_eq!(days.len(), 5, "{:?}", days.keys().collect::<Vec<_>>());
        let segments = flat(tally.segments);
        assert_eq!(segments.len(), 3);
        let logins = &segments[&(d1, "login".to_owned())];
        assert_eq!(super::super::events::decode(logins).collect::<Vec<_>>(), [(7, t("2024-01-01T10:00:00Z").timestamp_micros())]);
        // User 7's two events are in bucket 0 in the order added; user 300's has no id.
        assert_eq!(tally.journeys.len(), 1);
        let journey: Vec<_> = super::super::journey::decode(&tally.journeys[&0]).collect();
        assert_eq!(journey, [(7, t("2024-01-01T23:59:59Z").timestamp_micros(), 1), (7, t("2024-01-01T10:00:00Z").timestamp_micros(), 2)]);
    }

    #[test]
    fn merging_adds_counts_widens_times_and_unites_users() {
        let mut a = Day::new(1, t("2024-01-01T10:00:00Z"));
        a.add(2, t("2024-01-01T11:00:00Z"));
        let b = Day::new(2, t("2024-01-01T09:00:00Z"));
        a.merge(b);
        assert_eq!((a.events, a.users.len(), a.first, a.last), (3, 2, t("2024-01-01T09:00:00Z"), t("2024-01-01T11:00:00Z")));
    }
}
