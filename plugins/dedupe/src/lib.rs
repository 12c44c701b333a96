//! The `dedupe` transform: drops a record whose key (the values at one or more JSON
//! pointers) was delivered within a time window. Memory is bounded by `max_entries`.
//!
//! A key counts as seen only once its record was delivered. A record that passes marks
//! its key *pending* for its batch; when the host acknowledges the batch (ABI minor 1), the
//! keys of delivered records are *confirmed* and those of failed or refused ones forgotten,
//! so the source's retry of a batch that was not delivered passes again instead of being
//! taken for a duplicate. A key pending in a batch still on its way in this process is a
//! duplicate too (should that batch fail, its source retries it); a pending mark of a batch
//! that is no longer on its way (it failed, or its process died) counts for nothing.
//!
//! The window belongs to the pipeline's stage, not to one instance: when a reload replaces
//! the pipeline, the new version's `dedupe` stage (same pipeline and stage name) takes over
//! the window of the old one, which it shares while both run, so no duplicate slips
//! through a reload.
//!
//! With `store: redis://…` the window lives in Redis instead (one key per record key, with
//! the window and a margin for delivery as its expiry), so it survives restarts and is
//! shared by every host whose pipeline and stage have the same names. Only confirmed keys
//! outlive a crash. A record key holds the pending mark of the batch that passed it; a
//! batch is confirmed by one key of its own (`<prefix>c:<mark>`), written once for all its
//! delivered records, and the keys of its records that were not delivered are deleted: one
//! write per record, not two.
//! With `layout: buckets` the record keys are fields of one hash per span of the window
//! instead (the current span's and the one before are read), so that marking a batch takes
//! a few commands instead of one per record.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use weir_plugin::json::{member, scan, Doc, Pointer};
use weir_plugin::serde_json::{self, Value};
use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, Outcome, Output, PluginError, Settled, Transform};

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
    /// Redis only: how record keys are kept. `keys` (default): one Redis key each, with its
    /// own expiry. `buckets`: fields of one Redis hash per span of the window (and its
    /// delivery margin), so a batch is marked with a few commands instead of one per record
    /// (about 40% of Redis's time per record); a key is then remembered for at least the
    /// window and at most twice it. Switching layouts starts with an empty window. Ignored
    /// by the memory store.
    #[serde(default)]
    pub layout: Layout,
}

/// How a Redis window keeps its record keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One Redis key per record key, with its own expiry.
    #[default]
    Keys,
    /// One Redis hash per span of the window, a field per record key.
    Buckets,
}

fn default_store() -> String {
    "memory".into()
}

/// The window in Redis: per record key, the pending mark of the batch that passed it (a
/// key of its own, or a field of a bucket: [`Layout`]). One script call per batch marks and
/// inspects every key; a second one per acknowledgement confirms or forgets them.
struct Redis {
    client: redis::Client,
    connection: Option<redis::Connection>,
    layout: Layout,
    /// SHA1 of the mark and settle scripts, loaded on the current connection.
    scripts: [String; 2],
    prefix: String,
    /// The URL without its password, for messages.
    shown: String,
    /// Confirmations and forgets not yet stored (Redis was unreachable): `(key, action)`.
    unsettled: Vec<(Vec<u8>, String)>,
    /// Pending marks whose confirmation is in `unsettled`: their records were delivered.
    unconfirmed: HashSet<String>,
    /// For health reports (`redis`).
    ctx: Context,
}

/// Per key: `c` or `1` (the marks of older versions), or the pending mark of a batch whose
/// confirmation key (`ARGV[3]` followed by the mark) exists, is a duplicate; a pending mark
/// of a batch still in flight in this process (`ARGV[4..]`, this batch's own `ARGV[1]`
/// among them) is a duplicate in flight; anything else (no mark, a failed batch's mark,
/// another host's or a dead process's mark) passes, and the key is marked pending for this
/// batch, for `ARGV[2]` ms (the window and a margin for the delivery).
const MARK: &str = r#"
local mine = {}
for i = 4, #ARGV do mine[ARGV[i]] = true end
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 0
  else
    local v = redis.call('GET', key)
    if v == 'c' or v == '1' or (v and redis.call('EXISTS', ARGV[3] .. v) == 1) then
      out[i] = 1
    elseif v and mine[v] then
      out[i] = 2
    else
      redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
      out[i] = 0
    end
  end
end
return out
"#;

/// Per key, `ARGV[i + 1]`: `c` confirms it for the window (`ARGV[1]` ms: a batch's
/// confirmation key); a pending mark is deleted if it is still the key's value (another
/// batch may have taken the key over).
const SETTLE: &str = r#"
for i, key in ipairs(KEYS) do
  local a = ARGV[i + 1]
  if a == 'c' then
    redis.call('SET', key, 'c', 'PX', ARGV[1])
  elseif redis.call('GET', key) == a then
    redis.call('DEL', key)
  end
end
return {#KEYS}
"#;

/// The start of both bucket scripts: `ARGV[2]` is the width of a bucket (ms), `ARGV[3]` the
/// prefix; `b` is the current bucket's number by Redis's clock, `cur` and `prev` the names of
/// that bucket and the one before.
macro_rules! buckets_now {
    () => {
        r#"
local width, prefix = tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local b = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / width)
local cur = prefix .. 'b:' .. string.format('%.0f', b)
local prev = prefix .. 'b:' .. string.format('%.0f', b - 1)
"#
    };
}

/// [`MARK`] for [`Layout::Buckets`]. `ARGV`: the batch's mark, the width of a bucket (ms), the
/// prefix, the number of record keys N, the N keys, then the marks of batches in flight
/// here. A key is looked up in the current bucket (by Redis's clock), then the one before;
/// verdicts as [`MARK`]'s, a repeat within the batch being in flight. Passed keys are set in
/// the current bucket, which expires once it is no longer the one before.
const MARK_BUCKETS: &str = concat!(
    buckets_now!(),
    r#"
local n = tonumber(ARGV[4])
local mine = {}
for i = 5 + n, #ARGV do mine[ARGV[i]] = true end
local out, here = {}, {}
for first = 1, n, 1000 do
  local f = {}
  for i = first, math.min(first + 999, n) do f[#f + 1] = ARGV[4 + i] end
  local c = redis.call('HMGET', cur, unpack(f))
  local p = redis.call('HMGET', prev, unpack(f))
  local set = {}
  for j, key in ipairs(f) do
    local v = c[j] or p[j]
    local verdict = 0
    if here[key] then
      verdict = 2
    elseif v and (v == 'c' or redis.call('EXISTS', prefix .. 'c:' .. v) == 1) then
      verdict = 1
    elseif v and mine[v] then
      verdict = 2
    end
    out[first + j - 1] = verdict
    if verdict == 0 then
      here[key] = true
      set[#set + 1] = key
      set[#set + 1] = ARGV[1]
    end
  end
  if #set > 0 then redis.call('HSET', cur, unpack(set)) end
end
redis.call('PEXPIREAT', cur, (b + 2) * width)
return out
"#
);

/// [`SETTLE`] for [`Layout::Buckets`]. `ARGV`: the confirmations' expiry (ms), the width of a
/// bucket (ms), the prefix, then pairs: a confirmation key and `c`, or a record key and the
/// pending mark to delete from the current and the previous bucket if it is still there.
const SETTLE_BUCKETS: &str = concat!(
    buckets_now!(),
    r#"
for i = 4, #ARGV - 1, 2 do
  local item, a = ARGV[i], ARGV[i + 1]
  if a == 'c' then
    redis.call('SET', item, 'c', 'PX', ARGV[1])
  else
    for _, h in ipairs({cur, prev}) do
      if redis.call('HGET', h, item) == a then redis.call('HDEL', h, item) end
    end
  end
end
return {0}
"#
);

impl Redis {
    /// Where record key `d` is kept: the name of a key of its own, or a bucket's field.
    fn key(&self, d: Digest) -> Vec<u8> {
        match self.layout {
            Layout::Keys => format!("{}{d:032x}", self.prefix).into_bytes(),
            Layout::Buckets => d.to_be_bytes().to_vec(),
        }
    }

    /// The key that confirms every delivered record of the batch marked `mark`.
    fn confirmation(&self, mark: &str) -> String {
        format!("{}c:{mark}", self.prefix)
    }

    /// Runs script `which` (0 mark, 1 settle); a lost connection is dropped and reported, to
    /// the caller and as the stage's `redis` health.
    fn call(&mut self, which: usize, keys: &[Vec<u8>], args: &[Vec<u8>]) -> Result<Vec<i64>, PluginError> {
        let result = self.call_once(which, keys, args);
        match &result {
            Ok(_) => self.ctx.report_health("redis", &self.shown, true, ""),
            Err(e) => self.ctx.report_health("redis", &self.shown, false, &e.to_string()),
        }
        result
    }

    fn call_once(&mut self, which: usize, keys: &[Vec<u8>], args: &[Vec<u8>]) -> Result<Vec<i64>, PluginError> {
        if self.connection.is_none() {
            let mut c = self
                .client
                .get_connection_with_timeout(Duration::from_secs(2))
                .map_err(|e| PluginError::retry(format!("dedupe store {} unreachable: {e}", self.shown)))?;
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
            let codes = match self.layout {
                Layout::Keys => [MARK, SETTLE],
                Layout::Buckets => [MARK_BUCKETS, SETTLE_BUCKETS],
            };
            for (sha, code) in self.scripts.iter_mut().zip(codes) {
                *sha = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(code)
                    .query(&mut c)
                    .map_err(|e| PluginError::retry(format!("dedupe store {} failed: {e}", self.shown)))?;
            }
            self.connection = Some(c);
        }
        let connection = self.connection.as_mut().expect("connected above");
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.scripts[which]).arg(keys.len()).arg(keys).arg(args);
        match cmd.query::<Vec<i64>>(connection) {
            Ok(r) => Ok(r),
            Err(e) => {
                // The script is gone (Redis restarted) or the connection broke: either way
                // the next call starts on a new connection and loads the scripts again.
                self.connection = None;
                Err(PluginError::retry(format!("dedupe store {} failed: {e}", self.shown)))
            }
        }
    }

    /// Stores the confirmations and forgets still owed.
    fn flush(&mut self, window: Duration) -> Result<(), PluginError> {
        if self.unsettled.is_empty() {
            return Ok(());
        }
        let (keys, args) = match self.layout {
            Layout::Keys => {
                let (keys, mut args): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
                    self.unsettled.iter().map(|(k, a)| (k.clone(), a.clone().into_bytes())).unzip();
                args.insert(0, millis(window).into_bytes());
                (keys, args)
            }
            Layout::Buckets => {
                // A bucket is read for up to two widths after its first mark: the
                // confirmation lasts as long.
                let confirmed = millis(2 * kept_for(window));
                let mut args = vec![confirmed.into_bytes(), millis(kept_for(window)).into_bytes(), self.prefix.clone().into_bytes()];
                for (k, a) in &self.unsettled {
                    args.push(k.clone());
                    args.push(a.clone().into_bytes());
                }
                (Vec::new(), args)
            }
        };
        self.call(1, &keys, &args)?;
        self.unsettled.clear();
        self.unconfirmed.clear();
        Ok(())
    }

    /// Marks the keys of a batch as pending under `mark`; for each, what it was.
    fn mark(&mut self, digests: &[Digest], mark: &str, mine: Vec<String>, window: Duration) -> Result<Vec<Verdict>, PluginError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        self.flush(window)?;
        let mut keys: Vec<Vec<u8>> = digests.iter().map(|d| self.key(*d)).collect();
        let n = keys.len();
        let mut args = match self.layout {
            // A record key outlives its batch's confirmation (written at delivery, for the
            // window) while delivery takes less than the margin; a bucket spans as long.
            Layout::Keys => vec![mark.to_owned(), millis(kept_for(window)), self.confirmation("")],
            Layout::Buckets => vec![mark.to_owned(), millis(kept_for(window)), self.prefix.clone(), n.to_string()],
        }
        .into_iter()
        .map(String::into_bytes)
        .collect::<Vec<_>>();
        if self.layout == Layout::Buckets {
            args.append(&mut keys);
        }
        args.extend(mine.into_iter().map(String::into_bytes));
        args.extend(self.unconfirmed.iter().map(|m| m.clone().into_bytes()));
        let codes = self.call(0, &keys, &args)?;
        if codes.len() != n {
            self.connection = None;
            return Err(PluginError::retry(format!("dedupe store {} answered {} verdicts for {} keys", self.shown, codes.len(), n)));
        }
        Ok(codes
            .into_iter()
            .map(|c| match c {
                0 => Verdict::New,
                1 => Verdict::Seen,
                _ => Verdict::InFlight,
            })
            .collect())
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

/// A batch on its way: the instance that passed it and the batch's number.
type Owner = (u64, u64);

/// What a key was when a record carrying it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not seen, or marked by a batch that will never be delivered: the record passes.
    New,
    /// Delivered within the window: a duplicate.
    Seen,
    /// Carried by a batch still on its way in this process: a duplicate too. Should that
    /// batch fail, its source retries it (the record is not lost: the HTTP client gets a 500,
    /// a Kafka source does not commit), and the retry passes.
    InFlight,
}

/// The keys remembered by one pipeline stage, shared by its versions in this process.
#[derive(Default)]
struct Window {
    /// Memory store: keys delivered, with when they were confirmed.
    seen: HashMap<Digest, Instant, Hashing>,
    order: VecDeque<(Digest, Instant)>,
    /// Memory store: keys of records passed on and not yet delivered, by batch.
    pending: HashMap<Digest, Owner, Hashing>,
    /// Batches passed on and not yet settled, by every version of the stage in this process.
    inflight: HashSet<Owner, Hashing>,
}

/// How the window's maps hash: several lookups per record, so SipHash cost a tenth of the
/// default pipeline's time; foldhash, seeded per process, keeps them cheap and unpredictable.
type Hashing = foldhash::quality::RandomState;

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

/// This process, in pending marks kept in Redis: a mark of another process is never taken
/// for one of a batch in flight here.
fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{:x}.{nanos:x}", std::process::id())
    })
}

/// The pending mark of a batch in Redis.
fn pending_mark(owner: Owner) -> String {
    format!("p:{}:{:x}:{:x}", process_tag(), owner.0, owner.1)
}

/// How much longer than the window a record key lives in Redis: the window counts from
/// delivery (the confirmation's expiry), and the key must still be there by then.
fn delivery_margin(window: Duration) -> Duration {
    window.min(Duration::from_secs(300))
}

/// How long a record key is kept in Redis (its expiry, or the span of a bucket): the window
/// and the delivery margin, so that a key marked before its delivery is still found a whole
/// window after it.
fn kept_for(window: Duration) -> Duration {
    window + delivery_margin(window)
}

/// `d` in whole milliseconds (at least 1), as Redis takes expiries.
fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// The `dedupe` transform.
pub struct Dedupe {
    fields: Vec<Pointer>,
    /// The fields' names when each is a top-level member (read with the quick scan).
    members: Option<Vec<String>>,
    window: Duration,
    max: usize,
    keys: Arc<Mutex<Window>>,
    redis: Option<Redis>,
    ctx: Context,
    /// This instance, in the window's marks.
    id: u64,
    /// Batches passed on and not yet settled: when, and the `(input index, key)` of each
    /// record marked pending.
    inflight: HashMap<u64, (Instant, Vec<(usize, Digest)>), Hashing>,
}

/// The names of `fields` when each is a top-level member (`/name`).
fn top_level(fields: &[Pointer]) -> Option<Vec<String>> {
    fields.iter().map(|f| (f.segments().len() == 1).then(|| f.segments()[0].clone())).collect()
}

fn window(config: &DedupeConfig) -> Result<Duration, PluginError> {
    humantime::parse_duration(&config.window)
        .map_err(|e| PluginError::config(format!("window {:?} is not a duration such as 10m: {e}", config.window)))
}

/// The text a key field is hashed as: a string as its JSON (escapes normalised), a number
/// as written (every digit counts: ids that differ in their 20th digit are two keys, which
/// a float would have merged), anything else as its JSON.
fn key_part(text: &str) -> Cow<'_, str> {
    match text.as_bytes().first() {
        // Without escapes a string is written as JSON writes it: taken as it is.
        Some(b'"') if !text.contains('\\') => Cow::Borrowed(text),
        Some(b'"') => {
            Cow::Owned(serde_json::from_str::<String>(text).map(|s| Value::String(s).to_string()).unwrap_or_else(|_| text.to_owned()))
        }
        Some(b'-' | b'0'..=b'9') => Cow::Borrowed(text),
        _ => Cow::Owned(serde_json::from_str::<Value>(text).map(|v| v.to_string()).unwrap_or_else(|_| text.to_owned())),
    }
}

/// A record's key parts read with the quick scan of its top-level members (`names`: the
/// fields, each a top-level member), or `None` when the scan does not answer for it (it is
/// then read with [`Doc`], with the same result).
fn quick_parts<'t>(names: &[String], value: &'t [u8]) -> Option<Vec<Option<Cow<'t, str>>>> {
    let text = std::str::from_utf8(value).ok()?;
    let members = scan::object_members_where(text, names.len(), |name| names.iter().any(|n| n == name))?;
    Some(names.iter().map(|n| member(&members, n).map(key_part)).collect())
}

/// The digest of a record key's parts (stable: it names the key in a Redis window).
fn digest(parts: &[Option<Cow<'_, str>>]) -> Digest {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0xA5u8.hash(&mut b);
    for text in parts {
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

    /// What `d` is; marks it pending for `owner` unless it counts as seen.
    fn mark(&mut self, d: Digest, owner: Owner) -> Verdict {
        if self.seen.contains_key(&d) {
            return Verdict::Seen;
        }
        if let Some(other) = self.pending.get(&d) {
            if self.inflight.contains(other) {
                return Verdict::InFlight;
            }
        }
        self.pending.insert(d, owner);
        Verdict::New
    }

    /// `d`'s record was delivered: remembered for the window (forgetting the oldest key
    /// when `max` are remembered; returns how many were forgotten).
    fn confirm(&mut self, d: Digest, owner: Owner, now: Instant, max: usize) -> u64 {
        self.forget(d, owner);
        if self.seen.contains_key(&d) {
            return 0;
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
        evicted
    }

    /// `d`'s record was not delivered: its pending mark goes (if it is still `owner`'s).
    fn forget(&mut self, d: Digest, owner: Owner) {
        if self.pending.get(&d) == Some(&owner) {
            self.pending.remove(&d);
        }
    }
}

#[cfg(test)]
impl Dedupe {
    fn keys(&self) -> std::sync::MutexGuard<'_, Window> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Dedupe {
    /// Settles one batch: keys of delivered records (and of records a later stage dropped
    /// on purpose) are confirmed, keys of failed or refused ones forgotten.
    fn settle(&mut self, window: &mut Window, batch: u64, outcomes: &[Outcome], now: Instant) -> u64 {
        let owner = (self.id, batch);
        window.inflight.remove(&owner);
        let Some((_, marked)) = self.inflight.remove(&batch) else { return 0 };
        let (mut evicted, mut any_delivered) = (0, false);
        for (i, d) in marked {
            let delivered = matches!(outcomes.get(i), Some(Outcome::Accepted | Outcome::Dropped));
            any_delivered |= delivered;
            match self.redis.as_mut() {
                // Delivered keys keep the batch's mark, confirmed below once for them all.
                Some(_) if delivered => {}
                Some(r) => {
                    let key = r.key(d);
                    r.unsettled.push((key, pending_mark(owner)));
                }
                None if delivered => evicted += window.confirm(d, owner, now, self.max),
                None => window.forget(d, owner),
            }
        }
        if let Some(r) = self.redis.as_mut().filter(|_| any_delivered) {
            let mark = pending_mark(owner);
            r.unsettled.push((r.confirmation(&mark).into_bytes(), "c".into()));
            r.unconfirmed.insert(mark);
        }
        evicted
    }

    /// Batches unsettled for longer than the window (a host that never acknowledges) are
    /// let go as if their keys had expired.
    fn let_go_of_old_batches(&mut self, window: &mut Window, now: Instant) {
        let old: Vec<u64> = self.inflight.iter().filter(|(_, (at, _))| now.duration_since(*at) >= self.window).map(|(b, _)| *b).collect();
        for batch in old {
            window.inflight.remove(&(self.id, batch));
            if let Some((_, marked)) = self.inflight.remove(&batch) {
                for (_, d) in marked {
                    window.forget(d, (self.id, batch));
                }
            }
        }
    }

    fn gauges(&self, window: &Window) {
        let pending = match self.redis {
            Some(_) => self.inflight.values().map(|(_, marked)| marked.len()).sum(),
            None => window.pending.len(),
        };
        self.ctx.gauge_set("dedupe_entries", "Keys remembered (memory store).", window.seen.len() as f64);
        self.ctx.gauge_set("dedupe_pending", "Keys of records passed on and not yet delivered.", pending as f64);
    }
}

impl Drop for Dedupe {
    fn drop(&mut self) {
        // Batches still unsettled will not be confirmed by this instance: their keys go.
        let window = self.keys.clone();
        let mut window = window.lock().unwrap_or_else(|p| p.into_inner());
        for (batch, (_, marked)) in std::mem::take(&mut self.inflight) {
            window.inflight.remove(&(self.id, batch));
            for (_, d) in marked {
                window.forget(d, (self.id, batch));
            }
        }
        if let Some(r) = self.redis.as_mut() {
            if let Err(e) = r.flush(self.window) {
                self.ctx.warn(&format!("Dedupe could not store its last confirmations: {e}"));
            }
        }
    }
}

impl Transform for Dedupe {
    type Config = DedupeConfig;
    const NAME: &'static str = "dedupe";
    const DESCRIPTION: &'static str = "Drops records whose key was delivered within a time window; memory bounded.";
    const ACKNOWLEDGES: bool = true;
    // The first copy of a key passes, as with one worker.
    const IN_ORDER: bool = true;

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
                    weir_plugin::error::redacted_url(&config.store)
                ))
            })?;
        }
        Ok(())
    }

    fn create(config: DedupeConfig, ctx: Context) -> Result<Self, PluginError> {
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let keys = window_of(ctx.pipeline(), ctx.stage());
        let taken = keys.lock().unwrap_or_else(|p| p.into_inner()).seen.len();
        if taken > 0 {
            ctx.info(&format!("Took over the window of the previous version: {taken} keys."));
        }
        let redis = match config.store.as_str() {
            "memory" => None,
            url => {
                let client = redis::Client::open(url)
                    .map_err(|e| PluginError::config(format!("store {}: {e}", weir_plugin::error::redacted_url(url))))?;
                let prefix = config.key_prefix.clone().unwrap_or_else(|| format!("weir:dedupe:{}:{}:", ctx.pipeline(), ctx.stage()));
                ctx.info(&format!("Dedupe window in {} under {prefix}*.", weir_plugin::error::redacted_url(url)));
                Some(Redis {
                    client,
                    connection: None,
                    layout: config.layout,
                    scripts: Default::default(),
                    prefix,
                    shown: weir_plugin::error::redacted_url(url),
                    unsettled: Vec::new(),
                    unconfirmed: HashSet::new(),
                    ctx,
                })
            }
        };
        let fields: Vec<Pointer> =
            config.fields.iter().map(|f| Pointer::parse(f).map_err(PluginError::config)).collect::<Result<_, _>>()?;
        Ok(Dedupe {
            window: window(&config)?,
            members: top_level(&fields),
            fields,
            max: config.max_entries.get(),
            keys,
            redis,
            ctx,
            id: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            inflight: HashMap::default(),
        })
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        // Each record's key digest; None for a record without key fields (always passes).
        let mut digests: Vec<(usize, Option<Digest>)> = Vec::with_capacity(input.len());
        for (i, record) in input.iter().enumerate() {
            let parts = match self.members.as_deref().and_then(|names| quick_parts(names, record.value)) {
                Some(parts) => parts,
                None => match Doc::parse(record.value) {
                    Ok(doc) => self.fields.iter().map(|f| doc.get(f).map(|raw| key_part(raw.get()))).collect(),
                    Err(e) => {
                        out.reject(i, &format!("not valid JSON: {e}"));
                        continue;
                    }
                },
            };
            digests.push((i, (!parts.iter().all(Option::is_none)).then(|| digest(&parts))));
        }
        let keys = self.keys.clone();
        let mut window = keys.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        window.expire(now, self.window);
        self.let_go_of_old_batches(&mut window, now);
        let owner = (self.id, out.sequence);
        window.inflight.insert(owner);
        let keyed: Vec<Digest> = digests.iter().filter_map(|d| d.1).collect();
        let verdicts = match self.redis.as_mut() {
            Some(r) => {
                let mine = window.inflight.iter().map(|o| pending_mark(*o)).collect();
                match r.mark(&keyed, &pending_mark(owner), mine, self.window) {
                    Ok(v) => v,
                    Err(e) => {
                        // Marks the store may have applied belong to a batch that fails here:
                        // once it is not in flight they count for nothing, and a retry passes.
                        window.inflight.remove(&owner);
                        return Err(e);
                    }
                }
            }
            None => keyed.iter().map(|d| window.mark(*d, owner)).collect(),
        };
        let mut verdicts = verdicts.into_iter();
        let (mut duplicates, mut marked) = (0, Vec::new());
        for (i, d) in digests {
            let verdict = match d {
                None => Verdict::New,
                Some(d) => {
                    let v = verdicts.next().unwrap_or(Verdict::New);
                    if v == Verdict::New {
                        marked.push((i, d));
                    }
                    v
                }
            };
            if verdict == Verdict::New {
                out.pass(i, &input.get(i));
            } else {
                duplicates += 1;
            }
        }
        if marked.is_empty() {
            window.inflight.remove(&owner);
        } else {
            self.inflight.insert(owner.1, (now, marked));
        }
        if duplicates > 0 {
            self.ctx.counter_add("dedupe_duplicates", "Records dropped as duplicates.", duplicates);
        }
        self.gauges(&window);
        Ok(())
    }

    fn acknowledge(&mut self, settled: &[Settled]) -> Result<(), PluginError> {
        let keys = self.keys.clone();
        let mut window = keys.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut evicted = 0;
        for s in settled {
            evicted += self.settle(&mut window, s.batch, &s.outcomes, now);
        }
        if evicted > 0 {
            self.ctx.counter_add("dedupe_evictions", "Keys forgotten before their window ended because the cache was full.", evicted);
        }
        self.gauges(&window);
        drop(window);
        match self.redis.as_mut() {
            // Kept for the next call when Redis is unreachable; meanwhile the delivered keys
            // still count as seen here.
            Some(r) => r.flush(self.window),
            None => Ok(()),
        }
    }
}

weir_plugin::export_plugins!(transform Dedupe);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{acknowledge, json_batch, run_transform, MockHost};

    /// Runs a batch and acknowledges what passed with `passed`; returns the origins kept.
    fn run_and_settle(t: &mut Dedupe, values: &[&str], passed: Outcome) -> Vec<u32> {
        let input = json_batch(values.iter().copied());
        let out = run_transform(t, &input).unwrap();
        acknowledge(t, &input, &out, passed).unwrap();
        out.batch.origins().to_vec()
    }

    /// A window in the machine's Redis at 127.0.0.1:6379, laid out as `layout`, under a
    /// prefix of this test's own.
    fn redis_config(layout: &str) -> serde_json::Value {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("weir:test:{}:{nanos}:{n}:", std::process::id());
        serde_json::json!({"fields": ["/id"], "store": "redis://127.0.0.1:6379", "key_prefix": prefix, "layout": layout})
    }

    const LAYOUTS: [&str; 2] = ["keys", "buckets"];

    #[test]
    fn drops_repeats_within_the_window_and_counts_them() {
        let host = MockHost::for_pipeline("repeats");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/eventId"]})).unwrap();
        let kept = run_and_settle(
            &mut t,
            &[r#"{"eventId":"a"}"#, r#"{"eventId":"b"}"#, r#"{"eventId":"a"}"#, r#"{"other":1}"#],
            Outcome::Accepted,
        );
        assert_eq!(kept, &[0, 1, 3]);
        assert!(run_and_settle(&mut t, &[r#"{"eventId":"b"}"#], Outcome::Accepted).is_empty());
        assert_eq!(host.metric("dedupe_duplicates"), Some(2.0));
        assert_eq!(host.metric("dedupe_pending"), Some(0.0), "every mark was settled");
    }

    #[test]
    fn numeric_keys_keep_every_digit_and_strings_their_meaning() {
        let host = MockHost::for_pipeline("digits");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/id", "/u/k"]})).unwrap();
        let kept = run_and_settle(
            &mut t,
            &[
                r#"{"id":12345678901234567890123}"#,
                r#"{"id":12345678901234567890124}"#,
                r#"{"id":12345678901234567890123}"#,
                r#"{"id":"\u0061","u":{"k":[1]}}"#,
                r#"{"u":{"k":[1]},"id":"a"}"#,
            ],
            Outcome::Accepted,
        );
        assert_eq!(kept, &[0, 1, 3], "ids a float cannot tell apart are two keys; an escaped string is the same key");
    }

    #[test]
    fn keys_of_records_not_delivered_do_not_count_as_seen() {
        let host = MockHost::for_pipeline("not-delivered");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/id"]})).unwrap();
        // A sink gave up on the batch: the retry passes, and once delivered it is a duplicate.
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":1}"#, r#"{"id":2}"#], Outcome::Failed("sink: gave up".into())), &[0, 1]);
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":1}"#], Outcome::Accepted), &[0], "the retry of a failed record passes");
        assert!(run_and_settle(&mut t, &[r#"{"id":1}"#], Outcome::Accepted).is_empty(), "a delivered one is a duplicate");
        // Refused by a sink: forgotten too.
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":3}"#], Outcome::Rejected("sink: too long".into())), &[0]);
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":3}"#], Outcome::Accepted), &[0]);
        // Dropped on purpose by a later transform: it was handled, so it counts as seen.
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":4}"#], Outcome::Dropped), &[0]);
        assert!(run_and_settle(&mut t, &[r#"{"id":4}"#], Outcome::Accepted).is_empty());
    }

    #[test]
    fn a_key_in_a_batch_still_in_flight_is_a_duplicate_until_that_batch_settles() {
        let host = MockHost::for_pipeline("in-flight");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/id"]})).unwrap();
        let first = json_batch([r#"{"id":1}"#]);
        let out = run_transform(&mut t, &first).unwrap();
        assert_eq!(out.batch.len(), 1);
        assert_eq!(host.metric("dedupe_pending"), Some(1.0));
        assert!(run_and_settle(&mut t, &[r#"{"id":1}"#], Outcome::Accepted).is_empty(), "in flight: dropped");
        acknowledge(&mut t, &first, &out, Outcome::Failed("sink: down".into())).unwrap();
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":1}"#], Outcome::Accepted), &[0], "its batch failed: the retry passes");
        // An acknowledgement for a batch nobody knows is ignored.
        t.acknowledge(&[Settled { batch: u64::MAX, outcomes: vec![Outcome::Accepted] }]).unwrap();
    }

    #[test]
    fn memory_is_bounded_by_max_entries() {
        let host = MockHost::for_pipeline("bounded");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/id"], "max_entries": 2})).unwrap();
        run_and_settle(&mut t, &[r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#], Outcome::Accepted);
        assert_eq!(t.keys().seen.len(), 2);
        assert_eq!(host.metric("dedupe_evictions"), Some(1.0));
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":1}"#], Outcome::Accepted).len(), 1, "the evicted key is new again");
    }

    #[test]
    fn keys_expire_after_the_window() {
        let host = MockHost::for_pipeline("expiry");
        let mut t: Dedupe = host.transform(serde_json::json!({"fields": ["/id", "/type"], "window": "1ms"})).unwrap();
        run_and_settle(&mut t, &[r#"{"id":1,"type":"a"}"#], Outcome::Accepted);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":1,"type":"a"}"#, r#"{"id":1,"type":"b"}"#], Outcome::Accepted).len(), 2);
        // A batch never acknowledged (a host that does not) is let go after the window too.
        run_transform(&mut t, &json_batch([r#"{"id":2}"#])).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(run_transform(&mut t, &json_batch([r#"{"id":2}"#])).unwrap().batch.len(), 1);
    }

    #[test]
    fn a_new_version_of_the_stage_takes_over_the_window_and_a_gone_one_is_forgotten() {
        let host = MockHost::for_pipeline("handover");
        let mut old: Dedupe = host.transform(serde_json::json!({"fields": ["/id"]})).unwrap();
        run_and_settle(&mut old, &[r#"{"id":1}"#, r#"{"id":2}"#], Outcome::Accepted);
        // Reloaded with another config: while both run they share the window.
        let mut new: Dedupe = host.transform(serde_json::json!({"fields": ["/id"], "window": "1h"})).unwrap();
        let input = json_batch([r#"{"id":1}"#, r#"{"id":3}"#]);
        let out = run_transform(&mut new, &input).unwrap();
        assert_eq!(out.batch.origins(), &[1], "id 1 was delivered by the old version");
        assert!(run_and_settle(&mut old, &[r#"{"id":3}"#], Outcome::Accepted).is_empty(), "id 3 is in flight in the new one");
        acknowledge(&mut new, &input, &out, Outcome::Accepted).unwrap();
        assert!(run_and_settle(&mut old, &[r#"{"id":3}"#], Outcome::Accepted).is_empty(), "and then delivered");
        // An instance that goes with a batch unsettled lets its keys go.
        let out = run_transform(&mut old, &json_batch([r#"{"id":4}"#])).unwrap();
        assert_eq!(out.batch.len(), 1);
        drop(old);
        assert_eq!(run_and_settle(&mut new, &[r#"{"id":4}"#], Outcome::Accepted), &[0]);
        drop(new);
        let mut fresh: Dedupe = host.transform(serde_json::json!({"fields": ["/id"]})).unwrap();
        assert_eq!(run_and_settle(&mut fresh, &[r#"{"id":1}"#], Outcome::Accepted).len(), 1, "no version held it");
        let mut elsewhere: Dedupe = MockHost::for_pipeline("other").transform(serde_json::json!({"fields": ["/id"]})).unwrap();
        assert_eq!(run_and_settle(&mut elsewhere, &[r#"{"id":1}"#], Outcome::Accepted).len(), 1, "windows are per pipeline");
    }

    #[test]
    fn a_redis_window_outlives_the_instance_and_is_shared() {
        for layout in LAYOUTS {
            redis_window_is_shared(redis_config(layout));
        }
    }

    fn redis_window_is_shared(config: serde_json::Value) {
        let mut first: Dedupe = MockHost::for_pipeline("redis-a").transform(config.clone()).unwrap();
        let kept = run_and_settle(&mut first, &[r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":1}"#, r#"{"x":0}"#], Outcome::Accepted);
        assert_eq!(kept, &[0, 1, 3], "a repeat within one batch is caught too");
        drop(first);
        // Another instance (a restart, or another host) sees the same window.
        let mut second: Dedupe = MockHost::for_pipeline("redis-b").transform(config).unwrap();
        assert_eq!(run_and_settle(&mut second, &[r#"{"id":2}"#, r#"{"id":3}"#], Outcome::Accepted), &[1]);
    }

    #[test]
    fn in_redis_only_delivered_keys_count_and_a_dead_process_marks_block_nothing() {
        for layout in LAYOUTS {
            redis_settles(redis_config(layout));
        }
    }

    fn redis_settles(config: serde_json::Value) {
        let mut t: Dedupe = MockHost::for_pipeline("redis-settle").transform(config.clone()).unwrap();
        // Failed downstream: forgotten in Redis, so another instance passes it too.
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":1}"#], Outcome::Failed("sink: gave up".into())), &[0]);
        let mut other: Dedupe = MockHost::for_pipeline("redis-settle-2").transform(config.clone()).unwrap();
        assert_eq!(run_and_settle(&mut other, &[r#"{"id":1}"#], Outcome::Accepted), &[0]);
        assert!(run_and_settle(&mut t, &[r#"{"id":1}"#], Outcome::Accepted).is_empty(), "confirmed by the other: seen");
        // In flight here: a duplicate; its batch failing in the store (the reply lost) lets
        // the retry pass.
        let input = json_batch([r#"{"id":2}"#]);
        let out = run_transform(&mut t, &input).unwrap();
        assert_eq!(out.batch.len(), 1);
        assert!(run_and_settle(&mut t, &[r#"{"id":2}"#], Outcome::Accepted).is_empty(), "in flight: dropped");
        // A process killed with the batch on its way: its pending mark stays in Redis but
        // another instance takes the key over.
        std::mem::forget(t);
        let mut after: Dedupe = MockHost::for_pipeline("redis-settle-3").transform(config).unwrap();
        assert_eq!(run_and_settle(&mut after, &[r#"{"id":2}"#], Outcome::Accepted), &[0], "the dead instance's mark blocks nothing");
        assert!(run_and_settle(&mut after, &[r#"{"id":2}"#], Outcome::Accepted).is_empty());
    }

    #[test]
    fn a_delivered_batch_is_confirmed_by_one_key_of_its_own() {
        let config = redis_config("keys");
        let prefix = config["key_prefix"].as_str().unwrap().to_owned();
        let mut t: Dedupe = MockHost::for_pipeline("redis-one-write").transform(config.clone()).unwrap();
        assert_eq!(run_and_settle(&mut t, &[r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#], Outcome::Accepted), &[0, 1, 2]);
        // The confirmation is written with the next call (or when the instance goes).
        drop(t);
        let mut redis = redis::Client::open("redis://127.0.0.1:6379").unwrap().get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut redis).unwrap();
        let confirmations: Vec<&String> = keys.iter().filter(|k| k.starts_with(&format!("{prefix}c:"))).collect();
        assert_eq!((keys.len(), confirmations.len()), (4, 1), "three record keys and one confirmation: {keys:?}");
        let values: Vec<Option<String>> = keys
            .iter()
            .filter(|k| !k.starts_with(&format!("{prefix}c:")))
            .map(|k| redis::cmd("GET").arg(k).query(&mut redis).unwrap())
            .collect();
        let mark = confirmations[0].strip_prefix(&format!("{prefix}c:")).unwrap();
        assert!(values.iter().all(|v| v.as_deref() == Some(mark)), "each record key keeps its batch's mark: {values:?}");
        // The window (10 minutes by default) counts from delivery: the record keys outlive the confirmation.
        let mut ttl = |k: &str| -> i64 { redis::cmd("PTTL").arg(k).query(&mut redis).unwrap() };
        let confirmed_for = ttl(confirmations[0]);
        assert!(confirmed_for > 590_000 && confirmed_for <= 600_000, "{confirmed_for}");
        assert!(
            keys.iter().filter(|k| !k.starts_with(&format!("{prefix}c:"))).all(|k| ttl(k) > 600_000),
            "record keys live past the confirmation"
        );
        // Another instance takes them for seen.
        let mut other: Dedupe = MockHost::for_pipeline("redis-one-write-2").transform(config).unwrap();
        assert_eq!(run_and_settle(&mut other, &[r#"{"id":3}"#, r#"{"id":4}"#], Outcome::Accepted), &[1]);
    }

    #[test]
    fn in_buckets_a_batch_is_a_few_fields_of_one_hash_and_partly_failed_batches_forget_theirs() {
        let config = redis_config("buckets");
        let prefix = config["key_prefix"].as_str().unwrap().to_owned();
        let mut t: Dedupe = MockHost::for_pipeline("redis-buckets").transform(config.clone()).unwrap();
        // Records 1 and 3 delivered, 2 refused by a sink: the batch is confirmed, and 2's
        // field is deleted so that the confirmation does not cover it.
        let input = json_batch([r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#, r#"{"id":1}"#]);
        let out = run_transform(&mut t, &input).unwrap();
        assert_eq!(out.batch.origins(), &[0, 1, 2], "a repeat within the batch is dropped");
        let outcomes = vec![Outcome::Accepted, Outcome::Rejected("sink: too long".into()), Outcome::Accepted];
        t.acknowledge(&[Settled { batch: out.sequence, outcomes }]).unwrap();
        drop(t);
        let mut redis = redis::Client::open("redis://127.0.0.1:6379").unwrap().get_connection().unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut redis).unwrap();
        keys.sort();
        assert_eq!(keys.len(), 2, "one bucket and one confirmation: {keys:?}");
        let (bucket, confirmation) = (&keys[0], &keys[1]);
        assert!(bucket.starts_with(&format!("{prefix}b:")) && confirmation.starts_with(&format!("{prefix}c:")), "{keys:?}");
        let fields: HashMap<Vec<u8>, String> = redis::cmd("HGETALL").arg(bucket).query(&mut redis).unwrap();
        assert_eq!(fields.len(), 2, "the refused record's field is gone");
        let mark = confirmation.strip_prefix(&format!("{prefix}c:")).unwrap();
        assert!(fields.values().all(|v| v == mark), "{fields:?}");
        // A bucket spans the window and its margin (10 + 5 minutes): it expires at the end
        // of the span after its own, and the confirmation lives as long as a field may be read.
        let width = 900_000;
        let mut ttl = |k: &str| -> i64 { redis::cmd("PTTL").arg(k).query(&mut redis).unwrap() };
        let (bucket_ttl, confirmed) = (ttl(bucket), ttl(confirmation));
        assert!(bucket_ttl > width && bucket_ttl <= 2 * width, "{bucket_ttl}");
        assert!(confirmed > 2 * width - 10_000 && confirmed <= 2 * width, "{confirmed}");
        let mut other: Dedupe = MockHost::for_pipeline("redis-buckets-2").transform(config).unwrap();
        let kept = run_and_settle(&mut other, &[r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#, r#"{"id":4}"#], Outcome::Accepted);
        assert_eq!(kept, &[1, 3], "1 and 3 were delivered; 2 was not");
        // A batch of more than a thousand keys is marked a thousand at a time; a repeat in a
        // later thousand is still a repeat within the batch.
        let big: Vec<String> = (100..2600).chain([150, 2599]).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
        let kept = run_and_settle(&mut other, &big.iter().map(String::as_str).collect::<Vec<_>>(), Outcome::Accepted);
        assert_eq!(kept, (0..2500).collect::<Vec<u32>>());
        let again = run_and_settle(&mut other, &[r#"{"id":2599}"#, r#"{"id":100}"#, r#"{"id":2600}"#], Outcome::Accepted);
        assert_eq!(again, &[2]);
    }

    #[test]
    fn an_unreachable_redis_fails_the_batch_with_a_retry_and_hides_the_password() {
        let config = serde_json::json!({"fields": ["/id"], "store": "redis://user:s3cret@127.0.0.1:1"});
        let mut t: Dedupe = MockHost::for_pipeline("redis-down").transform(config).unwrap();
        let err = run_transform(&mut t, &json_batch([r#"{"id":1}"#])).unwrap_err().to_string();
        assert!(err.contains("dedupe store redis://***@127.0.0.1:1 unreachable"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(t.keys().inflight.is_empty(), "the failed batch is not in flight");
        assert!(MockHost::new().transform::<Dedupe>(serde_json::json!({"fields": ["/id"], "store": "disk"})).is_err());
    }

    #[test]
    fn digests_stay_what_earlier_versions_stored() {
        // Record keys in a Redis window are named by their digest: it must not change.
        let d = digest(&[Some(Cow::Borrowed("\"o1\"")), None, Some(Cow::Owned("12".to_owned()))]);
        assert_eq!(format!("{d:032x}"), "962ff20d2b2ba75f77912a7aae8cb7b9");
        assert_eq!(key_part(r#""a\u0062/""#), "\"ab/\"", "escapes are normalised");
        assert!(matches!(key_part(r#""ab/""#), Cow::Borrowed("\"ab/\"")), "a string without escapes is taken as written");
    }

    #[test]
    fn the_quick_scan_keys_records_as_the_json_reader_does() {
        let fields: Vec<Pointer> = ["/id", "/org", "/n"].iter().map(|f| Pointer::parse(f).unwrap()).collect();
        let names = top_level(&fields).expect("top-level members");
        let by_reader = |text: &str| {
            let doc = Doc::parse(text.as_bytes()).unwrap();
            digest(&fields.iter().map(|f| doc.get(f).map(|raw| key_part(raw.get()))).collect::<Vec<_>>())
        };
        for text in [
            r#"{"id":"a","org":"o","n":12}"#,
            r#" { "n" : 12 , "org":"o", "id": "a", "more": {"id": "inner"} } "#,
            r#"{"id":"x","org":"o","n":12,"id":"a"}"#,
            r#"{"id":"\u0061","org":"o","n":12}"#,
            r#"{"id":"a","n":12}"#,
            r#"{"id":null,"org":["o"],"n":1.50}"#,
        ] {
            let quick = quick_parts(&names, text.as_bytes()).expect(text);
            assert_eq!(digest(&quick), by_reader(text), "{text}");
        }
        assert_eq!(by_reader(r#"{"id":"a","org":"o","n":12}"#), by_reader(r#" { "n" : 12 , "org":"o", "id": "a" } "#));
        // Left to the reader: a key with an escape, and text that is not one JSON object.
        assert!(quick_parts(&names, br#"{"i\u0064":"a"}"#).is_none());
        assert!(quick_parts(&names, br#"{"id":"a"} x"#).is_none());
        assert!(top_level(&[Pointer::parse("/a/b").unwrap()]).is_none(), "a nested field is read by the reader");
    }

    #[test]
    fn bad_window_and_pointer_are_refused() {
        let host = MockHost::new();
        assert!(host.transform::<Dedupe>(serde_json::json!({"fields": ["/id"], "window": "soon"})).is_err());
        assert!(host.transform::<Dedupe>(serde_json::json!({"fields": ["id"]})).is_err());
    }
}
