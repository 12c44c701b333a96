//! Config of the `aggregate` sink.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use weir_plugin::{Deserialize, JsonSchema, PluginError};

/// Counts per time bucket.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// The name of the buckets in `/metrics` (`hourlyStats`).
    #[serde(default = "default_bucket_name")]
    pub name: String,
    /// JSON pointer of the record's time (ISO-8601 text or epoch seconds / milliseconds);
    /// without it, or when the record has none, the record's timestamp, else the time it arrives.
    #[serde(default)]
    pub time_field: Option<String>,
    /// Width of a bucket in seconds (3600: hourly).
    #[serde(default = "default_width")]
    pub width_secs: u64,
    /// How many of the latest buckets are kept; older ones are removed (periodic cleanup).
    #[serde(default = "default_keep")]
    pub keep: NonZeroUsize,
    /// JSON pointer of a field counted within each bucket (as `count_by`), e.g. `/eventType`.
    #[serde(default)]
    pub by: Option<String>,
}

fn default_bucket_name() -> String {
    "hourlyStats".into()
}
fn default_width() -> u64 {
    3600
}
fn default_keep() -> NonZeroUsize {
    NonZeroUsize::new(48).expect("non-zero")
}

/// Entities counted by their latest value, such as products by their last event type.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestSpec {
    /// JSON pointer of the entity's id (`/productId`).
    pub key: String,
    /// JSON pointer of its value (`/eventType`, `/data/status`).
    pub value: String,
    /// Most entities tracked; records of further entities are counted as overflow.
    #[serde(default = "default_entities")]
    pub max_entities: NonZeroUsize,
}

fn default_entities() -> NonZeroUsize {
    NonZeroUsize::new(100_000).expect("non-zero")
}

/// Periodic snapshots, so a restart does not start from zero.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpec {
    /// The snapshot file (JSON); a relative path is taken from the pipeline file's directory.
    pub path: PathBuf,
    /// Seconds between snapshots; one is also written when the pipeline stops.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
}

fn default_interval() -> u64 {
    10
}

/// Config of the `aggregate` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Address of the JSON endpoints `GET /health` and `GET /metrics` (`0.0.0.0:${HEALTH_PORT}`).
    pub listen: String,
    /// Counters by field, by name in the output: `eventsByType: /eventType`.
    #[serde(default)]
    pub count_by: BTreeMap<String, String>,
    /// Counts per time bucket (hourly by default).
    #[serde(default)]
    pub buckets: Option<BucketSpec>,
    /// Entities by their latest value, by name in the output: `productStatus: {key: /productId, value: /eventType}`.
    #[serde(default)]
    pub latest: BTreeMap<String, LatestSpec>,
    /// Most distinct values per counter; records with further values count under `other`.
    #[serde(default = "default_max_keys")]
    pub max_keys: NonZeroUsize,
    /// Periodic snapshots of the counts.
    #[serde(default)]
    pub snapshot: Option<SnapshotSpec>,
    /// Dependencies `/health` always lists under `services` (`kafka`, `dynamodb`, `s3`), as
    /// the pipeline's stages report them; `unknown` until one does. Dependencies reported but
    /// not listed are shown too.
    #[serde(default)]
    pub services: Vec<String>,
    /// Counters of `count_by` that `/health` shows under `metrics` beside `totalEvents`.
    #[serde(default)]
    pub health_metrics: Vec<String>,
}

fn default_max_keys() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}

fn pointer(field: &str, p: &str) -> Result<(), PluginError> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(PluginError::config(format!("{field} {p:?} is not a JSON pointer: it must start with `/`")))
    }
}

impl AggregateConfig {
    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), PluginError> {
        for (name, p) in &self.count_by {
            pointer(&format!("count_by.{name}"), p)?;
        }
        if let Some(b) = &self.buckets {
            if b.width_secs == 0 {
                return Err(PluginError::config("buckets.width_secs must be at least 1"));
            }
            if let Some(t) = &b.time_field {
                pointer("buckets.time_field", t)?;
            }
            if let Some(by) = &b.by {
                pointer("buckets.by", by)?;
            }
        }
        for (name, l) in &self.latest {
            pointer(&format!("latest.{name}.key"), &l.key)?;
            pointer(&format!("latest.{name}.value"), &l.value)?;
        }
        for m in &self.health_metrics {
            if !self.count_by.contains_key(m) {
                return Err(PluginError::config(format!("health_metrics names {m:?}, which is not a counter of count_by")));
            }
        }
        let mut names: Vec<&str> = self.count_by.keys().chain(self.latest.keys()).map(String::as_str).collect();
        names.extend(self.buckets.as_ref().map(|b| b.name.as_str()));
        for reserved in ["totalEvents", "processing"] {
            if names.contains(&reserved) {
                return Err(PluginError::config(format!("{reserved:?} is a name of the output itself: call the counter something else")));
            }
        }
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(PluginError::config(format!("{:?} names two outputs (count_by, latest, buckets): give each its own name", w[0])));
        }
        Ok(())
    }
}
