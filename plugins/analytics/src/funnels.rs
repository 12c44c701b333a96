//! Funnels: stored per tenant in `schema.funnels`, and their analytics over the events table.
//!
//! How a funnel is counted (each a parameter of `GET /api/v1/funnels/{id}/analytics`):
//! - users are counted once each;
//! - a user enters at their first step-1 event inside `startDate`..`endDate`;
//! - each later step is the user's first event of that step strictly after the step before
//!   (other events may come in between), within `windowSeconds` (default 7 days) of the
//!   entry and, when the step sets `timeWindow`, within that many seconds of the step
//!   before; later steps may fall after `endDate` while inside the window;
//! - a step's `filters` (an object) must be contained in the event's `properties`;
//! - `conversionRate` is relative to step 1, `stepConversionRate` to the step before,
//!   `dropOff` counts the users lost since the step before, and times to convert are
//!   measured from the step before.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use weir_plugin::serde_json::{json, Map, Value};

use crate::ingest::map_has_nul;
use crate::keys::{self, iso, KeyRecord};
use crate::query::{range, Queries};
use crate::reply::ApiError;

/// The default window from a user's entry, in seconds (7 days).
pub const DEFAULT_WINDOW_SECS: i64 = 7 * 24 * 3600;
/// Longest window accepted, in seconds (366 days).
const MAX_WINDOW_SECS: i64 = 366 * 24 * 3600;

/// A funnel's step.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// The event that makes the step.
    pub event_name: String,
    /// Properties the event must have (contained in its `properties`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Map<String, Value>>,
    /// Most seconds after the step before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_window: Option<i64>,
}

/// A funnel as `POST /api/v1/funnels` takes it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFunnel {
    name: String,
    steps: Vec<Step>,
}

impl NewFunnel {
    /// What is wrong with it, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            return Err("name must be a non-empty string of at most 200 characters".into());
        }
        if !(2..=10).contains(&self.steps.len()) {
            return Err(format!("steps must hold 2 to 10 steps, not {}", self.steps.len()));
        }
        let nul = |s: &Step| s.event_name.contains('\0') || s.filters.as_ref().is_some_and(map_has_nul);
        if self.name.contains('\0') || self.steps.iter().any(nul) {
            return Err("the funnel holds the NUL character (\\u0000), which cannot be stored; remove it".into());
        }
        for (i, s) in self.steps.iter().enumerate() {
            if s.event_name.trim().is_empty() || s.event_name.chars().count() > 200 {
                return Err(format!("steps[{i}].eventName must be a non-empty string of at most 200 characters"));
            }
            if s.time_window.is_some_and(|w| !(1..=MAX_WINDOW_SECS).contains(&w)) {
                return Err(format!("steps[{i}].timeWindow must be from 1 to {MAX_WINDOW_SECS} seconds"));
            }
        }
        Ok(())
    }
}

/// The funnels table's statements.
pub fn ddl(schema: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}.funnels (
           id TEXT PRIMARY KEY,
           org_id TEXT NOT NULL,
           project_id TEXT NOT NULL,
           name TEXT NOT NULL,
           steps JSONB NOT NULL,
           created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
           updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
         CREATE INDEX IF NOT EXISTS funnels_tenant ON {schema}.funnels (org_id, project_id, created_at);"
    )
}

fn funnel_json(row: &tokio_postgres::Row) -> Value {
    json!({
        "id": row.get::<_, String>(0), "name": row.get::<_, String>(1), "steps": row.get::<_, Value>(2),
        "orgId": row.get::<_, String>(3), "projectId": row.get::<_, String>(4),
        "createdAt": iso(row.get(5)), "updatedAt": iso(row.get(6)),
    })
}

const COLUMNS: &str = "id, name, steps, org_id, project_id, created_at, updated_at";

impl Queries {
    fn funnels(&self) -> String {
        format!("{}.funnels", self.schema)
    }

    fn failed(&self, e: &tokio_postgres::Error) -> ApiError {
        self.refused("funnel query", e)
    }

    /// `POST /api/v1/funnels`.
    pub async fn create_funnel(&self, key: &KeyRecord, new: NewFunnel) -> Result<Value, ApiError> {
        new.check().map_err(ApiError::body)?;
        let id = keys::uuid().map_err(|e| {
            self.ctx.warn(&e);
            ApiError::unavailable()
        })?;
        let steps = weir_plugin::serde_json::to_value(&new.steps).expect("steps serialize");
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO {} (id, org_id, project_id, name, steps) VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}",
                    self.funnels()
                ),
                &[&id, &key.org_id, &key.project_id, &new.name, &steps],
            )
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(funnel_json(&row))
    }

    /// `GET /api/v1/funnels`: the tenant's funnels, oldest first.
    pub async fn list_funnels(&self, key: &KeyRecord) -> Result<Value, ApiError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM {} WHERE org_id = $1 AND project_id = $2 ORDER BY created_at, id", self.funnels()),
                &[&key.org_id, &key.project_id],
            )
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(json!({"funnels": rows.iter().map(funnel_json).collect::<Vec<_>>()}))
    }

    /// `GET /api/v1/funnels/{id}`: one of the tenant's funnels.
    pub async fn get_funnel(&self, key: &KeyRecord, id: &str) -> Result<Value, ApiError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM {} WHERE id = $1 AND org_id = $2 AND project_id = $3", self.funnels()),
                &[&id, &key.org_id, &key.project_id],
            )
            .await
            .map_err(|e| self.failed(&e))?;
        row.map(|r| funnel_json(&r)).ok_or_else(|| ApiError::not_found(format!("no funnel {id:?} in this project")))
    }

    /// `DELETE /api/v1/funnels/{id}`.
    pub async fn delete_funnel(&self, key: &KeyRecord, id: &str) -> Result<Value, ApiError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &format!("DELETE FROM {} WHERE id = $1 AND org_id = $2 AND project_id = $3", self.funnels()),
                &[&id, &key.org_id, &key.project_id],
            )
            .await
            .map_err(|e| self.failed(&e))?;
        if n == 0 {
            return Err(ApiError::not_found(format!("no funnel {id:?} in this project")));
        }
        Ok(json!({"success": true, "id": id}))
    }

    /// `GET /api/v1/funnels/{id}/analytics`.
    pub async fn funnel_analytics(&self, key: &KeyRecord, id: &str, params: &HashMap<String, String>) -> Result<Value, ApiError> {
        let funnel = self.get_funnel(key, id).await?;
        let r = range(params)?;
        let window =
            match params.get("windowSeconds") {
                None => DEFAULT_WINDOW_SECS,
                Some(w) => w.parse::<i64>().ok().filter(|w| (1..=MAX_WINDOW_SECS).contains(w)).ok_or_else(|| {
                    ApiError::parameter(format!("windowSeconds {w:?} must be a whole number from 1 to {MAX_WINDOW_SECS}"))
                })?,
            };
        let steps: Vec<Step> = weir_plugin::serde_json::from_value(funnel["steps"].clone()).map_err(|e| {
            self.ctx.warn(&format!("funnel {id} has steps this version cannot read: {e}"));
            ApiError::unavailable()
        })?;
        // Steps without filters are counted over the rollups' events; filters need the properties.
        let counts = if self.rolled() && steps.iter().all(|s| s.filters.as_ref().is_none_or(Map::is_empty)) {
            self.funnel_rolled(key, &steps, &r, window).await?.into_iter().map(|c| (c.users, c.avg, c.median)).collect()
        } else {
            self.funnel_raw(key, &steps, &r, window).await?
        };
        let first = counts.first().map(|c| c.0).unwrap_or(0);
        let rate = |n: i64, of: i64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        let out: Vec<Value> = steps
            .iter()
            .zip(&counts)
            .enumerate()
            .map(|(i, (step, (users, avg, median)))| {
                let before = if i == 0 { *users } else { counts[i - 1].0 };
                json!({
                    "eventName": step.event_name, "users": users,
                    "conversionRate": rate(*users, first), "stepConversionRate": rate(*users, before),
                    "dropOff": before - users,
                    "avgTimeToConvertSeconds": if i == 0 { None } else { *avg },
                    "medianTimeToConvertSeconds": if i == 0 { None } else { *median },
                })
            })
            .collect();
        let last = counts.last().map(|c| c.0).unwrap_or(0);
        Ok(json!({
            "funnelId": id, "name": funnel["name"], "steps": out, "overallConversionRate": rate(last, first),
            "windowSeconds": window, "startDate": r.start.map(iso), "endDate": r.end.map(|e: DateTime<Utc>| iso(e)),
        }))
    }
}

impl Queries {
    /// A funnel counted over the events table: per step, users and the mean and median
    /// seconds from the step before.
    async fn funnel_raw(
        &self,
        key: &KeyRecord,
        steps: &[Step],
        r: &crate::query::Range,
        window: i64,
    ) -> Result<Vec<(i64, Option<f64>, Option<f64>)>, ApiError> {
        let (sql, values) = funnel_sql(&self.table, steps, window);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&key.org_id, &key.project_id, &r.start, &r.end];
        params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
        let rows = self.rows(&sql, &params).await?;
        // One row per step: users, and seconds from the step before (mean, median).
        let mut counts = vec![(0i64, None::<f64>, None::<f64>); steps.len()];
        for row in &rows {
            let k: i32 = row.get(0);
            if let Some(slot) = counts.get_mut(k as usize) {
                *slot = (row.get(1), row.get(2), row.get(3));
            }
        }
        Ok(counts)
    }
}

/// A value bound to the funnel query: a step's event name, its filters, or a window.
#[derive(Debug)]
enum Bound {
    Text(String),
    Json(Value),
    Seconds(f64),
}

impl ToSql for Bound {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Bound::Text(s) => s.to_sql(ty, out),
            Bound::Json(v) => v.to_sql(ty, out),
            Bound::Seconds(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <String as ToSql>::accepts(ty) || <Value as ToSql>::accepts(ty) || <f64 as ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The funnel query: `$1`–`$4` the tenant and range, then per step its event name, its
/// filters and its window. `s0` holds each user's entry; `sK` each user who made step K,
/// with the entry time `t0`, the time of the step before `tp` and their own `t`: the user's
/// first matching event strictly after `tp`. With the example's `(org_id, project_id,
/// event_name, user_id, timestamp)` index each step is one index-only pass over the step's
/// events in user order (the entry grouped without a sort, the later steps merged or hashed
/// with the step before), rather than a lookup per user. Returns one row per step: its
/// index, users, and mean and median seconds from the step before.
fn funnel_sql(table: &str, steps: &[Step], window: i64) -> (String, Vec<Bound>) {
    let mut values = Vec::new();
    let mut bind = |v: Bound| {
        values.push(v);
        format!("${}", 4 + values.len())
    };
    let filter = |f: &Option<Map<String, Value>>, bind: &mut dyn FnMut(Bound) -> String| match f {
        Some(m) if !m.is_empty() => format!(" AND e.properties @> {}::jsonb", bind(Bound::Json(Value::Object(m.clone())))),
        _ => String::new(),
    };
    let scope = "e.org_id = $1 AND e.project_id = $2";
    let name = bind(Bound::Text(steps[0].event_name.clone()));
    let f = filter(&steps[0].filters, &mut bind);
    let mut sql = format!(
        "WITH s0 AS (SELECT user_id, t0, t0 AS t FROM (SELECT e.user_id, min(e.timestamp) AS t0 FROM {table} e
           WHERE {scope} AND e.event_name = {name}{f}
           AND ($3::timestamptz IS NULL OR e.timestamp >= $3) AND ($4::timestamptz IS NULL OR e.timestamp < $4) GROUP BY e.user_id) f)"
    );
    let win = bind(Bound::Seconds(window as f64));
    let mut selects = vec!["SELECT 0 AS k, count(*)::bigint AS users, NULL::float8 AS avg, NULL::float8 AS median FROM s0".to_owned()];
    for (k, step) in steps.iter().enumerate().skip(1) {
        let name = bind(Bound::Text(step.event_name.clone()));
        let f = filter(&step.filters, &mut bind);
        let own = match step.time_window {
            Some(w) => format!(" AND e.timestamp <= p.t + make_interval(secs => {})", bind(Bound::Seconds(w as f64))),
            None => String::new(),
        };
        sql.push_str(&format!(
            ", s{k} AS (SELECT p.user_id, p.t0, p.t AS tp, min(e.timestamp) AS t FROM s{pk} p JOIN {table} e
                 ON {scope} AND e.user_id = p.user_id AND e.event_name = {name}{f}
                AND e.timestamp > p.t AND e.timestamp <= p.t0 + make_interval(secs => {win}){own}
               GROUP BY p.user_id, p.t0, p.t)",
            pk = k - 1,
        ));
        selects.push(format!(
            "SELECT {k}, count(*)::bigint, avg(extract(epoch FROM t - tp))::float8,
                    (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t - tp)))::float8 FROM s{k}"
        ));
    }
    sql.push(' ');
    sql.push_str(&selects.join(" UNION ALL "));
    (sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json;

    #[test]
    fn a_funnel_needs_two_to_ten_named_steps() {
        let f = |v: Value| serde_json::from_value::<NewFunnel>(v).unwrap().check();
        assert!(f(json!({"name": "f", "steps": [{"eventName": "a"}, {"eventName": "b"}]})).is_ok());
        assert!(f(json!({"name": "f", "steps": [{"eventName": "a"}]})).unwrap_err().starts_with("steps"));
        assert!(f(json!({"name": "f", "steps": [{"eventName": "a"}, {"eventName": ""}]})).unwrap_err().starts_with("steps[1].eventName"));
        assert!(f(json!({"name": "f", "steps": [{"eventName": "a"}, {"eventName": "b", "timeWindow": 0}]}))
            .unwrap_err()
            .contains("timeWindow"));
        assert!(f(json!({"name": " ", "steps": [{"eventName": "a"}, {"eventName": "b"}]})).unwrap_err().starts_with("name"));
    }

    #[test]
    fn the_query_binds_every_step_value() {
        let steps: Vec<Step> = serde_json::from_value(json!([
            {"eventName": "view_step"}, {"eventName": "cart"}, {"eventName": "buy", "filters": {"plan": "gold"}, "timeWindow": 60}
        ]))
        .unwrap();
        let (sql, values) = funnel_sql("a.e", &steps, DEFAULT_WINDOW_SECS);
        assert_eq!(values.len(), 6, "names, a filter, the window, a step's own window: {values:?}");
        assert!(sql.contains("s2 AS"), "{sql}");
        assert!(!sql.contains("view_step") && !sql.contains("gold"), "values are bound, never spliced: {sql}");
    }
}
