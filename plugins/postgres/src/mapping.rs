//! From a record to a row: each mapped column's value, converted for its SQL type.

use chrono::{DateTime, NaiveDateTime, Utc};

use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use weir_plugin::json::{member, scan, Doc, Pointer};
use weir_plugin::serde_json::{self, value::RawValue, Value};
use weir_plugin::RecordRef;

use crate::config::ColumnSpec;

/// How a column's values are converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text types.
    Text,
    /// Integer types.
    Int,
    /// Floating point.
    Float,
    /// `numeric` / `decimal`: exact, from the digits as written.
    Numeric,
    /// Booleans.
    Bool,
    /// Timestamps, with or without time zone.
    Time,
    /// `json` / `jsonb`.
    Json,
}

impl Kind {
    /// The kind a SQL type converts to.
    pub fn of(sql_type: &str) -> Kind {
        let first = sql_type.split(|c: char| c.is_whitespace() || c == '(').next().unwrap_or("").to_ascii_lowercase();
        match first.as_str() {
            "smallint" | "integer" | "int" | "int2" | "int4" | "int8" | "bigint" | "serial" | "bigserial" | "smallserial" => Kind::Int,
            "real" | "float" | "float4" | "float8" | "double" => Kind::Float,
            "numeric" | "decimal" => Kind::Numeric,
            "boolean" | "bool" => Kind::Bool,
            "timestamp" | "timestamptz" => Kind::Time,
            "json" | "jsonb" => Kind::Json,
            _ => Kind::Text,
        }
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// NULL.
    Null,
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// An exact decimal number.
    Numeric(Decimal),
    /// A boolean.
    Bool(bool),
    /// A point in time (UTC).
    Time(DateTime<Utc>),
    /// A JSON document, as its text.
    Json(String),
}

impl ToSql for Cell {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Text(s) => s.as_str().to_sql(ty, out),
            Cell::Int(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Cell::Float(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            Cell::Numeric(d) => {
                d.write(out);
                Ok(IsNull::No)
            }
            Cell::Bool(b) => b.to_sql(ty, out),
            Cell::Time(t) => match *ty {
                Type::TIMESTAMP => t.naive_utc().to_sql(ty, out),
                _ => t.to_sql(ty, out),
            },
            Cell::Json(text) => match *ty {
                // jsonb's binary format: a version byte, then the text.
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(text.as_bytes());
                    Ok(IsNull::No)
                }
                _ => text.as_str().to_sql(ty, out),
            },
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// An exact decimal, held as PostgreSQL's binary `numeric`: base-10000 digits, the weight
/// of the first, the sign and the number of digits after the point as written (`1.10`
/// keeps its scale 2). PostgreSQL's numeric has no negative zero: `-0` is stored as `0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    digits: Vec<i16>,
    weight: i16,
    negative: bool,
    scale: u16,
}

/// PostgreSQL's limits: digits before and after the decimal point.
const NUMERIC_MAX_WEIGHT_DIGITS: i64 = 131_072;
const NUMERIC_MAX_SCALE: i64 = 16_383;

impl Decimal {
    /// Reads a decimal number as JSON writes one (`-12.50`, `1e3`, `2.5E-7`); a leading `+`
    /// and leading zeros are accepted too. The error completes "… is not ".
    pub fn parse(text: &str) -> Result<Decimal, String> {
        const WHAT: &str = "a number";
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().map_err(|_| WHAT.to_owned())?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !all_digits(int) || !all_digits(frac) || (mantissa.contains('.') && frac.is_empty()) {
            return Err(WHAT.to_owned());
        }
        if !(-NUMERIC_MAX_WEIGHT_DIGITS..=NUMERIC_MAX_WEIGHT_DIGITS).contains(&exp) {
            return Err("a number PostgreSQL's numeric can hold".to_owned());
        }
        // The digits, and where the decimal point falls among them.
        let digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let point = int.len() as i64 + exp;
        let scale = (digits.len() as i64 - point).max(0);
        let int_len = point.max(0);
        if scale > NUMERIC_MAX_SCALE || int_len > NUMERIC_MAX_WEIGHT_DIGITS {
            return Err("a number PostgreSQL's numeric can hold".to_owned());
        }
        // The digit at position `i` counted from the point (0 is the first after it,
        // -1 the last before it).
        let digit = |i: i64| -> i16 {
            let at = point + i;
            if (0..digits.len() as i64).contains(&at) {
                i16::from(digits[at as usize])
            } else {
                0
            }
        };
        // Base-10000 groups are aligned on the point: group g covers positions 4g..4g+3.
        let first_group = -((int_len + 3) / 4);
        let last_group = (scale + 3) / 4 - 1;
        let mut groups: Vec<i16> = (first_group..=last_group).map(|g| (0..4).fold(0i16, |acc, k| acc * 10 + digit(4 * g + k))).collect();
        let mut weight = -first_group - 1;
        let leading = groups.iter().take_while(|&&g| g == 0).count();
        groups.drain(..leading);
        weight -= leading as i64;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        Ok(Decimal { digits: groups, weight: weight as i16, negative, scale: scale as u16 }.normalized())
    }

    /// Zero is never negative.
    fn normalized(mut self) -> Decimal {
        if self.digits.is_empty() {
            self.negative = false;
        }
        self
    }

    /// Appends the binary `numeric` format: ndigits, weight, sign, dscale, digits.
    fn write(&self, out: &mut tokio_postgres::types::private::BytesMut) {
        out.extend_from_slice(&(self.digits.len() as i16).to_be_bytes());
        out.extend_from_slice(&self.weight.to_be_bytes());
        out.extend_from_slice(&(if self.negative { 0x4000u16 } else { 0 }).to_be_bytes());
        out.extend_from_slice(&self.scale.to_be_bytes());
        for d in &self.digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
    }
}

/// Parses a time: RFC 3339 with any offset, ISO-8601 without one (taken as UTC), or epoch
/// seconds (milliseconds when the number is too large for seconds).
pub fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .map(|n| n.and_utc())
        }
        Value::Number(n) => {
            let x = n.as_f64()?;
            let ms = if x.abs() < 1e11 { x * 1000.0 } else { x };
            DateTime::from_timestamp_millis(ms as i64)
        }
        _ => None,
    }
}

fn convert(kind: Kind, v: Value) -> Result<Cell, String> {
    let wrong = |what: &str| Err(format!("{v} is not {what}"));
    match (kind, &v) {
        (_, Value::Null) => Ok(Cell::Null),
        (Kind::Json, _) => Ok(Cell::Json(v.to_string())),
        (Kind::Text, Value::String(_)) => match v {
            Value::String(s) => Ok(Cell::Text(s)),
            _ => unreachable!("matched a string"),
        },
        (Kind::Text, v) => Ok(Cell::Text(v.to_string())),
        (Kind::Int, Value::Number(n)) => n.as_i64().map(Cell::Int).map_or_else(|| wrong("an integer"), Ok),
        (Kind::Int, Value::String(s)) => s.trim().parse().map(Cell::Int).or_else(|_| wrong("an integer")),
        (Kind::Float, Value::Number(n)) => n.as_f64().map(Cell::Float).map_or_else(|| wrong("a number"), Ok),
        (Kind::Float, Value::String(s)) => s.trim().parse().map(Cell::Float).or_else(|_| wrong("a number")),
        (Kind::Numeric, Value::Number(n)) => Decimal::parse(&n.to_string()).map(Cell::Numeric).map_err(|e| format!("{v} is not {e}")),
        (Kind::Numeric, Value::String(s)) => Decimal::parse(s.trim()).map(Cell::Numeric).map_err(|e| format!("{v} is not {e}")),
        (Kind::Bool, Value::Bool(b)) => Ok(Cell::Bool(*b)),
        (Kind::Bool, Value::String(s)) if s == "true" || s == "false" => Ok(Cell::Bool(s == "true")),
        (Kind::Time, _) => parse_time(&v).map(Cell::Time).map_or_else(|| wrong("a time (ISO-8601 or epoch seconds)"), Ok),
        (Kind::Int, _) => wrong("an integer"),
        (Kind::Float | Kind::Numeric, _) => wrong("a number"),
        (Kind::Bool, _) => wrong("a boolean"),
    }
}

/// Fills a fallback template from the record's key and headers; `None` when one is missing.
fn render(template: &str, record: &RecordRef<'_>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}")?;
        let name = after[..end].trim();
        let bytes = if name == "key" { record.key? } else { record.header(name.strip_prefix("header:")?)? };
        out.push_str(std::str::from_utf8(bytes).ok()?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// A mapped column, ready to convert records.
#[derive(Debug, Clone)]
pub struct Column {
    /// The spec it came from.
    pub spec: ColumnSpec,
    /// How values convert.
    pub kind: Kind,
    /// `spec.from`, read once (`None` when absent or not a pointer).
    at: Option<Pointer>,
}

impl Column {
    /// The mapped columns of a config, in order.
    pub fn mapped(specs: &[ColumnSpec]) -> Vec<Column> {
        specs
            .iter()
            .filter(|c| c.mapped())
            .map(|c| Column { spec: c.clone(), kind: Kind::of(&c.sql_type), at: c.from.as_deref().and_then(|p| Pointer::parse(p).ok()) })
            .collect()
    }

    /// The column's name in the record when it is a top-level member (`/name`).
    fn member(&self) -> Option<&str> {
        self.at.as_ref().and_then(|at| match at.segments() {
            [name] => Some(name.as_str()),
            _ => None,
        })
    }

    /// The cell, from `found` (the text at the column's pointer, when the record has it), else
    /// the fallback, the default or NULL.
    fn value(&self, found: Option<&str>, record: &RecordRef<'_>) -> Result<Cell, String> {
        let s = &self.spec;
        if let Some(raw) = found.filter(|r| *r != "null") {
            return convert_raw(self.kind, raw).map_err(|e| format!("column {}: {e}", s.name));
        }
        if let Some(t) = &s.fallback {
            if let Some(text) = render(t, record) {
                return convert(self.kind, Value::String(text)).map_err(|e| format!("column {}: {e}", s.name));
            }
        }
        if let Some(d) = &s.default {
            return convert(self.kind, d.clone()).map_err(|e| format!("column {}: default {e}", s.name));
        }
        if s.not_null() {
            let from = s.from.as_deref().unwrap_or("");
            return Err(format!("column {} needs a value and the record has none at {from:?}", s.name));
        }
        Ok(Cell::Null)
    }
}

/// Converts a raw JSON value: documents are kept as their text, strings unescaped, numbers
/// for text and `numeric` columns taken as written, other scalars parsed.
fn convert_raw(kind: Kind, text: &str) -> Result<Cell, String> {
    match kind {
        Kind::Json => Ok(Cell::Json(text.to_owned())),
        // A string without escapes is its text between the quotes: no parser needed.
        Kind::Text if text.starts_with('"') => match weir_plugin::json::string_text(text) {
            Some(s) => Ok(Cell::Text(s.into_owned())),
            None => serde_json::from_str::<String>(text).map(Cell::Text).map_err(|e| e.to_string()),
        },
        Kind::Time if text.len() >= 2 && text.starts_with('"') && !text.contains('\\') => {
            let inner = &text[1..text.len() - 1];
            match DateTime::parse_from_rfc3339(inner) {
                Ok(t) => Ok(Cell::Time(t.with_timezone(&Utc))),
                Err(_) => convert(kind, Value::String(inner.to_owned())),
            }
        }
        Kind::Text => Ok(Cell::Text(text.to_owned())),
        Kind::Numeric if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            Decimal::parse(text).map(Cell::Numeric).map_err(|e| format!("{text} is not {e}"))
        }
        _ => convert(kind, serde_json::from_str::<Value>(text).map_err(|e| e.to_string())?),
    }
}

/// The row for one record, or why it cannot be stored.
pub fn row(columns: &[Column], record: &RecordRef<'_>) -> Result<Vec<Cell>, String> {
    if let Some(members) = quick_members(columns, record.value) {
        return columns.iter().map(|c| c.value(c.member().and_then(|name| member(&members, name)), record)).collect();
    }
    let doc = Doc::parse(record.value).map_err(|e| format!("not valid JSON: {e}"))?;
    columns
        .iter()
        .map(|c| {
            let found =
                c.at.as_ref().and_then(|at| if at.segments().is_empty() { Some(doc.text()) } else { doc.get(at).map(RawValue::get) });
            c.value(found, record)
        })
        .collect()
}

/// The record's top-level members the columns read, by the quick scan, when every column
/// reads a top-level member (or nothing) and the scan answers for the record; else `None`,
/// and the record is read with [`Doc`], with the same result.
fn quick_members<'t>(columns: &[Column], value: &'t [u8]) -> Option<Vec<(&'t str, &'t str)>> {
    if columns.iter().any(|c| c.at.is_some() && c.member().is_none()) {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    scan::object_members_where(text, columns.len(), |name| columns.iter().any(|c| c.member() == Some(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;
    use weir_plugin::{BatchBuf, Head};

    fn cols(specs: Value) -> Vec<Column> {
        Column::mapped(&serde_json::from_value::<Vec<ColumnSpec>>(specs).unwrap())
    }

    #[test]
    fn types_time_zones_nested_json_and_fallbacks() {
        let columns = cols(json!([
            {"name": "id", "type": "SERIAL PRIMARY KEY"},
            {"name": "t", "type": "TIMESTAMPTZ NOT NULL", "from": "/at"},
            {"name": "n", "type": "INTEGER", "from": "/n"},
            {"name": "ok", "type": "BOOLEAN", "from": "/ok", "default": false},
            {"name": "doc", "type": "JSONB", "from": "/nested"},
            {"name": "all", "type": "JSONB", "from": ""},
            {"name": "eid", "type": "TEXT NOT NULL", "from": "/event_id", "fallback": "{{header:kafka.topic}}/{{header:kafka.offset}}"}
        ]));
        assert_eq!(columns.len(), 6, "the SERIAL column is the database's");
        let mut b = BatchBuf::new();
        let head = Head { extra_headers: &[("kafka.topic", b"user-events"), ("kafka.offset", b"42")], ..Default::default() };
        b.push(0, head, br#"{"at":"2024-01-01T14:00:00+02:00","n":"7","nested":{"a":[1,{"b":null}]}}"#);
        let r = row(&columns, &b.as_ref().get(0)).unwrap();
        assert_eq!(r[0], Cell::Time(DateTime::parse_from_rfc3339("2024-01-01T12:00:00Z").unwrap().with_timezone(&Utc)));
        assert_eq!(r[1], Cell::Int(7));
        assert_eq!(r[2], Cell::Bool(false));
        assert_eq!(r[3], Cell::Json(r#"{"a":[1,{"b":null}]}"#.into()));
        assert!(matches!(&r[4], Cell::Json(v) if serde_json::from_str::<Value>(v).unwrap()["n"] == "7"));
        assert_eq!(r[5], Cell::Text("user-events/42".into()));
    }

    #[test]
    fn the_quick_scan_and_the_json_reader_give_the_same_rows() {
        let top = json!([
            {"name": "t", "type": "TIMESTAMPTZ", "from": "/t"},
            {"name": "s", "type": "TEXT NOT NULL", "from": "/s", "default": "none"},
            {"name": "p", "type": "JSONB", "from": "/p"},
            {"name": "n", "type": "NUMERIC", "from": "/n"}
        ]);
        let mut nested = top.clone();
        nested.as_array_mut().unwrap().push(json!({"name": "x", "type": "TEXT", "from": "/p/x"}));
        let (quick, reader) = (cols(top), cols(nested));
        assert!(quick_members(&reader, b"{}").is_none(), "a nested pointer is read by the JSON reader");
        let mut b = BatchBuf::new();
        for (i, text) in [
            r#"{"t":"2024-01-01T12:00:00Z","s":"a","p":{"x":1},"n":1.50}"#,
            r#" { "n" : 2 , "s" : "b\"c" , "t" : 1704110400, "p" : [ 1 ] } "#,
            r#"{"s":"first","s":"last","p":null}"#,
            r#"{"s\u0031":"escaped key","s":"x"}"#,
        ]
        .iter()
        .enumerate()
        {
            b.push(i as u32, Head::default(), text.as_bytes());
        }
        for i in 0..b.len() {
            let record = b.as_ref().get(i);
            let fast = row(&quick, &record).unwrap();
            let slow = row(&reader, &record).unwrap();
            assert_eq!(fast[..], slow[..4], "record {i}");
        }
        assert_eq!(row(&quick, &b.as_ref().get(2)).unwrap()[1], Cell::Text("last".into()), "the last of repeated keys");
        b.push(9, Head::default(), br#"{"s":"a"} trailing"#);
        assert!(row(&quick, &b.as_ref().get(4)).unwrap_err().starts_with("not valid JSON"));
    }

    #[test]
    fn strings_with_and_without_escapes_read_alike() {
        let columns = cols(json!([
            {"name": "t", "type": "TIMESTAMPTZ", "from": "/t"},
            {"name": "s", "type": "TEXT", "from": "/s"}
        ]));
        let mut b = BatchBuf::new();
        b.push(0, Head::default(), br#"{"t":"2024-01-01 12:00:00","s":"plain"}"#);
        b.push(1, Head::default(), br#"{"t":"2024-01-01T12:00:00\u005a","s":"a\"b\u00e9"}"#);
        b.push(2, Head::default(), br#"{"t":"soon","s":"x"}"#);
        let noon = DateTime::parse_from_rfc3339("2024-01-01T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(row(&columns, &b.as_ref().get(0)).unwrap(), [Cell::Time(noon), Cell::Text("plain".into())], "no offset: UTC");
        assert_eq!(row(&columns, &b.as_ref().get(1)).unwrap(), [Cell::Time(noon), Cell::Text("a\"b\u{e9}".into())]);
        assert_eq!(row(&columns, &b.as_ref().get(2)).unwrap_err(), "column t: \"soon\" is not a time (ISO-8601 or epoch seconds)");
    }

    #[test]
    fn missing_required_and_wrong_types_are_reasons() {
        let columns =
            cols(json!([{"name": "u", "type": "VARCHAR(10) NOT NULL", "from": "/user_id"}, {"name": "n", "type": "BIGINT", "from": "/n"}]));
        let mut b = BatchBuf::new();
        b.push(0, Head::default(), br#"{"n":1}"#);
        b.push(1, Head::default(), br#"{"user_id":"u","n":"x"}"#);
        let batch = b.as_ref();
        assert_eq!(row(&columns, &batch.get(0)).unwrap_err(), "column u needs a value and the record has none at \"/user_id\"");
        assert_eq!(row(&columns, &batch.get(1)).unwrap_err(), "column n: \"x\" is not an integer");
    }

    #[test]
    fn epoch_seconds_and_milliseconds() {
        assert_eq!(parse_time(&json!(1_704_110_400)), parse_time(&json!(1_704_110_400_000u64)));
        assert_eq!(parse_time(&json!("2024-01-01 12:00:00")), parse_time(&json!("2024-01-01T12:00:00Z")));
        assert!(parse_time(&json!("soon")).is_none());
    }

    fn numeric(text: &str) -> (Vec<i16>, i16, bool, u16) {
        let d = Decimal::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (d.digits, d.weight, d.negative, d.scale)
    }

    #[test]
    fn numeric_keeps_every_digit_and_the_scale_as_written() {
        assert_eq!(numeric("12345678901234567890123"), (vec![123, 4567, 8901, 2345, 6789, 123], 5, false, 0));
        assert_eq!(numeric("1.10"), (vec![1, 1000], 0, false, 2));
        assert_eq!(numeric("-2.5E-7"), (vec![25], -2, true, 8));
        assert_eq!(numeric("1e3"), (vec![1000], 0, false, 0));
        assert_eq!(numeric("0.00001"), (vec![1000], -2, false, 5));
        assert_eq!(numeric("-0"), (vec![], 0, false, 0));
        assert_eq!(numeric("-0.00"), (vec![], 0, false, 2));
        assert_eq!(numeric("10000"), (vec![1], 1, false, 0));
        assert_eq!(numeric("+007.5"), (vec![7, 5000], 0, false, 1));
        for bad in ["", "-", "1.", ".5", "1e", "abc", "1.2.3", "0x10", "1e999999999"] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?} parsed");
        }
        let columns = cols(json!([{"name": "n", "type": "NUMERIC(40, 10)", "from": "/n"}, {"name": "t", "type": "TEXT", "from": "/n"}]));
        let mut b = BatchBuf::new();
        b.push(0, Head::default(), br#"{"n":123456789012345678901234567890.5}"#);
        b.push(1, Head::default(), br#"{"n":"12.5"}"#);
        b.push(2, Head::default(), br#"{"n":true}"#);
        let r = row(&columns, &b.as_ref().get(0)).unwrap();
        assert_eq!(r[0], Cell::Numeric(Decimal::parse("123456789012345678901234567890.5").unwrap()));
        assert_eq!(r[1], Cell::Text("123456789012345678901234567890.5".into()), "a number into a text column keeps its digits");
        assert_eq!(row(&columns, &b.as_ref().get(1)).unwrap()[0], Cell::Numeric(Decimal::parse("12.5").unwrap()));
        assert_eq!(row(&columns, &b.as_ref().get(2)).unwrap_err(), "column n: true is not a number");
    }
}
