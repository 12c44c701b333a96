//! Reading records without parsing them whole.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;

/// The value at a JSON pointer (RFC 6901; `""` is the whole document), as written, opening
/// only the objects and arrays on its way: nothing elsewhere in the record is parsed, so no
/// value there (a number beyond a float's range) can make the field unreadable, and the
/// value keeps its spelling. Of repeated keys the last counts.
pub fn pointer<'a>(doc: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    let Some(rest) = pointer.strip_prefix('/') else { return pointer.is_empty().then_some(doc) };
    let mut cur = doc;
    for seg in rest.split('/') {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let text = cur.get();
        cur = match text.as_bytes().first()? {
            b'{' => serde_json::from_str::<HashMap<Cow<'a, str>, &'a RawValue>>(text).ok()?.remove(seg.as_str())?,
            b'[' => *serde_json::from_str::<Vec<&'a RawValue>>(text).ok()?.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_read_values_as_written() {
        let doc: &RawValue = serde_json::from_str(r#"{"a":{"b/c":[1,{"n":12345678901234567890123}]},"big":1e400,"a~":2}"#).unwrap();
        assert_eq!(pointer(doc, "/a/b~1c/1/n").map(RawValue::get), Some("12345678901234567890123"));
        assert_eq!(pointer(doc, "/a~0").map(RawValue::get), Some("2"));
        assert_eq!(pointer(doc, "").map(RawValue::get), Some(doc.get()));
        assert!(pointer(doc, "/a/b~1c/9").is_none() && pointer(doc, "/missing").is_none() && pointer(doc, "nope").is_none());
    }
}
