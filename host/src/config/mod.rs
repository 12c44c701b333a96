//! Host config (figment) and pipeline files (YAML with `${VAR}` interpolation).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{HostError, Located};
use crate::yamlpos::Positions;

mod interpolate;
pub use interpolate::{interpolate, interpolate_keeping_unset};

/// The host's own settings. Sources, lowest first: defaults, `weir.yaml` (or `--config`),
/// `WEIR_*` environment variables, command-line flags.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Directory holding the pipeline files (one pipeline per `.yaml`/`.yml` file).
    #[serde(default = "default_pipelines")]
    pub pipelines: PathBuf,
    /// Directories searched for plugin libraries; empty means the directory of the `weir`
    /// executable. In `WEIR_PLUGINS` also as one string, `:`-separated like `PATH`.
    #[serde(default, deserialize_with = "list::<PathBuf, ':', _>")]
    pub plugins: Vec<PathBuf>,
    /// Address of the admin API (`/health`, `/pipelines`, `/metrics`). An address beyond
    /// loopback (`0.0.0.0`, `::`, a LAN address) needs an admin token.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// A file holding the admin API's bearer token, read once at start (a trailing newline
    /// is ignored). With a token, every admin call but `/health` needs `Authorization:
    /// Bearer <token>`. `WEIR_ADMIN_TOKEN` gives the token itself instead.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// `Host` names the admin API answers to besides `localhost` and IP addresses (for
    /// example `weir.internal`, or `weir.internal:8083` for one port); others get 421.
    /// In `WEIR_ADMIN_HOSTS` also as one string, `,`-separated.
    #[serde(default, deserialize_with = "list::<String, ',', _>")]
    pub admin_hosts: Vec<String>,
    /// Web origins whose pages may call the admin API (`https://ops.example.com`, or `*` for
    /// any); a request from another page gets 403.
    /// In `WEIR_ADMIN_ALLOWED_ORIGINS` also as one string, `,`-separated.
    #[serde(default, deserialize_with = "list::<String, ',', _>")]
    pub admin_allowed_origins: Vec<String>,
    /// Serve the admin API over HTTPS only, with this certificate (reloaded when its files
    /// change) and, with `client_ca`, mutual TLS. `WEIR_ADMIN_TLS_CERT`,
    /// `WEIR_ADMIN_TLS_KEY` and `WEIR_ADMIN_TLS_CLIENT_CA` set its fields. The `weir` CLI
    /// verbs then trust `cert` (or `WEIR_ADMIN_CA`) and, for mutual TLS, present
    /// `WEIR_ADMIN_CLIENT_CERT` and `WEIR_ADMIN_CLIENT_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_tls: Option<weir_plugin::tls::TlsConfig>,
    /// Log filter, in `RUST_LOG` syntax (for example `info` or `weir=debug`).
    #[serde(default = "default_log")]
    pub log: String,
    /// How long shutdown (and a reload replacing a pipeline) waits for in-flight records to
    /// drain, in seconds.
    #[serde(default = "default_drain")]
    pub drain_timeout_secs: u64,
    /// Reload by itself when pipeline files change (SIGHUP and `POST /reload` always work).
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Host traces over OTLP (off by default). `WEIR_TRACES_<FIELD>` variables set its
    /// fields, e.g. `WEIR_TRACES_ENABLED=true`.
    #[serde(default)]
    pub traces: crate::telemetry::TracesConfig,
}

fn default_watch() -> bool {
    true
}

fn default_pipelines() -> PathBuf {
    PathBuf::from("pipelines")
}
fn default_admin() -> String {
    "127.0.0.1:8083".into()
}
fn default_log() -> String {
    "info".into()
}
fn default_drain() -> u64 {
    30
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            pipelines: default_pipelines(),
            plugins: Vec::new(),
            admin: default_admin(),
            admin_token_file: None,
            admin_hosts: Vec::new(),
            admin_allowed_origins: Vec::new(),
            admin_tls: None,
            log: default_log(),
            drain_timeout_secs: default_drain(),
            watch: default_watch(),
            traces: Default::default(),
        }
    }
}

/// Keys the environment may set, as `WEIR_<KEY>`.
/// A list, or (as an environment variable gives it) one string of items separated by `SEP`.
fn list<'de, T: From<String> + Deserialize<'de>, const SEP: char, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(String),
    }
    Ok(match OneOrMany::<T>::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s.split(SEP).map(str::trim).filter(|p| !p.is_empty()).map(|p| T::from(p.to_owned())).collect(),
    })
}

const ENV_KEYS: &[&str] =
    &["pipelines", "plugins", "admin", "admin_token_file", "admin_hosts", "admin_allowed_origins", "log", "drain_timeout_secs", "watch"];

impl HostConfig {
    /// Merges defaults < the YAML file < `WEIR_*` environment < `overrides` (flags).
    pub fn load(file: Option<&Path>, overrides: &serde_json::Value) -> Result<Self, HostError> {
        let explicit = file.is_some();
        let file = file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("weir.yaml"));
        if explicit && !file.exists() {
            return Err(HostError::Usage(format!("config file {} does not exist", file.display())));
        }
        Figment::from(Serialized::defaults(HostConfig::default()))
            .merge(Yaml::file(&file))
            .merge(Env::prefixed("WEIR_").only(ENV_KEYS))
            .merge(Env::prefixed("WEIR_TRACES_").map(|k| format!("traces.{k}").into()))
            .merge(Env::prefixed("WEIR_ADMIN_TLS_").map(|k| format!("admin_tls.{k}").into()))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| HostError::Usage(format!("host config: {e}")))
    }

    /// The plugin directories, with the default filled in.
    pub fn plugin_dirs(&self) -> Vec<PathBuf> {
        if !self.plugins.is_empty() {
            return self.plugins.clone();
        }
        let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
        exe_dir.into_iter().collect()
    }
}

/// One pipeline file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The pipeline's name; defaults to the file name without its extension.
    #[serde(default)]
    pub name: Option<String>,
    /// What the pipeline is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Where records come from.
    pub source: StageSpec,
    /// Applied in order to every batch.
    #[serde(default)]
    pub transforms: Vec<StageSpec>,
    /// Every batch goes to each of these.
    pub sinks: Vec<StageSpec>,
    /// Where records go that a transform rejected or a sink refused or failed for good: any
    /// sink plugin (file, Kafka topic, PostgreSQL table). Each arrives as a JSON envelope
    /// `{"record", "stage", "outcome", "reason", "time", "key", "headers"}` holding the record
    /// as the refusing stage received it. The stage is called `dead_letter` unless named.
    #[serde(default)]
    pub dead_letter: Option<StageSpec>,
    /// Queue sizes and acknowledgement.
    #[serde(default)]
    pub settings: PipelineSettings,
}

/// One stage: a plugin and its config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Name of the stage in metrics, logs and the admin API; defaults to the plugin name.
    #[serde(default)]
    pub name: Option<String>,
    /// The plugin, by the name it exports (see `weir plugins`).
    pub plugin: String,
    /// The plugin's config; checked against the schema the plugin exports.
    #[serde(default = "empty_object")]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub config: serde_json::Value,
    /// Sinks only: run after the named sink, on the records it handled instead of on the
    /// pipeline's batches (for example metrics of what was stored). Each record carries the
    /// headers `weir.outcome` (`delivered` or `refused`) and, when refused, `weir.reason`.
    #[serde(default)]
    pub after: Option<String>,
    /// With `after`: which records this sink gets.
    #[serde(default)]
    pub takes: Takes,
    /// Sinks only: a CEL condition over `record`, `key` and `headers`; the sink gets only the
    /// records for which it holds (`record.type == "error"`). A record no sink takes is
    /// handled as `settings.unrouted` says; one the condition cannot be evaluated on is
    /// rejected with the reason.
    #[serde(default)]
    pub when: Option<String>,
    /// Sinks only: how a batch the sink asks to retry is retried (by default with backoff
    /// from 50 ms to 5 s, until it is delivered or the pipeline stops).
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Sinks only: how much may wait in front of the sink, and what happens when it is full.
    #[serde(default)]
    pub buffer: Option<BufferSpec>,
    /// Sinks only: how many batches the sink delivers at once, each through an instance of
    /// its own (1 to 64; default 1). With more than one, a later batch may be written before
    /// an earlier one: for sinks whose writes do not depend on order (idempotent object
    /// names, conditional writes, inserts). Sources still commit only past batches every
    /// sink has. Not with a disk buffer, which is read in order.
    #[serde(default)]
    pub workers: Option<NonZeroUsize>,
    /// Whether the stage runs: `false` leaves it out of the pipeline, so a switch in the
    /// environment can turn a sink or transform off without editing the file (`enabled:
    /// ${KAFKA_ENABLED:-true}`). `true`/`false`, also `1`/`0`, `yes`/`no`, `on`/`off`.
    #[serde(default = "enabled_by_default", deserialize_with = "switch")]
    #[schemars(with = "Switch")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// A boolean a variable may spell as a word or a digit.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Switch {
    /// `true` or `false`.
    Bool(bool),
    /// `0` or `1`.
    Number(u8),
    /// `true`, `false`, `yes`, `no`, `on`, `off`, `1`, `0` (any case).
    Word(String),
}

fn switch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    use serde::de::Error;
    match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::Bool(b) => Ok(b),
        serde_yaml::Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        serde_yaml::Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        serde_yaml::Value::String(w) => match w.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" | "" => Ok(false),
            other => Err(D::Error::custom(format!("enabled: {other:?} is not a switch; write true or false"))),
        },
        other => Err(D::Error::custom(format!("enabled: {other:?} is not a switch; write true or false"))),
    }
}

/// The memory buffer in front of a sink, bounded by records and bytes (and always by the
/// pipeline's `sink_queue_batches`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferSpec {
    /// Most records waiting.
    #[serde(default)]
    pub max_events: Option<NonZeroUsize>,
    /// Most bytes of records waiting.
    #[serde(default)]
    pub max_bytes: Option<NonZeroUsize>,
    /// `block` (default): the pipeline waits, pushing back on its source; `drop_newest`: the
    /// batch that does not fit is not given to this sink (counted in
    /// `weir_stage_records_dropped_total`; its records are acknowledged as dropped).
    #[serde(default)]
    pub when_full: WhenFull,
    /// A directory (relative to the pipeline file) for a disk buffer: batches are written
    /// there (checksummed, synced) and count as delivered to this sink once on disk; the sink
    /// reads them in order, also after a restart. `max_bytes` (default 1 GiB) bounds the
    /// disk used; `max_events` does not apply.
    #[serde(default)]
    pub disk: Option<PathBuf>,
}

/// What a full sink buffer does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room (backpressure).
    #[default]
    Block,
    /// Drop the newest batch for this sink, counted.
    DropNewest,
}

/// Retries of a sink: exponential backoff with jitter, for at most a duration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// First wait, in milliseconds; each retry doubles it.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    /// Longest wait between two tries, in milliseconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// Give up on a batch after retrying it this long (`30s`, `5m`); its records then count
    /// as failed and go to the dead-letter sink. Unset: retry until delivered.
    #[serde(default)]
    pub max_duration: Option<String>,
}

fn default_initial_backoff() -> u64 {
    50
}
fn default_max_backoff() -> u64 {
    5000
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec { initial_backoff_ms: default_initial_backoff(), max_backoff_ms: default_max_backoff(), max_duration: None }
    }
}

impl RetrySpec {
    /// The longest a batch is retried, if bounded.
    pub fn max_duration(&self) -> Result<Option<std::time::Duration>, String> {
        self.max_duration
            .as_deref()
            .map(|d| humantime::parse_duration(d).map_err(|e| format!("max_duration {d:?} is not a duration such as 30s or 5m: {e}")))
            .transpose()
    }
}

/// Where a stage sits in its pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The source.
    Source,
    /// The transform at this index of `transforms`.
    Transform(usize),
    /// The sink at this index of `sinks`.
    Sink(usize),
    /// The dead-letter sink.
    DeadLetter,
}

impl Role {
    /// Its JSON pointer in the pipeline file, for errors with a line and column.
    pub fn pointer(self) -> String {
        match self {
            Role::Source => "/source".into(),
            Role::Transform(i) => format!("/transforms/{i}"),
            Role::Sink(i) => format!("/sinks/{i}"),
            Role::DeadLetter => "/dead_letter".into(),
        }
    }

    /// The kind of plugin it runs.
    pub fn kind(self) -> weir_plugin::abi::Kind {
        match self {
            Role::Source => weir_plugin::abi::Kind::SOURCE,
            Role::Transform(_) => weir_plugin::abi::Kind::TRANSFORM,
            Role::Sink(_) | Role::DeadLetter => weir_plugin::abi::Kind::SINK,
        }
    }

    /// Whether it delivers records (a sink or the dead-letter sink): only those have a
    /// buffer and retries.
    pub fn delivers(self) -> bool {
        matches!(self, Role::Sink(_) | Role::DeadLetter)
    }
}

/// A stage's name: its `name`, else its plugin's (`dead_letter` for the dead-letter sink).
pub fn stage_name(role: Role, spec: &StageSpec) -> String {
    match (&spec.name, role) {
        (Some(n), _) => n.clone(),
        (None, Role::DeadLetter) => "dead_letter".into(),
        (None, _) => spec.plugin.clone(),
    }
}

/// Which records a sink with `after` gets from the sink it follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Takes {
    /// The records it delivered.
    #[default]
    Delivered,
    /// The records it rejected or failed.
    Refused,
    /// Both.
    All,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// When a source's batch counts as done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Acknowledge {
    /// When every sink has written the batch (an HTTP client's 200 means delivered).
    #[default]
    Delivered,
    /// When the batch is through the transforms and queued for every sink.
    Accepted,
}

/// Pipeline-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Batches that may wait between the source and the transforms; when full, the source
    /// is pushed back (the HTTP source answers 503).
    #[serde(default = "default_queue")]
    pub queue_batches: NonZeroUsize,
    /// Batches that may wait in front of each sink.
    #[serde(default = "default_queue")]
    pub sink_queue_batches: NonZeroUsize,
    /// When a source's batch counts as done.
    #[serde(default)]
    pub acknowledge: Acknowledge,
    /// Threads running the transforms, each with its own instances of them; batches reach
    /// the sinks in source order whatever the number, and a transform that needs source
    /// order (dedupe) takes them in turn. Unset: one per core.
    #[serde(default)]
    pub transform_workers: Option<NonZeroUsize>,
    /// What becomes of a record that no sink takes, when sinks have `when`: `dead_letter`
    /// (rejected with the reason "no route", into the dead letters when the pipeline has a
    /// `dead_letter` sink) or `drop` (counted as dropped).
    #[serde(default)]
    pub unrouted: Unrouted,
}

/// What becomes of a record that no sink's `when` takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unrouted {
    /// Rejected with the reason "no route" (into the dead letters when there is a
    /// `dead_letter` sink).
    #[default]
    DeadLetter,
    /// Dropped and counted (`weir_pipeline_records_total{outcome="dropped"}`).
    Drop,
}

fn default_queue() -> NonZeroUsize {
    NonZeroUsize::new(64).expect("non-zero")
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            queue_batches: default_queue(),
            sink_queue_batches: default_queue(),
            acknowledge: Acknowledge::default(),
            transform_workers: None,
            unrouted: Unrouted::default(),
        }
    }
}

/// A pipeline file read, interpolated and parsed, with what is needed to report errors.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    /// The file.
    pub path: PathBuf,
    /// The pipeline's name.
    pub name: String,
    /// The parsed spec (interpolated).
    pub spec: PipelineSpec,
    /// Interpolated text, for positions.
    pub text: String,
    /// Values that came from the environment, never to be shown.
    pub redactor: Redactor,
}

/// Replaces secrets in messages so they never show. Right after interpolation every value
/// taken from the environment counts as one; once the file is parsed, [`Redactor::classify`]
/// keeps only the values that are secrets (see there), so an address or a topic from
/// `${VAR}` shows in errors while a password does not; once the plugins are known,
/// [`Redactor::hide_marked`] adds every value of a field their schemas mark secret.
/// Clones share what they hide: the stages of a pipeline hold one, to mask their log lines.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Each variable substituted, with its value.
    found: Vec<(String, String)>,
    /// What to replace, with what; longest first, so a secret containing another is hidden whole.
    secrets: std::sync::Arc<std::sync::RwLock<Vec<(String, String)>>>,
}

/// Values shorter than this are not treated as secrets (they would mangle messages).
const MIN_SECRET_LEN: usize = 4;

/// Whether a field or variable name says it holds a secret (`password`, `sasl.password`,
/// `api_key`, `KAFKA_SASL_PASSWORD`, `Authorization`, `tls_key`, …).
pub fn secret_name(name: &str) -> bool {
    const PARTS: [&str; 11] =
        ["password", "passwd", "passphrase", "secret", "token", "credential", "auth", "apikey", "private", "cookie", "signature"];
    const WORDS: [&str; 5] = ["key", "pass", "pwd", "psk", "pgpass"];
    let n = name.to_ascii_lowercase();
    PARTS.iter().any(|p| n.contains(p)) || n.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| WORDS.contains(&w))
}

/// Field names with `key` in them that hold no secret.
const PLAIN_KEYS: [&str; 5] = ["key", "keys", "key_prefix", "unique_key", "key_field"];

/// The user and password of a URL's userinfo (`scheme://user:password@host`).
fn url_password(text: &str) -> Option<(&str, &str)> {
    let (_, rest) = text.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').filter(|(_, pw)| !pw.is_empty())
}

/// Every scalar in `doc` with the path of keys leading to it.
fn leaves(doc: &serde_yaml::Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    use serde_yaml::Value as V;
    match doc {
        V::Mapping(m) => {
            for (k, v) in m {
                path.push(match k {
                    V::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_owned(),
                });
                leaves(v, path, out);
                path.pop();
            }
        }
        V::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                leaves(v, path, out);
                path.pop();
            }
        }
        V::Tagged(t) => leaves(&t.value, path, out),
        V::String(s) => out.push((path.clone(), s.clone())),
        V::Number(n) => out.push((path.clone(), n.to_string())),
        V::Bool(b) => out.push((path.clone(), b.to_string())),
        V::Null => {}
    }
}

/// Whether a schema marks its value secret.
fn marked_secret(schema: &serde_json::Value) -> bool {
    schema.get("writeOnly") == Some(&serde_json::Value::Bool(true)) || schema.get("x-secret") == Some(&serde_json::Value::Bool(true))
}

/// Collects the text values of `value` that `schema` (within `root`, for `$ref`s) marks
/// secret: following properties, map values, items and `anyOf` / `oneOf` / `allOf`.
fn marked_values(value: &serde_json::Value, schema: &serde_json::Value, root: &serde_json::Value, depth: usize, out: &mut Vec<String>) {
    use serde_json::Value as V;
    if depth > 32 {
        return;
    }
    let schema = match schema.get("$ref").and_then(V::as_str).and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => root.pointer(pointer).unwrap_or(&V::Null),
        None => schema,
    };
    if marked_secret(schema) {
        texts(value, out);
        return;
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for alternative in schema.get(key).and_then(V::as_array).into_iter().flatten() {
            marked_values(value, alternative, root, depth + 1, out);
        }
    }
    match value {
        V::Object(fields) => {
            for (name, v) in fields {
                let sub = schema
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(sub) = sub {
                    marked_values(v, sub, root, depth + 1, out);
                }
            }
        }
        V::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for v in items {
                    marked_values(v, sub, root, depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// Every text (and number) in `value`.
fn texts(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| texts(v, out)),
        serde_json::Value::Object(fields) => fields.values().for_each(|v| texts(v, out)),
        _ => {}
    }
}

impl Redactor {
    /// Hides every secret in `text`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (secret, shown) in self.secrets.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), shown);
            }
        }
        out
    }

    /// Hides every text value of `config` (a stage's config) in a field that `schema` (its
    /// plugin's config schema) marks secret with `writeOnly: true` or `x-secret: true`,
    /// whether written out or substituted.
    pub fn hide_marked(&self, config: &serde_json::Value, schema: &serde_json::Value) {
        let mut found = Vec::new();
        marked_values(config, schema, schema, 0, &mut found);
        for value in found {
            self.hide(&value, "***");
        }
    }

    fn add(&mut self, var: &str, value: &str) {
        self.found.push((var.to_owned(), value.to_owned()));
        self.hide(value, "***");
    }

    fn hide(&self, secret: &str, shown: &str) {
        let mut secrets = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        if secret.len() >= MIN_SECRET_LEN && !secrets.iter().any(|(s, _)| s == secret) {
            secrets.push((secret.to_owned(), shown.to_owned()));
            secrets.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        }
    }

    /// Keeps as secrets, given the parsed file: the password of every URL (`user:***@`),
    /// written out or substituted; and each substituted value whose variable has a secret's
    /// name, or that lands in a field with a secret's name ([`secret_name`]), or that cannot
    /// be found in any field (it is then kept hidden, to be safe). Other substituted values
    /// (addresses, topics, paths) show.
    pub fn classify(&mut self, doc: &serde_yaml::Value) {
        let mut all = Vec::new();
        leaves(doc, &mut Vec::new(), &mut all);
        self.secrets.write().unwrap_or_else(|p| p.into_inner()).clear();
        for (_, text) in &all {
            if let Some((user, pw)) = url_password(text) {
                self.hide(&format!("://{user}:{pw}@"), &format!("://{user}:***@"));
                self.hide(pw, "***");
            }
        }
        for (var, value) in self.found.clone() {
            let mut holders = all.iter().filter(|(_, text)| text.contains(value.as_str())).peekable();
            let secret = secret_name(&var)
                || holders.peek().is_none()
                || holders.any(|(path, _)| path.iter().any(|seg| secret_name(seg) && !PLAIN_KEYS.contains(&seg.as_str())));
            if secret {
                self.hide(&value, "***");
            }
        }
    }
}

impl PipelineFile {
    /// Reads and parses one pipeline file; no plugin is consulted.
    pub fn load(path: &Path) -> Result<Self, HostError> {
        let raw = std::fs::read_to_string(path).map_err(|e| Located::new(path, format!("cannot read the file: {e}")))?;
        Self::parse(path, &raw, |v| std::env::var(v).ok())
    }

    /// Parses pipeline text as if read from `path`.
    pub fn parse(path: &Path, raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, HostError> {
        let (text, mut redactor) = interpolate(raw, path, lookup)?;
        if let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) {
            redactor.classify(&doc);
        }
        let spec: PipelineSpec = serde_yaml::from_str(&text).map_err(|e| {
            let mut err = Located::new(path, redactor.redact(&strip_location(&e.to_string())));
            if let Some(loc) = e.location() {
                err = err.at(loc.line(), loc.column());
            }
            err
        })?;
        let name = match &spec.name {
            Some(n) => n.clone(),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into()),
        };
        let file = PipelineFile { path: path.to_path_buf(), name, spec, text, redactor };
        file.check_structure()?;
        Ok(file)
    }

    fn check_structure(&self) -> Result<(), HostError> {
        if self.spec.sinks.is_empty() {
            return Err(self.error_at("/sinks", "a pipeline needs at least one sink"));
        }
        if !self.spec.source.enabled {
            return Err(self.error_at("/source/enabled", "the source cannot be turned off; remove the pipeline file instead"));
        }
        if !valid_name(&self.name) {
            return Err(self.error_at("/name", format!("pipeline name {:?} may only use letters, digits, `-`, `_` and `.`", self.name)));
        }
        let mut seen = std::collections::HashSet::new();
        for (role, stage) in self.stages() {
            let pointer = role.pointer();
            let name = stage_name(role, stage);
            if !valid_name(&name) {
                return Err(self
                    .error_at(&format!("{pointer}/name"), format!("stage name {name:?} may only use letters, digits, `-`, `_` and `.`")));
            }
            if !seen.insert(name.clone()) {
                return Err(self.error_at(&pointer, format!("two stages are called {name:?}; give one a `name:`")));
            }
            if !stage.config.is_object() {
                return Err(self.error_at(&format!("{pointer}/config"), "`config` must be a mapping"));
            }
            if stage.buffer.is_some() && !role.delivers() {
                return Err(self.error_at(&format!("{pointer}/buffer"), "only sinks have a buffer; remove `buffer` here"));
            }
            if let Some(retry) = &stage.retry {
                if !role.delivers() {
                    return Err(self.error_at(&format!("{pointer}/retry"), "only sinks retry; remove `retry` here"));
                }
                if let Err(e) = retry.max_duration() {
                    return Err(self.error_at(&format!("{pointer}/retry/max_duration"), e));
                }
                if retry.initial_backoff_ms == 0 || retry.max_backoff_ms < retry.initial_backoff_ms {
                    return Err(
                        self.error_at(&format!("{pointer}/retry"), "initial_backoff_ms must be at least 1 and at most max_backoff_ms")
                    );
                }
            }
            if let Some(workers) = stage.workers {
                let at = format!("{pointer}/workers");
                if !role.delivers() {
                    let hint = if matches!(role, Role::Transform(_)) { "; transforms run on `settings.transform_workers`" } else { "" };
                    return Err(self.error_at(&at, format!("only sinks have workers; remove `workers` here{hint}")));
                }
                if workers.get() > MAX_SINK_WORKERS {
                    return Err(self.error_at(&at, format!("at most {MAX_SINK_WORKERS} workers per sink, not {workers}")));
                }
                if workers.get() > 1 && stage.buffer.as_ref().is_some_and(|b| b.disk.is_some()) {
                    return Err(self.error_at(
                        &at,
                        "a sink with a disk buffer delivers its batches in order, one at a time; remove `workers` or `buffer.disk`",
                    ));
                }
            }
            if let Some(after) = &stage.after {
                if !matches!(role, Role::Sink(_)) {
                    return Err(self.error_at(&format!("{pointer}/after"), "only sinks may have `after`"));
                }
                let target = self.spec.sinks.iter().find(|s| s.name.as_ref().unwrap_or(&s.plugin) == after);
                match target {
                    None => return Err(self.error_at(&format!("{pointer}/after"), format!("no sink is called {after:?}"))),
                    Some(t) if !t.enabled => {
                        return Err(self.error_at(
                            &format!("{pointer}/after"),
                            format!("sink {after:?} is turned off (enabled: false); turn this one off too, or drop `after`"),
                        ))
                    }
                    Some(t) if t.after.is_some() => {
                        return Err(self.error_at(
                            &format!("{pointer}/after"),
                            format!("sink {after:?} itself runs after another sink; follow the first one"),
                        ))
                    }
                    Some(_) => {}
                }
            }
            if let Some(when) = &stage.when {
                let at = format!("{pointer}/when");
                if !matches!(role, Role::Sink(_)) {
                    return Err(self.error_at(&at, "only sinks may have `when` (to drop records, use the `filter` transform)"));
                }
                if stage.after.is_some() {
                    return Err(self.error_at(&at, "a sink with `after` takes what its sink handled; give `when` to that sink instead"));
                }
                if let Err(e) = weir_plugin::expr::Expr::condition(when) {
                    return Err(self.error_at(&at, format!("{} (column {} of the condition)", e.message, e.column)));
                }
            }
        }
        Ok(())
    }

    /// A hash of the interpolated text: equal hashes mean nothing to restart.
    pub fn hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.text.hash(&mut h);
        h.finish()
    }

    /// Every stage that runs (not turned off with `enabled: false`) with its role, in
    /// pipeline order.
    pub fn stages(&self) -> Vec<(Role, &StageSpec)> {
        let mut v = vec![(Role::Source, &self.spec.source)];
        v.extend(self.spec.transforms.iter().enumerate().map(|(i, s)| (Role::Transform(i), s)));
        v.extend(self.spec.sinks.iter().enumerate().map(|(i, s)| (Role::Sink(i), s)));
        v.extend(self.spec.dead_letter.iter().map(|s| (Role::DeadLetter, s)));
        v.retain(|(_, s)| s.enabled);
        v
    }

    /// The sinks that run, in order.
    pub fn sinks(&self) -> impl Iterator<Item = &StageSpec> {
        self.spec.sinks.iter().filter(|s| s.enabled)
    }

    /// An error about the node at `pointer`, with its line and column.
    pub fn error_at(&self, pointer: &str, message: impl Into<String>) -> HostError {
        let mut err = Located::new(&self.path, self.redactor.redact(&message.into())).field(pointer);
        if let Some((line, col)) = Positions::of(&self.text).find(pointer) {
            err = err.at(line, col);
        }
        err.into()
    }
}

/// The most instances a sink may deliver through at once (`workers`).
pub const MAX_SINK_WORKERS: usize = 64;

/// Whether `name` may name a pipeline or stage: letters, digits, `-`, `_` and `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// serde_yaml puts " at line L column C" in its messages; the position is reported separately.
fn strip_location(message: &str) -> String {
    let Some(start) = message.find(" at line ") else {
        return message.to_owned();
    };
    let rest = &message[start + " at line ".len()..];
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let line_end = digits(rest);
    let Some(after_col) = rest[line_end..].strip_prefix(" column ") else {
        return message.to_owned();
    };
    let col_end = digits(after_col);
    format!("{}{}", &message[..start], &after_col[col_end..])
}

/// Pipeline files in `dir` (`.yaml` and `.yml`), sorted.
pub fn pipeline_files(dir: &Path) -> Result<Vec<PathBuf>, HostError> {
    let entries = std::fs::read_dir(dir).map_err(|e| HostError::Usage(format!("cannot read pipeline directory {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        // Pipeline tests (`weir test`) live beside the pipelines.
        .filter(|p| !crate::testing::is_test_file(p))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn interpolation_with_defaults_escapes_and_redaction() {
        let (out, red) = interpolate("a: ${A}\nb: ${B:-dflt}\nc: $${LIT}\n", Path::new("p.yaml"), env(&[("A", "hunter22")])).unwrap();
        assert_eq!(out, "a: hunter22\nb: dflt\nc: ${LIT}\n");
        assert_eq!(red.redact("password hunter22 rejected"), "password *** rejected");
    }

    #[test]
    fn only_secrets_are_masked() {
        let vars = env(&[
            ("LISTEN", "10.1.2.3:3001"),
            ("TOPIC", "user_events"),
            ("KAFKA_SASL_PASSWORD", "hunter22"),
            ("PLAIN", "opensesame"),
            ("DATABASE_URL", "postgres://weir:pgpw-secret@db:5432/test"),
            ("WHOLE", "s3cr3t-value"),
        ]);
        let text = "source: {plugin: http, config: {listen: \"${LISTEN}\"}}\nsinks:\n  - plugin: kafka\n    config:\n      topic: ${TOPIC}\n      librdkafka: {sasl.password: \"${PLAIN}\", sasl.username: \"${KAFKA_SASL_PASSWORD}\"}\n  - plugin: postgres\n    config: {url: \"${DATABASE_URL}\", dsn: \"postgres://u:literal-pw@h/db\"}\n";
        let f = PipelineFile::parse(Path::new("p.yaml"), text, &vars).unwrap();
        let shown = f.redactor.redact("10.1.2.3:3001 user_events hunter22 opensesame postgres://weir:pgpw-secret@db:5432/test pgpw-secret postgres://u:literal-pw@h/db");
        assert_eq!(shown, "10.1.2.3:3001 user_events *** *** postgres://weir:***@db:5432/test *** postgres://u:***@h/db");
        // A value that lands in no field as it is (here inside a mapping key) stays hidden.
        let f = PipelineFile::parse(Path::new("p.yaml"), "source: {plugin: http, config: {${WHOLE}: 1}}\nsinks: [{plugin: file}]\n", &vars);
        assert_eq!(f.unwrap().redactor.redact("s3cr3t-value"), "***");
        assert!(secret_name("KAFKA_SASL_PASSWORD") && secret_name("x-api-key") && secret_name("Authorization") && secret_name("tls_key"));
        assert!(!secret_name("listen") && !secret_name("WEIR_HTTP_LISTEN") && !secret_name("brokers") && !secret_name("monkey"));
    }

    #[test]
    fn fields_a_schema_marks_secret_are_hidden_wherever_they_are() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "token": {"type": ["string", "null"], "writeOnly": true},
                "name": {"type": "string"},
                "auth": {"anyOf": [{"$ref": "#/$defs/Auth"}, {"type": "null"}]},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}, "x-secret": true},
            },
            "$defs": {"Auth": {"type": "object", "properties": {"keys": {"type": "array", "items": {"$ref": "#/$defs/Key"}}}},
                      "Key": {"type": "object", "properties": {"secret": {"type": "string", "writeOnly": true}, "id": {"type": "string"}}}},
        });
        let config = serde_json::json!({
            "token": "tok-1234", "name": "orders",
            "auth": {"keys": [{"secret": "key-5678", "id": "web"}, {"secret": "key-9012", "id": "app"}]},
            "headers": {"authorization": "Bearer abcd-efgh"},
        });
        let redactor = Redactor::default();
        redactor.hide_marked(&config, &schema);
        assert_eq!(redactor.redact("tok-1234 orders key-5678 web key-9012 app Bearer abcd-efgh"), "*** orders *** web *** app ***");
    }

    #[test]
    fn missing_variable_names_file_line_and_variable() {
        let err = interpolate("a: 1\nb: ${NOPE}\n", Path::new("p.yaml"), env(&[])).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:2:4:"), "{err}");
        assert!(err.contains("NOPE"), "{err}");
    }

    #[test]
    fn yaml_syntax_error_has_line_and_column() {
        let err =
            PipelineFile::parse(Path::new("p.yaml"), "source:\n  plugin: http\n  config: {a: [1,\n", env(&[])).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:"), "{err}");
        assert!(err.split(':').nth(1).unwrap().parse::<usize>().is_ok(), "{err}");
    }

    #[test]
    fn location_is_cut_from_the_middle_of_messages() {
        assert_eq!(strip_location("did not find ',' at line 5 column 1, while parsing"), "did not find ',', while parsing");
        assert_eq!(strip_location("unknown field `x` at line 2 column 3"), "unknown field `x`");
    }

    #[test]
    fn unknown_top_level_field_is_named() {
        let err = PipelineFile::parse(Path::new("p.yaml"), "source: {plugin: http}\nsinks: [{plugin: file}]\nsinkz: []\n", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `sinkz`"), "{err}");
        assert!(err.starts_with("p.yaml:3:"), "{err}");
    }

    #[test]
    fn duplicate_stage_names_are_refused_with_position() {
        let text = "source: {plugin: http}\nsinks:\n  - plugin: file\n  - plugin: file\n";
        let err = PipelineFile::parse(Path::new("p.yaml"), text, env(&[])).unwrap_err().to_string();
        assert!(err.contains("two stages are called \"file\""), "{err}");
        assert!(err.starts_with("p.yaml:4:"), "{err}");
    }

    #[test]
    fn after_must_name_a_first_level_sink() {
        let parse = |sinks: &str| PipelineFile::parse(Path::new("p.yaml"), &format!("source: {{plugin: http}}\nsinks:\n{sinks}"), env(&[]));
        assert!(parse("  - plugin: postgres\n  - {plugin: prometheus, after: postgres, takes: all}\n").is_ok());
        let err = parse("  - plugin: file\n  - {plugin: prometheus, after: nope}\n").unwrap_err().to_string();
        assert!(err.contains("p.yaml:4:") && err.contains("no sink is called \"nope\""), "{err}");
        let err = parse("  - plugin: a\n  - {plugin: b, after: a}\n  - {plugin: c, after: b}\n").unwrap_err().to_string();
        assert!(err.contains("itself runs after another sink"), "{err}");
        let err = PipelineFile::parse(Path::new("p.yaml"), "source: {plugin: http, after: x}\nsinks: [{plugin: file}]\n", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only sinks may have `after`"), "{err}");
    }

    #[test]
    fn retries_and_the_dead_letter_sink_are_checked() {
        let parse = |yaml: &str| PipelineFile::parse(Path::new("p.yaml"), yaml, env(&[]));
        let f =
            parse("source: {plugin: http}\nsinks: [{plugin: file, retry: {max_duration: 30s}}]\ndead_letter: {plugin: file}\n").unwrap();
        assert_eq!(f.stages().last().map(|(r, s)| stage_name(*r, s)), Some("dead_letter".to_owned()));
        let err =
            parse("source: {plugin: http}\ntransforms: [{plugin: enrich, retry: {}}]\nsinks: [{plugin: file}]\n").unwrap_err().to_string();
        assert!(err.contains("p.yaml:2:") && err.contains("only sinks retry"), "{err}");
        let err = parse("source: {plugin: http}\nsinks: [{plugin: file, retry: {max_duration: soon}}]\n").unwrap_err().to_string();
        assert!(err.contains("max_duration \"soon\" is not a duration"), "{err}");
        let err =
            parse("source: {plugin: http}\nsinks: [{plugin: file}]\ndead_letter: {plugin: file, after: file}\n").unwrap_err().to_string();
        assert!(err.contains("only sinks may have `after`"), "{err}");
    }

    #[test]
    fn every_variable_not_set_is_named_at_once_at_its_own_column() {
        let text = "a: ${SET}\nb: x-${ONE}-${TWO}\nc: ${ONE}\nd: ${THREE:-fine}\n";
        let err = interpolate(text, Path::new("p.yaml"), env(&[("SET", "v")])).unwrap_err().to_string();
        assert_eq!(
            err,
            "p.yaml:2:6: 2 environment variables are not set: ONE (line 2, column 6), TWO (line 2, column 13); set them or give \
             defaults with ${NAME:-default}"
        );
        let err = interpolate("a: ${SET} ${ONE}\n", Path::new("p.yaml"), env(&[("SET", "v")])).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:1:11: environment variable ONE is not set"), "{err}");
    }

    #[test]
    fn a_keeping_pass_leaves_nothing_for_the_next_pass_to_expand_twice() {
        let (kept, _) = interpolate_keeping_unset("a: $${LIT} ${V} ${UNSET}\n", Path::new("p.yaml"), env(&[("V", "x${Y}")])).unwrap();
        assert_eq!(kept, "a: $${LIT} x$${Y} ${UNSET}\n");
        let (out, _) = interpolate(&kept, Path::new("p.yaml"), env(&[("UNSET", "now")])).unwrap();
        assert_eq!(out, "a: ${LIT} x${Y} now\n");
    }

    #[test]
    fn workers_are_for_sinks_without_a_disk_buffer() {
        let parse = |yaml: &str| PipelineFile::parse(Path::new("p.yaml"), yaml, env(&[]));
        let f = parse("source: {plugin: http}\nsinks: [{plugin: file, workers: 8}]\ndead_letter: {plugin: file, workers: 2}\n").unwrap();
        assert_eq!(f.spec.sinks[0].workers.map(|n| n.get()), Some(8));
        let err =
            parse("source: {plugin: http}\ntransforms: [{plugin: enrich, workers: 2}]\nsinks: [{plugin: file}]\n").unwrap_err().to_string();
        assert!(err.contains("p.yaml:2:") && err.contains("only sinks have workers") && err.contains("transform_workers"), "{err}");
        let err = parse("source: {plugin: http}\nsinks: [{plugin: file, workers: 65}]\n").unwrap_err().to_string();
        assert!(err.contains("at most 64 workers per sink, not 65"), "{err}");
        let err = parse("source: {plugin: http}\nsinks: [{plugin: file, workers: 0}]\n").unwrap_err().to_string();
        assert!(err.contains("p.yaml:2:"), "{err}");
        let err = parse("source: {plugin: http}\nsinks:\n  - {plugin: file, workers: 2, buffer: {disk: buf}}\n").unwrap_err().to_string();
        assert!(err.contains("p.yaml:3:") && err.contains("remove `workers` or `buffer.disk`"), "{err}");
        assert!(parse("source: {plugin: http}\nsinks: [{plugin: file, workers: 1, buffer: {disk: buf}}]\n").is_ok());
    }

    #[test]
    fn lists_may_come_as_one_string_from_the_environment() {
        let c: HostConfig = serde_json::from_value(serde_json::json!({"plugins": "/a:/b", "admin_hosts": "x, y"})).unwrap();
        assert_eq!(c.plugins, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.admin_hosts, vec!["x".to_owned(), "y".to_owned()]);
        let c: HostConfig = serde_json::from_value(serde_json::json!({"plugins": ["/a:b"]})).unwrap();
        assert_eq!(c.plugins, vec![PathBuf::from("/a:b")], "a list is taken as it is");
    }

    #[test]
    fn stages_turned_off_are_left_out() {
        let text = "source: {plugin: http}\nsinks:\n  - plugin: kafka\n    enabled: ${KAFKA_ENABLED:-true}\n  - {plugin: file, enabled: \"yes\"}\n";
        let parse = |v: &str| PipelineFile::parse(Path::new("p.yaml"), text, env(&[("KAFKA_ENABLED", v)]));
        let on = parse("true").unwrap();
        assert_eq!(on.sinks().count(), 2);
        let off = parse("false").unwrap();
        assert_eq!(off.sinks().map(|s| s.plugin.as_str()).collect::<Vec<_>>(), vec!["file"]);
        assert_eq!(off.stages().iter().map(|(r, _)| r.pointer()).collect::<Vec<_>>(), vec!["/source", "/sinks/1"]);
        assert!(parse("0").unwrap().sinks().count() == 1);
        let err = parse("maybe").unwrap_err().to_string();
        assert!(err.contains("p.yaml:3:") && err.contains("is not a switch"), "{err}");
        let err = PipelineFile::parse(Path::new("p.yaml"), "source: {plugin: http, enabled: false}\nsinks: [{plugin: file}]\n", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the source cannot be turned off"), "{err}");
    }

    #[test]
    fn defaults_fill_in() {
        let f = PipelineFile::parse(Path::new("dir/ingest.yaml"), "source: {plugin: http}\nsinks: [{plugin: file}]\n", env(&[])).unwrap();
        assert_eq!(f.name, "ingest");
        assert_eq!(f.spec.settings.queue_batches.get(), 64);
        assert_eq!(f.spec.settings.acknowledge, Acknowledge::Delivered);
    }
}
