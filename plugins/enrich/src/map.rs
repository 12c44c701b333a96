//! The `map` transform: sets fields to the value of CEL expressions over the record, renames
//! and removes fields, editing the record's JSON as text (see [`crate::raw`]): every member
//! it does not touch keeps its bytes, its place and its escapes, and a renamed value keeps
//! its bytes too.

use std::collections::BTreeMap;

use weir_plugin::expr::{to_json, Expr, Input, Needs};
use weir_plugin::{BatchRef, Context, Deserialize, Head, JsonSchema, Output, PluginError, RecordRef, Transform};

use crate::parse_path;
use crate::raw::{Object, Seg};

/// Config of the `map` transform. Expressions see the record as it came; the edits are made
/// in this order: `rename`, `set`, `remove`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// Fields (names or JSON pointers) set to the value of a CEL expression over `record`,
    /// `key` and `headers`: `amountCents: "int(record.amount * 100.0)"`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Fields renamed: from (name or pointer) to (name or pointer). The value keeps its
    /// bytes; a record without the field is left as it is.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Fields removed (names or pointers), every copy of a repeated key.
    #[serde(default)]
    pub remove: Vec<String>,
}

struct Setting {
    path: Vec<Seg>,
    name: String,
    expr: Expr,
}

/// The `map` transform.
pub struct Map {
    set: Vec<Setting>,
    rename: Vec<(Vec<Seg>, Vec<Seg>)>,
    remove: Vec<Vec<Seg>>,
    /// What the expressions read of a record, together.
    needs: Needs,
    value: Vec<u8>,
}

fn segs(name: &str) -> Result<Vec<Seg>, PluginError> {
    Ok(parse_path(name)?.iter().map(|s| Seg::new(s)).collect())
}

fn build(config: &MapConfig) -> Result<Map, PluginError> {
    if config.set.is_empty() && config.rename.is_empty() && config.remove.is_empty() {
        return Err(PluginError::config("give at least one of `set`, `rename` and `remove`"));
    }
    let set: Vec<Setting> = config
        .set
        .iter()
        .map(|(name, source)| {
            let expr = Expr::compile(source).map_err(|e| {
                let pointer = name.trim_start_matches('/').replace('~', "~0").replace('/', "~1");
                PluginError::config(format!("/set/{pointer}: {} (column {} of the expression)", e.message, e.column))
            })?;
            Ok(Setting { path: segs(name)?, name: name.clone(), expr })
        })
        .collect::<Result<_, PluginError>>()?;
    let rename = config.rename.iter().map(|(from, to)| Ok((segs(from)?, segs(to)?))).collect::<Result<_, PluginError>>()?;
    let remove = config.remove.iter().map(|name| segs(name)).collect::<Result<_, _>>()?;
    let needs = set.iter().fold(Needs::nothing(), |n, s| n.union(s.expr.needs()));
    Ok(Map { set, rename, remove, needs, value: Vec::new() })
}

impl Map {
    fn map(&self, record: &RecordRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        let text = std::str::from_utf8(record.value).map_err(|e| format!("not valid JSON: not UTF-8 text ({e})"))?;
        // The values first, from the record as it came.
        let input = (!self.set.is_empty()).then(|| Input::read(&self.needs, record.value, record.key, record.headers()));
        let mut values = Vec::with_capacity(self.set.len());
        for s in &self.set {
            let v = s.expr.eval(input.as_ref().expect("made when there is something to set"))?;
            values.push(to_json(&v).ok_or_else(|| format!("{}: `{}` gave a value JSON cannot hold", s.name, s.expr.source()))?);
        }
        let mut object = Object::parse(text).map_err(|e| e.to_string())?;
        for (from, to) in &self.rename {
            if let Some(member) = object.remove(from).map_err(|e| e.to_string())? {
                object.put(to, member).map_err(|e| e.to_string())?;
            }
        }
        for (s, v) in self.set.iter().zip(values) {
            object.set(&s.path, v, false).map_err(|e| e.to_string())?;
        }
        for path in &self.remove {
            object.remove(path).map_err(|e| e.to_string())?;
        }
        object.write(out).map_err(|e| format!("cannot serialize: {e}"))
    }
}

impl Transform for Map {
    type Config = MapConfig;
    const NAME: &'static str = "map";
    const DESCRIPTION: &'static str = "Sets fields from CEL expressions, renames and removes fields; untouched values keep their bytes.";

    fn validate(config: &MapConfig) -> Result<(), PluginError> {
        build(config).map(|_| ())
    }

    fn create(config: MapConfig, _ctx: Context) -> Result<Self, PluginError> {
        build(&config)
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        let mut value = std::mem::take(&mut self.value);
        for (i, record) in input.iter().enumerate() {
            value.clear();
            match self.map(&record, &mut value) {
                Ok(()) => out.batch.push(i as u32, Head::from(&record), &value),
                Err(reason) => out.reject(i, &reason),
            }
        }
        self.value = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_transform, MockHost};
    use weir_plugin::serde_json::json;

    fn values(out: &Output) -> Vec<String> {
        out.batch.as_ref().iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()).collect()
    }

    #[test]
    fn sets_renames_and_removes_keeping_untouched_bytes() {
        let mut m: Map = MockHost::new()
            .transform(json!({
                "set": {"amountCents": "int(record.amount * 100.0)", "/user/vip": "record.user.tier == \"gold\""},
                "rename": {"ts": "timestamp"},
                "remove": ["/password", "/user/secret"],
            }))
            .unwrap();
        let input = r#"{"id":1.10,"amount":12.5,"ts":"2024-01-01T00:00:00Z","password":"x","note":"caf\u00e9","user":{"tier":"gold","secret":1,"n":1e3},"big":123456789012345678901234567890}"#;
        let out = run_transform(&mut m, &json_batch([input])).unwrap();
        assert_eq!(
            values(&out),
            [
                r#"{"id":1.10,"amount":12.5,"note":"caf\u00e9","user":{"tier":"gold","n":1e3,"vip":true},"big":123456789012345678901234567890,"timestamp":"2024-01-01T00:00:00Z","amountCents":1250}"#
            ]
        );
    }

    #[test]
    fn a_record_an_expression_fails_on_is_rejected_with_the_reason() {
        let mut m: Map = MockHost::new().transform(json!({"set": {"cents": "int(record.amount * 100.0)"}})).unwrap();
        let out = run_transform(&mut m, &json_batch([r#"{"amount":"12"}"#, r#"{"amount":2.0}"#, "[1]"])).unwrap();
        let rejected: Vec<(usize, String)> = out.rejections.iter().map(|(i, r)| (i, r.to_owned())).collect();
        assert_eq!(rejected.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 2]);
        assert!(rejected[0].1.contains("record.amount * 100.0"), "{rejected:?}");
        assert_eq!(values(&out), [r#"{"amount":2.0,"cents":200}"#]);
        let e = MockHost::new().transform::<Map>(json!({"set": {"x": "record.a +"}})).err().unwrap().to_string();
        assert!(e.starts_with("/set/x: not a valid expression"), "{e}");
    }
}
