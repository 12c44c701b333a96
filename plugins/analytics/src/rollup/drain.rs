//! Draining `rollup_queue` into `rollup_users` and `rollup_days`.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use roaring::RoaringBitmap;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Transaction};

use crate::db::{detail, Db};

/// Most queued events one transaction takes.
const CHUNK: usize = 200_000;
/// Events taken from the queue after which the drain vacuums it: each drain reads the
/// queue from its first page, and would otherwise step over every row taken since the
/// last autovacuum (a bulk load's millions).
const VACUUM_AFTER: u64 = 100_000;

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
    uids: HashMap<(String, String), HashMap<String, u32>>,
    /// Events taken from the queue since it was last vacuumed.
    unvacuumed: u64,
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

/// A chunk's events for one tenant by day and event name, as [`super::events`] encodes them.
pub(super) type Segments = HashMap<(NaiveDate, String), Vec<u8>>;

/// A chunk's additions for one tenant.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub days: Days,
    pub segments: Segments,
}

impl Tally {
    /// Adds one event of user `uid`: to the days under its name and under `""`, and to
    /// the segment of its name.
    pub fn add(&mut self, uid: u32, name: &str, at: DateTime<Utc>) {
        let day = at.date_naive();
        for name in [name, ""] {
            match self.days.get_mut(&(day, name.to_owned())) {
                Some(d) => d.add(uid, at),
                None => {
                    self.days.insert((day, name.to_owned()), Day::new(uid, at));
                }
            }
        }
        super::events::push(self.segments.entry((day, name.to_owned())).or_default(), uid, at.timestamp_micros());
    }
}

/// A queued event of a tenant.
struct Queued {
    user: String,
    name: String,
    at: DateTime<Utc>,
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
                    if n < CHUNK {
                        if state.unvacuumed >= VACUUM_AFTER {
                            state.unvacuumed = 0;
                            if let Some(client) = &state.client {
                                // Autovacuum still comes by when this fails.
                                let _ = client.batch_execute(&format!("VACUUM {}.rollup_queue", self.schema)).await;
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
    async fn chunk(&self, tx: Transaction<'_>, uids: &mut HashMap<(String, String), HashMap<String, u32>>) -> Result<usize, String> {
        let s = &self.schema;
        let db = |e: tokio_postgres::Error| detail(&e);
        tx.execute(&format!("SELECT pg_advisory_xact_lock(hashtext('{s}.weir_rollups'))"), &[]).await.map_err(db)?;
        let rows = tx
            .query(
                &format!(
                    "DELETE FROM {s}.rollup_queue WHERE ctid = ANY(ARRAY(SELECT ctid FROM {s}.rollup_queue LIMIT {CHUNK}))
                     RETURNING org_id, project_id, user_id, event_name, timestamp"
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
        let mut tenants: HashMap<(String, String), Vec<Queued>> = HashMap::new();
        for row in rows {
            let queued = Queued { user: row.get(2), name: row.get(3), at: row.get(4) };
            tenants.entry((row.get(0), row.get(1))).or_default().push(queued);
        }
        for (tenant, mine) in &tenants {
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
                let uid = known.get(&q.user).ok_or_else(|| format!("user {:?} was given no number in {s}.rollup_users", q.user))?;
                tally.add(*uid, &q.name, q.at);
            }
            self.merge(&tx, tenant, tally.days).await?;
            self.append(&tx, tenant, tally.segments).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(taken)
    }

    /// A tenant's users and their uids.
    async fn known_users(
        &self,
        tx: &Transaction<'_>,
        (org, project): &(String, String),
    ) -> Result<HashMap<String, u32>, tokio_postgres::Error> {
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
        known: &mut HashMap<String, u32>,
        events: &[Queued],
    ) -> Result<(), tokio_postgres::Error> {
        let mut new: Vec<&str> = events.iter().map(|q| q.user.as_str()).filter(|u| !known.contains_key(*u)).collect();
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
    /// Appends `segments` to `rollup_events`: to the tenant's newest segment of the same
    /// day and name while it stays under [`super::events::SEGMENT_BYTES`], else as a new one.
    async fn append(
        &self,
        tx: &Transaction<'_>,
        (org, project): &(String, String),
        segments: Segments,
    ) -> Result<(), tokio_postgres::Error> {
        let s = &self.schema;
        let mut cols: (Vec<NaiveDate>, Vec<String>, Vec<Vec<u8>>) = Default::default();
        for ((day, name), data) in segments {
            cols.0.push(day);
            cols.1.push(name);
            cols.2.push(data);
        }
        let grown = tx
            .query(
                &format!(
                    "UPDATE {s}.rollup_events r SET data = r.data || n.data
                     FROM unnest($3::date[], $4::text[], $5::bytea[]) AS n(day, event_name, data)
                     WHERE r.org_id = $1 AND r.project_id = $2 AND r.day = n.day AND r.event_name = n.event_name
                       AND r.seq = (SELECT max(m.seq) FROM {s}.rollup_events m
                                    WHERE m.org_id = $1 AND m.project_id = $2 AND m.day = n.day AND m.event_name = n.event_name)
                       AND length(r.data) + length(n.data) <= {}
                     RETURNING r.day, r.event_name",
                    super::events::SEGMENT_BYTES
                ),
                &[org, project, &cols.0, &cols.1, &cols.2],
            )
            .await?;
        let grown: std::collections::HashSet<(NaiveDate, String)> = grown.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut rest: (Vec<NaiveDate>, Vec<String>, Vec<Vec<u8>>) = Default::default();
        for ((day, name), data) in cols.0.into_iter().zip(cols.1).zip(cols.2) {
            if !grown.contains(&(day, name.clone())) {
                rest.0.push(day);
                rest.1.push(name);
                rest.2.push(data);
            }
        }
        if !rest.0.is_empty() {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.rollup_events (org_id, project_id, day, event_name, data)
                     SELECT $1, $2, * FROM unnest($3::date[], $4::text[], $5::bytea[])"
                ),
                &[org, project, &rest.0, &rest.1, &rest.2],
            )
            .await?;
        }
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
        tally.add(7, "signup", t("2024-01-01T23:59:59Z"));
        tally.add(7, "login", t("2024-01-01T10:00:00Z"));
        tally.add(9, "login", t("2024-01-02T00:00:00Z"));
        let days = &tally.days;
        let d1 = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        let any = &days[&(d1, String::new())];
        assert_eq!((any.events, any.users.len()), (2, 1));
        assert_eq!((any.first, any.last), (t("2024-01-01T10:00:00Z"), t("2024-01-01T23:59:59Z")));
        assert_eq!(days[&(d1, "signup".to_owned())].events, 1);
        assert_eq!(days.len(), 5, "{:?}", days.keys().collect::<Vec<_>>());
        assert_eq!(tally.segments.len(), 3);
        let logins = &tally.segments[&(d1, "login".to_owned())];
        assert_eq!(super::super::events::decode(logins).collect::<Vec<_>>(), [(7, t("2024-01-01T10:00:00Z").timestamp_micros())]);
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
