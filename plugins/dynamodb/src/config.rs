//! Config of the `dynamodb` sink.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use weir_plugin::serde_json::Value;
use weir_plugin::{Deserialize, JsonSchema, PluginError};

/// Where one attribute's value comes from: exactly one of `from`, `value` and `now`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeSpec {
    /// JSON pointer of the value in the record (`""` for the whole record, as a map). Strings
    /// become `S`, numbers `N` (the digits as written), booleans `BOOL`, null `NULL`, arrays
    /// `L` and objects `M`. A record without the field gets no such attribute (a key
    /// attribute is required: the record is rejected).
    #[serde(default)]
    pub from: Option<String>,
    /// A constant value, converted as `from` converts.
    #[serde(default)]
    pub value: Option<Value>,
    /// `true`: the time the item is written, ISO-8601 UTC with milliseconds (`createdAt`).
    #[serde(default)]
    pub now: bool,
}

/// The TTL attribute: epoch seconds after which DynamoDB may delete the item.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TtlSpec {
    /// The attribute's name (the table's TTL attribute, `ttl` in the seed).
    pub attribute: String,
    /// How long an item lives, as `30d`, `12h` or `90m`.
    pub after: String,
    /// JSON pointer of the time the duration counts from (ISO-8601 or epoch seconds or
    /// milliseconds); without it, the time the item is written.
    #[serde(default)]
    pub from: Option<String>,
}

/// What a write may replace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Any item with the same key is replaced, 25 items per `BatchWriteItem`: redelivery
    /// writes the same item again.
    #[default]
    None,
    /// An item is written only when none with its key exists (`PutItem` with
    /// `attribute_not_exists`): the first write wins, so redelivery keeps `createdAt`.
    Absent,
    /// An item is written only when none with its key exists or the stored one's `version`
    /// attribute is lower: an older redelivered record never replaces a newer item.
    Newer,
}

/// Config of the `dynamodb` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbConfig {
    /// The table (`RecentEvents` in the seed, usually `${RECENT_EVENTS_TABLE_NAME}`).
    pub table: String,
    /// The table's key attributes: the partition key, then the sort key if it has one. A
    /// batch's items with the same key are written once (the last record wins).
    pub key: Vec<String>,
    /// The item's attributes by name (keys included).
    pub attributes: BTreeMap<String, AttributeSpec>,
    /// A TTL attribute.
    #[serde(default)]
    pub ttl: Option<TtlSpec>,
    /// What a write may replace.
    #[serde(default)]
    pub condition: Condition,
    /// With `condition: newer`: the attribute compared (a number or ISO-8601 text, such as
    /// `timestamp`).
    #[serde(default)]
    pub version: Option<String>,
    /// DynamoDB endpoint for DynamoDB Local and other compatible servers, such as
    /// `http://dynamodb-local:8000` (usually `${DYNAMO_ENDPOINT}`); without it (or when empty), AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region; without it `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id; without it `AWS_ACCESS_KEY_ID`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; without it `AWS_SECRET_ACCESS_KEY`. Never shown in logs or errors.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials; without it `AWS_SESSION_TOKEN`.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub session_token: Option<String>,
    /// Most requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroUsize,
    /// How often unprocessed or throttled items are sent again within one batch (with
    /// exponential backoff from 50 ms) before the host retries the batch.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// How long one request may take, in seconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
}

fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(8).expect("non-zero")
}
fn default_attempts() -> u32 {
    8
}
fn default_timeout() -> u64 {
    10
}

/// The TTL duration in seconds.
pub fn ttl_seconds(text: &str) -> Result<i64, PluginError> {
    let (n, unit) = text.trim().split_at(text.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(text.trim().len()));
    let n: i64 = n.parse().map_err(|_| PluginError::config(format!("ttl.after {text:?} is not a duration such as 30d, 12h or 90m")))?;
    let unit = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(PluginError::config(format!("ttl.after {text:?}: the unit must be d, h, m or s (30d, 12h, 90m, 45s)"))),
    };
    Ok(n * unit)
}

impl DynamoDbConfig {
    /// The endpoint, if one is given (an empty one, as `${VAR:-}` leaves it, is none).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty())
    }

    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), PluginError> {
        if self.table.len() < 3 || !self.table.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            return Err(PluginError::config(format!(
                "table {:?} is not a DynamoDB table name (3 to 255 letters, digits, `_`, `-`, `.`)",
                self.table
            )));
        }
        if self.key.is_empty() || self.key.len() > 2 {
            return Err(PluginError::config(
                "key names the partition key attribute, and the sort key's if the table has one: one or two names",
            ));
        }
        for k in &self.key {
            if !self.attributes.contains_key(k) {
                return Err(PluginError::config(format!(
                    "key attribute {k:?} is not among attributes: map it, e.g. {k}: {{from: /eventId}}"
                )));
            }
        }
        for (name, spec) in &self.attributes {
            let given = usize::from(spec.from.is_some()) + usize::from(spec.value.is_some()) + usize::from(spec.now);
            if given != 1 {
                return Err(PluginError::config(format!("attributes.{name}: give exactly one of from, value and now: true")));
            }
            if let Some(p) = &spec.from {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(PluginError::config(format!("attributes.{name}.from {p:?} is not a JSON pointer: it must start with `/`")));
                }
            }
        }
        if let Some(ttl) = &self.ttl {
            ttl_seconds(&ttl.after)?;
            if self.attributes.contains_key(&ttl.attribute) {
                return Err(PluginError::config(format!("ttl.attribute {:?} is also among attributes: keep one of them", ttl.attribute)));
            }
        }
        match (self.condition, &self.version) {
            (Condition::Newer, None) => {
                return Err(PluginError::config("condition: newer compares the version attribute: set version (e.g. version: timestamp)"))
            }
            (Condition::Newer, Some(v)) if !self.attributes.contains_key(v) => {
                return Err(PluginError::config(format!("version {v:?} is not among attributes: map it")))
            }
            (Condition::None | Condition::Absent, Some(_)) => return Err(PluginError::config("version applies to condition: newer only")),
            _ => {}
        }
        if let Some(e) = self.endpoint() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(PluginError::config(format!("endpoint {e:?} must start with http:// or https://")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(ttl_seconds("30d").unwrap(), 30 * 86_400);
        assert_eq!(ttl_seconds("90m").unwrap(), 5_400);
        assert!(ttl_seconds("30 days").is_err());
        assert!(ttl_seconds("d").is_err());
    }
}
