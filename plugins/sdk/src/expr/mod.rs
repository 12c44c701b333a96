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

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr};
use cel::{Context, Env, Program, Value};
use serde_json::value::RawValue;

use crate::batch::RecordRef;
use crate::json::{scan, Doc};

mod fast;
mod types;

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
    needs: Needs,
    /// The condition in a shape evaluated on the record's text, when it has one.
    fast: Option<fast::Fast>,
    /// What it gives, as far as it is known before a record is seen.
    ty: types::Ty,
}

/// The line and column (1-based) of byte `offset` of `source`.
fn position(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// What of a record expressions read, so that only that is converted for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// The record's top-level members read as `record.NAME`; `None`: the whole record.
    pub fields: Option<BTreeSet<String>>,
    /// Whether `key` is read.
    pub key: bool,
    /// Whether `headers` are read.
    pub headers: bool,
    /// The first variable read that is none of the three.
    unknown: Option<String>,
}

impl Needs {
    /// What either needs.
    pub fn union(&self, other: &Needs) -> Needs {
        let fields = match (&self.fields, &other.fields) {
            (Some(a), Some(b)) => Some(a.union(b).cloned().collect()),
            _ => None,
        };
        Needs { fields, key: self.key || other.key, headers: self.headers || other.headers, unknown: None }
    }

    /// Nothing at all (the start of a union).
    pub fn nothing() -> Needs {
        Needs { fields: Some(BTreeSet::new()), key: false, headers: false, unknown: None }
    }
}

/// Adds to `needs` what `e` reads of the record: `record.NAME` names a member; `record`
/// used any other way needs the whole of it. `bound`: the variables of the comprehensions
/// (`exists(x, …)`) around `e`.
fn walk(e: &IdedExpr, needs: &mut Needs, bound: &mut Vec<String>) {
    match &e.expr {
        Node::Select(s) => match &s.operand.expr {
            Node::Ident(name) if name == "record" && !bound.contains(name) => {
                if let Some(fields) = &mut needs.fields {
                    fields.insert(s.field.clone());
                }
            }
            _ => walk(&s.operand, needs, bound),
        },
        Node::Ident(name) if bound.contains(name) => {}
        Node::Ident(name) => match name.as_str() {
            "record" => needs.fields = None,
            "key" => needs.key = true,
            "headers" => needs.headers = true,
            other => {
                needs.unknown.get_or_insert_with(|| other.to_owned());
            }
        },
        Node::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, needs, bound);
            }
            c.args.iter().for_each(|a| walk(a, needs, bound));
        }
        Node::List(l) => l.elements.iter().for_each(|a| walk(a, needs, bound)),
        Node::Map(m) => m.entries.iter().for_each(|entry| entry_walk(&entry.expr, needs, bound)),
        Node::Struct(s) => s.entries.iter().for_each(|entry| entry_walk(&entry.expr, needs, bound)),
        Node::Comprehension(c) => {
            walk(&c.iter_range, needs, bound);
            let depth = bound.len();
            bound.extend([Some(c.iter_var.clone()), c.iter_var2.clone(), Some(c.accu_var.clone())].into_iter().flatten());
            for sub in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                walk(sub, needs, bound);
            }
            bound.truncate(depth);
        }
        Node::Literal(_) | Node::Unspecified => {}
    }
}

fn entry_walk(entry: &EntryExpr, needs: &mut Needs, bound: &mut Vec<String>) {
    match entry {
        EntryExpr::StructField(f) => walk(&f.value, needs, bound),
        EntryExpr::MapEntry(m) => {
            walk(&m.key, needs, bound);
            walk(&m.value, needs, bound);
        }
    }
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
        let mut needs = Needs::nothing();
        walk(program.expression(), &mut needs, &mut Vec::new());
        if let Some(name) = needs.unknown.take() {
            return Err(ExprError {
                message: format!("unknown variable `{name}`; an expression sees `record`, `key` and `headers` (for example record.{name})"),
                line: 1,
                column: source.find(name.as_str()).map_or(1, |c| c + 1),
            });
        }
        let ty = types::infer(program.expression()).map_err(|e| {
            let (line, column) = position(source, program.source_info().offset_for(e.at).map_or(0, |(start, _)| start as usize));
            ExprError { message: format!("type error: {}", e.message), line, column }
        })?;
        let fast = fast::compile(program.expression());
        Ok(Expr { program, source: source.to_owned(), needs, fast, ty })
    }

    /// Compiles a condition: as [`Expr::compile`], and it must give true or false.
    pub fn condition(source: &str) -> Result<Expr, ExprError> {
        let expr = Expr::compile(source)?;
        if !matches!(expr.ty, types::Ty::Bool | types::Ty::Dyn) {
            return Err(ExprError {
                message: format!("type error: a condition gives true or false, and this gives {}", expr.ty.name()),
                line: 1,
                column: 1,
            });
        }
        Ok(expr)
    }

    /// What it reads of a record.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates against `input`; the error says why it could not.
    pub fn eval(&self, input: &Input) -> Result<Value, String> {
        self.program.execute(&input.ctx).map_err(|e| format!("`{}`: {e}", self.source))
    }

    /// Tests a condition on `record`: as [`Expr::holds`], reading only what is needed (most
    /// conditions on top-level members are answered from the record's text directly).
    pub fn test(&self, record: &Record<'_>) -> Result<bool, String> {
        if let Some(fast) = &self.fast {
            // The quick scan first; a record it leaves (a key with an escape) is read whole.
            let answer = match record.scanned() {
                Some(members) => fast.eval(&|name| crate::json::member(members, name)),
                None => {
                    record.doc().and_then(Doc::members).and_then(|m| fast.eval(&|name| crate::json::member(m, name).map(RawValue::get)))
                }
            };
            if let Some(answer) = answer {
                return Ok(answer);
            }
        }
        self.holds(record.input())
    }

    /// Evaluates a condition: true or false, or why it is neither.
    pub fn holds(&self, input: &Input) -> Result<bool, String> {
        match self.eval(input)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("`{}` gave {}, not true or false", self.source, shown(&other))),
        }
    }
}

/// A record several expressions are tested on: read once, as far as they need.
pub struct Record<'a> {
    record: RecordRef<'a>,
    needs: &'a Needs,
    scanned: std::cell::OnceCell<Option<Vec<(&'a str, &'a str)>>>,
    doc: std::cell::OnceCell<Option<Doc<'a>>>,
    input: std::cell::OnceCell<Input>,
}

impl<'a> Record<'a> {
    /// `record`, for expressions that together need `needs` (see [`Needs::union`]).
    pub fn new(record: RecordRef<'a>, needs: &'a Needs) -> Record<'a> {
        Record { record, needs, scanned: std::cell::OnceCell::new(), doc: std::cell::OnceCell::new(), input: std::cell::OnceCell::new() }
    }

    /// The top-level members by the quick scan, when it answers for this record.
    fn scanned(&self) -> Option<&[(&'a str, &'a str)]> {
        self.scanned
            .get_or_init(|| {
                let text = std::str::from_utf8(self.record.value).ok()?;
                match &self.needs.fields {
                    // Only the members read are kept (a few names: compared in turn, lengths first).
                    Some(fields) if fields.len() <= 8 => {
                        scan::object_members_where(text, fields.len(), |name| fields.iter().any(|f| f == name))
                    }
                    Some(fields) => scan::object_members_where(text, fields.len(), |name| fields.contains(name)),
                    None => scan::object_members(text),
                }
            })
            .as_deref()
    }

    fn doc(&self) -> Option<&Doc<'a>> {
        self.doc.get_or_init(|| Doc::parse(self.record.value).ok()).as_ref()
    }

    fn input(&self) -> &Input {
        self.input.get_or_init(|| Input::read(self.needs, self.record.value, self.record.key, self.record.headers()))
    }
}

/// A record as expressions see it, converted once for every expression evaluated on it.
pub struct Input {
    ctx: Context<'static, 'static>,
}

impl Input {
    /// From the record's value (JSON text; text that is not JSON is `record` as a string),
    /// key and headers.
    pub fn new<'a>(value: &[u8], key: Option<&[u8]>, headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Input {
        Input::read(&Needs { fields: None, key: true, headers: true, unknown: None }, value, key, headers)
    }

    /// As [`Input::new`], converting only what `needs` names: of an object record only the
    /// members read (the others are not even parsed into values), and the key and headers
    /// only when read.
    pub fn read<'a>(needs: &Needs, value: &[u8], key: Option<&[u8]>, headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Input {
        let text = || Value::String(Arc::new(String::from_utf8_lossy(value).into_owned()));
        let record = match &needs.fields {
            Some(fields) => match crate::json::Doc::parse(value) {
                Ok(doc) => match doc.members() {
                    Some(members) => {
                        let mut map: HashMap<String, Value> = HashMap::with_capacity(fields.len());
                        // The last of repeated keys wins, as when the record is read whole.
                        for (name, raw) in members.iter().filter(|(name, _)| fields.contains(name.as_ref())) {
                            let v = serde_json::from_str::<serde_json::Value>(raw.get()).map(|v| from_json(&v)).unwrap_or(Value::Null);
                            map.insert(name.to_string(), v);
                        }
                        Value::from(map)
                    }
                    None => serde_json::from_str::<serde_json::Value>(doc.text()).map(|v| from_json(&v)).unwrap_or_else(|_| text()),
                },
                Err(_) => text(),
            },
            None => match serde_json::from_slice::<serde_json::Value>(value) {
                Ok(v) => from_json(&v),
                Err(_) => text(),
            },
        };
        let key = match key {
            Some(k) if needs.key => Value::String(Arc::new(String::from_utf8_lossy(k).into_owned())),
            _ => Value::String(Arc::default()),
        };
        let headers: HashMap<String, Value> = if needs.headers {
            headers.into_iter().map(|(k, v)| (k.to_owned(), Value::String(Arc::new(String::from_utf8_lossy(v).into_owned())))).collect()
        } else {
            HashMap::new()
        };
        Input::of(record, key, Value::from(headers))
    }

    fn of(record: Value, key: Value, headers: Value) -> Input {
        let mut ctx = Context::with_env(env());
        ctx.add_variable_from_value("record", record);
        ctx.add_variable_from_value("key", key);
        ctx.add_variable_from_value("headers", headers);
        Input { ctx }
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
    fn only_what_expressions_read_is_converted() {
        let needs = |e: &str| Expr::compile(e).unwrap().needs().clone();
        let n = needs(r#"record.a.b == 1 && has(record.c) && record.d.startsWith("x")"#);
        assert_eq!(n.fields, Some(BTreeSet::from(["a".into(), "c".into(), "d".into()])));
        assert!(!n.key && !n.headers);
        assert_eq!(needs("size(record) > 2").fields, None);
        assert_eq!(needs(r#"record["a"] == 1"#).fields, None);
        assert!(needs(r#"key == "k" && headers["h"] == "v""#).key);
        assert!(needs(r#"[1, 2].exists(x, x == record.n)"#).fields.is_some_and(|f| f.contains("n")));
        // The same answers as with the whole record read.
        let value = br#"{"a":{"b":1},"c":null,"d":"xyz","e":[1,2,3],"a":{"b":1}}"#;
        for e in [r#"record.a.b == 1 && has(record.c) && record.d.startsWith("x")"#, "has(record.zz)"] {
            let expr = Expr::compile(e).unwrap();
            assert_eq!(expr.holds(&Input::read(expr.needs(), value, None, [])), expr.holds(&Input::new(value, None, [])), "{e}");
        }
    }

    #[test]
    fn the_direct_path_answers_as_cel_does() {
        let exprs = [
            r#"record.type == "order""#,
            r#"record.type != "order""#,
            r#""order" == record.type"#,
            "record.n > 2",
            "2 < record.n",
            "record.n <= 2 || record.n >= 10",
            "record.x > 1.5",
            "record.ok == true",
            r#"record.type in ["order", "refund"]"#,
            r#"record.type.startsWith("or") && !record.type.endsWith("x")"#,
            r#"record.type.contains("rde")"#,
            "has(record.n) && record.n == 3",
            r#"record.name < "m""#,
        ];
        let records = [
            r#"{"type":"order","n":3,"x":2.5,"ok":true,"name":"ann"}"#,
            r#"{"type":"refund","n":10,"x":1,"ok":false,"name":"zed"}"#,
            r#"{"type":"ord\u0065r","n":"3","x":"2","name":"m\u00e9"}"#,
            r#"{"n":null,"type":7,"name":["a"]}"#,
            r#"{"type":"x","n":2,"type":"order","n":99999999999999999999}"#,
            r#"[1,2]"#,
            "not json",
        ];
        for e in exprs {
            let expr = Expr::compile(e).unwrap();
            assert!(expr.fast.is_some(), "{e} has a direct path");
            for r in records {
                let mut batch = crate::BatchBuf::new();
                batch.push(0, crate::Head::default(), r.as_bytes());
                let batch = batch.as_ref();
                let needs = expr.needs().clone();
                let direct = expr.test(&Record::new(batch.get(0), &needs));
                let cel = expr.holds(&Input::new(r.as_bytes(), None, []));
                assert_eq!(direct.is_ok(), cel.is_ok(), "{e} on {r}: {direct:?} against {cel:?}");
                if let (Ok(d), Ok(c)) = (&direct, &cel) {
                    assert_eq!(d, c, "{e} on {r}");
                }
            }
        }
        assert!(Expr::compile("size(record.tags) > 1").unwrap().fast.is_none());
    }

    #[test]
    fn certain_type_errors_are_found_before_any_record_and_say_where() {
        let e = Expr::compile(r#"record.a + 1 > "x" "#).unwrap_err();
        assert!(e.message.contains("cannot order a number against a string"), "{e}");
        assert_eq!(e.column, 16, "{e}");
        let e = Expr::compile(r#"record.ok && 3"#).unwrap_err();
        assert!(e.message.contains("`&&` takes true or false, and this is a number"), "{e}");
        assert_eq!(e.column, 14, "{e}");
        assert!(Expr::compile(r#""a" + 1"#).unwrap_err().message.contains("cannot add a number to a string"));
        assert!(Expr::compile(r#"(1).startsWith("a")"#).unwrap_err().message.contains("method of strings"));
        let e = Expr::condition("record.amount * 100").unwrap_err();
        assert!(e.message.contains("a condition gives true or false, and this gives a number"), "{e}");
        for fine in ["record.a > 1", "record.a + record.b", "has(record.x) || record.y", r#"record.s + "x" == "yx""#] {
            assert!(Expr::condition(fine).is_ok(), "{fine}");
        }
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

    /// `cargo test --release -p weir-plugin --features expr --lib expr::tests::cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost() {
        let value = br#"{"eventType":"page_view","userId":"user-123","timestamp":"2024-01-01T12:00:00.000Z","screen":"main_post","eventId":"0f8fad5b-d9cb-469f-a165-70867728950e","receivedAt":"2024-01-01T12:00:00.000Z","clientIp":"127.0.0.1","userAgent":"weir-bench","host":"bench","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        let exprs: Vec<Expr> =
            [r#"record.eventType == "like_clicked""#, r#"record.eventType == "page_view""#, r#"record.eventType.startsWith("song")"#]
                .iter()
                .map(|e| Expr::compile(e).unwrap())
                .collect();
        let n = 200_000;
        let started = std::time::Instant::now();
        let mut hits = 0;
        let needs = exprs.iter().fold(Needs::nothing(), |n, e| n.union(e.needs()));
        assert_eq!(needs.fields, Some(BTreeSet::from(["eventType".to_owned()])));
        for _ in 0..n {
            let input = Input::read(&needs, value, None, [("http.client_ip", b"127.0.0.1".as_slice())]);
            hits += exprs.iter().filter(|e| e.holds(&input) == Ok(true)).count();
        }
        let per = started.elapsed().as_nanos() as f64 / n as f64;
        println!("{per:.0} ns per record (read once, three conditions); {hits} hits");
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(Input::read(&needs, value, None, [("http.client_ip", b"127.0.0.1".as_slice())]));
        }
        println!("{:.0} ns of it reading the record", started.elapsed().as_nanos() as f64 / n as f64);
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(crate::json::Doc::parse(value).unwrap());
        }
        println!("{:.0} ns of that parsing its members", started.elapsed().as_nanos() as f64 / n as f64);
        let text = std::str::from_utf8(value).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(scan::object_members(std::hint::black_box(text)).unwrap());
        }
        println!("{:.0} ns to scan its members instead", started.elapsed().as_nanos() as f64 / n as f64);
        let mut batch = crate::BatchBuf::new();
        batch.push(0, crate::Head::default(), value);
        let batch = batch.as_ref();
        let started = std::time::Instant::now();
        let mut hits = 0;
        for _ in 0..n {
            let record = Record::new(batch.get(0), &needs);
            hits += exprs.iter().filter(|e| e.test(&record) == Ok(true)).count();
        }
        let per = started.elapsed().as_nanos() as f64 / n as f64;
        println!("{per:.0} ns per record with the direct path (the three conditions); {hits} hits");
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
