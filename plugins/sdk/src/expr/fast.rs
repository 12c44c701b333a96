//! The common shapes of condition, evaluated on the record's text without building CEL
//! values: comparisons of a top-level member with a literal, `in` a list of literals,
//! `startsWith` / `endsWith` / `contains`, `has`, and `&&`, `||`, `!` over them. A record on
//! which the answer could differ from CEL's (a member missing, a type that does not match
//! the literal's, a string with escapes compared by order) is not answered here: the caller
//! evaluates it with CEL, so the result is CEL's either way.

use std::borrow::Cow;
use std::cmp::Ordering;

use cel::common::ast::{operators as op, Expr as Node, IdedExpr, LiteralValue};

/// A literal a member is compared with.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Lit {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A condition in a shape evaluated here.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fast {
    Cmp(String, Ordering, bool, Lit),
    In(String, Vec<Lit>),
    Str(String, StrTest, String),
    Has(String),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrTest {
    StartsWith,
    EndsWith,
    Contains,
}

fn literal(e: &IdedExpr) -> Option<Lit> {
    match &e.expr {
        Node::Literal(LiteralValue::String(s)) => Some(Lit::Str(s.inner().to_owned())),
        Node::Literal(LiteralValue::Int(i)) => Some(Lit::Int(*i.inner())),
        Node::Literal(LiteralValue::Double(d)) => Some(Lit::Float(*d.inner())),
        Node::Literal(LiteralValue::Boolean(b)) => Some(Lit::Bool(*b.inner())),
        _ => None,
    }
}

/// `record.NAME`: its member's name.
fn member(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Node::Select(s) if !s.test && matches!(&s.operand.expr, Node::Ident(n) if n == "record") => Some(s.field.clone()),
        _ => None,
    }
}

/// The condition in a shape evaluated here, or `None`.
pub(super) fn compile(e: &IdedExpr) -> Option<Fast> {
    match &e.expr {
        Node::Select(s) if s.test => match &s.operand.expr {
            Node::Ident(n) if n == "record" => Some(Fast::Has(s.field.clone())),
            _ => None,
        },
        Node::Call(c) => {
            let args = &c.args;
            let two = || (args.len() == 2).then(|| (&args[0], &args[1]));
            match c.func_name.as_str() {
                op::LOGICAL_AND => two().and_then(|(a, b)| Some(Fast::And(Box::new(compile(a)?), Box::new(compile(b)?)))),
                op::LOGICAL_OR => two().and_then(|(a, b)| Some(Fast::Or(Box::new(compile(a)?), Box::new(compile(b)?)))),
                op::LOGICAL_NOT if args.len() == 1 => Some(Fast::Not(Box::new(compile(&args[0])?))),
                op::IN => {
                    let (a, b) = two()?;
                    let Node::List(list) = &b.expr else { return None };
                    Some(Fast::In(member(a)?, list.elements.iter().map(literal).collect::<Option<_>>()?))
                }
                name @ (op::EQUALS | op::NOT_EQUALS | op::LESS | op::LESS_EQUALS | op::GREATER | op::GREATER_EQUALS) => {
                    let (a, b) = two()?;
                    let (field, lit, flipped) = match (member(a), literal(b)) {
                        (Some(f), Some(l)) => (f, l, false),
                        _ => (member(b)?, literal(a)?, true),
                    };
                    // (the ordering wanted, whether it is wanted or refused), member first.
                    let (ord, want) = match name {
                        op::EQUALS => (Ordering::Equal, true),
                        op::NOT_EQUALS => (Ordering::Equal, false),
                        op::LESS => (if flipped { Ordering::Greater } else { Ordering::Less }, true),
                        op::GREATER => (if flipped { Ordering::Less } else { Ordering::Greater }, true),
                        op::LESS_EQUALS => (if flipped { Ordering::Less } else { Ordering::Greater }, false),
                        _ => (if flipped { Ordering::Greater } else { Ordering::Less }, false),
                    };
                    Some(Fast::Cmp(field, ord, want, lit))
                }
                method @ ("startsWith" | "endsWith" | "contains") => {
                    let field = member(c.target.as_deref()?)?;
                    let [arg] = args.as_slice() else { return None };
                    let Some(Lit::Str(text)) = literal(arg) else { return None };
                    let test = match method {
                        "startsWith" => StrTest::StartsWith,
                        "endsWith" => StrTest::EndsWith,
                        _ => StrTest::Contains,
                    };
                    Some(Fast::Str(field, test, text))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// A member's value as the shapes here read it.
enum Read<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Anything else (null, an object, a list, a number too large): CEL decides.
    Other,
}

fn read(text: &str) -> Read<'_> {
    match text.as_bytes().first() {
        Some(b'"') => crate::json::string_text(text).map_or(Read::Other, Read::Str),
        Some(b't') => Read::Bool(true),
        Some(b'f') => Read::Bool(false),
        Some(b'-' | b'0'..=b'9') => {
            if text.bytes().all(|b| b == b'-' || b.is_ascii_digit()) {
                text.parse().map_or(Read::Other, Read::Int)
            } else {
                text.parse().map_or(Read::Other, Read::Float)
            }
        }
        _ => Read::Other,
    }
}

impl Fast {
    /// The answer on a record whose top-level members `get` finds (their text as written),
    /// or `None` where only CEL can tell.
    pub(super) fn eval<'a>(&self, get: &impl Fn(&str) -> Option<&'a str>) -> Option<bool> {
        match self {
            Fast::Has(field) => Some(get(field).is_some()),
            Fast::And(a, b) => match (a.eval(get), b.eval(get)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Fast::Or(a, b) => match (a.eval(get), b.eval(get)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Fast::Not(a) => a.eval(get).map(|v| !v),
            Fast::Cmp(field, ord, want, lit) => {
                let got = compare(&read(get(field)?), lit)?;
                Some((got == *ord) == *want)
            }
            Fast::In(field, lits) => {
                let v = read(get(field)?);
                let mut found = false;
                for lit in lits {
                    found |= compare(&v, lit)? == Ordering::Equal;
                }
                Some(found)
            }
            Fast::Str(field, test, text) => match read(get(field)?) {
                Read::Str(s) => Some(match test {
                    StrTest::StartsWith => s.starts_with(text.as_str()),
                    StrTest::EndsWith => s.ends_with(text.as_str()),
                    StrTest::Contains => s.contains(text.as_str()),
                }),
                _ => None,
            },
        }
    }
}

/// The member's order against the literal, when both are of one type.
fn compare(v: &Read<'_>, lit: &Lit) -> Option<Ordering> {
    match (v, lit) {
        (Read::Str(s), Lit::Str(l)) => Some(s.as_ref().cmp(l.as_str())),
        (Read::Int(i), Lit::Int(l)) => Some(i.cmp(l)),
        (Read::Float(f), Lit::Float(l)) => f.partial_cmp(l),
        (Read::Bool(b), Lit::Bool(l)) => Some(b.cmp(l)),
        _ => None,
    }
}
