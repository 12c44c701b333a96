//! `POST /api/v1/events`: one event or an array, each checked field by field; the tenant
//! (`orgId`, `projectId`) comes from the API key and replaces whatever the body says.

use chrono::{DateTime, Utc};
use weir_plugin::serde_json::{Map, Value};

use crate::keys::{iso, KeyRecord};

/// Longest `eventId` accepted (the events table's column).
const MAX_EVENT_ID: usize = 64;
/// Longest `userId`, `eventName` and `sessionId` (the events table's columns).
const MAX_NAME: usize = 200;

/// What the request says about its client, used where an event does not say.
pub struct Client<'a> {
    /// The client's address.
    pub ip: &'a str,
    /// Its `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// When the request arrived.
    pub received: DateTime<Utc>,
}

fn string<'a>(event: &'a Map<String, Value>, field: &str, max: usize, required: bool) -> Result<Option<&'a str>, String> {
    match event.get(field) {
        None | Some(Value::Null) if required => Err(format!("{field} is required")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() && required => Err(format!("{field} must not be empty")),
        Some(Value::String(s)) if s.chars().count() > max => Err(format!("{field} is longer than {max} characters")),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

/// Reads an ISO-8601 / RFC 3339 time (`2024-01-01T10:00:00Z`, with an offset or fraction).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// Whether a string or key anywhere in `v` holds the NUL character, which PostgreSQL's text
/// and JSONB cannot store.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(m) => map_has_nul(m),
        _ => false,
    }
}

/// [`has_nul`] for an object's members.
pub fn map_has_nul(m: &Map<String, Value>) -> bool {
    m.iter().any(|(k, v)| k.contains('\0') || has_nul(v))
}

/// The record stored for `event`, for the key's tenant, or why it is refused (naming the field).
pub fn record(event: &Value, key: &KeyRecord, client: &Client<'_>, new_id: impl FnOnce() -> String) -> Result<Value, String> {
    let Value::Object(event) = event else {
        return Err("the event is not a JSON object".into());
    };
    let user = string(event, "userId", MAX_NAME, true)?.unwrap_or_default();
    let name = string(event, "eventName", MAX_NAME, true)?.unwrap_or_default();
    let timestamp = match string(event, "timestamp", 64, false)? {
        None => client.received,
        Some(t) => parse_time(t).ok_or_else(|| format!("timestamp {t:?} is not an ISO-8601 time such as 2024-01-01T10:00:00Z"))?,
    };
    let event_id = match string(event, "eventId", MAX_EVENT_ID, false)? {
        Some(id) => id.to_owned(),
        None => new_id(),
    };
    let properties = match event.get("properties") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err("properties must be an object".into()),
    };
    let session = string(event, "sessionId", MAX_NAME, false)?;
    let page = string(event, "pageUrl", 4096, false)?;
    let agent = string(event, "userAgent", 4096, false)?.or(client.user_agent);
    let ip = string(event, "ipAddress", 64, false)?.unwrap_or(client.ip);
    let mut out = Map::new();
    out.insert("eventId".into(), event_id.into());
    out.insert("userId".into(), user.into());
    out.insert("eventName".into(), name.into());
    out.insert("timestamp".into(), iso(timestamp).into());
    out.insert("orgId".into(), key.org_id.clone().into());
    out.insert("projectId".into(), key.project_id.clone().into());
    out.insert("properties".into(), properties);
    for (field, v) in [("sessionId", session), ("pageUrl", page), ("userAgent", agent)] {
        out.insert(field.into(), v.map(Value::from).unwrap_or(Value::Null));
    }
    out.insert("ipAddress".into(), ip.into());
    let record = Value::Object(out);
    if has_nul(&record) {
        return Err("the event holds the NUL character (\\u0000), which cannot be stored; remove it".into());
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    fn key() -> KeyRecord {
        crate::keys::tests_key("org-a", "proj-a")
    }

    fn client() -> Client<'static> {
        Client { ip: "10.0.0.1", user_agent: Some("curl/8"), received: parse_time("2024-01-01T10:00:00Z").unwrap() }
    }

    #[test]
    fn the_tenant_comes_from_the_key_and_defaults_fill_in() {
        let r = record(&json!({"userId": "u1", "eventName": "page_view", "orgId": "evil", "projectId": "x"}), &key(), &client(), || {
            "id-1".into()
        })
        .unwrap();
        assert_eq!(r["orgId"], "org-a");
        assert_eq!(r["projectId"], "proj-a");
        assert_eq!(r["eventId"], "id-1");
        assert_eq!(r["timestamp"], "2024-01-01T10:00:00.000Z");
        assert_eq!(r["userAgent"], "curl/8");
        assert_eq!(r["ipAddress"], "10.0.0.1");
        assert_eq!(r["properties"], json!({}));
        let t =
            record(&json!({"userId": "u1", "eventName": "e", "timestamp": "2024-03-01T12:00:00+02:00"}), &key(), &client(), || "x".into())
                .unwrap();
        assert_eq!(t["timestamp"], "2024-03-01T10:00:00.000Z");
    }

    #[test]
    fn refusals_name_the_field() {
        let bad = |e: Value| record(&e, &key(), &client(), || "x".into()).unwrap_err();
        assert_eq!(bad(json!({"eventName": "e"})), "userId is required");
        assert_eq!(bad(json!({"userId": "u", "eventName": ""})), "eventName must not be empty");
        assert_eq!(bad(json!({"userId": 5, "eventName": "e"})), "userId must be a string");
        assert!(bad(json!({"userId": "u", "eventName": "e", "timestamp": "yesterday"})).starts_with("timestamp"));
        assert_eq!(bad(json!({"userId": "u", "eventName": "e", "properties": [1]})), "properties must be an object");
        assert_eq!(bad(json!([1])), "the event is not a JSON object");
        assert!(bad(json!({"userId": "u\u{0}", "eventName": "e"})).contains("NUL"));
        assert!(bad(json!({"userId": "u", "eventName": "e", "properties": {"a": ["\u{0}"]}})).contains("NUL"));
    }
}
