//! The `map` transform (see [`map`]) and the `enrich` transform: adds fields from templates (receive time, host name, a
//! generated id, request metadata from record headers, static values) and sets the
//! record key from a field.

mod map;
mod raw;
mod template;

use std::collections::BTreeMap;

use weir_plugin::serde_json::Value;
use weir_plugin::{BatchRef, Context, Deserialize, Head, JsonSchema, Output, PluginError, RecordRef, Transform};

use raw::{Object, Seg};
use template::{Scope, Template};

/// Config of the `enrich` transform.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Fields set on every record, replacing what is there. Keys are field names or JSON
    /// pointers (`/a/b`); values are JSON values or templates: `{{received_at}}`, `{{now}}`,
    /// `{{hostname}}`, `{{uuid}}`, `{{pipeline}}`, `{{header:NAME}}`. A field whose
    /// template names a header the record lacks is left out.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    /// Fields set only when the record lacks them (for example a generated `eventId`).
    #[serde(default)]
    pub set_if_missing: BTreeMap<String, Value>,
    /// JSON pointer of the field that becomes the record key (for example `/userId`).
    #[serde(default)]
    pub key: Option<String>,
}

/// One field to set.
struct Field {
    path: Vec<Seg>,
    value: Template,
    only_if_missing: bool,
}

/// The `enrich` transform.
pub struct Enrich {
    fields: Vec<Field>,
    /// Segments of the pointer of the record key.
    key: Option<Vec<String>>,
    scope: Scope,
    /// The value being written, reused from record to record.
    value: Vec<u8>,
}

fn parse_path(name: &str) -> Result<Vec<String>, PluginError> {
    if let Some(pointer) = name.strip_prefix('/') {
        let segs: Vec<String> = pointer.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
        if segs.iter().any(String::is_empty) {
            return Err(PluginError::config(format!("field {name:?} is not a valid JSON pointer")));
        }
        Ok(segs)
    } else if name.is_empty() {
        Err(PluginError::config("a field name is empty"))
    } else {
        Ok(vec![name.to_owned()])
    }
}

fn fields(config: &EnrichConfig) -> Result<Vec<Field>, PluginError> {
    let set = config.set.iter().map(|(k, v)| (k, v, false));
    let missing = config.set_if_missing.iter().map(|(k, v)| (k, v, true));
    set.chain(missing)
        .map(|(name, value, only_if_missing)| {
            Ok(Field {
                path: parse_path(name)?.iter().map(|s| Seg::new(s)).collect(),
                value: Template::parse(value).map_err(|e| PluginError::config(format!("field {name:?}: {e}")))?,
                only_if_missing,
            })
        })
        .collect()
}

impl Enrich {
    /// The record with its fields set, edited as text (see [`raw`]), and its new key.
    fn enrich(&mut self, record: &RecordRef<'_>, out: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
        let text = std::str::from_utf8(record.value).map_err(|e| format!("not valid JSON: not UTF-8 text ({e})"))?;
        let mut object = Object::parse(text).map_err(|e| e.to_string())?;
        let mut edited = false;
        for f in &self.fields {
            if let Some(v) = f.value.render(&mut self.scope, record) {
                object.set(&f.path, v, f.only_if_missing).map_err(|e| e.to_string())?;
                edited = true;
            }
        }
        let key = self.key.as_ref().and_then(|segs| object.lookup(segs)).and_then(|found| found.key_bytes());
        if edited {
            object.write(out).map_err(|e| format!("cannot serialize: {e}"))?;
        } else {
            out.extend_from_slice(record.value);
        }
        Ok(key)
    }
}

impl Transform for Enrich {
    type Config = EnrichConfig;
    const NAME: &'static str = "enrich";
    const DESCRIPTION: &'static str = "Adds fields from templates (time, host, ids, request metadata) and sets the record key.";

    fn validate(config: &EnrichConfig) -> Result<(), PluginError> {
        fields(config)?;
        if let Some(k) = &config.key {
            if !k.starts_with('/') {
                return Err(PluginError::config(format!("key {k:?} must be a JSON pointer such as \"/userId\"")));
            }
        }
        Ok(())
    }

    fn create(config: EnrichConfig, ctx: Context) -> Result<Self, PluginError> {
        let key = config.key.as_deref().map(parse_path).transpose()?;
        Ok(Enrich { fields: fields(&config)?, key, scope: Scope::new(ctx.pipeline()), value: Vec::new() })
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        self.scope.refresh_now();
        let mut value = std::mem::take(&mut self.value);
        for (i, record) in input.iter().enumerate() {
            value.clear();
            match self.enrich(&record, &mut value) {
                Ok(key) => {
                    let head = Head { key: key.as_deref().or(record.key), ..Head::from(&record) };
                    out.batch.push(i as u32, head, &value);
                }
                Err(reason) => out.reject(i, &reason),
            }
        }
        self.value = value;
        Ok(())
    }
}

pub use map::{Map, MapConfig};

weir_plugin::export_plugins!(transform Enrich, transform Map);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{run_transform, MockHost};
    use weir_plugin::serde_json;
    use weir_plugin::BatchBuf;

    #[test]
    fn adds_fields_from_templates_and_sets_the_key() {
        let host = MockHost::new();
        let mut t: Enrich = host
            .transform(serde_json::json!({
                "set": {"receivedAt": "{{received_at}}", "clientIp": "{{header:http.client_ip}}", "source": "neo", "/meta/v": 2, "agent": "{{header:http.user_agent}}"},
                "set_if_missing": {"eventId": "{{uuid}}"},
                "key": "/userId"
            }))
            .unwrap();
        let mut input = BatchBuf::new();
        let head = Head { extra_headers: &[("http.client_ip", b"10.1.2.3")], timestamp_ms: Some(1_704_110_400_000), ..Default::default() };
        input.push(0, head, br#"{"userId":"u1","eventId":"keep"}"#);
        input.push(1, head, br#"{"userId":42}"#);
        input.push(2, head, b"[1,2]");
        let out = run_transform(&mut t, &input).unwrap();
        assert_eq!(out.batch.len(), 2);
        let first: Value = serde_json::from_slice(out.batch.as_ref().get(0).value).unwrap();
        assert_eq!(first["receivedAt"], "2024-01-01T12:00:00.000Z");
        assert_eq!(first["clientIp"], "10.1.2.3");
        assert_eq!(first["source"], "neo");
        assert_eq!(first["meta"]["v"], 2);
        assert_eq!(first["eventId"], "keep");
        assert!(first.get("agent").is_none(), "a missing header leaves the field out");
        assert_eq!(out.batch.as_ref().get(0).key, Some(&b"u1"[..]));
        let second: Value = serde_json::from_slice(out.batch.as_ref().get(1).value).unwrap();
        assert_eq!(second["eventId"].as_str().unwrap().len(), 36);
        assert_eq!(out.batch.as_ref().get(1).key, Some(&b"42"[..]));
        assert_eq!(out.rejections.iter().next().unwrap(), (2, "the record is not a JSON object"));
    }

    #[test]
    fn bad_key_and_unknown_placeholder_are_config_errors() {
        let host = MockHost::new();
        assert!(host.transform::<Enrich>(serde_json::json!({"key": "userId"})).is_err());
        let err = host.transform::<Enrich>(serde_json::json!({"set": {"x": "{{nope}}"}})).err().unwrap();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn numbers_and_order_pass_through_byte_for_byte() {
        let host = MockHost::new();
        let mut t: Enrich = host
            .transform(serde_json::json!({"set": {"host": "h", "/meta/seen": true}, "set_if_missing": {"id": "{{uuid}}"}, "key": "/n"}))
            .unwrap();
        let original = r#"{"n":12345678901234567890123,"d":0.1000000000000000055511151231257827,"x":1.10,"e":1e3,"z":-0,"u":"\u00e9","id":"keep","meta":{"k":-0.0}}"#;
        let mut input = BatchBuf::new();
        input.push(0, Head::default(), original.as_bytes());
        let out = run_transform(&mut t, &input).unwrap();
        let record = out.batch.as_ref().get(0);
        let expected = original.replace(r#""meta":{"k":-0.0}}"#, r#""meta":{"k":-0.0,"seen":true},"host":"h"}"#);
        assert_eq!(std::str::from_utf8(record.value).unwrap(), expected);
        assert_eq!(record.key, Some(&b"12345678901234567890123"[..]), "the key is the number as written");
    }
}
