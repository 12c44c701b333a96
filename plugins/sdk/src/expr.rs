//! Conditions and computed values over a record (feature `expr`), in CEL, the Common
//! Expression Language (the `cel` crate): typed, side-effect free, no loops. An expression
//! sees three variables:
//!
//! - `record`: the record's value as JSON (`record.user.id`, `record.amount > 10.0`,
//!   `has(record.email)` for a field that may be missing);
//! - `key`: the record's key as text (`""` when it has none);
//! - `headers`: its headers, name to text (`headers["kafka.topic"] == "orders"`).
//!
//! Compiled once, when the stage is created, so a syntax error is found by `weir
//! validate`; an evaluation error (a missing field, a type mismatch) is the record's, with
//! the reason, and never a panic.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::{Context, Env, Program, Value};

/// The variables an expression may use.
pub const VARIABLES: [&str; 3] = ["record", "key", "headers"];

/// An expression that does not compile: why, and where in the expression (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// What is wrong.
    pub message: String,
    /// Line within the expression.
    pub line: usize,
    /// Column within that line.
    pub column: usize,
}

impl std::fmt::Display for ExprError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at {}:{} of the expression)", self.message, self.line, self.column)
    }
}

fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

/// A compiled expression.
#[derive(Debug)]
pub struct Expr {
    program: Program,
    source: String,
}

impl Expr {
    /// Compiles `source`; the error says what is wrong and where.
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        if source.trim().is_empty() {
            return Err(ExprError { message: "the expression is empty".into(), line: 1, column: 1 });
        }
        let program = env().compile(source).map_err(|e| {
            let first = e.errors.first();
            let (line, column) = first.map_or((1, 1), |f| (f.pos.0.max(1) as usize, f.pos.1.max(0) as usize + 1));
            let message = first.map_or_else(|| e.to_string(), |f| f.msg.clone());
            ExprError { message: format!("not a valid expression: {message}"), line, column }
        })?;
        let references = program.references();
        for name in references.variables() {
            if !VARIABLES.contains(&name) {
                return Err(ExprError {
                    message: format!(
                        "unknown variable `{name}`; an expression sees `record`, `key` and `headers` (for example record.{name})"
                    ),
                    line: 1,
                    column: source.find(name).map_or(1, |c| c + 1),
                });
            }
        }
        Ok(Expr { program, source: source.to_owned() })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates against `input`; the error says why it could not.
    pub fn eval(&self, input: &Input) -> Result<Value, String> {
        let mut ctx = Context::with_env(env());
        ctx.add_variable_from_value("record", input.record.clone());
        ctx.add_variable_from_value("key", input.key.clone());
        ctx.add_variable_from_value("headers", input.headers.clone());
        self.program.execute(&ctx).map_err(|e| format!("`{}`: {e}", self.source))
    }

    /// Evaluates a condition: true or false, or why it is neither.
    pub fn holds(&self, input: &Input) -> Result<bool, String> {
        match self.eval(input)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("`{}` gave {}, not true or false", self.source, shown(&other))),
        }
    }
}

/// A record as expressions see it, converted once for every expression evaluated on it.
#[derive(Debug, Clone)]
pub struct Input {
    record: Value,
    key: Value,
    headers: Value,
}

impl Input {
    /// From the record's value (JSON text; text that is not JSON is `record` as a string),
    /// key and headers.
    pub fn new<'a>(value: &[u8], key: Option<&[u8]>, headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Input {
        let record = match serde_json::from_slice::<serde_json::Value>(value) {
            Ok(v) => from_json(&v),
            Err(_) => Value::String(Arc::new(String::from_utf8_lossy(value).into_owned())),
        };
        let key = Value::String(Arc::new(key.map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default()));
        let headers: HashMap<String, Value> =
            headers.into_iter().map(|(k, v)| (k.to_owned(), Value::String(Arc::new(String::from_utf8_lossy(v).into_owned())))).collect();
        Input { record, key, headers: Value::from(headers) }
    }

    /// From a JSON value alone (no key, no headers).
    pub fn from_value(record: &serde_json::Value) -> Input {
        Input { record: from_json(record), key: Value::String(Arc::default()), headers: Value::from(HashMap::<String, Value>::new()) }
    }
}

/// A JSON value as a CEL value: whole numbers that fit are `int` (or `uint`), others `double`.
pub fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => Value::List(Arc::new(items.iter().map(from_json).collect())),
        serde_json::Value::Object(fields) => {
            let map: HashMap<String, Value> = fields.iter().map(|(k, v)| (k.clone(), from_json(v))).collect();
            Value::from(map)
        }
    }
}

/// A CEL value as JSON, for a computed field; `None` for what JSON cannot hold.
pub fn to_json(v: &Value) -> Option<serde_json::Value> {
    Some(match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::UInt(u) => serde_json::Value::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number)?,
        Value::String(s) => serde_json::Value::String(s.to_string()),
        Value::List(items) => serde_json::Value::Array(items.iter().map(to_json).collect::<Option<_>>()?),
        Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let key = match k {
                    cel::objects::Key::String(s) => s.to_string(),
                    cel::objects::Key::Int(i) => i.to_string(),
                    cel::objects::Key::Uint(u) => u.to_string(),
                    cel::objects::Key::Bool(b) => b.to_string(),
                };
                out.insert(key, to_json(v)?);
            }
            serde_json::Value::Object(out)
        }
        _ => return None,
    })
}

fn shown(v: &Value) -> String {
    to_json(v).map_or_else(|| format!("{v:?}"), |j| j.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> Input {
        Input::new(json.as_bytes(), Some(b"user-7"), [("kafka.topic", b"orders".as_slice())])
    }

    #[test]
    fn conditions_on_strings_numbers_nested_missing_fields_headers_and_keys() {
        let r = input(r#"{"type":"order","amount":12.5,"count":3,"user":{"tier":"gold"},"tags":["a","b"]}"#);
        let holds = |e: &str| Expr::compile(e).unwrap().holds(&r);
        assert_eq!(holds(r#"record.type == "order""#), Ok(true));
        assert_eq!(holds("record.amount > 10.0 && record.count == 3"), Ok(true));
        assert_eq!(holds(r#"record.user.tier in ["gold", "platinum"]"#), Ok(true));
        assert_eq!(holds("has(record.email)"), Ok(false));
        assert_eq!(holds(r#"headers["kafka.topic"] == "orders" && key.startsWith("user-")"#), Ok(true));
        assert_eq!(holds("size(record.tags) == 2"), Ok(true));
        assert_eq!(holds(r#"record.type.matches("^ord")"#), Ok(true));
        let missing = holds("record.email == \"x\"").unwrap_err();
        assert!(missing.contains("email"), "{missing}");
        let not_bool = holds("record.count + 1").unwrap_err();
        assert!(not_bool.contains("gave 4, not true or false"), "{not_bool}");
        let mixed = holds("record.type > 3").unwrap_err();
        assert!(mixed.contains("record.type > 3"), "{mixed}");
    }

    #[test]
    fn compile_errors_say_where_and_unknown_variables_are_named() {
        let e = Expr::compile("record.amount >").unwrap_err();
        assert!(e.message.starts_with("not a valid expression"), "{e}");
        assert_eq!(e.line, 1);
        let e = Expr::compile("amount > 3").unwrap_err();
        assert!(e.message.contains("unknown variable `amount`") && e.message.contains("record.amount"), "{e}");
        assert_eq!(e.column, 1);
        assert!(Expr::compile("  ").is_err());
    }

    #[test]
    fn values_computed_come_back_as_json() {
        let r = input(r#"{"amount":12.5}"#);
        let v = Expr::compile("int(record.amount * 100.0)").unwrap().eval(&r).unwrap();
        assert_eq!(to_json(&v), Some(serde_json::json!(1250)));
        let v = Expr::compile(r#"{"k": [1, "two"]}"#).unwrap().eval(&r).unwrap();
        assert_eq!(to_json(&v), Some(serde_json::json!({"k": [1, "two"]})));
        let text = Input::new(b"not json", None, []);
        assert_eq!(Expr::compile(r#"record == "not json""#).unwrap().holds(&text), Ok(true));
    }
}
