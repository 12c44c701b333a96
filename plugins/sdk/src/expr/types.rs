//! What can be known of an expression's types before any record is seen: literals, and
//! what operators and functions give. A record's members are of any type (`Dyn`), so only
//! what is certain is refused: adding a string to a number, ordering a string against a
//! number, `&&` over a number, a method that needs text called on a number, or a
//! condition that can only give something other than true or false.

use cel::common::ast::{operators as op, Expr as Node, IdedExpr, LiteralValue};

/// A type, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    Bool,
    Number,
    Text,
    Bytes,
    Null,
    List,
    Map,
    Dyn,
}

impl Ty {
    pub(super) fn name(self) -> &'static str {
        match self {
            Ty::Bool => "true or false",
            Ty::Number => "a number",
            Ty::Text => "a string",
            Ty::Bytes => "bytes",
            Ty::Null => "null",
            Ty::List => "a list",
            Ty::Map => "a map",
            Ty::Dyn => "any value",
        }
    }

    fn is(self, other: Ty) -> bool {
        self == other || self == Ty::Dyn
    }
}

/// A type error: what, and the node it is at.
pub(super) struct TypeError {
    pub(super) message: String,
    pub(super) at: u64,
}

fn fail<T>(at: &IdedExpr, message: String) -> Result<T, TypeError> {
    Err(TypeError { message, at: at.id })
}

/// The type `e` gives, or the first certain type error in it.
pub(super) fn infer(e: &IdedExpr) -> Result<Ty, TypeError> {
    match &e.expr {
        Node::Literal(l) => Ok(match l {
            LiteralValue::Boolean(_) => Ty::Bool,
            LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_) => Ty::Number,
            LiteralValue::String(_) => Ty::Text,
            LiteralValue::Bytes(_) => Ty::Bytes,
            LiteralValue::Null => Ty::Null,
        }),
        Node::Select(s) if s.test => Ok(Ty::Bool),
        Node::Select(s) => {
            infer(&s.operand)?;
            Ok(Ty::Dyn)
        }
        Node::List(l) => {
            for item in &l.elements {
                infer(item)?;
            }
            Ok(Ty::List)
        }
        Node::Map(_) | Node::Struct(_) => Ok(Ty::Map),
        Node::Comprehension(_) | Node::Ident(_) | Node::Unspecified => Ok(Ty::Dyn),
        Node::Call(c) => {
            let args: Vec<Ty> = c.args.iter().map(infer).collect::<Result<_, _>>()?;
            let target = c.target.as_deref().map(infer).transpose()?;
            let at = |i: usize| &c.args[i];
            match c.func_name.as_str() {
                op::LOGICAL_AND | op::LOGICAL_OR | op::LOGICAL_NOT => {
                    let word = match c.func_name.as_str() {
                        op::LOGICAL_AND => "&&",
                        op::LOGICAL_OR => "||",
                        _ => "!",
                    };
                    for (i, t) in args.iter().enumerate() {
                        if !t.is(Ty::Bool) {
                            return fail(at(i), format!("`{word}` takes true or false, and this is {}", t.name()));
                        }
                    }
                    Ok(Ty::Bool)
                }
                op::EQUALS | op::NOT_EQUALS => Ok(Ty::Bool),
                op::LESS | op::LESS_EQUALS | op::GREATER | op::GREATER_EQUALS => {
                    let (a, b) = (args[0], args[1]);
                    let ordered = [Ty::Number, Ty::Text, Ty::Bool, Ty::Bytes, Ty::Dyn];
                    for (i, t) in [a, b].iter().enumerate() {
                        if !ordered.contains(t) {
                            return fail(at(i), format!("{} has no order", t.name()));
                        }
                    }
                    if a != Ty::Dyn && b != Ty::Dyn && a != b {
                        return fail(at(1), format!("cannot order {} against {}", a.name(), b.name()));
                    }
                    Ok(Ty::Bool)
                }
                op::ADD => {
                    let (a, b) = (args[0], args[1]);
                    if a != Ty::Dyn && b != Ty::Dyn && a != b {
                        return fail(at(1), format!("cannot add {} to {}", b.name(), a.name()));
                    }
                    for (i, t) in [a, b].iter().enumerate() {
                        if matches!(t, Ty::Bool | Ty::Null | Ty::Map) {
                            return fail(at(i), format!("cannot add {}", t.name()));
                        }
                    }
                    Ok(if a == Ty::Dyn { b } else { a })
                }
                op::SUBSTRACT | op::MULTIPLY | op::DIVIDE | op::MODULO | op::NEGATE => {
                    for (i, t) in args.iter().enumerate() {
                        if !t.is(Ty::Number) {
                            return fail(at(i), format!("arithmetic takes numbers, and this is {}", t.name()));
                        }
                    }
                    Ok(Ty::Number)
                }
                op::IN => {
                    if !matches!(args[1], Ty::List | Ty::Map | Ty::Dyn) {
                        return fail(at(1), format!("`in` looks in a list or a map, and this is {}", args[1].name()));
                    }
                    Ok(Ty::Bool)
                }
                "startsWith" | "endsWith" | "contains" | "matches" => {
                    if let Some(t) = target.filter(|t| !t.is(Ty::Text)) {
                        let on = c.target.as_deref().expect("a method has a target");
                        return fail(on, format!("`{}` is a method of strings, and this is {}", c.func_name, t.name()));
                    }
                    if let Some(t) = args.first().filter(|t| !t.is(Ty::Text)) {
                        return fail(at(0), format!("`{}` takes a string, and this is {}", c.func_name, t.name()));
                    }
                    Ok(Ty::Bool)
                }
                "size" | "int" | "uint" | "double" => Ok(Ty::Number),
                "string" => Ok(Ty::Text),
                _ => Ok(Ty::Dyn),
            }
        }
    }
}
