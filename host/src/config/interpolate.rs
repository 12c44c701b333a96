//! `${VAR}` in pipeline files, expanded value by value: a variable's value becomes the
//! content of the scalar it is written in, and never YAML syntax. A value with a line
//! break, `: `, ` #`, brackets or quotes cannot add keys, end a string early or turn the
//! rest of a line into a comment.
//!
//! The file is first read with each placeholder replaced by letters of the same length,
//! so the scalars and their styles are known at the placeholders' own positions. Then each
//! value is written in the way its scalar needs: escaped inside a double-quoted string,
//! with `''` inside a single-quoted one, indented inside a block scalar. A placeholder that
//! is a whole plain scalar (`port: ${PORT}`) keeps YAML's typing when its value is a plain
//! word or number, and becomes a double-quoted string otherwise; a plain scalar with a
//! placeholder among other text (`listen: 127.0.0.1:${PORT}`) is rewritten as a
//! double-quoted string when a value needs it.

use std::path::Path;

use yaml_rust2::scanner::{Scanner, TScalarStyle, TokenType};

use super::Redactor;
use crate::error::{HostError, Located};

/// Expands `${VAR}` and `${VAR:-default}`; `$${` stands for a literal `${`. Every variable
/// that is not set (and has no default) is named in one error, at the first of them.
pub fn interpolate(text: &str, file: &Path, lookup: impl Fn(&str) -> Option<String>) -> Result<(String, Redactor), HostError> {
    expand(text, file, lookup, false)
}

/// As [`interpolate`], but a variable that is not set and has no default stays as it was
/// written (`${VAR}`), for a later pass to fill in or refuse; escapes (`$${`) stay escaped
/// and a `${` in a value is escaped, so that pass expands nothing twice.
pub fn interpolate_keeping_unset(
    text: &str,
    file: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, Redactor), HostError> {
    expand(text, file, lookup, true)
}

/// One `${…}` or `$${` in the text, by byte range.
#[derive(Debug)]
struct Placeholder {
    start: usize,
    end: usize,
    /// What goes there: a value (the variable's or its default), or `None` to leave the
    /// text as it is (an escape, or an unset variable kept for a later pass).
    value: Option<String>,
    /// Whether it is an escape (`$${`).
    escape: bool,
    /// The variable (empty for an escape).
    var: String,
    /// Whether the value may stand in a plain scalar as it is, in block and in flow
    /// context (judged before a keeping pass escapes the `${` in it).
    plain: [bool; 2],
    line: usize,
    column: usize,
}

/// Finds the placeholders, looking the variables up; every unset one is named at once.
fn scan(
    text: &str,
    file: &Path,
    lookup: &impl Fn(&str) -> Option<String>,
    keep_unset: bool,
    redactor: &mut Redactor,
) -> Result<Vec<Placeholder>, HostError> {
    let mut found = Vec::new();
    // Each variable not set, with the line and column of its first use.
    let mut missing: Vec<(String, usize, usize)> = Vec::new();
    let mut line_start = 0;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let mut at = 0;
        while let Some(pos) = line[at..].find("${").map(|p| p + at) {
            let column = pos + 1;
            if pos > 0 && line.as_bytes()[pos - 1] == b'$' {
                let value = (!keep_unset).then(|| "${".to_owned());
                found.push(Placeholder {
                    start: line_start + pos - 1,
                    end: line_start + pos + 2,
                    value,
                    escape: true,
                    var: String::new(),
                    plain: [true; 2],
                    line: line_no + 1,
                    column,
                });
                at = pos + 2;
                continue;
            }
            let after = &line[pos + 2..];
            let Some(close) = after.find('}') else {
                return Err(Located::new(file, "an unclosed `${` (write `$${` for a literal one)").at(line_no + 1, column).into());
            };
            let expr = &after[..close];
            let (var, default) = match expr.split_once(":-") {
                Some((v, d)) => (v, Some(d)),
                None => (expr, None),
            };
            let valid = !var.is_empty()
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !var.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(Located::new(
                    file,
                    format!("`${{{expr}}}` is not a valid variable reference; use ${{NAME}} or ${{NAME:-default}}"),
                )
                .at(line_no + 1, column)
                .into());
            }
            let mut plain = [true; 2];
            let value = match lookup(var).filter(|v| !v.is_empty() || default.is_none()) {
                Some(value) => {
                    redactor.add(var, &value);
                    plain = plain_in(&value);
                    Some(if keep_unset { value.replace("${", "$${") } else { value })
                }
                None => match default {
                    Some(d) => {
                        plain = plain_in(d);
                        Some(d.to_owned())
                    }
                    None if keep_unset => None,
                    None => {
                        if !missing.iter().any(|(v, ..)| v == var) {
                            missing.push((var.to_owned(), line_no + 1, column));
                        }
                        None
                    }
                },
            };
            let end = pos + 2 + close + 1;
            found.push(Placeholder {
                start: line_start + pos,
                end: line_start + end,
                value,
                escape: false,
                var: var.to_owned(),
                plain,
                line: line_no + 1,
                column,
            });
            at = end;
        }
        line_start += line.len();
    }
    if let Some((first, line, column)) = missing.first() {
        let message = match &missing[..] {
            [_] => format!("environment variable {first} is not set; set it or give a default with ${{{first}:-default}}"),
            all => format!(
                "{} environment variables are not set: {}; set them or give defaults with ${{NAME:-default}}",
                all.len(),
                all.iter().map(|(v, l, c)| format!("{v} (line {l}, column {c})")).collect::<Vec<_>>().join(", ")
            ),
        };
        return Err(Located::new(file, message).at(*line, *column).into());
    }
    Ok(found)
}

/// Letters standing in for placeholder `i`, `len` bytes long (at least 4: `${X}`).
fn stand_in(i: usize, len: usize) -> String {
    let mut code = String::from("Zq");
    let mut n = i;
    for _ in 0..2 {
        code.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
    }
    // More than 676 placeholders: longer codes where there is room, else shared ones (the
    // scalar is then found by position alone, which is still right for one-line scalars).
    while n > 0 && code.len() < len {
        code.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
    }
    code.extend(std::iter::repeat_n('x', len.saturating_sub(code.len())));
    code.truncate(len);
    code
}

/// A scalar of the file as read with stand-ins: where it starts (bytes), its style and its
/// value.
struct Scalar {
    start: usize,
    style: TScalarStyle,
    value: String,
    /// Inside `{…}` or `[…]`.
    flow: bool,
}

/// The scalars of `text`; `None` when it is not YAML (the parse that follows reports why,
/// at its position).
fn scalars(text: &str) -> Option<Vec<Scalar>> {
    // The scanner counts characters; placeholders are found by bytes.
    let bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).chain(std::iter::once(text.len())).collect();
    let mut scanner = Scanner::new(text.chars());
    let mut out = Vec::new();
    let mut depth = 0usize;
    loop {
        match scanner.next_token() {
            Ok(Some(token)) => match token.1 {
                TokenType::Scalar(style, value) => out.push(Scalar { start: *bytes.get(token.0.index())?, style, value, flow: depth > 0 }),
                TokenType::FlowSequenceStart | TokenType::FlowMappingStart => depth += 1,
                TokenType::FlowSequenceEnd | TokenType::FlowMappingEnd => depth = depth.saturating_sub(1),
                _ => {}
            },
            Ok(None) => return Some(out),
            Err(_) => return None,
        }
    }
}

/// Whether `value` can stand as a whole plain scalar, or as part of one, and mean exactly
/// itself: in block context, and in flow context (inside `{…}` or `[…]`, where `,` and
/// brackets end a scalar).
fn plain_in(value: &str) -> [bool; 2] {
    let starts_badly = value.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c) || c.is_whitespace());
    let block = value.is_empty()
        || (!starts_badly
            && !value.ends_with(char::is_whitespace)
            && !value.contains(|c: char| matches!(c, '\n' | '\r' | '\t') || c.is_control())
            && !value.contains(": ")
            && !value.ends_with(':')
            && !value.contains(" #"));
    [block, block && !value.contains([',', '[', ']', '{', '}'])]
}

/// `value` as the inside of a double-quoted scalar.
fn double_quoted_inside(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_owned()
}

/// The end (bytes) of the one-line scalar that starts at `start` and whose value, with
/// stand-ins, is `value`: for a plain scalar the value as written; `None` otherwise.
fn plain_end(text: &str, start: usize, value: &str) -> Option<usize> {
    text[start..].starts_with(value).then_some(start + value.len())
}

fn expand(text: &str, file: &Path, lookup: impl Fn(&str) -> Option<String>, keep_unset: bool) -> Result<(String, Redactor), HostError> {
    let mut redactor = Redactor::default();
    let found = scan(text, file, &lookup, keep_unset, &mut redactor)?;
    let substituted: Vec<usize> = (0..found.len()).filter(|&i| !found[i].escape && found[i].value.is_some()).collect();
    let mut stood_in = text.to_owned();
    for &i in &substituted {
        let p = &found[i];
        stood_in.replace_range(p.start..p.end, &stand_in(i, p.end - p.start));
    }
    let scalars = scalars(&stood_in);
    // Replacements (byte range of `text`, new text), in order and not overlapping.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut i = 0;
    while i < found.len() {
        let p = &found[i];
        let Some(value) = &p.value else {
            i += 1;
            continue;
        };
        if p.escape {
            edits.push((p.start, p.end, value.clone()));
            i += 1;
            continue;
        }
        let code = stand_in(i, p.end - p.start);
        let Some(scalar) =
            scalars.as_ref().and_then(|all| all.iter().rev().find(|s| s.start <= p.start)).filter(|s| s.value.contains(&code))
        else {
            // In a comment (or not YAML at all: the parse reports it): the value as it is,
            // on one line.
            edits.push((p.start, p.end, value.replace(['\n', '\r'], " ")));
            i += 1;
            continue;
        };
        match scalar.style {
            TScalarStyle::DoubleQuoted => edits.push((p.start, p.end, double_quoted_inside(value))),
            TScalarStyle::SingleQuoted => {
                if value.contains(['\n', '\r']) {
                    return Err(not_here(
                        file,
                        p,
                        "a single-quoted string would fold its line break; write the placeholder in double quotes",
                    ));
                }
                edits.push((p.start, p.end, value.replace('\'', "''")));
            }
            TScalarStyle::Literal | TScalarStyle::Folded => {
                let line_start = text[..p.start].rfind('\n').map_or(0, |n| n + 1);
                let indent: String = text[line_start..].chars().take_while(|c| *c == ' ').collect();
                edits.push((p.start, p.end, value.replace("\r\n", "\n").replace('\n', &format!("\n{indent}"))));
            }
            TScalarStyle::Plain if scalar.value == code && p.plain[usize::from(scalar.flow)] => {
                // A whole plain scalar: YAML types it (a number stays a number).
                edits.push((p.start, p.end, value.clone()));
            }
            TScalarStyle::Plain => {
                // The placeholders of this scalar and their values, to decide once for all.
                let Some(end) = plain_end(&stood_in, scalar.start, &scalar.value) else {
                    if p.plain[usize::from(scalar.flow)] {
                        edits.push((p.start, p.end, value.clone()));
                        i += 1;
                        continue;
                    }
                    return Err(not_here(file, p, "its plain (unquoted) value spans lines; write it on one line, or in double quotes"));
                };
                // Every placeholder of the scalar, escapes before this one included.
                let members: Vec<usize> = (0..found.len()).filter(|&j| found[j].start >= scalar.start && found[j].start < end).collect();
                edits.retain(|(start, ..)| *start < scalar.start);
                if members.iter().all(|&j| found[j].plain[usize::from(scalar.flow)]) {
                    for &j in &members {
                        if let Some(v) = &found[j].value {
                            edits.push((found[j].start, found[j].end, v.clone()));
                        }
                    }
                } else {
                    // Rewritten whole as a double-quoted string of what it says.
                    let mut said = String::new();
                    let mut at = scalar.start;
                    for &j in &members {
                        let q = &found[j];
                        said.push_str(&text[at..q.start]);
                        said.push_str(q.value.as_deref().unwrap_or(&text[q.start..q.end]));
                        at = q.end;
                    }
                    said.push_str(&text[at..end]);
                    edits.push((scalar.start, end, serde_json::to_string(&said).unwrap_or_default()));
                }
                i = members.last().map_or(i, |&j| j) + 1;
                continue;
            }
        }
        i += 1;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, with) in edits {
        out.push_str(&text[at..start]);
        out.push_str(&with);
        at = end;
    }
    out.push_str(&text[at..]);
    Ok((out, redactor))
}

fn not_here(file: &Path, p: &Placeholder, why: &str) -> HostError {
    Located::new(file, format!("the value of ${{{}}} holds a line break, and {why}", p.var)).at(p.line, p.column).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn yaml(text: &str, vars: &[(&str, &str)]) -> serde_yaml::Value {
        let (out, _) = interpolate(text, Path::new("p.yaml"), env(vars)).unwrap();
        serde_yaml::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    #[test]
    fn a_value_is_the_content_of_its_scalar_and_never_yaml() {
        let evil = "x\nadmin: true\n# ";
        let v = yaml("a: ${E}\nb: \"${E}\"\nc: '${E}1'\n", &[("E", "x: 1, y\" #z")]);
        assert_eq!(v["a"], "x: 1, y\" #z");
        assert_eq!(v["b"], "x: 1, y\" #z");
        assert_eq!(v["c"], "x: 1, y\" #z1");
        let v =
            yaml("a: ${E}\nb: \"pre ${E} post\"\nc: http://${E}:80/x\nd: |\n  one\n  ${E}\ne: [${E}, 2]\nf: {k: ${E}}\n", &[("E", evil)]);
        let m = v.as_mapping().unwrap();
        assert_eq!(m.len(), 6, "no key was added: {v:?}");
        assert_eq!(v["a"], evil);
        assert_eq!(v["b"], format!("pre {evil} post"));
        assert_eq!(v["c"], format!("http://{evil}:80/x"));
        assert_eq!(v["d"], format!("one\n{evil}\n"));
        assert_eq!(v["e"][0], evil);
        assert_eq!(v["e"][1], 2);
        assert_eq!(v["f"]["k"], evil);
        assert!(v.get("admin").is_none());
    }

    #[test]
    fn whole_plain_placeholders_keep_their_type_and_comments_stay_comments() {
        let v = yaml(
            "port: ${P}\nok: ${B}\nname: ${N}\nempty: ${Z:-}\nlisten: 127.0.0.1:${P} # ${C}\n",
            &[("P", "3001"), ("B", "true"), ("N", "orders"), ("C", "x\ny: 1")],
        );
        assert_eq!(v["port"], 3001);
        assert_eq!(v["ok"], true);
        assert_eq!(v["name"], "orders");
        assert!(v["empty"].is_null());
        assert_eq!(v["listen"], "127.0.0.1:3001");
        assert!(v.get("y").is_none());
    }

    #[test]
    fn escapes_defaults_and_kept_placeholders() {
        let (out, _) = interpolate("a: ${A}\nb: ${B:-dflt}\nc: $${LIT}\n", Path::new("p.yaml"), env(&[("A", "hunter22")])).unwrap();
        assert_eq!(out, "a: hunter22\nb: dflt\nc: ${LIT}\n");
        let (kept, _) = interpolate_keeping_unset("a: $${LIT} ${V} ${UNSET}\n", Path::new("p.yaml"), env(&[("V", "x${Y}")])).unwrap();
        assert_eq!(kept, "a: $${LIT} x$${Y} ${UNSET}\n");
    }

    #[test]
    fn stand_ins_keep_the_length_and_differ() {
        assert_eq!(stand_in(0, 4).len(), 4);
        assert_eq!(stand_in(5, 12).len(), 12);
        assert_ne!(stand_in(1, 6), stand_in(2, 6));
        assert_ne!(stand_in(700, 10), stand_in(24, 10));
    }
}
