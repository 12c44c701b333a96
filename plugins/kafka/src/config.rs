//! Configs of the Kafka source and sink.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use rdkafka::ClientConfig;
use weir_plugin::{Deserialize, JsonSchema, PluginError};

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_acks() -> String {
    "all".into()
}
fn yes() -> bool {
    true
}
fn default_linger() -> u32 {
    5
}
fn default_timeout() -> u32 {
    30_000
}
fn default_batch() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}
fn default_wait() -> u64 {
    50
}
fn default_session() -> u32 {
    45_000
}
fn default_partitions() -> i32 {
    1
}
fn default_replication() -> i32 {
    1
}

/// Message compression.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A topic the sink creates when it is missing.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Partitions.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// How long the broker keeps messages, in milliseconds (`retention.ms`).
    #[serde(default)]
    pub retention_ms: Option<i64>,
}

/// Config of the `kafka` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// The topic, unless `topic_field` names one in the record.
    #[serde(default)]
    pub topic: Option<String>,
    /// JSON pointer of a field holding the topic; records without it go to `topic`.
    #[serde(default)]
    pub topic_field: Option<String>,
    /// `client.id`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Acknowledgements the broker gives before a message counts as written (`all`, `1`, `0`).
    #[serde(default = "default_acks")]
    pub acks: String,
    /// Idempotent producer: retries never duplicate or reorder messages within a partition.
    #[serde(default = "yes")]
    pub idempotence: bool,
    /// Compression of message batches.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch, in milliseconds (`linger.ms`).
    #[serde(default = "default_linger")]
    pub linger_ms: u32,
    /// Largest producer batch in bytes (`batch.size`); librdkafka's default when unset.
    #[serde(default)]
    pub batch_bytes: Option<u32>,
    /// How long one message may take to be delivered before the batch is retried, in
    /// milliseconds (`message.timeout.ms`).
    #[serde(default = "default_timeout")]
    pub message_timeout_ms: u32,
    /// Copy record headers (including `traceparent`) into Kafka headers.
    #[serde(default = "yes")]
    pub headers: bool,
    /// Create the topic at start when it is missing.
    #[serde(default)]
    pub create_topic: Option<CreateTopic>,
    /// Any other librdkafka property, e.g. `security.protocol: SASL_SSL`,
    /// `sasl.mechanism: PLAIN`, `sasl.username: ${KAFKA_SASL_USERNAME}`,
    /// `sasl.password: ${KAFKA_SASL_PASSWORD}`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

/// Where a consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The oldest message kept.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// Config of the `kafka` source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topics; a name starting with `^` is a regular expression. Another entry may list
    /// several names, comma-separated (`${KAFKA_TOPICS}` as `a,b`).
    pub topics: Vec<String>,
    /// Consumer group; instances in one group share the partitions.
    pub group_id: String,
    /// `client.id`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Where to start when the group has no committed offset.
    #[serde(default)]
    pub start: Start,
    /// Start at this time (RFC 3339) instead, for partitions the group has no offset for.
    #[serde(default)]
    pub start_at: Option<String>,
    /// Most records per batch.
    #[serde(default = "default_batch")]
    pub batch_size: NonZeroUsize,
    /// Longest wait to fill a batch, in milliseconds.
    #[serde(default = "default_wait")]
    pub batch_wait_ms: u64,
    /// `session.timeout.ms`.
    #[serde(default = "default_session")]
    pub session_timeout_ms: u32,
    /// Any other librdkafka property (security, SASL, fetch sizes).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

/// librdkafka properties Weir sets itself and a config may not override.
const RESERVED_SOURCE: [&str; 3] = ["enable.auto.commit", "group.id", "enable.auto.offset.store"];

fn check_brokers(brokers: &str) -> Result<(), PluginError> {
    if brokers.split(',').any(|b| b.trim().rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none()) {
        return Err(PluginError::config(format!("brokers {brokers:?} must be a comma-separated list of host:port")));
    }
    Ok(())
}

impl SinkConfig {
    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), PluginError> {
        check_brokers(&self.brokers)?;
        if self.topic.is_none() && self.topic_field.is_none() {
            return Err(PluginError::config("set `topic`, or `topic_field` with `topic` as the fallback"));
        }
        if let Some(f) = &self.topic_field {
            if !f.starts_with('/') {
                return Err(PluginError::config(format!("topic_field {f:?} must be a JSON pointer such as \"/{f}\"")));
            }
        }
        if !matches!(self.acks.as_str(), "all" | "-1" | "0" | "1") {
            return Err(PluginError::config(format!("acks {:?} must be all, 1 or 0", self.acks)));
        }
        if self.idempotence && !matches!(self.acks.as_str(), "all" | "-1") {
            return Err(PluginError::config("an idempotent producer needs acks: all; set idempotence: false to use fewer acks"));
        }
        Ok(())
    }

    /// The librdkafka producer config.
    pub fn client(&self) -> ClientConfig {
        let mut c = base(&self.brokers, self.client_id.as_deref());
        c.set("acks", &self.acks)
            .set("enable.idempotence", self.idempotence.to_string())
            .set("compression.type", self.compression.name())
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string());
        if let Some(b) = self.batch_bytes {
            c.set("batch.size", b.to_string());
        }
        apply_overrides(&mut c, &self.librdkafka);
        c
    }
}

impl SourceConfig {
    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), PluginError> {
        check_brokers(&self.brokers)?;
        if self.topics.is_empty() {
            return Err(PluginError::config("topics needs at least one topic"));
        }
        if self.group_id.trim().is_empty() {
            return Err(PluginError::config("group_id must not be empty"));
        }
        if let Some(k) = self.librdkafka.keys().find(|k| RESERVED_SOURCE.contains(&k.as_str())) {
            return Err(PluginError::config(format!("librdkafka.{k} is set by Weir (offsets are committed after delivery); remove it")));
        }
        if let Some(t) = &self.start_at {
            start_at_ms(t)?;
        }
        Ok(())
    }

    /// The librdkafka consumer config.
    pub fn client(&self) -> ClientConfig {
        let mut c = base(&self.brokers, self.client_id.as_deref());
        c.set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("auto.offset.reset", if self.start == Start::Latest { "latest" } else { "earliest" })
            .set("queued.max.messages.kbytes", "16384");
        apply_overrides(&mut c, &self.librdkafka);
        c
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn start_at_ms(text: &str) -> Result<i64, PluginError> {
    let t = humantime::parse_rfc3339(text)
        .map_err(|e| PluginError::config(format!("start_at {text:?} is not an RFC 3339 time such as 2024-01-01T00:00:00Z: {e}")))?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| PluginError::config(format!("start_at {text:?} is before 1970")))?;
    Ok(ms.as_millis() as i64)
}

fn base(brokers: &str, client_id: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    if let Some(id) = client_id {
        c.set("client.id", id);
    }
    c
}

fn apply_overrides(c: &mut ClientConfig, overrides: &BTreeMap<String, String>) {
    for (k, v) in overrides {
        c.set(k, v);
    }
}

/// Property names whose values must never be shown.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.contains("token") || k.ends_with(".key") || k.contains("jaas")
}

/// The config as librdkafka gets it, with secrets masked, for logs.
pub fn describe(c: &ClientConfig) -> String {
    let mut parts: Vec<String> =
        c.config_map().iter().map(|(k, v)| if is_secret(k) { format!("{k}=***") } else { format!("{k}={v}") }).collect();
    parts.sort();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::{self, json};

    #[test]
    fn sasl_settings_pass_through_and_are_masked_in_descriptions() {
        let c: SinkConfig = serde_json::from_value(json!({
            "brokers": "b1:9092,b2:9092", "topic": "event",
            "librdkafka": {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "key", "sasl.password": "hunter2-secret"}
        }))
        .unwrap();
        c.check().unwrap();
        let client = c.client();
        assert_eq!(client.get("sasl.password"), Some("hunter2-secret"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("acks"), Some("all"));
        let text = describe(&client);
        assert!(text.contains("sasl.password=***") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("sasl.username=key"), "{text}");
    }

    #[test]
    fn source_refuses_auto_commit_and_needs_topics() {
        let c: SourceConfig =
            serde_json::from_value(json!({"topics": ["t"], "group_id": "g", "librdkafka": {"enable.auto.commit": "true"}})).unwrap();
        assert!(c.check().unwrap_err().to_string().contains("enable.auto.commit"));
        let c: SourceConfig = serde_json::from_value(json!({"topics": [], "group_id": "g"})).unwrap();
        assert!(c.check().is_err());
        let c: SourceConfig = serde_json::from_value(json!({"topics": ["t"], "group_id": "g"})).unwrap();
        assert_eq!(c.client().get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn sink_config_rules() {
        let bad: SinkConfig = serde_json::from_value(json!({"topic": "t", "acks": "1"})).unwrap();
        assert!(bad.check().unwrap_err().to_string().contains("idempotent"));
        let bad: SinkConfig = serde_json::from_value(json!({})).unwrap();
        assert!(bad.check().is_err());
        let bad: SinkConfig = serde_json::from_value(json!({"topic": "t", "brokers": "nohost"})).unwrap();
        assert!(bad.check().is_err());
    }

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(start_at_ms("1970-01-01T00:00:01.500Z").unwrap(), 1500);
        assert_eq!(start_at_ms("2024-01-01T12:00:00Z").unwrap(), 1_704_110_400_000);
        assert!(start_at_ms("yesterday").is_err());
    }
}
