//! `POST /api/v1/events`: one event or an array, each checked field by field; the tenant
//! (`orgId`, `projectId`) comes from the API key and replaces whatever the body says.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use weir_plugin::serde_json::{self as serde_json, value::RawValue, Map, Value};

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

/// An event as it arrives: each field's JSON text, read without building a tree (members
/// not named here are skipped; `null` reads as absent).
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "userId", borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(rename = "eventName", borrow)]
    event_name: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(rename = "eventId", borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(rename = "sessionId", borrow)]
    session_id: Option<&'a RawValue>,
    #[serde(rename = "pageUrl", borrow)]
    page_url: Option<&'a RawValue>,
    #[serde(rename = "userAgent", borrow)]
    user_agent: Option<&'a RawValue>,
    #[serde(rename = "ipAddress", borrow)]
    ip_address: Option<&'a RawValue>,
}

/// A string member: its value and its JSON text, checked (required, not blank, at most
/// `max` characters, no NUL).
fn string<'a>(raw: Option<&'a RawValue>, field: &str, max: usize, required: bool) -> Result<Option<(Cow<'a, str>, &'a str)>, String> {
    let Some(raw) = raw else {
        return if required { Err(format!("{field} is required")) } else { Ok(None) };
    };
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(format!("{field} must be a string"));
    }
    let value: Cow<'a, str> = match serde_json::from_str::<&'a str>(text) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(serde_json::from_str::<String>(text).map_err(|e| format!("{field}: {e}"))?),
    };
    if required && value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > max && value.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    if value.contains('\0') {
        return Err(NUL.into());
    }
    Ok(Some((value, text)))
}

/// Why an event holding NUL is refused.
const NUL: &str = "the event holds the NUL character (\\u0000), which cannot be stored; remove it";

/// Writes `s` as a JSON string.
fn push_json(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes a member as the event gave it (its JSON text), else `fallback` as a JSON string,
/// else `null`.
fn push_given(out: &mut Vec<u8>, given: &Option<(Cow<'_, str>, &str)>, fallback: Option<&str>) {
    match (given, fallback) {
        (Some((_, json)), _) => out.extend_from_slice(json.as_bytes()),
        (None, Some(f)) => push_json(out, f),
        (None, None) => out.extend_from_slice(b"null"),
    }
}

/// Writes `t` as `keys::iso` does, without its format parser.
fn push_iso(out: &mut Vec<u8>, t: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    use std::io::Write;
    if (0..=9999).contains(&t.year()) {
        let ms = t.timestamp_subsec_millis().min(999);
        let _ =
            write!(out, "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}Z\"", t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second());
    } else {
        push_json(out, &iso(t));
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

/// An event as stored: the record's JSON text and its user.
#[derive(Debug)]
pub struct Stored {
    /// The record.
    pub text: String,
    /// Its `userId`.
    pub user: String,
}

/// The record stored for the event whose JSON text is `event`, for the key's tenant, or
/// why it is refused (naming the field). The record is written straight from the event's
/// text: members are checked, not rebuilt.
pub fn record(event: &RawValue, key: &KeyRecord, client: &Client<'_>, new_id: impl FnOnce() -> String) -> Result<Stored, String> {
    let text = event.get();
    if !text.starts_with('{') {
        return Err("the event is not a JSON object".into());
    }
    let e: Incoming<'_> = serde_json::from_str(text).map_err(|e| format!("the event cannot be read: {e}"))?;
    let (user, user_json) = string(e.user_id, "userId", MAX_NAME, true)?.unwrap_or_default();
    let (_, name_json) = string(e.event_name, "eventName", MAX_NAME, true)?.unwrap_or_default();
    let timestamp = match string(e.timestamp, "timestamp", 64, false)? {
        None => client.received,
        Some((t, _)) => parse_time(&t).ok_or_else(|| format!("timestamp {t:?} is not an ISO-8601 time such as 2024-01-01T10:00:00Z"))?,
    };
    let event_id = string(e.event_id, "eventId", MAX_EVENT_ID, false)?;
    let properties = match e.properties.map(RawValue::get) {
        None => "{}",
        Some(p) if p.starts_with('{') => p,
        Some(_) => return Err("properties must be an object".into()),
    };
    // A NUL can only be written escaped; look closer only when the escape is there.
    if properties.contains("\\u0000") && serde_json::from_str::<Value>(properties).is_ok_and(|p| has_nul(&p)) {
        return Err(NUL.into());
    }
    let session = string(e.session_id, "sessionId", MAX_NAME, false)?;
    let page = string(e.page_url, "pageUrl", 4096, false)?;
    let agent = string(e.user_agent, "userAgent", 4096, false)?;
    let ip = string(e.ip_address, "ipAddress", 64, false)?;
    if client.user_agent.is_some_and(|a| a.contains('\0')) {
        return Err(NUL.into());
    }
    let generated_id = event_id.is_none().then(new_id);
    let mut out = Vec::with_capacity(text.len() + 160);
    out.extend_from_slice(b"{\"eventId\":");
    push_given(&mut out, &event_id, generated_id.as_deref());
    out.extend_from_slice(b",\"userId\":");
    out.extend_from_slice(user_json.as_bytes());
    out.extend_from_slice(b",\"eventName\":");
    out.extend_from_slice(name_json.as_bytes());
    out.extend_from_slice(b",\"timestamp\":");
    push_iso(&mut out, timestamp);
    out.extend_from_slice(b",\"orgId\":");
    push_json(&mut out, &key.org_id);
    out.extend_from_slice(b",\"projectId\":");
    push_json(&mut out, &key.project_id);
    out.extend_from_slice(b",\"properties\":");
    out.extend_from_slice(properties.as_bytes());
    out.extend_from_slice(b",\"sessionId\":");
    push_given(&mut out, &session, None);
    out.extend_from_slice(b",\"pageUrl\":");
    push_given(&mut out, &page, None);
    out.extend_from_slice(b",\"userAgent\":");
    push_given(&mut out, &agent, client.user_agent);
    out.extend_from_slice(b",\"ipAddress\":");
    push_given(&mut out, &ip, Some(client.ip));
    out.push(b'}');
    let text = String::from_utf8(out).map_err(|_| "the event is not valid UTF-8".to_owned())?;
    Ok(Stored { text, user: user.into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    fn key() -> KeyRecord {
        crate::keys::tests_key("org-a", "proj-a")
    }

    /// `record` over `event`'s text, read back.
    fn record(event: &Value, key: &KeyRecord, client: &Client<'_>, new_id: impl FnOnce() -> String) -> Result<Value, String> {
        let raw = weir_plugin::serde_json::value::to_raw_value(event).unwrap();
        let stored = super::record(&raw, key, client, new_id)?;
        let value: Value = weir_plugin::serde_json::from_str(&stored.text).expect("the record is JSON");
        assert_eq!(value["userId"], stored.user.as_str());
        Ok(value)
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
        assert!(bad(json!({"userId": "u", "eventName": "e", "sessionId": 7})).starts_with("sessionId"));
        assert_eq!(bad(json!({"userId": "u", "eventName": "e".repeat(201)})), "eventName is longer than 200 characters");
    }

    #[test]
    fn text_is_kept_as_sent_and_escapes_survive() {
        let r = record(
            &json!({"userId": "ü \"quoted\"", "eventName": "e", "timestamp": "2024-01-01T10:00:00.123456Z", "properties": {"k": [1, {"a": null}]}, "sessionId": null, "extra": {"x": 1}}),
            &key(),
            &client(),
            || "x".into(),
        )
        .unwrap();
        assert_eq!(r["userId"], "ü \"quoted\"");
        assert_eq!(r["timestamp"], "2024-01-01T10:00:00.123Z");
        assert_eq!(r["properties"], json!({"k": [1, {"a": null}]}));
        assert_eq!(r["sessionId"], Value::Null);
        assert!(r.get("extra").is_none(), "{r}");
        let far =
            record(&json!({"userId": "u", "eventName": "e", "timestamp": "+10000-01-01T00:00:00Z"}), &key(), &client(), || "x".into());
        assert!(far.is_err() || far.unwrap()["timestamp"].is_string());
    }
}
