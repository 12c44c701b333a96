//! Field templates: text with `{{placeholder}}`s, or a static JSON value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_plugin::serde_json::Value;
use weir_plugin::RecordRef;

pub enum Var {
    ReceivedAt,
    Now,
    Hostname,
    Uuid,
    Pipeline,
    Header(String),
}

pub enum Part {
    Text(String),
    Var(Var),
}

/// A field's value: static, or rendered per record.
pub enum Template {
    Static(Value),
    Parts(Vec<Part>),
}

/// Values shared by every record of a batch, and the id generator.
pub struct Scope {
    hostname: String,
    pipeline: String,
    now: String,
    rng: u64,
    /// The last receive time written, by its milliseconds: the records of one request
    /// share it, so it is formatted once.
    received: (i64, String),
}

fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

impl Scope {
    pub fn new(pipeline: &str) -> Self {
        let seed =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) ^ (u64::from(std::process::id()) << 32);
        Scope { hostname: hostname(), pipeline: pipeline.to_owned(), now: String::new(), rng: seed, received: (i64::MIN, String::new()) }
    }

    /// Called once per batch: `{{now}}` is the batch's processing time.
    pub fn refresh_now(&mut self) {
        self.now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    }

    /// `ms` as RFC 3339 text.
    fn received_at(&mut self, ms: i64) -> &str {
        if self.received.0 != ms {
            self.received = (ms, rfc3339_ms(ms));
        }
        &self.received.1
    }

    fn next(&mut self) -> u64 {
        // splitmix64: fast, well distributed; ids need uniqueness, not secrecy.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A random (version 4) UUID.
    fn uuid(&mut self) -> String {
        let hi = (self.next() & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
        let lo = (self.next() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF, lo >> 48, lo & 0xFFFF_FFFF_FFFF)
    }
}

impl Template {
    /// Parses a config value: strings may hold placeholders, other values are static.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Value::String(s) = value else {
            return Ok(Template::Static(value.clone()));
        };
        let mut parts = Vec::new();
        let mut rest = s.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| format!("unclosed `{{{{` in {s:?}"))?;
            let name = after[..end].trim();
            let var = match name {
                "received_at" => Var::ReceivedAt,
                "now" => Var::Now,
                "hostname" => Var::Hostname,
                "uuid" => Var::Uuid,
                "pipeline" => Var::Pipeline,
                _ => match name.strip_prefix("header:") {
                    Some(h) if !h.is_empty() => Var::Header(h.to_owned()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{{{name}}}}}; use received_at, now, hostname, uuid, pipeline or header:NAME"
                        ))
                    }
                },
            };
            parts.push(Part::Var(var));
            rest = &after[end + 2..];
        }
        if parts.is_empty() {
            return Ok(Template::Static(value.clone()));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template::Parts(parts))
    }

    /// The value for one record, or `None` when a header it names is missing.
    pub fn render(&self, scope: &mut Scope, record: &RecordRef<'_>) -> Option<Value> {
        let parts = match self {
            Template::Static(v) => return Some(v.clone()),
            Template::Parts(p) => p,
        };
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(Var::ReceivedAt) => match record.timestamp_ms {
                    Some(ms) => out.push_str(scope.received_at(ms)),
                    None => out.push_str(&scope.now),
                },
                Part::Var(Var::Now) => out.push_str(&scope.now),
                Part::Var(Var::Hostname) => out.push_str(&scope.hostname),
                Part::Var(Var::Pipeline) => out.push_str(&scope.pipeline),
                Part::Var(Var::Uuid) => {
                    let id = scope.uuid();
                    out.push_str(&id)
                }
                Part::Var(Var::Header(h)) => out.push_str(std::str::from_utf8(record.header(h)?).ok()?),
            }
        }
        Some(Value::String(out))
    }
}
