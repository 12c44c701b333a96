//! The `dedupe` transform: drops a record whose key (the values at one or more JSON
//! pointers) was seen within a time window. Memory is bounded by `max_entries`.
//!
//! The window belongs to the pipeline's stage, not to one instance: when a reload replaces
//! the pipeline, the new version's `dedupe` stage (same pipeline and stage name) takes over
//! the window of the old one, which it shares while both run, so no duplicate slips
//! through a reload.
//!
//! With `store: redis://…` the window lives in Redis instead (one key per record key, with
//! the window as its expiry), so it survives restarts and is shared by every host whose
//! pipeline and stage have the same names.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use weir_plugin::serde_json::{self, Value};
use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, Output, PluginError, Transform};

/// Config of the `dedupe` transform.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// JSON pointers whose values together form the key (for example `["/eventId"]`).
    pub fields: Vec<String>,
    /// How long a key is remembered after it is first seen (`30s`, `10m`, `1h`).
    #[serde(default = "default_window")]
    pub window: String,
    /// Most keys remembered; when full the oldest is forgotten first (counted). In memory only.
    #[serde(default = "default_max_entries")]
    pub max_entries: NonZeroUsize,
    /// Where the window lives: `memory` (default; kept across reloads, not restarts) or a
    /// Redis URL such as `redis://127.0.0.1:6379/0` (kept across restarts, shared by hosts).
    #[serde(default = "default_store")]
    pub store: String,
    /// Redis only: prefix of the keys; defaults to `weir:dedupe:<pipeline>:<stage>:`.
    #[serde(default)]
    pub key_prefix: Option<String>,
}

fn default_store() -> String {
    "memory".into()
}

/// The window in Redis: `SET <prefix><digest> 1 NX PX <window>` per record, one round trip
/// per batch.
struct Redis {
    client: redis::Client,
    connection: Option<redis::Connection>,
    prefix: String,
    /// The URL without its password, for messages.
    shown: String,
}

impl Redis {
    /// For each digest, whether it was seen within `window`; remembers the new ones.
    fn check(&mut self, digests: &[Digest], window: Duration) -> Result<Vec<bool>, PluginError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for d in digests {
            pipe.cmd("SET").arg(format!("{}{d:032x}", self.prefix)).arg(1).arg("NX").arg("PX").arg(window.as_millis().max(1) as u64);
        }
        let connection = match self.connection.as_mut() {
            Some(c) => c,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(Duration::from_secs(2))
                    .map_err(|e| PluginError::retry(format!("dedupe store {} unreachable: {e}", self.shown)))?;
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                self.connection.insert(c)
            }
        };
        match pipe.query::<Vec<Option<String>>>(connection) {
            Ok(set) => Ok(set.into_iter().map(|r| r.is_none()).collect()),
            Err(e) => {
                self.connection = None;
                Err(PluginError::retry(format!("dedupe store {} failed: {e}", self.shown)))
            }
        }
    }
}

fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn default_window() -> String {
    "10m".into()
}
fn default_max_entries() -> NonZeroUsize {
    NonZeroUsize::new(100_000).expect("non-zero")
}

/// A 128-bit digest of a key: collisions are negligible and memory stays small.
type Digest = u128;

/// The keys remembered by one pipeline stage.
#[derive(Default)]
struct Window {
    seen: HashMap<Digest, Instant>,
    order: VecDeque<(Digest, Instant)>,
}

/// Every live window, by pipeline and stage; a window lives while an instance holds it.
type Windows = Mutex<HashMap<(String, String), Weak<Mutex<Window>>>>;

/// The window of `pipeline`'s stage `stage`: the one an earlier version still holds, or a new one.
fn window_of(pipeline: &str, stage: &str) -> Arc<Mutex<Window>> {
    static WINDOWS: std::sync::OnceLock<Windows> = std::sync::OnceLock::new();
    let mut all = WINDOWS.get_or_init(Windows::default).lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|_, w| w.strong_count() > 0);
    let key = (pipeline.to_owned(), stage.to_owned());
    if let Some(w) = all.get(&key).and_then(Weak::upgrade) {
        return w;
    }
    let w = Arc::new(Mutex::new(Window::default()));
    all.insert(key, Arc::downgrade(&w));
    w
}

/// The `dedupe` transform.
pub struct Dedupe {
    fields: Vec<String>,
    window: Duration,
    max: usize,
    keys: Arc<Mutex<Window>>,
    redis: Option<Redis>,
    ctx: Context,
}

fn window(config: &DedupeConfig) -> Result<Duration, PluginError> {
    humantime::parse_duration(&config.window)
        .map_err(|e| PluginError::config(format!("window {:?} is not a duration such as 10m: {e}", config.window)))
}

fn digest(parts: &[Option<&Value>]) -> Digest {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0xA5u8.hash(&mut b);
    for p in parts {
        let text = p.map(|v| v.to_string());
        text.hash(&mut a);
        text.hash(&mut b);
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

impl Window {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(d, at)) = self.order.front() {
            if now.duration_since(at) < window {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&d) == Some(&at) {
                self.seen.remove(&d);
            }
        }
    }

    /// Whether the key was seen; remembers it otherwise (forgetting the oldest key when
    /// `max` are remembered; returns how many were forgotten).
    fn check(&mut self, d: Digest, now: Instant, max: usize) -> (bool, u64) {
        if self.seen.contains_key(&d) {
            return (true, 0);
        }
        let mut evicted = 0;
        while self.seen.len() >= max {
            let Some((old, at)) = self.order.pop_front() else { break };
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
                evicted += 1;
            }
        }
        self.seen.insert(d, now);
        self.order.push_back((d, now));
        (false, evicted)
    }
}

#[cfg(test)]
impl Dedupe {
    fn keys(&self) -> std::sync::MutexGuard<'_, Window> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Transform for Dedupe {
    type Config = DedupeConfig;
    const NAME: &'static str = "dedupe";
    const DESCRIPTION: &'static str = "Drops records whose key was seen within a time window; memory bounded.";

    fn validate(config: &DedupeConfig) -> Result<(), PluginError> {
        window(config)?;
        if config.fields.is_empty() {
            return Err(PluginError::config("fields needs at least one JSON pointer, such as \"/eventId\""));
        }
        if let Some(f) = config.fields.iter().find(|f| !f.starts_with('/')) {
            return Err(PluginError::config(format!("field {f:?} must be a JSON pointer such as \"/{f}\"")));
        }
        if config.store != "memory" {
            redis::Client::open(config.store.as_str()).map_err(|e| {
                PluginError::config(format!(
                    "store {:?} is neither `memory` nor a Redis URL such as redis://127.0.0.1:6379: {e}",
                    redacted(&config.store)
                ))
            })?;
        }
        Ok(())
    }

    fn create(config: DedupeConfig, ctx: Context) -> Result<Self, PluginError> {
        let keys = window_of(ctx.pipeline(), ctx.stage());
        let taken = keys.lock().unwrap_or_else(|p| p.into_inner()).seen.len();
        if taken > 0 {
            ctx.info(&format!("Took over the window of the previous version: {taken} keys."));
        }
        let redis = match config.store.as_str() {
            "memory" => None,
            url => {
                let client = redis::Client::open(url).map_err(|e| PluginError::config(format!("store {}: {e}", redacted(url))))?;
                let prefix = config.key_prefix.clone().unwrap_or_else(|| format!("weir:dedupe:{}:{}:", ctx.pipeline(), ctx.stage()));
                ctx.info(&format!("Dedupe window in {} under {prefix}*.", redacted(url)));
                Some(Redis { client, connection: None, prefix, shown: redacted(url) })
            }
        };
        Ok(Dedupe { window: window(&config)?, fields: config.fields, max: config.max_entries.get(), keys, redis, ctx })
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        // Each record's key digest; None for a record without key fields (always passes).
        let mut digests: Vec<(usize, Option<Digest>)> = Vec::with_capacity(input.len());
        for (i, record) in input.iter().enumerate() {
            let value: Value = match serde_json::from_slice(record.value) {
                Ok(v) => v,
                Err(e) => {
                    out.reject(i, &format!("not valid JSON: {e}"));
                    continue;
                }
            };
            let parts: Vec<Option<&Value>> = self.fields.iter().map(|f| value.pointer(f)).collect();
            digests.push((i, (!parts.iter().all(Option::is_none)).then(|| digest(&parts))));
        }
        let (window, max) = (self.window, self.max);
        let keys = self.keys.clone();
        let mut keys = keys.lock().unwrap_or_else(|p| p.into_inner());
        let (mut duplicates, mut evicted) = (0, 0);
        let mut seen_in_store = match self.redis.as_mut() {
            Some(r) => Some(r.check(&digests.iter().filter_map(|d| d.1).collect::<Vec<_>>(), window)?.into_iter()),
            None => None,
        };
        let now = Instant::now();
        keys.expire(now, window);
        for (i, d) in digests {
            let seen = match (d, seen_in_store.as_mut()) {
                (None, _) => false,
                (Some(_), Some(store)) => store.next().unwrap_or(false),
                (Some(d), None) => {
                    let (seen, forgotten) = keys.check(d, now, max);
                    evicted += forgotten;
                    seen
                }
            };
            if seen {
                duplicates += 1;
            } else {
                out.pass(i, &input.get(i));
            }
        }
        if duplicates > 0 {
            self.ctx.counter_add("dedupe_duplicates", "Records dropped as duplicates.", duplicates);
        }
        if evicted > 0 {
            self.ctx.counter_add("dedupe_evictions", "Keys forgotten before their window ended because the cache was full.", evicted);
        }
        self.ctx.gauge_set("dedupe_entries", "Keys remembered.", keys.seen.len() as f64);
        Ok(())
    }
}

weir_plugin::export_plugins!(transform Dedupe);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_transform, MockHost};

    #[test]
    fn drops_repeats_within_the_window_and_counts_them() {
        let host = MockHost::for_pipeline("repeats");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/eventId"]})).unwrap();
        let out = run_transform(&mut t, &json_batch([r#"{"eventId":"a"}"#, r#"{"eventId":"b"}"#, r#"{"eventId":"a"}"#, r#"{"other":1}"#]))
            .unwrap();
        assert_eq!(out.batch.origins(), &[0, 1, 3]);
        let again = run_transform(&mut t, &json_batch([r#"{"eventId":"b"}"#])).unwrap();
        assert!(again.batch.is_empty());
        assert_eq!(host.metric("dedupe_duplicates"), Some(2.0));
    }

    #[test]
    fn memory_is_bounded_by_max_entries() {
        let host = MockHost::for_pipeline("bounded");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/id"], "max_entries": 2})).unwrap();
        run_transform(&mut t, &json_batch([r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#])).unwrap();
        assert_eq!(t.keys().seen.len(), 2);
        assert_eq!(host.metric("dedupe_evictions"), Some(1.0));
        let out = run_transform(&mut t, &json_batch([r#"{"id":1}"#])).unwrap();
        assert_eq!(out.batch.len(), 1, "the evicted key is new again");
    }

    #[test]
    fn keys_expire_after_the_window() {
        let host = MockHost::for_pipeline("expiry");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/id", "/type"], "window": "1ms"})).unwrap();
        run_transform(&mut t, &json_batch([r#"{"id":1,"type":"a"}"#])).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let out = run_transform(&mut t, &json_batch([r#"{"id":1,"type":"a"}"#, r#"{"id":1,"type":"b"}"#])).unwrap();
        assert_eq!(out.batch.len(), 2);
    }

    #[test]
    fn a_new_version_of_the_stage_takes_over_the_window_and_a_gone_one_is_forgotten() {
        let host = MockHost::for_pipeline("handover");
        let mut old: Dedupe = host.transform(serde_json::json!({"fields": ["/id"]})).unwrap();
        run_transform(&mut old, &json_batch([r#"{"id":1}"#, r#"{"id":2}"#])).unwrap();
        // Reloaded with another config: while both run they share the window.
        let mut new: Dedupe = host.transform(serde_json::json!({"fields": ["/id"], "window": "1h"})).unwrap();
        let out = run_transform(&mut new, &json_batch([r#"{"id":1}"#, r#"{"id":3}"#])).unwrap();
        assert_eq!(out.batch.origins(), &[1], "id 1 was seen by the old version");
        let out = run_transform(&mut old, &json_batch([r#"{"id":3}"#])).unwrap();
        assert!(out.batch.is_empty(), "and the old one sees what the new one saw");
        drop((old, new));
        let mut fresh: Dedupe = host.transform(serde_json::json!({"fields": ["/id"]})).unwrap();
        assert_eq!(run_transform(&mut fresh, &json_batch([r#"{"id":1}"#])).unwrap().batch.len(), 1, "no version held it");
        let mut elsewhere: Dedupe = MockHost::for_pipeline("other").transform(serde_json::json!({"fields": ["/id"]})).unwrap();
        assert_eq!(run_transform(&mut elsewhere, &json_batch([r#"{"id":1}"#])).unwrap().batch.len(), 1, "windows are per pipeline");
    }

    #[test]
    fn a_redis_window_outlives_the_instance_and_is_shared() {
        // The machine's Redis at 127.0.0.1:6379; a prefix of this test's own.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let prefix = format!("weir:test:{}:{nanos}:", std::process::id());
        let config = serde_json::json!({"fields": ["/id"], "store": "redis://127.0.0.1:6379", "key_prefix": prefix});
        let mut first: Dedupe = MockHost::for_pipeline("redis-a").transform(config.clone()).unwrap();
        let out = run_transform(&mut first, &json_batch([r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":1}"#, r#"{"x":0}"#])).unwrap();
        assert_eq!(out.batch.origins(), &[0, 1, 3], "a repeat within one batch is caught too");
        drop(first);
        // Another instance (a restart, or another host) sees the same window.
        let mut second: Dedupe = MockHost::for_pipeline("redis-b").transform(config).unwrap();
        let out = run_transform(&mut second, &json_batch([r#"{"id":2}"#, r#"{"id":3}"#])).unwrap();
        assert_eq!(out.batch.origins(), &[1]);
    }

    #[test]
    fn an_unreachable_redis_fails_the_batch_with_a_retry_and_hides_the_password() {
        let config = serde_json::json!({"fields": ["/id"], "store": "redis://user:s3cret@127.0.0.1:1"});
        let mut t: Dedupe = MockHost::for_pipeline("redis-down").transform(config).unwrap();
        let err = run_transform(&mut t, &json_batch([r#"{"id":1}"#])).unwrap_err().to_string();
        assert!(err.contains("dedupe store redis://***@127.0.0.1:1 unreachable"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(MockHost::new().transform::<Dedupe>(serde_json::json!({"fields": ["/id"], "store": "disk"})).is_err());
    }

    #[test]
    fn bad_window_and_pointer_are_refused() {
        let host = MockHost::new();
        assert!(host.transform::<Dedupe>(serde_json::json!({"fields": ["/id"], "window": "soon"})).is_err());
        assert!(host.transform::<Dedupe>(serde_json::json!({"fields": ["id"]})).is_err());
    }
}
