//! The `analytics` source's config.

use weir_plugin::pg::TlsMode;
use weir_plugin::serve::auth::RateLimit;
use weir_plugin::serve::cors::CorsConfig;
use weir_plugin::{Deserialize, JsonSchema};

/// Config of the `analytics` source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Address to listen on, `host:port` (the seed's API is on port 3000).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// PostgreSQL connection string: the events table the pipeline's `postgres` sink writes,
    /// and the keys table this source keeps. Its password is never shown.
    pub database_url: String,
    /// TLS for the connections to PostgreSQL (as libpq's `sslmode`; as the `postgres` sink's `tls`).
    #[serde(default)]
    pub database_tls: TlsMode,
    /// PEM file of the certificate authority that signed the server's certificate (for
    /// `verify_ca` / `verify_full`); a relative path is taken from the pipeline file's directory.
    #[serde(default)]
    pub database_tls_ca_file: Option<std::path::PathBuf>,
    /// Connections to PostgreSQL the API keeps, taken in turn (a long query holds up only
    /// the requests sharing its connection).
    #[serde(default = "default_connections")]
    pub database_connections: usize,
    /// Memory each sort or hash of a query may use in PostgreSQL (`work_mem` of the API's
    /// sessions, e.g. `64MB`): funnels and retention over millions of events spill to disk
    /// with the server's default of 4MB.
    #[serde(default = "default_work_mem")]
    pub work_mem: String,
    /// The events table (`schema.table`) the queries read: the one the pipeline's `postgres`
    /// sink writes, with the columns of `examples/event-analytics`.
    #[serde(default = "default_events_table")]
    pub events_table: String,
    /// Schema of the tables this source keeps (`api_keys`); created when missing.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Secret of the `X-Admin-Key` header that creates, lists and revokes API keys (for
    /// example `${ANALYTICS_ADMIN_KEY}`). Empty: key management answers 403.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub admin_key: String,
    /// Also accept the seed's development key `sample-api-key-789` (org `sample-org`,
    /// project `sample-project`, every permission). Off by default; a warning is logged when on.
    #[serde(default)]
    pub dev_key: bool,
    /// Rate limit of a key that sets none of its own (the seed's 100 requests per 15 minutes).
    #[serde(default = "default_rate_limit")]
    pub rate_limit: RateLimit,
    /// Most events one ingest request may carry; more get 413.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Largest request body accepted, in bytes; a larger one gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long an ingest request waits for the pipeline's acknowledgement, in milliseconds,
    /// before it is answered 503 (the events may still be stored: retry with the same `eventId`s).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// How often stored events are rolled up in the background, in milliseconds. Queries
    /// roll up whatever is still waiting before they read, so answers always hold every
    /// stored event; the interval only sets how much a query may find waiting while events
    /// pour in (a query then waits for it). Each roll-up rewrites every day and segment its
    /// events touch, so fewer, larger ones leave more of the machine to ingest: every 3 s
    /// instead of every second gave 4–6% more events/s on two cores (events spread over 30
    /// days), at up to 3 s of events for a query to roll up first.
    #[serde(default = "default_rollup_every")]
    pub rollup_every_ms: u64,
    /// Most events one journey page holds (the `limit` parameter's upper bound and default).
    #[serde(default = "default_journey_limit")]
    pub journey_limit: u32,
    /// Calls from web pages of other origins (browser SDKs sending `X-API-Key`): the origins
    /// from which any key may be used, and what pages may send and read. A key created with
    /// its own `allowedOrigins` may be used only from those. Unset: only keys with their own
    /// `allowedOrigins` can be used from pages of other origins.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Origins per project, as `orgId/projectId: [origins]`: pages of these origins may use
    /// any key of the project that has no `allowedOrigins` of its own (in place of
    /// `cors.allowed_origins` for that project). Methods and headers come from `cors`.
    #[serde(default)]
    pub project_origins: std::collections::BTreeMap<String, Vec<String>>,
    /// Redis (`redis://host:port/db`, e.g. `${REDIS_URL}`): per-key rate limits counted
    /// there, so a key's limit holds across every instance of the API and across restarts,
    /// and query answers cached there. Unset: limits counted in this process, no cache. Its
    /// password is never shown.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys this source writes (rate windows, cache, generations).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// How long a query answer (summary, metrics, retention, funnel analytics) stays in the
    /// cache, in seconds; 0 turns the cache off. Any change to a tenant's data through the
    /// API (events stored, a funnel created or deleted) retires its cached answers at once;
    /// the TTL bounds how long a change made outside the API may go unseen.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
}

fn default_rate_limit() -> RateLimit {
    RateLimit { max: 100, window_ms: 900_000 }
}
fn default_connections() -> usize {
    4
}
fn default_work_mem() -> String {
    "64MB".into()
}
fn default_redis_prefix() -> String {
    "weir:analytics:".into()
}
fn default_cache_ttl() -> u64 {
    60
}
fn default_listen() -> String {
    "127.0.0.1:3000".into()
}
fn default_events_table() -> String {
    "analytics.event_log".into()
}
fn default_schema() -> String {
    "analytics".into()
}
fn default_max_events() -> usize {
    1000
}
fn default_max_body() -> usize {
    10 << 20
}
fn default_ack_timeout() -> u64 {
    30_000
}
fn default_rollup_every() -> u64 {
    3_000
}
fn default_journey_limit() -> u32 {
    1000
}

/// Whether `name` is a plain SQL identifier (letters, digits, `_`, not starting with a digit).
fn identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl AnalyticsConfig {
    /// What is wrong with the config, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.database_url.trim().is_empty() {
            return Err("database_url is empty; set it to the PostgreSQL the pipeline's postgres sink writes (e.g. ${DATABASE_URL})".into());
        }
        let parts: Vec<&str> = self.events_table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| identifier(p)) {
            return Err(format!("events_table {:?} must be `table` or `schema.table` of letters, digits and _", self.events_table));
        }
        if !identifier(&self.schema) {
            return Err(format!("schema {:?} must be letters, digits and _", self.schema));
        }
        self.rate_limit.check("rate_limit")?;
        if !(1..=64).contains(&self.database_connections) {
            return Err(format!("database_connections {} must be from 1 to 64", self.database_connections));
        }
        let digits = self.work_mem.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &self.work_mem[digits.len()..];
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || !["kB", "MB", "GB"].contains(&unit) {
            return Err(format!("work_mem {:?} must be a whole number and a unit, kB, MB or GB (e.g. 64MB)", self.work_mem));
        }
        if let Some(cors) = &self.cors {
            cors.check("cors")?;
        }
        for (tenant, origins) in &self.project_origins {
            if !tenant.split_once('/').is_some_and(|(o, p)| !o.is_empty() && !p.is_empty() && !p.contains('/')) {
                return Err(format!("project_origins: {tenant:?} must be orgId/projectId"));
            }
            weir_plugin::serve::cors::check_origins(&format!("project_origins.{tenant}"), origins, false)?;
        }
        if self.max_events == 0 || self.max_body_bytes == 0 || self.journey_limit == 0 || self.rollup_every_ms == 0 {
            return Err("max_events, max_body_bytes, journey_limit and rollup_every_ms must be above 0".into());
        }
        if !self.admin_key.is_empty() && self.admin_key.len() < 16 {
            return Err(
                "admin_key is shorter than 16 characters; use a long random secret (or leave it empty to turn key management off)".into()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: weir_plugin::serde_json::Value) -> AnalyticsConfig {
        let mut base = weir_plugin::serde_json::json!({"database_url": "postgres://localhost/test"});
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        weir_plugin::serde_json::from_value(base).unwrap()
    }

    #[test]
    fn table_names_cannot_carry_sql() {
        assert!(config(weir_plugin::serde_json::json!({})).check().is_ok());
        let bad = config(weir_plugin::serde_json::json!({"events_table": "x; DROP TABLE y"}));
        assert!(bad.check().unwrap_err().contains("events_table"));
        assert!(config(weir_plugin::serde_json::json!({"schema": "a-b"})).check().is_err());
        assert!(config(weir_plugin::serde_json::json!({"admin_key": "short"})).check().unwrap_err().contains("admin_key"));
        assert!(config(weir_plugin::serde_json::json!({"work_mem": "64MB'; DROP TABLE x; --"})).check().unwrap_err().contains("work_mem"));
        assert!(config(weir_plugin::serde_json::json!({"work_mem": "512kB"})).check().is_ok());
        assert!(config(weir_plugin::serde_json::json!({"database_connections": 0})).check().is_err());
        let bad = config(weir_plugin::serde_json::json!({"project_origins": {"proj-only": ["https://a.example"]}}));
        assert!(bad.check().unwrap_err().contains("orgId/projectId"));
        let bad = config(weir_plugin::serde_json::json!({"project_origins": {"o/p": ["https://a.example/x"]}}));
        assert!(bad.check().unwrap_err().contains("project_origins.o/p"));
    }
}
