//! Object key templates: `events/{yyyy}/{MM}/{dd}/{HH}/{/eventId}.json`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use weir_plugin::json::{self, Doc, Pointer};
use weir_plugin::RecordRef;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Field(Pointer),
    Key,
    Header(String),
    Batch,
}

/// A parsed key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What the `{batch}` placeholder is while records are grouped, before the digest is known.
pub const BATCH_MARK: &str = "\u{0}batch\u{0}";

impl Template {
    /// Parses `text`; the error says which placeholder is wrong and which exist.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close =
                rest[open..].find('}').ok_or_else(|| format!("the `{{` at byte {} is never closed", text.len() - rest.len() + open))?;
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "yyyy" => Part::Year,
                "MM" => Part::Month,
                "dd" => Part::Day,
                "HH" => Part::Hour,
                "mm" => Part::Minute,
                "key" => Part::Key,
                "batch" => Part::Batch,
                p if p.starts_with('/') => Part::Field(Pointer::parse(p)?),
                h if h.starts_with("header:") && h.len() > "header:".len() => Part::Header(h["header:".len()..].to_owned()),
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}: use {{yyyy}} {{MM}} {{dd}} {{HH}} {{mm}}, {{/json/pointer}}, {{key}}, {{header:NAME}} or {{batch}}"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err("a `}` has no `{`".into());
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let shape = Template { parts: parts.clone() }.shape();
        if shape.starts_with('/') || shape.contains("//") || shape.split('/').any(|s| s == "." || s == "..") {
            return Err("a key has no leading `/`, no empty segment and no `.` or `..` segment".into());
        }
        Ok(Template { parts })
    }

    /// The key with each placeholder standing for a plain value (`x`), to check its shape.
    pub fn shape(&self) -> String {
        self.parts.iter().map(|p| if let Part::Literal(l) = p { l.as_str() } else { "x" }).collect()
    }

    /// Whether the template has a `{batch}` placeholder.
    pub fn has_batch(&self) -> bool {
        self.parts.contains(&Part::Batch)
    }

    /// Whether the template names each record by something of its own.
    pub fn names_record(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_) | Part::Key | Part::Header(_)))
    }

    /// Whether rendering needs the record's value read.
    pub fn needs_value(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// The key of one record at `time`; `{batch}` stays as [`BATCH_MARK`]. The error names the
    /// part of the record the key needs and does not find.
    pub fn render(&self, record: &RecordRef<'_>, value: Option<&Doc<'_>>, time: DateTime<Utc>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Year => out.push_str(&format!("{:04}", time.year())),
                Part::Month => out.push_str(&format!("{:02}", time.month())),
                Part::Day => out.push_str(&format!("{:02}", time.day())),
                Part::Hour => out.push_str(&format!("{:02}", time.hour())),
                Part::Minute => out.push_str(&format!("{:02}", time.minute())),
                Part::Batch => out.push_str(BATCH_MARK),
                // Strings unescaped, numbers and booleans as written.
                Part::Field(pointer) => match value.and_then(|v| v.get(pointer)) {
                    Some(raw) => match raw.get().as_bytes()[0] {
                        b'"' => match json::string(raw) {
                            Some(s) if !s.is_empty() => encode(s.as_bytes(), &mut out),
                            _ => return Err(format!("field {pointer} is empty, and the object key needs it")),
                        },
                        b'-' | b'0'..=b'9' | b't' | b'f' => encode(raw.get().as_bytes(), &mut out),
                        _ => return Err(format!("field {pointer} is not a string, number or boolean, and the object key needs one")),
                    },
                    None => return Err(format!("field {pointer} is missing, and the object key needs it")),
                },
                Part::Key => match record.key {
                    Some(k) if !k.is_empty() => encode(k, &mut out),
                    _ => return Err("the record has no key, and the object key needs it ({key})".into()),
                },
                Part::Header(name) => match record.header(name) {
                    Some(h) if !h.is_empty() => encode(h, &mut out),
                    _ => return Err(format!("the record has no header {name}, and the object key needs it")),
                },
            }
        }
        Ok(out)
    }
}

/// Appends `bytes`, percent-encoding all but letters, digits and `-_.~=@+,`; a value made only
/// of dots is encoded whole, so no value can be a `.` or `..` segment or add a `/`.
fn encode(bytes: &[u8], out: &mut String) {
    let only_dots = bytes.iter().all(|&b| b == b'.');
    for &b in bytes {
        let plain = b.is_ascii_alphanumeric() || (b"-_~=@+,".contains(&b)) || (b == b'.' && !only_dots);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::json_batch;

    fn doc(text: &str) -> Doc<'_> {
        Doc::parse(text.as_bytes()).unwrap()
    }

    fn time() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-15T10:07:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn renders_the_seed_layout() {
        let t = Template::parse("events/{yyyy}/{MM}/{dd}/{HH}/{/eventId}.json").unwrap();
        let batch = json_batch(["{}"]);
        let r = batch.as_ref().get(0);
        let key = t.render(&r, Some(&doc(r#"{"eventId": "event-id-1"}"#)), time()).unwrap();
        assert_eq!(key, "events/2024/01/15/10/event-id-1.json");
        assert!(t.names_record() && !t.has_batch());
    }

    #[test]
    fn a_field_cannot_add_segments() {
        let t = Template::parse("e/{/id}.json").unwrap();
        let batch = json_batch(["{}"]);
        let r = batch.as_ref().get(0);
        assert_eq!(t.render(&r, Some(&doc(r#"{"id": "../x/y z"}"#)), time()).unwrap(), "e/..%2Fx%2Fy%20z.json");
        assert_eq!(t.render(&r, Some(&doc(r#"{"id": ".."}"#)), time()).unwrap(), "e/%2E%2E.json");
        assert_eq!(t.render(&r, Some(&doc(r#"{"id": 42}"#)), time()).unwrap(), "e/42.json");
        assert_eq!(t.render(&r, Some(&doc(r#"{"id": "a\/b"}"#)), time()).unwrap(), "e/a%2Fb.json", "escapes read");
        assert_eq!(t.render(&r, Some(&doc(r#"{"id": 1.50}"#)), time()).unwrap(), "e/1.50.json", "numbers as written");
        assert!(t.render(&r, Some(&doc(r#"{"id": null}"#)), time()).unwrap_err().contains("not a string, number or boolean"));
        assert!(t.render(&r, Some(&doc(r#"{"id": ""}"#)), time()).unwrap_err().contains("is empty"));
        assert_eq!(t.render(&r, Some(&doc("{}")), time()).unwrap_err(), "field /id is missing, and the object key needs it");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(Template::parse("e/{hour}").unwrap_err().contains("unknown placeholder {hour}"));
        assert!(Template::parse("e/{yyyy").unwrap_err().contains("never closed"));
        assert!(Template::parse("/e/{batch}").unwrap_err().contains("leading"));
        assert!(Template::parse("e/../{batch}").unwrap_err().contains(".."));
    }
}
