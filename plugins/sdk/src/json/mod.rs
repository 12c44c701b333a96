//! Reading records without parsing them whole.
//!
//! [`Doc`] reads a record once: it checks the whole text is JSON and, for an object, keeps
//! where each top-level member's value lies, borrowed from the record as written. A lookup
//! by [`Pointer`] then opens only the objects and arrays on its way. No tree is built, no
//! value is copied or converted, so a value elsewhere in the record (a number beyond a
//! float's range, a long string) costs nothing and cannot make a field unreadable, and the
//! value found keeps its spelling.

pub mod scan;

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON pointer (RFC 6901) split once into its unescaped segments: `""` is the whole
/// document, `/a/b~1c` the member `b/c` of the member `a`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointer {
    text: String,
    segments: Vec<String>,
}

impl Pointer {
    /// Reads a pointer; it is `""` or starts with `/`.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        let segments = match text.strip_prefix('/') {
            None if text.is_empty() => Vec::new(),
            None => return Err(format!("{text:?} is not a JSON pointer: it must start with `/`, such as \"/{text}\"")),
            Some(rest) => rest.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect(),
        };
        Ok(Pointer { text: text.to_owned(), segments })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The unescaped segments; none for the whole document.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An object's members in order: each key's unescaped name and its value as written.
type Members<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// A record's JSON, read once (see the module documentation).
#[derive(Debug)]
pub struct Doc<'a> {
    text: &'a str,
    /// The top-level members, when the record is an object.
    members: Option<Members<'a>>,
    /// The whole record, when it is not an object.
    whole: Option<&'a RawValue>,
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some((key, value)) = map.next_entry::<&'de RawValue, &'de RawValue>()? {
            members.push((string(key).ok_or_else(|| A::Error::custom("an object key is not a string"))?, value));
        }
        Ok(members)
    }
}

/// An object's members, or `None` when `text` is not an object.
fn members(text: &str) -> Result<Option<Members<'_>>, serde_json::Error> {
    if text.bytes().find(|b| !b.is_ascii_whitespace()) != Some(b'{') {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de.deserialize_map(MembersVisitor)?;
    de.end()?;
    Ok(Some(members))
}

/// The last member called `name` (the one a JSON reader keeps when a key repeats), of
/// members read by [`Doc`] or by [`scan::object_members`].
pub fn member<K: AsRef<str>, V: Copy>(members: &[(K, V)], name: &str) -> Option<V> {
    members.iter().rev().find(|(k, _)| k.as_ref() == name).map(|(_, v)| *v)
}

/// The value of a JSON string as text, borrowed when it has no escapes; `None` for any
/// other value.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    string_text(raw.get())
}

/// As [`string`], for a value's text as written.
pub fn string_text(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// An array index as RFC 6901 writes it: digits, no leading zero.
fn index(seg: &str) -> Option<usize> {
    let canonical = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) && (seg == "0" || !seg.starts_with('0'));
    canonical.then(|| seg.parse().ok()).flatten()
}

/// Follows `segments` from `cur`, opening each object or array on the way.
fn descend<'a>(mut cur: &'a RawValue, segments: &[String]) -> Option<&'a RawValue> {
    for seg in segments {
        let text = cur.get();
        cur = match text.as_bytes().first()? {
            b'{' => member(&members(text).ok()??, seg)?,
            b'[' => *serde_json::from_str::<Vec<&'a RawValue>>(text).ok()?.get(index(seg)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

impl<'a> Doc<'a> {
    /// Reads a record: it must be UTF-8 JSON. The error says what is wrong and where.
    pub fn parse(bytes: &'a [u8]) -> Result<Doc<'a>, serde_json::Error> {
        let text = std::str::from_utf8(bytes).map_err(|e| serde_json::Error::custom(format!("not UTF-8 text ({e})")))?;
        match members(text)? {
            Some(members) => Ok(Doc { text: text.trim(), members: Some(members), whole: None }),
            None => {
                let whole: &RawValue = serde_json::from_str(text)?;
                Ok(Doc { text: whole.get(), members: None, whole: Some(whole) })
            }
        }
    }

    /// The whole record's text, without surrounding whitespace.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The top-level members in order, when the record is an object.
    pub fn members(&self) -> Option<&[(Cow<'a, str>, &'a RawValue)]> {
        self.members.as_deref()
    }

    /// The value at `pointer` as written; `None` when there is none. `""` is the whole
    /// record (for an object read again, once: [`Doc::text`] has it without).
    pub fn get(&self, pointer: &Pointer) -> Option<&'a RawValue> {
        let Some(members) = self.members.as_deref() else { return descend(self.whole?, &pointer.segments) };
        match pointer.segments.split_first() {
            Some((first, rest)) => descend(member(members, first)?, rest),
            None => serde_json::from_str(self.text).ok(),
        }
    }

    /// The string at `pointer`, unescaped; `None` when there is none or it is not a string.
    pub fn get_str(&self, pointer: &Pointer) -> Option<Cow<'a, str>> {
        string(self.get(pointer)?)
    }
}

/// The value at a JSON pointer (RFC 6901; `""` is the whole document), as written, opening
/// only the objects and arrays on its way (see [`Doc`] to look up several fields of one
/// record). Of repeated keys the last counts.
pub fn pointer<'a>(doc: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    let pointer = Pointer::parse(pointer).ok()?;
    descend(doc, &pointer.segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#" {"a":{"b/c":[1,{"n":12345678901234567890123}]},"big":1e400,"a~":2,"s":"x\"y","t":"plain","t":"last"} "#;

    #[test]
    fn pointers_read_values_as_written() {
        let doc: &RawValue = serde_json::from_str(RECORD.trim()).unwrap();
        assert_eq!(pointer(doc, "/a/b~1c/1/n").map(RawValue::get), Some("12345678901234567890123"));
        assert_eq!(pointer(doc, "/a~0").map(RawValue::get), Some("2"));
        assert_eq!(pointer(doc, "").map(RawValue::get), Some(doc.get()));
        assert!(pointer(doc, "/a/b~1c/9").is_none() && pointer(doc, "/missing").is_none() && pointer(doc, "nope").is_none());
    }

    #[test]
    fn a_doc_is_read_once_and_looked_up_by_pointer() {
        let doc = Doc::parse(RECORD.as_bytes()).unwrap();
        let p = |s: &str| Pointer::parse(s).unwrap();
        assert_eq!(doc.text(), RECORD.trim());
        assert_eq!(doc.get(&p("/a/b~1c/1/n")).map(RawValue::get), Some("12345678901234567890123"));
        assert_eq!(doc.get(&p("/big")).map(RawValue::get), Some("1e400"), "a number beyond f64 keeps its spelling");
        assert_eq!(doc.get_str(&p("/s")).as_deref(), Some("x\"y"));
        assert!(matches!(doc.get_str(&p("/t")), Some(Cow::Borrowed("last"))), "the last of repeated keys, borrowed");
        assert_eq!(doc.get_str(&p("/a~")), None, "not a string");
        assert!(doc.get(&p("/a/b~1c/x")).is_none() && doc.get(&p("/nope/deeper")).is_none());
        assert_eq!(doc.members().unwrap().len(), 6);
    }

    #[test]
    fn non_objects_and_bad_text_are_told_apart() {
        let array = Doc::parse(br#"[1,{"id":"x"}]"#).unwrap();
        let p = |s: &str| Pointer::parse(s).unwrap();
        assert!(array.members().is_none());
        assert_eq!(array.get_str(&p("/1/id")).as_deref(), Some("x"), "arrays are followed too");
        assert!(array.get(&p("/01")).is_none() && array.get(&p("/+1")).is_none(), "indexes as RFC 6901 writes them");
        assert_eq!(array.get(&p("")).map(RawValue::get), Some(r#"[1,{"id":"x"}]"#));
        assert_eq!(Doc::parse(br#" {"a":1} "#).unwrap().get(&p("")).map(RawValue::get), Some(r#"{"a":1}"#));
        let e = Doc::parse(br#"{"a":1"#).unwrap_err().to_string();
        assert!(e.contains("EOF") && e.contains("column 6"), "{e}");
        assert!(Doc::parse(br#"{"a":1} x"#).unwrap_err().to_string().contains("trailing"));
        assert!(Doc::parse(b"\"\xff\"").unwrap_err().to_string().contains("not UTF-8"));
        assert!(Pointer::parse("eventId").unwrap_err().contains("\"/eventId\""));
    }
}

/// A time in a record as epoch milliseconds: RFC 3339 / ISO-8601 text (with an offset, or
/// without one, taken as UTC; fractions of a second kept to the millisecond), or a number of
/// epoch seconds (below 10^11) or milliseconds. `None` for anything else or out of range.
pub fn time_millis(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::String(s) => text_millis(s),
        serde_json::Value::Number(n) => {
            let x = n.as_f64()?;
            let ms = if x.abs() >= 1e11 { x } else { x * 1000.0 };
            // Years 0 to 9999.
            (-62_167_219_200_000.0..=253_402_300_799_999.0).contains(&ms).then_some(ms as i64)
        }
        _ => None,
    }
}

/// [`time_millis`] of a value as written (read with [`Doc`]), without building it.
pub fn raw_time_millis(raw: &RawValue) -> Option<i64> {
    match raw.get().as_bytes().first()? {
        b'"' => text_millis(&string(raw)?),
        b'-' | b'0'..=b'9' => time_millis(&serde_json::Value::Number(serde_json::from_str(raw.get()).ok()?)),
        _ => None,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff…][Z|±HH:MM]` (a space for `T` too) as epoch milliseconds.
fn text_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || b[13] != b':' || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3: String = frac[..digits].chars().chain("000".chars()).take(3).collect();
        ms = first3.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "" | "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let m = num_of(&o[1..3])? * 60 + num_of(&o[4..6])?;
            if o.starts_with('-') {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + ms)
}

fn num_of(s: &str) -> Option<i64> {
    s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod time_tests {
    use super::time_millis;
    use serde_json::json;

    #[test]
    fn times_as_records_write_them() {
        assert_eq!(time_millis(&json!("1970-01-01T00:00:00Z")), Some(0));
        assert_eq!(time_millis(&json!("2024-01-15T10:00:00.123456Z")), Some(1_705_312_800_123));
        assert_eq!(time_millis(&json!("2024-01-15T12:00:00+02:00")), Some(1_705_312_800_000));
        assert_eq!(time_millis(&json!("2024-01-15T10:00:00")), Some(1_705_312_800_000), "no offset: UTC");
        assert_eq!(time_millis(&json!("2024-02-29T00:00:00Z")), Some(1_709_164_800_000));
        assert_eq!(time_millis(&json!(1_705_312_800)), Some(1_705_312_800_000), "seconds");
        assert_eq!(time_millis(&json!(1_705_312_800_000i64)), Some(1_705_312_800_000), "milliseconds");
        for bad in [json!("2023-02-29T00:00:00Z"), json!("yesterday"), json!("2024-01-15T10:00:00.Z"), json!(1e300), json!(true)] {
            assert_eq!(time_millis(&bad), None, "{bad}");
        }
    }

    #[test]
    fn times_as_written_read_the_same() {
        let raw = |t: &str| super::raw_time_millis(&serde_json::from_str::<Box<serde_json::value::RawValue>>(t).unwrap());
        assert_eq!(raw(r#""2024-01-15T10:00:00.123Z""#), Some(1_705_312_800_123));
        assert_eq!(raw(r#""2024-01-15T10:00:00\u002b02:00""#), Some(1_705_305_600_000), "escapes read");
        assert_eq!(raw("1705312800"), Some(1_705_312_800_000));
        assert_eq!(raw("1705312800000.0"), Some(1_705_312_800_000));
        for bad in ["true", "null", "{}", "[1]", r#""soon""#, "1e300"] {
            assert_eq!(raw(bad), None, "{bad}");
        }
    }
}
