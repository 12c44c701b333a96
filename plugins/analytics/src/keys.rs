//! API keys: stored in PostgreSQL as SHA-256 digests (the secret is shown once, when the
//! key is created), found by the digest of the presented key and compared in constant
//! time, cached in memory (reloaded every few seconds and on an unknown key, at most once a
//! second, so guessing keys cannot load the database), `lastUsed` written back in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use weir_plugin::serde_json::{json, Value};

use crate::db::{detail, Db};
use weir_plugin::origins::Origins;
use weir_plugin::serve::auth::RateLimit;
pub use weir_plugin::serve::auth::{digest, same};
use weir_plugin::serve::cors::check_origins;

/// Every permission a key can hold.
pub const PERMISSIONS: [&str; 2] = [WRITE, READ];
/// Ingest events.
pub const WRITE: &str = "events:write";
/// Query analytics and manage funnels.
pub const READ: &str = "analytics:read";
/// The seed's development key, accepted only with `dev_key: true`.
pub const DEV_KEY: &str = "sample-api-key-789";
/// An unknown key reloads the cache at most this often.
const RELOAD_ON_MISS: Duration = Duration::from_secs(1);

/// What a key may do, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Its id (not secret).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The tenant's organisation.
    pub org_id: String,
    /// The tenant's project.
    pub project_id: String,
    /// What it may do ([`PERMISSIONS`]).
    pub permissions: Vec<String>,
    /// Its own rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// The origins of the web pages that may use it, if it has its own.
    pub origins: Option<Origins>,
    /// Its digest, hex.
    digest: String,
}

impl KeyRecord {
    /// Whether the key holds `permission`.
    pub fn may(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

/// `n` random bytes as hex.
fn random_hex(n: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the system: {e}"))?;
    Ok(weir_plugin::serve::auth::hex(&bytes))
}

/// A random version 4 UUID.
pub fn uuid() -> Result<String, String> {
    let h = random_hex(16)?;
    let variant = ["8", "9", "a", "b"][usize::from(u8::from_str_radix(&h[16..17], 16).unwrap_or(0) & 3)];
    Ok(format!("{}-{}-4{}-{variant}{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32]))
}

/// A new key asked for through `POST /api/v1/keys`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewKey {
    name: String,
    org_id: String,
    project_id: String,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    allowed_origins: Option<Vec<String>>,
}

impl NewKey {
    /// What is wrong with the request, naming the field.
    pub fn check(&self) -> Result<(), String> {
        for (field, v) in [("name", &self.name), ("orgId", &self.org_id), ("projectId", &self.project_id)] {
            if v.trim().is_empty() || v.chars().count() > 200 || v.contains('\0') {
                return Err(format!("{field} must be a non-empty string of at most 200 characters, without NUL"));
            }
        }
        if let Some(p) = self.permissions.iter().flatten().find(|p| !PERMISSIONS.contains(&p.as_str())) {
            return Err(format!("permissions: unknown permission {p:?}; use {}", PERMISSIONS.join(", ")));
        }
        if let Some(r) = &self.rate_limit {
            r.check("rateLimit")?;
        }
        if let Some(o) = &self.allowed_origins {
            check_origins("allowedOrigins", o, false)?;
        }
        Ok(())
    }
}

/// The key store.
pub struct Keys {
    db: Arc<Db>,
    table: String,
    cache: RwLock<HashMap<String, KeyRecord>>,
    /// Every origin the cached keys list, together (for preflights, which carry no key).
    listed: RwLock<Origins>,
    loaded: Mutex<Option<Instant>>,
    dev: Option<KeyRecord>,
    /// Keys used since the last write-back, and when.
    used: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Keys {
    /// The store in `schema.api_keys`; with `dev_key`, the seed's development key too.
    pub fn new(db: Arc<Db>, schema: &str, dev_key: bool) -> Keys {
        let dev = dev_key.then(|| KeyRecord {
            id: "dev".into(),
            name: "development key".into(),
            org_id: "sample-org".into(),
            project_id: "sample-project".into(),
            permissions: PERMISSIONS.iter().map(|p| p.to_string()).collect(),
            rate_limit: None,
            origins: None,
            digest: digest(DEV_KEY),
        });
        Keys {
            db,
            table: format!("{schema}.api_keys"),
            cache: RwLock::new(HashMap::new()),
            listed: RwLock::new(Origins::default()),
            loaded: Mutex::new(None),
            dev,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// The statements that create the table (each instance may run them at once: they take a lock).
    pub fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (
               id TEXT PRIMARY KEY,
               key_digest TEXT NOT NULL UNIQUE,
               prefix TEXT NOT NULL,
               name TEXT NOT NULL,
               org_id TEXT NOT NULL,
               project_id TEXT NOT NULL,
               permissions TEXT[] NOT NULL,
               rate_max INTEGER,
               rate_window_ms BIGINT,
               is_active BOOLEAN NOT NULL DEFAULT true,
               last_used TIMESTAMPTZ,
               created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
               updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS allowed_origins TEXT[];",
            t = self.table
        )
    }

    /// Reads every active key into the cache.
    pub async fn load(&self) -> Result<(), String> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, key_digest, name, org_id, project_id, permissions, rate_max, rate_window_ms, allowed_origins FROM {} WHERE is_active",
                    self.table
                ),
                &[],
            )
            .await
            .map_err(|e| format!("cannot read the API keys: {}", detail(&e)))?;
        let mut fresh = HashMap::with_capacity(rows.len());
        let mut listed: Vec<String> = Vec::new();
        for row in rows {
            let rate_limit = match (row.get::<_, Option<i32>>(6), row.get::<_, Option<i64>>(7)) {
                (Some(max), Some(window)) if max > 0 && window > 0 => Some(RateLimit { max: max as u32, window_ms: window as u64 }),
                _ => None,
            };
            let digest: String = row.get(1);
            fresh.insert(
                digest.clone(),
                KeyRecord {
                    id: row.get(0),
                    name: row.get(2),
                    org_id: row.get(3),
                    project_id: row.get(4),
                    permissions: row.get(5),
                    rate_limit,
                    origins: row.get::<_, Option<Vec<String>>>(8).map(|o| {
                        listed.extend_from_slice(&o);
                        Origins::new(&o)
                    }),
                    digest,
                },
            );
        }
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        *self.listed.write().unwrap_or_else(|p| p.into_inner()) = Origins::new(&listed);
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }

    fn cached(&self, digest: &str) -> Option<KeyRecord> {
        if let Some(dev) = self.dev.as_ref().filter(|d| same(d.digest.as_bytes(), digest.as_bytes())) {
            return Some(dev.clone());
        }
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        // Found by its digest (which tells nothing of the secret), then compared in constant time.
        cache.get(digest).filter(|k| same(k.digest.as_bytes(), digest.as_bytes())).cloned()
    }

    /// The active key whose secret is `secret`, if any.
    pub async fn find(&self, secret: &str) -> Result<Option<KeyRecord>, String> {
        let digest = digest(secret);
        if let Some(k) = self.cached(&digest) {
            self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(k.id.clone(), Utc::now());
            return Ok(Some(k));
        }
        let stale = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).is_none_or(|at| at.elapsed() >= RELOAD_ON_MISS);
        if !stale {
            return Ok(None);
        }
        self.load().await?;
        Ok(self.cached(&digest))
    }

    /// Stores a new key; returns what `POST /api/v1/keys` answers (the secret included, once).
    pub async fn create(&self, new: NewKey) -> Result<Value, String> {
        let secret = format!("wk_{}", random_hex(24)?);
        let id = uuid()?;
        let permissions = new.permissions.unwrap_or_else(|| PERMISSIONS.iter().map(|p| p.to_string()).collect());
        let client = self.db.client().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO {} (id, key_digest, prefix, name, org_id, project_id, permissions, rate_max, rate_window_ms, allowed_origins)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING created_at",
                    self.table
                ),
                &[
                    &id,
                    &digest(&secret),
                    &&secret[..10],
                    &new.name,
                    &new.org_id,
                    &new.project_id,
                    &permissions,
                    &new.rate_limit.map(|r| r.max as i32),
                    &new.rate_limit.map(|r| r.window_ms as i64),
                    &new.allowed_origins,
                ],
            )
            .await
            .map_err(|e| format!("cannot store the key: {}", detail(&e)))?;
        let created: DateTime<Utc> = row.get(0);
        self.load().await?;
        Ok(json!({
            "id": id, "key": secret, "name": new.name, "orgId": new.org_id, "projectId": new.project_id,
            "permissions": permissions, "rateLimit": new.rate_limit, "allowedOrigins": new.allowed_origins,
            "isActive": true, "createdAt": iso(created),
        }))
    }

    /// Every key, without secrets (`GET /api/v1/keys`).
    pub async fn list(&self) -> Result<Value, String> {
        self.write_back().await;
        let client = self.db.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, prefix, name, org_id, project_id, permissions, rate_max, rate_window_ms, is_active, last_used, created_at, updated_at,
                            allowed_origins
                     FROM {} ORDER BY created_at, id",
                    self.table
                ),
                &[],
            )
            .await
            .map_err(|e| format!("cannot read the API keys: {}", detail(&e)))?;
        let keys: Vec<Value> = rows
            .iter()
            .map(|r| {
                let rate = match (r.get::<_, Option<i32>>(6), r.get::<_, Option<i64>>(7)) {
                    (Some(max), Some(window)) => json!({"max": max, "windowMs": window}),
                    _ => Value::Null,
                };
                json!({
                    "id": r.get::<_, String>(0), "prefix": r.get::<_, String>(1), "name": r.get::<_, String>(2),
                    "orgId": r.get::<_, String>(3), "projectId": r.get::<_, String>(4),
                    "permissions": r.get::<_, Vec<String>>(5), "rateLimit": rate, "isActive": r.get::<_, bool>(8),
                    "lastUsed": r.get::<_, Option<DateTime<Utc>>>(9).map(iso),
                    "createdAt": iso(r.get(10)), "updatedAt": iso(r.get(11)),
                    "allowedOrigins": r.get::<_, Option<Vec<String>>>(12),
                })
            })
            .collect();
        Ok(json!({ "keys": keys }))
    }

    /// Whether any active key lists `origin` among its own origins (a preflight carries no
    /// key, so it is answered for the origins of every key).
    pub fn origin_listed(&self, origin: &[u8]) -> bool {
        self.listed.read().unwrap_or_else(|p| p.into_inner()).lists(origin)
    }

    /// Revokes key `id`; whether there was such an active key.
    pub async fn revoke(&self, id: &str) -> Result<bool, String> {
        let client = self.db.client().await?;
        let n = client
            .execute(&format!("UPDATE {} SET is_active = false, updated_at = now() WHERE id = $1 AND is_active", self.table), &[&id])
            .await
            .map_err(|e| format!("cannot revoke the key: {}", detail(&e)))?;
        self.load().await?;
        Ok(n > 0)
    }

    /// Writes the `lastUsed` times gathered since the last call.
    pub async fn write_back(&self) {
        let used: Vec<(String, DateTime<Utc>)> = self.used.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        if used.is_empty() {
            return;
        }
        let Ok(client) = self.db.client().await else { return };
        let sql = format!("UPDATE {} SET last_used = GREATEST(last_used, $2) WHERE id = $1", self.table);
        for (id, at) in used.iter().filter(|(id, _)| id != "dev") {
            let _ = client.execute(&sql, &[id, at]).await;
        }
    }
}

/// A key for tests of other modules.
#[cfg(test)]
pub fn tests_key(org: &str, project: &str) -> KeyRecord {
    KeyRecord {
        id: "k1".into(),
        name: "test".into(),
        org_id: org.into(),
        project_id: project.into(),
        permissions: PERMISSIONS.iter().map(|p| p.to_string()).collect(),
        rate_limit: None,
        origins: None,
        digest: digest("secret"),
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4() {
        let u = uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]), "{u}");
        assert_ne!(u, uuid().unwrap());
    }

    #[test]
    fn a_new_key_names_its_bad_field() {
        let bad: NewKey = weir_plugin::serde_json::from_value(json!({"name": "k", "orgId": "", "projectId": "p"})).unwrap();
        assert!(bad.check().unwrap_err().starts_with("orgId"));
        let perm: NewKey =
            weir_plugin::serde_json::from_value(json!({"name": "k", "orgId": "o", "projectId": "p", "permissions": ["root"]})).unwrap();
        assert!(perm.check().unwrap_err().contains("root"));
        let origins: NewKey = weir_plugin::serde_json::from_value(
            json!({"name": "k", "orgId": "o", "projectId": "p", "allowedOrigins": ["https://a.example/x"]}),
        )
        .unwrap();
        assert!(origins.check().unwrap_err().contains("allowedOrigins"));
    }
}
