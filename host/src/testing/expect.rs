//! Expectations on the records that reached a stage, and the differences shown when one
//! does not hold: the stage, the record and where it differs.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// What must have reached a sink (or the dead letters). Every field given must hold.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// How many records.
    #[serde(default)]
    pub count: Option<usize>,
    /// The records, exactly and in order.
    #[serde(default)]
    pub records: Option<Vec<Value>>,
    /// Records each included in some record that arrived: its members (recursively) are
    /// there with the same values, others may be there too.
    #[serde(default)]
    pub includes: Vec<Value>,
    /// Conditions every record meets.
    #[serde(default)]
    pub all: Vec<Condition>,
    /// Dead letters only: the reasons, in order; each is contained in the reason (`stage:
    /// reason`) of the dead letter at its position.
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// A condition on the value at a JSON pointer of a record. Give one of `equals`, `exists`,
/// `contains`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The JSON pointer (`/user/id`; `""` is the whole record).
    pub pointer: String,
    /// The value there is this one.
    #[serde(default)]
    pub equals: Option<Value>,
    /// There is a value there (`true`) or none (`false`).
    #[serde(default)]
    pub exists: Option<bool>,
    /// The value there is a string containing this text.
    #[serde(default)]
    pub contains: Option<String>,
}

/// `v` as compact JSON, cut to a readable length.
fn show(v: &Value) -> String {
    cut(&v.to_string())
}

/// `text` cut to a readable length.
fn cut(text: &str) -> String {
    if text.chars().count() > 300 {
        format!("{}…", text.chars().take(300).collect::<String>())
    } else {
        text.to_owned()
    }
}

/// Where `actual` first differs from `expected` (a pointer and what each holds), or `None`
/// when they are equal; with `subset`, members `expected` does not name are ignored.
pub fn difference(expected: &Value, actual: &Value, at: &str, subset: bool) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match a.get(k) {
                    None => return Some(format!("at {here}: expected {}, but there is nothing", show(ev))),
                    Some(av) => {
                        if let Some(d) = difference(ev, av, &here, subset) {
                            return Some(d);
                        }
                    }
                }
            }
            if !subset {
                if let Some((k, v)) = a.iter().find(|(k, _)| !e.contains_key(*k)) {
                    return Some(format!("at {at}/{k}: expected nothing, got {}", show(v)));
                }
            }
            None
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(format!(
                    "at {}: expected {} items, got {}: {}",
                    if at.is_empty() { "/" } else { at },
                    e.len(),
                    a.len(),
                    show(actual)
                ));
            }
            e.iter().zip(a).enumerate().find_map(|(i, (ev, av))| difference(ev, av, &format!("{at}/{i}"), subset))
        }
        _ if expected == actual => None,
        _ => Some(format!("at {}: expected {}, got {}", if at.is_empty() { "/" } else { at }, show(expected), show(actual))),
    }
}

impl Condition {
    /// Why `record` does not meet it, or `None` when it does.
    fn unmet(&self, record: &Value) -> Option<String> {
        let found = record.pointer(&self.pointer);
        let at = if self.pointer.is_empty() { "/" } else { &self.pointer };
        if self.exists.is_none() && self.equals.is_none() && self.contains.is_none() {
            return Some(format!("the condition at {at} checks nothing: give `equals`, `exists` or `contains`"));
        }
        if let Some(want) = self.exists {
            if found.is_some() != want {
                return Some(match found {
                    Some(v) => format!("at {at}: expected nothing, got {}", show(v)),
                    None => format!("at {at}: expected a value, but there is nothing"),
                });
            }
        }
        if let Some(want) = &self.equals {
            match found {
                None => return Some(format!("at {at}: expected {}, but there is nothing", show(want))),
                Some(v) => {
                    if let Some(d) = difference(want, v, &self.pointer, false) {
                        return Some(d);
                    }
                }
            }
        }
        if let Some(text) = &self.contains {
            match found.and_then(Value::as_str) {
                Some(s) if s.contains(text.as_str()) => {}
                _ => return Some(format!("at {at}: expected a string containing {text:?}, got {}", found.map_or("nothing".into(), show))),
            }
        }
        None
    }
}

impl Expect {
    /// Every way `records` (with the dead letters' `reasons`) fails this expectation at
    /// `stage`; none when it holds. `texts` are the records as written, for the messages.
    pub fn check(&self, stage: &str, records: &[Value], texts: &[String], reasons: Option<&[String]>) -> Vec<String> {
        let mut failures = Vec::new();
        let text = |i: usize| texts.get(i).map_or_else(|| show(&records[i]), |t| cut(t));
        if let Some(n) = self.count {
            if records.len() != n {
                let listed: Vec<String> = (0..records.len().min(5)).map(text).collect();
                failures.push(format!(
                    "{stage}: expected {n} records, got {}: [{}{}]",
                    records.len(),
                    listed.join(", "),
                    if records.len() > 5 { ", …" } else { "" }
                ));
            }
        }
        if let Some(expected) = &self.records {
            if expected.len() != records.len() {
                failures.push(format!("{stage}: expected {} records, got {}", expected.len(), records.len()));
            }
            for (i, (e, a)) in expected.iter().zip(records).enumerate() {
                if let Some(d) = difference(e, a, "", false) {
                    failures.push(format!("{stage}: record {i} differs {d}\n    record: {}", text(i)));
                }
            }
        }
        for e in &self.includes {
            if !records.iter().any(|a| difference(e, a, "", true).is_none()) {
                let nearest = records.first().map(|a| difference(e, a, "", true).unwrap_or_default());
                let hint = match nearest {
                    Some(d) => format!("; the first record differs {d}\n    record: {}", text(0)),
                    None => "; no record arrived".into(),
                };
                failures.push(format!("{stage}: no record includes {}{hint}", show(e)));
            }
        }
        for c in &self.all {
            for (i, r) in records.iter().enumerate() {
                if let Some(why) = c.unmet(r) {
                    failures.push(format!("{stage}: record {i} {why}\n    record: {}", text(i)));
                    break;
                }
            }
        }
        if !self.reasons.is_empty() {
            match reasons {
                None => failures.push(format!("{stage}: `reasons` is for the dead letters only")),
                Some(got) => {
                    if got.len() != self.reasons.len() {
                        failures.push(format!("{stage}: expected {} reasons, got {}: {got:?}", self.reasons.len(), got.len()));
                    }
                    for (i, (want, had)) in self.reasons.iter().zip(got).enumerate() {
                        if !had.contains(want.as_str()) {
                            failures
                                .push(format!("{stage}: dead letter {i} was refused for {had:?}, not {want:?}\n    record: {}", text(i)));
                        }
                    }
                }
            }
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_the_pointer_and_both_values() {
        assert_eq!(difference(&json!({"a": {"b": 1}}), &json!({"a": {"b": 1}}), "", false), None);
        assert_eq!(difference(&json!({"a": {"b": 1}}), &json!({"a": {"b": 2}}), "", false).unwrap(), "at /a/b: expected 1, got 2");
        assert_eq!(difference(&json!({"a": 1}), &json!({"a": 1, "x": true}), "", false).unwrap(), "at /x: expected nothing, got true");
        assert_eq!(difference(&json!({"a": 1}), &json!({"a": 1, "x": true}), "", true), None, "a subset ignores the rest");
        assert_eq!(difference(&json!({"l": [1]}), &json!({"l": [1, 2]}), "", true).unwrap(), "at /l: expected 1 items, got 2: [1,2]");
        assert_eq!(difference(&json!({"a/b": 1}), &json!({}), "", true).unwrap(), "at /a~1b: expected 1, but there is nothing");
    }

    #[test]
    fn expectations_report_the_stage_the_record_and_the_difference() {
        let records = [json!({"id": 1, "t": "a"}), json!({"id": 2, "t": "b"})];
        let ok = Expect { count: Some(2), includes: vec![json!({"t": "b"})], ..Default::default() };
        assert!(ok.check("sink file", &records, &[], None).is_empty());
        let bad = Expect {
            count: Some(3),
            records: Some(vec![json!({"id": 1, "t": "a"}), json!({"id": 2, "t": "c"})]),
            includes: vec![json!({"t": "z"})],
            all: vec![Condition { pointer: "/t".into(), equals: Some(json!("a")), exists: None, contains: None }],
            reasons: Vec::new(),
        };
        let failures = bad.check("sink file", &records, &[], None);
        assert_eq!(failures.len(), 4, "{failures:#?}");
        assert!(failures[0].starts_with("sink file: expected 3 records, got 2"), "{}", failures[0]);
        assert_eq!(failures[1], "sink file: record 1 differs at /t: expected \"c\", got \"b\"\n    record: {\"id\":2,\"t\":\"b\"}");
        assert!(failures[2].contains("no record includes {\"t\":\"z\"}"), "{}", failures[2]);
        assert!(failures[3].starts_with("sink file: record 1 at /t: expected \"a\", got \"b\""), "{}", failures[3]);
        let letters = Expect { reasons: vec!["validate:".into()], ..Default::default() };
        let why = letters.check("the dead letters", &records[..1], &[], Some(&["dedupe: duplicate".to_owned()]));
        assert!(why[0].contains("refused for \"dedupe: duplicate\", not \"validate:\""), "{why:?}");
        let missing = Condition { pointer: "/nope".into(), equals: None, exists: Some(true), contains: None };
        assert_eq!(missing.unmet(&records[0]).unwrap(), "at /nope: expected a value, but there is nothing");
    }
}
