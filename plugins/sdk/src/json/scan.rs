//! A checking scan of a JSON object's top-level members that builds nothing: each member's
//! key as written and its value's text, found in one pass over the bytes (inside strings
//! sixteen at a time on x86_64, eight elsewhere). It accepts exactly the JSON that
//! `serde_json` accepts, up to the same nesting depth, and gives up (`None`) on anything it
//! does not answer itself, so a caller falls back to [`super::Doc`] and gets the same result
//! either way.

use std::ops::Range;

/// The deepest nesting read, as `serde_json`'s limit.
const MAX_DEPTH: usize = 128;

/// The top-level members of `text`, in order: each key (without its quotes) and its value as
/// written. `None` when `text` is not one valid JSON object, or when a key has an escape
/// (the caller reads such a record the general way).
pub fn object_members(text: &str) -> Option<Vec<(&str, &str)>> {
    object_members_where(text, 16, |_| true)
}

/// As [`object_members`], keeping only the members whose key `keep` takes (all of the
/// text is still checked, and a key with an escape still gives `None`); `capacity`: how
/// many are expected.
pub fn object_members_where(text: &str, capacity: usize, keep: impl Fn(&str) -> bool) -> Option<Vec<(&str, &str)>> {
    let b = text.as_bytes();
    let start = ws(b, 0);
    if b.get(start) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::with_capacity(capacity);
    let end = nested(b, start, 0, b'}', &mut |key, escaped, value| {
        let name = &text[key.start + 1..key.end - 1];
        if keep(name) {
            members.push((name, &text[value]));
        }
        !escaped
    })?;
    (ws(b, end) == b.len()).then_some(members)
}

/// Hears each member of an object: its key's span (quotes included), whether the key has
/// escapes, and its value's span; false gives up the scan.
type Each<'e> = &'e mut dyn FnMut(Range<usize>, bool, Range<usize>) -> bool;

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index of the first quote, backslash or control character at or after `i` in a
/// string's text, or a later index (at most `b.len()`) from which to look byte by byte.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn plain(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    while i + 16 <= b.len() {
        // SAFETY: the 16 bytes from `i` are inside `b` (checked above), the load needs no
        // alignment, and SSE2 is part of every x86_64 target.
        let found = unsafe {
            let v = _mm_loadu_si128(b.as_ptr().add(i).cast());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // A byte is at most 0x1f exactly when the unsigned minimum with 0x1f is itself.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
        };
        if found != 0 {
            return i + found.trailing_zeros() as usize;
        }
        i += 16;
    }
    i
}

/// As above, eight bytes at a time.
#[cfg(not(target_arch = "x86_64"))]
fn plain(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    while let Some(chunk) = b.get(i..i + 8) {
        let v = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGHS;
        if (zero(v ^ (ONES * u64::from(b'"'))) | zero(v ^ (ONES * u64::from(b'\\'))) | control) != 0 {
            break;
        }
        i += 8;
    }
    i
}

/// The string whose opening quote is at `i`: the index after its closing quote, and whether
/// it has escapes. `None` when it is not a valid JSON string.
fn string(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    i += 1;
    let mut escaped = false;
    loop {
        i = plain(b, i);
        match *b.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                    _ => return None,
                }
            }
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// The value starting at `i` (no whitespace before it): the index after it.
fn value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string(b, i).map(|(end, _)| end),
        b'{' => nested(b, i, depth, b'}', &mut |_, _, _| true),
        b'[' => nested(b, i, depth, b']', &mut |_, _, _| true),
        b't' => literal(b, i, b"true"),
        b'f' => literal(b, i, b"false"),
        b'n' => literal(b, i, b"null"),
        b'-' | b'0'..=b'9' => number(b, i),
        _ => None,
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// An object (closed by `}`, whose members `each` hears) or an array (closed by `]`) opening
/// at `i`: the index after its closing bracket.
fn nested(b: &[u8], i: usize, depth: usize, close: u8, each: Each<'_>) -> Option<usize> {
    if depth >= MAX_DEPTH {
        return None;
    }
    let mut i = ws(b, i + 1);
    if b.get(i) == Some(&close) {
        return Some(i + 1);
    }
    loop {
        let key = if close == b'}' {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (end, escaped) = string(b, i)?;
            let key = (i..end, escaped);
            i = ws(b, end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(b, i + 1);
            Some(key)
        } else {
            None
        };
        let start = i;
        let end = value(b, start, depth + 1)?;
        if let Some((span, escaped)) = key {
            if !each(span, escaped, start..end) {
                return None;
            }
        }
        i = ws(b, end);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            c if c == close => return Some(i + 1),
            _ => return None,
        }
    }
}

/// A number as JSON writes it: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match *b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json makes of `text`: the members (key unescaped, value as written) when it
    /// is one object, `None` otherwise.
    fn serde_members(text: &str) -> Option<Vec<(String, String)>> {
        let map: Vec<(String, String)> =
            super::super::Doc::parse(text.as_bytes()).ok()?.members()?.iter().map(|(k, v)| (k.to_string(), v.get().to_owned())).collect();
        Some(map)
    }

    fn scanned(text: &str) -> Option<Vec<(String, String)>> {
        object_members(text).map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    #[test]
    fn agrees_with_serde_json_on_valid_and_invalid_text() {
        let deep_ok = format!("{{\"a\":{}1{}}}", "[".repeat(126), "]".repeat(126));
        let deep_bad = format!("{{\"a\":{}1{}}}", "[".repeat(127), "]".repeat(127));
        let cases = [
            r#"{}"#,
            r#"  { "a" : 1 , "b":"x" }  "#,
            r#"{"eventType":"page_view","userId":"user-42","n":-0.5e+3,"ok":true,"none":null,"list":[1,{"x":[]},"s"],"o":{"k":"v"}}"#,
            r#"{"s":"quote \" backslash \\ slash \/ \b\f\n\r\t \u00e9 \uD83D\uDE00"}"#,
            r#"{"long":"0123456789abcdefghijklmnopqrstuvwxyz0123456789\"tail"}"#,
            "{\"unicode\":\"caf\u{e9} \u{1F600} \u{4e2d}\u{6587}\"}",
            r#"{"a":1,"a":2}"#,
            r#"{"n":0,"m":10,"f":1.25,"e":1E5,"big":123456789012345678901234567890}"#,
            &deep_ok,
            &deep_bad,
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12g4"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"open}"#,
            r#"{"a":tru}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b" 1}}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{}"#,
            r#"{a:1}"#,
            r#"[1,2]"#,
            r#""text""#,
            r#"{"a":[1,]}"#,
            r#"{"a":{,}}"#,
            "",
            "{",
        ];
        for text in cases {
            assert_eq!(scanned(text), serde_members(text), "{text}");
        }
    }

    #[test]
    fn a_key_with_an_escape_is_left_to_the_general_reader() {
        assert_eq!(object_members(r#"{"user\u0049d":"u"}"#), None);
        assert!(serde_members(r#"{"user\u0049d":"u"}"#).is_some());
    }

    #[test]
    fn the_last_of_repeated_keys_wins() {
        let m = object_members(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(super::super::member(&m, "a"), Some("3"));
        assert_eq!(super::super::member(&m, "c"), None);
        let only_a = object_members_where(r#"{"a":1,"b":2,"a":3}"#, 1, |k| k == "a").unwrap();
        assert_eq!(only_a, [("a", "1"), ("a", "3")]);
    }

    #[test]
    fn picking_members_still_checks_the_whole_text() {
        let a = |k: &str| k == "a";
        assert_eq!(object_members_where(r#"{"a":1,"b":[1,]}"#, 1, a), None);
        assert_eq!(object_members_where(r#"{"a":1,"b\u0061":2}"#, 1, a), None, "an escaped key may be any key");
        assert_eq!(object_members_where(r#"{"b":2}"#, 1, a), Some(vec![]));
    }

    #[test]
    fn strings_are_checked_at_every_offset_of_the_sixteen_byte_steps() {
        for pad in 0..40 {
            let filler = "x".repeat(pad);
            for special in ["\\\"", "\\\\", "\\u0041", "\u{1}", "\\q"] {
                let text = format!("{{\"k\":\"{filler}{special}{filler}\"}}");
                assert_eq!(scanned(&text), serde_members(&text), "{text:?}");
            }
        }
    }
}
