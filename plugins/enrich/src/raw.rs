//! Editing a record's JSON as text: the top-level object is read as its members in order,
//! each key and value borrowed from the record as written; only the members a field sets
//! are replaced or appended, and objects are opened only along a path that is written.
//! Everything else is copied back byte for byte, so numbers keep their digits and spelling
//! (`1.10`, `1e3`, `-0`, 30-digit integers), strings their escapes, and members their order.

use std::borrow::Cow;
use std::fmt;

use weir_plugin::serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use weir_plugin::serde_json::{self, value::RawValue, Map, Value};

/// A member's value.
pub enum Member<'a> {
    /// As written in the record.
    Raw(&'a RawValue),
    /// A record object opened to set a field inside it.
    Object(Object<'a>),
    /// A value this transform set.
    Set(Value),
}

/// An object's key: its text as written (quotes and escapes included) and what it means.
struct Key<'a> {
    raw: Cow<'a, str>,
    name: Cow<'a, str>,
}

impl<'a> Key<'a> {
    fn read(raw: &'a RawValue) -> Result<Key<'a>, serde_json::Error> {
        let text = raw.get();
        let name = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
            _ => Cow::Owned(serde_json::from_str::<String>(text)?),
        };
        Ok(Key { raw: Cow::Borrowed(text), name })
    }

    fn of(seg: &'a Seg) -> Key<'a> {
        Key { raw: Cow::Borrowed(&seg.raw), name: Cow::Borrowed(&seg.name) }
    }
}

/// One key of a field's path: its name and its JSON text (quoted, escaped), made once
/// when the transform is created rather than for every record.
#[derive(Debug, Clone)]
pub struct Seg {
    name: String,
    raw: String,
}

impl Seg {
    /// The key called `name`.
    pub fn new(name: &str) -> Seg {
        Seg { raw: serde_json::to_string(name).expect("a string always serializes"), name: name.to_owned() }
    }
}

/// A JSON object as its members in order.
pub struct Object<'a> {
    members: Vec<(Key<'a>, Member<'a>)>,
}

/// Why a record cannot be edited.
#[derive(Debug, PartialEq, Eq)]
pub enum EditError {
    /// The record is not JSON at all.
    Invalid(String),
    /// The record is JSON, but not an object.
    NotObject,
    /// A field's parent exists and is not an object.
    ParentNotObject(String),
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::Invalid(e) => write!(f, "not valid JSON: {e}"),
            EditError::NotObject => f.write_str("the record is not a JSON object"),
            EditError::ParentNotObject(path) => write!(f, "cannot set {path}: a parent is not an object"),
        }
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(Key<'de>, Member<'de>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((key, value)) = map.next_entry::<&'de RawValue, &'de RawValue>()? {
            members.push((Key::read(key).map_err(A::Error::custom)?, Member::Raw(value)));
        }
        Ok(members)
    }
}

/// The first non-whitespace byte of a JSON text.
fn first_byte(text: &str) -> Option<u8> {
    text.bytes().find(|b| !b.is_ascii_whitespace())
}

impl<'a> Object<'a> {
    /// Reads an object's members, borrowing keys and values from `text`.
    pub fn parse(text: &'a str) -> Result<Object<'a>, EditError> {
        if first_byte(text) != Some(b'{') {
            // Tell apart "not JSON" from "JSON, but not an object".
            return Err(match serde_json::from_str::<&RawValue>(text) {
                Ok(_) => EditError::NotObject,
                Err(e) => EditError::Invalid(e.to_string()),
            });
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let members =
            de.deserialize_map(MembersVisitor).and_then(|m| de.end().map(|_| m)).map_err(|e| EditError::Invalid(e.to_string()))?;
        Ok(Object { members })
    }

    /// The last member called `name` (the one a JSON reader keeps when a key repeats).
    fn find(&mut self, name: &str) -> Option<&mut Member<'a>> {
        self.members.iter_mut().rev().find(|(k, _)| k.name == name).map(|(_, m)| m)
    }

    /// Sets `value` at `path` (object keys), creating objects on the way; with
    /// `only_if_missing`, a member that is there and not `null` is kept. A member that is
    /// replaced keeps its position; a new one is appended.
    pub fn set(&mut self, path: &'a [Seg], value: Value, only_if_missing: bool) -> Result<(), EditError> {
        let in_the_way = || EditError::ParentNotObject(path.iter().map(|s| format!("/{}", s.name)).collect());
        let (first, rest) = path.split_first().expect("paths are never empty");
        if self.find(&first.name).is_none() {
            if rest.is_empty() {
                self.members.push((Key::of(first), Member::Set(value)));
                return Ok(());
            }
            self.members.push((Key::of(first), Member::Object(Object { members: Vec::new() })));
        }
        let member = self.find(&first.name).expect("found or just added");
        if rest.is_empty() {
            if !only_if_missing || member.is_null() {
                *member = Member::Set(value);
            }
            return Ok(());
        }
        if let Member::Raw(raw) = *member {
            if first_byte(raw.get()) != Some(b'{') {
                return Err(in_the_way());
            }
            *member = Member::Object(Object::parse(raw.get())?);
        }
        match member {
            Member::Object(o) => o.set(rest, value, only_if_missing),
            Member::Set(Value::Object(m)) => set_in_value(m, rest, value, only_if_missing).then_some(()).ok_or_else(in_the_way),
            _ => Err(in_the_way()),
        }
    }

    /// Removes the member at `path` (every copy of a repeated key) and returns the one a
    /// JSON reader would have kept; `None` when there is none. Objects are opened only along
    /// the path.
    pub fn remove(&mut self, path: &[Seg]) -> Result<Option<Member<'a>>, EditError> {
        let (first, rest) = path.split_first().expect("paths are never empty");
        if rest.is_empty() {
            let mut kept = None;
            self.members.retain_mut(|(k, m)| {
                if k.name == first.name {
                    kept = Some(std::mem::replace(m, Member::Set(Value::Null)));
                    false
                } else {
                    true
                }
            });
            return Ok(kept);
        }
        let Some(member) = self.find(&first.name) else { return Ok(None) };
        if let Member::Raw(raw) = *member {
            if first_byte(raw.get()) != Some(b'{') {
                return Ok(None);
            }
            *member = Member::Object(Object::parse(raw.get())?);
        }
        match member {
            Member::Object(o) => o.remove(rest),
            Member::Set(Value::Object(m)) => {
                let mut cur = m;
                for seg in &rest[..rest.len() - 1] {
                    match cur.get_mut(&seg.name) {
                        Some(Value::Object(next)) => cur = next,
                        _ => return Ok(None),
                    }
                }
                Ok(cur.remove(&rest[rest.len() - 1].name).map(Member::Set))
            }
            _ => Ok(None),
        }
    }

    /// Sets `member` (as [`Object::remove`] gave it) at `path`, as [`Object::set`] does a
    /// value: a value as written keeps its bytes.
    pub fn put(&mut self, path: &'a [Seg], member: Member<'a>) -> Result<(), EditError> {
        match member {
            Member::Set(v) => self.set(path, v, false),
            other => {
                let (last, parents) = path.split_last().expect("paths are never empty");
                if !parents.is_empty() {
                    self.set(path, Value::Null, false)?;
                    self.remove(path)?;
                    let mut cur = self;
                    for seg in parents {
                        let Some(Member::Object(o)) = cur.find(&seg.name) else {
                            return Err(EditError::ParentNotObject(path.iter().map(|s| format!("/{}", s.name)).collect()));
                        };
                        cur = o;
                    }
                    cur.members.push((Key::of(last), other));
                    return Ok(());
                }
                self.members.retain(|(k, _)| k.name != last.name);
                self.members.push((Key::of(last), other));
                Ok(())
            }
        }
    }

    /// The value at a JSON pointer's segments (objects by key, arrays by index).
    pub fn lookup(&self, segs: &[String]) -> Option<Found<'_>> {
        let (first, rest) = segs.split_first()?;
        let member = self.members.iter().rev().find(|(k, _)| k.name == *first).map(|(_, m)| m)?;
        match member {
            Member::Raw(raw) => lookup_raw(raw, rest).map(Found::Raw),
            Member::Object(o) if rest.is_empty() => Some(Found::Opened(o)),
            Member::Object(o) => o.lookup(rest),
            Member::Set(v) => {
                let pointer: String = rest.iter().map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect();
                v.pointer(&pointer).map(Found::Value)
            }
        }
    }

    /// Appends the object's JSON text: members as written, edits in their place.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.push(b'{');
        for (i, (key, member)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key.raw.as_bytes());
            out.push(b':');
            match member {
                Member::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
                Member::Object(o) => o.write(out)?,
                Member::Set(v) => serde_json::to_writer(&mut *out, v)?,
            }
        }
        out.push(b'}');
        Ok(())
    }
}

impl Member<'_> {
    fn is_null(&self) -> bool {
        match self {
            Member::Raw(raw) => raw.get().trim() == "null",
            Member::Object(_) => false,
            Member::Set(v) => v.is_null(),
        }
    }
}

/// What a pointer found.
pub enum Found<'a> {
    /// A value as written in the record.
    Raw(&'a RawValue),
    /// An object of the record that an edit opened.
    Opened(&'a Object<'a>),
    /// A value this transform set.
    Value(&'a Value),
}

impl Found<'_> {
    /// The bytes of a record key: a string's text, another value's JSON as written, none
    /// for `null`.
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Found::Raw(raw) => {
                let text = raw.get().trim();
                match first_byte(text) {
                    Some(b'"') => serde_json::from_str::<String>(text).ok().map(String::into_bytes),
                    _ if text == "null" => None,
                    _ => Some(text.as_bytes().to_vec()),
                }
            }
            Found::Opened(o) => {
                let mut out = Vec::new();
                o.write(&mut out).ok()?;
                Some(out)
            }
            Found::Value(Value::String(s)) => Some(s.as_bytes().to_vec()),
            Found::Value(Value::Null) => None,
            Found::Value(v) => Some(v.to_string().into_bytes()),
        }
    }
}

/// Follows `segs` into a raw value, opening only the objects and arrays on the way.
fn lookup_raw<'a>(raw: &'a RawValue, segs: &[String]) -> Option<&'a RawValue> {
    let mut cur = raw;
    for seg in segs {
        cur = match first_byte(cur.get())? {
            b'{' => Object::parse(cur.get()).ok()?.members.into_iter().rev().find(|(k, _)| k.name == *seg).and_then(|(_, m)| match m {
                Member::Raw(r) => Some(r),
                _ => None,
            })?,
            b'[' => serde_json::from_str::<Vec<&'a RawValue>>(cur.get()).ok()?.get(seg.parse::<usize>().ok()?).copied()?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Sets `value` at `path` inside a value this transform built. False when a non-object
/// is in the way.
fn set_in_value(map: &mut Map<String, Value>, path: &[Seg], value: Value, only_if_missing: bool) -> bool {
    let (last, parents) = path.split_last().expect("paths are never empty");
    let mut cur = map;
    for seg in parents {
        let next = cur.entry(seg.name.clone()).or_insert_with(|| Value::Object(Map::new()));
        match next {
            Value::Object(m) => cur = m,
            _ => return false,
        }
    }
    if !(only_if_missing && cur.get(&last.name).is_some_and(|v| !v.is_null())) {
        cur.insert(last.name.clone(), value);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    fn names(p: &str) -> Vec<String> {
        p.split('/').map(str::to_owned).collect()
    }

    fn path(p: &str) -> Vec<Seg> {
        p.split('/').map(Seg::new).collect()
    }

    fn edit(text: &str, edits: &[(&str, Value, bool)]) -> Result<String, EditError> {
        let paths: Vec<Vec<Seg>> = edits.iter().map(|(p, ..)| path(p)).collect();
        let mut o = Object::parse(text)?;
        for (p, (_, v, only_if_missing)) in paths.iter().zip(edits) {
            o.set(p, v.clone(), *only_if_missing)?;
        }
        let mut out = Vec::new();
        o.write(&mut out).unwrap();
        Ok(String::from_utf8(out).unwrap())
    }

    const NUMBERS: &str = r#"{"big":12345678901234567890123,"dec":0.1000000000000000055511151231257827,"a":1.10,"e":1e3,"z":-0,"E":-2.5E-7,"s":"caf\u00e9 \ud83d\ude00","\u006b":[1.0,{"x":100000000000000000000000000001}]}"#;

    #[test]
    fn untouched_members_keep_their_bytes_and_order() {
        let out = edit(NUMBERS, &[("added", json!("x"), false)]).unwrap();
        let expected = format!("{},\"added\":\"x\"}}", &NUMBERS[..NUMBERS.len() - 1]);
        assert_eq!(out, expected);
        // With nothing set, the object is written back as it was (compact input).
        assert_eq!(edit(NUMBERS, &[]).unwrap(), NUMBERS);
    }

    #[test]
    fn replacing_a_member_keeps_its_position() {
        let out = edit(r#"{"a":1,"b":2.50,"c":3}"#, &[("b", json!("new"), false)]).unwrap();
        assert_eq!(out, r#"{"a":1,"b":"new","c":3}"#);
    }

    #[test]
    fn set_if_missing_keeps_a_present_value_and_fills_null_or_absent() {
        let edits = [("id", json!("gen"), true), ("n", json!(5), true), ("m", json!(6), true)];
        let out = edit(r#"{"id":"keep","n":null}"#, &edits).unwrap();
        assert_eq!(out, r#"{"id":"keep","n":5,"m":6}"#);
    }

    #[test]
    fn nested_pointers_open_only_the_objects_on_their_path() {
        let text = r#"{"meta":{"v":1.50,"deep":{"k":1e2}},"other":{"n":12345678901234567890123}}"#;
        let out =
            edit(text, &[("meta/deep/added", json!(true), false), ("meta/v", json!(2), true), ("fresh/x/y", json!(1), false)]).unwrap();
        assert_eq!(out, r#"{"meta":{"v":1.50,"deep":{"k":1e2,"added":true}},"other":{"n":12345678901234567890123},"fresh":{"x":{"y":1}}}"#);
        // Into a value set before, and into one set by the same batch of edits.
        let out = edit(r#"{}"#, &[("m", json!({"a": 1}), false), ("m/b", json!(2), false)]).unwrap();
        assert_eq!(out, r#"{"m":{"a":1,"b":2}}"#);
    }

    #[test]
    fn a_scalar_in_the_way_and_non_objects_are_refused_with_a_reason() {
        let err = edit(r#"{"meta":5}"#, &[("meta/v", json!(1), false)]).unwrap_err();
        assert_eq!(err.to_string(), "cannot set /meta/v: a parent is not an object");
        assert_eq!(edit("[1,2]", &[]).unwrap_err().to_string(), "the record is not a JSON object");
        assert_eq!(edit(" 42 ", &[]).unwrap_err(), EditError::NotObject);
        assert!(edit(r#"{"a":1"#, &[]).unwrap_err().to_string().starts_with("not valid JSON: "));
        assert!(edit(r#"{"a":1} x"#, &[]).unwrap_err().to_string().starts_with("not valid JSON: "));
    }

    #[test]
    fn a_repeated_key_is_set_where_a_reader_looks_last() {
        let out = edit(r#"{"a":1,"a":2}"#, &[("a", json!(3), false)]).unwrap();
        assert_eq!(out, r#"{"a":1,"a":3}"#);
    }

    #[test]
    fn whitespace_between_members_goes_values_stay_as_written() {
        let out = edit("{\n  \"a\" : [1,\n 2],\n  \"b\": 1.0\n}", &[("c", json!(1), false)]).unwrap();
        assert_eq!(out, "{\"a\":[1,\n 2],\"b\":1.0,\"c\":1}");
    }

    #[test]
    fn lookup_finds_raw_opened_and_set_values() {
        let (extra, set) = (path("u/extra"), path("set"));
        let mut o = Object::parse(r#"{"u":{"id":12345678901234567890123},"s":"x\"y","arr":[{"k":"v"}],"n":null}"#).unwrap();
        let key = |o: &Object<'_>, p: &str| o.lookup(&names(p)).and_then(|f| f.key_bytes()).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(key(&o, "u/id").as_deref(), Some("12345678901234567890123"));
        assert_eq!(key(&o, "s").as_deref(), Some("x\"y"));
        assert_eq!(key(&o, "arr/0/k").as_deref(), Some("v"));
        assert_eq!(key(&o, "n"), None);
        assert_eq!(key(&o, "missing"), None);
        o.set(&extra, json!(1), false).unwrap();
        o.set(&set, json!({"deep": "d"}), false).unwrap();
        assert_eq!(key(&o, "u/id").as_deref(), Some("12345678901234567890123"));
        assert_eq!(key(&o, "u").as_deref(), Some(r#"{"id":12345678901234567890123,"extra":1}"#));
        assert_eq!(key(&o, "set/deep").as_deref(), Some("d"));
    }
}
