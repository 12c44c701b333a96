//! The counts kept in memory, and their snapshot form.

use std::collections::{BTreeMap, HashMap};

use chrono::{SecondsFormat, TimeZone, Utc};
use weir_plugin::serde_json::{json, Map, Value};
use weir_plugin::RecordRef;

use crate::config::AggregateConfig;

/// Where counts go once a counter has `max_keys` values.
pub const OTHER: &str = "other";

/// Counts of one time bucket.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    /// Records in the bucket.
    pub total: u64,
    /// By the bucket's `by` field.
    #[serde(default)]
    pub by: BTreeMap<String, u64>,
}

/// Everything counted; serialized as the snapshot.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Records counted.
    pub total: u64,
    /// Counter name → value → records.
    pub by: BTreeMap<String, BTreeMap<String, u64>>,
    /// Bucket start (epoch seconds) → counts.
    pub buckets: BTreeMap<i64, Bucket>,
    /// Name → entity → its latest value.
    pub latest: BTreeMap<String, HashMap<String, String>>,
    /// Records of entities beyond `max_entities`, and values beyond `max_keys`.
    pub overflowed: u64,
    /// The earliest and latest record times seen.
    pub first_event_at: Option<i64>,
    /// See `first_event_at`.
    pub last_event_at: Option<i64>,
}

/// A field's value as a counter key: strings as they are, other values as JSON text.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn iso(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)).unwrap_or_default()
}

impl Counts {
    /// Counts one record (its value parsed); `now_ms` when it carries no time.
    pub fn add(&mut self, config: &AggregateConfig, record: &RecordRef<'_>, value: &Value, now_ms: i64) {
        let max_keys = config.max_keys.get();
        self.total += 1;
        for (name, pointer) in &config.count_by {
            let Some(v) = value.pointer(pointer) else { continue };
            let counter = self.by.entry(name.clone()).or_default();
            bump(counter, text(v), max_keys, &mut self.overflowed);
        }
        let time_field = config.buckets.as_ref().and_then(|b| b.time_field.as_deref());
        let at =
            time_field.and_then(|p| value.pointer(p)).and_then(weir_plugin::json::time_millis).or(record.timestamp_ms).unwrap_or(now_ms);
        // A time more than a day ahead of the clock is taken as now: one bad timestamp must not
        // become the latest record and have the cleanup drop every real bucket.
        let at = if at > now_ms.saturating_add(86_400_000) { now_ms } else { at };
        self.first_event_at = Some(self.first_event_at.map_or(at, |f| f.min(at)));
        self.last_event_at = Some(self.last_event_at.map_or(at, |l| l.max(at)));
        if let Some(spec) = &config.buckets {
            let width = spec.width_secs as i64;
            let start = at.div_euclid(1000).div_euclid(width).saturating_mul(width);
            let keep = spec.keep.get();
            // A record older than every kept bucket, when all are taken, is not counted in one.
            let too_old = self.buckets.len() >= keep && self.buckets.keys().next().is_some_and(|&first| start < first);
            if !too_old {
                let bucket = self.buckets.entry(start).or_default();
                bucket.total += 1;
                if let Some(v) = spec.by.as_deref().and_then(|p| value.pointer(p)) {
                    bump(&mut bucket.by, text(v), max_keys, &mut self.overflowed);
                }
                while self.buckets.len() > keep {
                    self.buckets.pop_first();
                }
            }
        }
        for (name, spec) in &config.latest {
            let (Some(k), Some(v)) = (value.pointer(&spec.key), value.pointer(&spec.value)) else { continue };
            let entities = self.latest.entry(name.clone()).or_default();
            let key = text(k);
            if let Some(slot) = entities.get_mut(&key) {
                *slot = text(v);
            } else if entities.len() < spec.max_entities.get() {
                entities.insert(key, text(v));
            } else {
                self.overflowed += 1;
            }
        }
    }

    /// Removes buckets more than `keep` widths older than the latest record (the periodic
    /// cleanup). The stream's own time, not the clock: replayed or late history keeps its
    /// latest hours, and a live stream's latest record is now.
    pub fn clean(&mut self, config: &AggregateConfig) {
        if let (Some(spec), Some(latest)) = (&config.buckets, self.last_event_at) {
            let width = spec.width_secs as i64;
            let oldest = (latest.div_euclid(1000).div_euclid(width) - spec.keep.get() as i64 + 1) * width;
            self.buckets.retain(|&start, _| start >= oldest);
        }
    }

    /// `/metrics`' counts: `totalEvents`, each counter, the buckets, the latest values by count.
    pub fn render(&self, config: &AggregateConfig) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("totalEvents".into(), self.total.into());
        for name in config.count_by.keys() {
            out.insert(name.clone(), json!(self.by.get(name).cloned().unwrap_or_default()));
        }
        if let Some(spec) = &config.buckets {
            let buckets: Map<String, Value> = self
                .buckets
                .iter()
                .map(|(start, b)| {
                    let mut v = json!({"total": b.total});
                    if spec.by.is_some() {
                        v["by"] = json!(b.by);
                    }
                    (iso(start.saturating_mul(1000)), v)
                })
                .collect();
            out.insert(spec.name.clone(), Value::Object(buckets));
        }
        for name in config.latest.keys() {
            let mut by_value: BTreeMap<&str, u64> = BTreeMap::new();
            let entities = self.latest.get(name);
            for v in entities.into_iter().flat_map(|e| e.values()) {
                *by_value.entry(v).or_default() += 1;
            }
            out.insert(name.clone(), json!({"entities": entities.map_or(0, HashMap::len), "byValue": by_value}));
        }
        out.insert("firstEventAt".into(), self.first_event_at.map(iso).into());
        out.insert("lastEventAt".into(), self.last_event_at.map(iso).into());
        out
    }
}

fn bump(counter: &mut BTreeMap<String, u64>, key: String, max_keys: usize, overflowed: &mut u64) {
    if let Some(n) = counter.get_mut(&key) {
        *n += 1;
    } else if counter.len() < max_keys {
        counter.insert(key, 1);
    } else {
        *overflowed += 1;
        *counter.entry(OTHER.to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::json_batch;
    use weir_plugin::serde_json::{self, json};

    fn config() -> AggregateConfig {
        serde_json::from_value(json!({
            "listen": "127.0.0.1:0",
            "count_by": {"eventsByType": "/eventType"},
            "buckets": {"time_field": "/timestamp", "keep": 2, "by": "/eventType"},
            "latest": {"productStatus": {"key": "/productId", "value": "/eventType", "max_entities": 2}},
            "max_keys": 2
        }))
        .unwrap()
    }

    fn add_all(counts: &mut Counts, config: &AggregateConfig, events: &[Value]) {
        let text: Vec<String> = events.iter().map(Value::to_string).collect();
        let batch = json_batch(text.iter().map(String::as_str));
        for (r, v) in batch.as_ref().iter().zip(events) {
            counts.add(config, &r, v, Utc::now().timestamp_millis());
        }
    }

    #[test]
    fn counts_by_field_hour_and_latest_value_within_bounds() {
        let config = config();
        config.check().unwrap();
        let mut c = Counts::default();
        let e = |t: &str, at: &str, p: &str| json!({"eventType": t, "timestamp": at, "productId": p});
        add_all(
            &mut c,
            &config,
            &[
                e("ProductCreated", "2024-01-15T10:05:00Z", "p1"),
                e("ProductUpdated", "2024-01-15T10:59:59Z", "p1"),
                e("ProductCreated", "2024-01-15T11:00:00Z", "p2"),
                e("LowStockWarning", "2024-01-15T12:00:00Z", "p3"),
                e("ProductCreated", "2024-01-15T09:00:00Z", "p2"),
            ],
        );
        assert_eq!(c.total, 5);
        assert_eq!(c.by["eventsByType"], BTreeMap::from([("ProductCreated".into(), 3), ("ProductUpdated".into(), 1), (OTHER.into(), 1)]));
        // Two hours kept: 11:00 and 12:00; the 09:00 record came when both were taken.
        let out = c.render(&config);
        let hours: Vec<&String> = out["hourlyStats"].as_object().unwrap().keys().collect();
        assert_eq!(hours, ["2024-01-15T11:00:00.000Z", "2024-01-15T12:00:00.000Z"]);
        assert_eq!(out["productStatus"], json!({"entities": 2, "byValue": {"ProductUpdated": 1, "ProductCreated": 1}}));
        assert_eq!(out["firstEventAt"], "2024-01-15T09:00:00.000Z");
        // The cleanup keeps the two hours up to the latest record's.
        let mut sparse = Counts::default();
        add_all(
            &mut sparse,
            &config,
            &[e("ProductCreated", "2024-01-15T09:00:00Z", "p1"), e("ProductCreated", "2024-01-15T12:00:00Z", "p1")],
        );
        assert_eq!(sparse.buckets.len(), 2);
        sparse.clean(&config);
        assert_eq!(sparse.buckets.keys().map(|s| s % 86_400 / 3600).collect::<Vec<_>>(), [12]);
        // A time far ahead of the clock counts as now, so it cannot push the real hours out.
        let mut ahead = Counts::default();
        add_all(
            &mut ahead,
            &config,
            &[e("ProductCreated", "2024-01-15T12:00:00Z", "p1"), e("ProductCreated", "9999-12-31T00:00:00Z", "p1")],
        );
        assert!(ahead.last_event_at.unwrap() <= Utc::now().timestamp_millis());
        let snapshot: Counts = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(snapshot, c, "a snapshot restores every count");
    }
}
