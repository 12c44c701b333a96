//! Records to DynamoDB items.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use weir_plugin::serde_json::Value;

use crate::config::{ttl_seconds, Condition, DynamoDbConfig};

/// An item: attribute names to values.
pub type Item = HashMap<String, AttributeValue>;

/// JSON as DynamoDB's document mapping writes it.
pub fn attribute(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(a) => AttributeValue::L(a.iter().map(attribute).collect()),
        Value::Object(o) => AttributeValue::M(o.iter().map(|(k, v)| (k.clone(), attribute(v))).collect()),
    }
}

/// ISO-8601 text or epoch seconds / milliseconds.
pub fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    weir_plugin::json::time_millis(v).and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// Maps records to items by the config.
pub struct Mapper {
    config: DynamoDbConfig,
    ttl: Option<i64>,
}

impl Mapper {
    /// A mapper for a checked config.
    pub fn new(config: &DynamoDbConfig) -> Self {
        let ttl = config.ttl.as_ref().map(|t| ttl_seconds(&t.after).unwrap_or(0));
        Mapper { config: config.clone(), ttl }
    }

    /// The item of one record written at `now`; the error says what the record lacks.
    pub fn item(&self, record: &Value, now: DateTime<Utc>) -> Result<Item, String> {
        let mut item = Item::with_capacity(self.config.attributes.len() + 1);
        for (name, spec) in &self.config.attributes {
            let value = if let Some(pointer) = &spec.from {
                match record.pointer(pointer) {
                    Some(v) => attribute(v),
                    None if self.config.key.contains(name) => {
                        return Err(format!("field {pointer} is missing, and it is the key attribute {name}"))
                    }
                    None => continue,
                }
            } else if let Some(v) = &spec.value {
                attribute(v)
            } else {
                AttributeValue::S(now.to_rfc3339_opts(SecondsFormat::Millis, true))
            };
            if self.config.key.contains(name) {
                match &value {
                    AttributeValue::S(s) if !s.is_empty() => {}
                    AttributeValue::N(_) => {}
                    _ => return Err(format!("key attribute {name} must be a non-empty string or a number")),
                }
            }
            item.insert(name.clone(), value);
        }
        if let (Some(spec), Some(secs)) = (&self.config.ttl, self.ttl) {
            let base = match &spec.from {
                Some(pointer) => match record.pointer(pointer) {
                    Some(v) => parse_time(v).ok_or_else(|| format!("field {pointer} is not a time, and the TTL counts from it"))?,
                    None => return Err(format!("field {pointer} is missing, and the TTL counts from it")),
                },
                None => now,
            };
            item.insert(spec.attribute.clone(), AttributeValue::N((base.timestamp() + secs).to_string()));
        }
        Ok(item)
    }

    /// One item per key of a batch (BatchWriteItem refuses repeats): the one the condition
    /// would keep, the last record (`none`), the first (`absent`) or the highest version
    /// (`newer`); the others are delivered by it. In record order; beside them the records
    /// refused (with `newer`, those without a version).
    pub fn one_per_key(&self, items: Vec<(usize, Item)>) -> (Vec<(usize, Item)>, Vec<(usize, String)>) {
        let mut chosen: HashMap<String, (usize, Item)> = HashMap::with_capacity(items.len());
        let mut refused = Vec::new();
        for (i, item) in items {
            let key = self.key_of(&item);
            match self.config.condition {
                Condition::None => {
                    chosen.insert(key, (i, item));
                }
                Condition::Absent => {
                    chosen.entry(key).or_insert((i, item));
                }
                Condition::Newer => {
                    let v = self.config.version.as_deref().unwrap_or_default();
                    if !matches!(item.get(v), Some(AttributeValue::N(_) | AttributeValue::S(_))) {
                        refused.push((i, format!("the record has no {v} (a number or text), which condition: newer compares")));
                        continue;
                    }
                    match chosen.get(&key) {
                        Some((_, kept)) if !version_lt(kept.get(v), item.get(v)) => {}
                        _ => {
                            chosen.insert(key, (i, item));
                        }
                    }
                }
            }
        }
        let mut items: Vec<(usize, Item)> = chosen.into_values().collect();
        items.sort_by_key(|(i, _)| *i);
        (items, refused)
    }

    /// The item's key, as text, to find repeats within a batch.
    pub fn key_of(&self, item: &Item) -> String {
        let mut key = String::new();
        for k in &self.config.key {
            match item.get(k) {
                Some(AttributeValue::S(s)) => key.push_str(s),
                Some(AttributeValue::N(n)) => key.push_str(n),
                _ => {}
            }
            key.push('\u{0}');
        }
        key
    }
}

/// Whether version `a` is lower than `b`, as DynamoDB compares them (numbers by value, text by
/// its bytes).
fn version_lt(a: Option<&AttributeValue>, b: Option<&AttributeValue>) -> bool {
    match (a, b) {
        (Some(AttributeValue::N(x)), Some(AttributeValue::N(y))) => {
            x.parse::<f64>().ok().zip(y.parse::<f64>().ok()).is_some_and(|(x, y)| x < y)
        }
        (Some(AttributeValue::S(x)), Some(AttributeValue::S(y))) => x < y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::{self, json};

    fn seed_config() -> DynamoDbConfig {
        serde_json::from_value(json!({
            "table": "RecentEvents",
            "key": ["id"],
            "attributes": {
                "id": {"from": "/eventId"}, "eventId": {"from": "/eventId"}, "eventType": {"from": "/eventType"},
                "timestamp": {"from": "/timestamp"}, "data": {"from": ""}, "createdAt": {"now": true}
            },
            "ttl": {"attribute": "ttl", "after": "30d"}
        }))
        .unwrap()
    }

    #[test]
    fn maps_the_seed_item() {
        let config = seed_config();
        config.check().unwrap();
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let record = json!({"eventId": "e1", "eventType": "ProductCreated", "timestamp": "2024-01-15T10:00:00Z", "data": {"price": 9.5}});
        let item = Mapper::new(&config).item(&record, now).unwrap();
        assert_eq!(item["id"], AttributeValue::S("e1".into()));
        assert_eq!(item["ttl"], AttributeValue::N((1_700_000_000 + 30 * 86_400).to_string()));
        assert_eq!(item["createdAt"], AttributeValue::S("2023-11-14T22:13:20.000Z".into()));
        let AttributeValue::M(data) = &item["data"] else { panic!("data is a map") };
        let AttributeValue::M(inner) = &data["data"] else { panic!("nested map") };
        assert_eq!(inner["price"], AttributeValue::N("9.5".into()));
    }

    #[test]
    fn repeats_in_a_batch_keep_the_copy_the_condition_would() {
        let config = |extra: weir_plugin::serde_json::Value| -> DynamoDbConfig {
            let mut c = json!({"table": "Things", "key": ["id"], "attributes": {"id": {"from": "/id"}, "v": {"from": "/v"}}});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(c).unwrap()
        };
        let items = |m: &Mapper| {
            [json!({"id": "a", "v": 5}), json!({"id": "b", "v": 1}), json!({"id": "a", "v": 3}), json!({"id": "a"})]
                .iter()
                .enumerate()
                .map(|(i, r)| (i, m.item(r, Utc::now()).unwrap()))
                .collect::<Vec<_>>()
        };
        let picked = |c: DynamoDbConfig| {
            c.check().unwrap();
            let m = Mapper::new(&c);
            let (kept, refused) = m.one_per_key(items(&m));
            (kept.iter().map(|(i, _)| *i).collect::<Vec<_>>(), refused.iter().map(|(i, _)| *i).collect::<Vec<_>>())
        };
        assert_eq!(picked(config(json!({}))), (vec![1, 3], vec![]), "none: the last of each key");
        assert_eq!(picked(config(json!({"condition": "absent"}))), (vec![0, 1], vec![]), "absent: the first");
        assert_eq!(
            picked(config(json!({"condition": "newer", "version": "v"}))),
            (vec![0, 1], vec![3]),
            "newer: the highest; none without v"
        );
    }

    #[test]
    fn a_record_without_its_key_is_refused() {
        let config = seed_config();
        let err = Mapper::new(&config).item(&json!({"eventType": "x"}), Utc::now()).unwrap_err();
        assert_eq!(err, "field /eventId is missing, and it is the key attribute id");
    }
}
