//! Redis, where the seed keeps what every instance of the API shares: the per-key rate
//! limit windows (so a key's limit holds across instances and restarts) and the query
//! cache. A cached answer is found under the tenant's generation, which every change to the
//! tenant's data through the API moves on (events stored, a funnel created or deleted), so
//! an answer is never served after such a change; the TTL bounds how long a change made
//! outside the API (a bulk load in SQL) may go unseen.
//!
//! When Redis does not answer, limits are counted in this process and queries go to the
//! database uncached; a warning says so, at most once a minute.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use weir_plugin::serve::auth::{digest, RateLimit, Standing};
use weir_plugin::Context;

use crate::keys::KeyRecord;

/// How long a command may take before Redis counts as not answering.
const TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, how long before Redis is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// Warnings about Redis at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One request counted in a key's window: `{count, milliseconds left}`; the window starts
/// with the key's first request, as in the in-process limiter.
const TAKE: &str = "local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); left = tonumber(ARGV[1]) end
return {n, left}";

/// The Redis the source shares with the other instances.
pub struct Store {
    client: redis::Client,
    prefix: String,
    ttl: Duration,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// When the last failure was (no new attempt before [`RETRY`]) and last warned of.
    failed: Mutex<(Option<Instant>, Option<Instant>)>,
    shown: String,
    ctx: Context,
}

impl Store {
    /// A store at `url` (checked; nothing is connected yet).
    pub fn new(url: &str, prefix: &str, ttl: Duration, ctx: Context) -> Result<Store, String> {
        let shown = weir_plugin::error::redacted_url(url);
        let client = redis::Client::open(url).map_err(|e| format!("redis_url {shown}: {e}"))?;
        Ok(Store {
            client,
            prefix: prefix.to_owned(),
            ttl,
            conn: tokio::sync::Mutex::new(None),
            failed: Mutex::new((None, None)),
            shown,
            ctx,
        })
    }

    /// Runs `cmd`, connecting first when needed; `None` when Redis does not answer (warned).
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        if self.failed.lock().unwrap_or_else(|p| p.into_inner()).0.is_some_and(|at| at.elapsed() < RETRY) {
            return None;
        }
        let result = async {
            // The lock is held only to connect: a multiplexed connection is shared by clones.
            let mut conn = {
                let mut slot = self.conn.lock().await;
                if slot.is_none() {
                    let c = tokio::time::timeout(TIMEOUT, self.client.get_multiplexed_async_connection())
                        .await
                        .map_err(|_| "no answer in time".to_owned())?
                        .map_err(|e| e.to_string())?;
                    *slot = Some(c);
                }
                slot.clone().expect("connected above")
            };
            tokio::time::timeout(TIMEOUT, cmd.query_async::<T>(&mut conn))
                .await
                .map_err(|_| "no answer in time".to_owned())?
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(v) => {
                self.ctx.report_health("redis", &self.shown, true, "");
                Some(v)
            }
            Err(e) => {
                self.ctx.report_health("redis", &self.shown, false, &e);
                *self.conn.lock().await = None;
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.0 = Some(Instant::now());
                if failed.1.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    failed.1 = Some(Instant::now());
                    self.ctx.warn(&format!(
                        "Redis at {} does not answer ({e}); rate limits are counted in this instance and queries are not cached meanwhile",
                        self.shown
                    ));
                }
                None
            }
        }
    }

    /// Counts one request of key `id` under `limit` in the shared window; `None` when Redis
    /// does not answer.
    pub async fn take(&self, id: &str, limit: RateLimit) -> Option<Standing> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE).arg(1).arg(format!("{}rate:{id}", self.prefix)).arg(limit.window_ms);
        let (n, left): (u64, u64) = self.run(&cmd).await?;
        let count = n.min(u64::from(limit.max)) as u32;
        Some(Standing {
            allowed: n <= u64::from(limit.max),
            limit: limit.max,
            remaining: limit.max - count,
            reset_secs: left.div_ceil(1000).max(1),
        })
    }

    /// The key's tenant as it appears in Redis keys (a digest: ids may hold any character).
    fn tenant(key: &KeyRecord) -> String {
        digest(&format!("{}\0{}", key.org_id, key.project_id))
    }

    fn generation_key(&self, tenant: &str) -> String {
        format!("{}generation:{tenant}", self.prefix)
    }

    /// The cache entry of `request` (path and query) for `key`'s tenant, and the cached
    /// answer if there is one. `None` when there is no cache or Redis does not answer.
    pub async fn cached(&self, key: &KeyRecord, request: &str) -> Option<(String, Option<String>)> {
        if self.ttl.is_zero() {
            return None;
        }
        let tenant = Self::tenant(key);
        let generation: Option<u64> = self.run(redis::cmd("GET").arg(self.generation_key(&tenant))).await?;
        let entry = format!("{}cache:{tenant}:{}:{}", self.prefix, generation.unwrap_or(0), digest(request));
        let hit: Option<String> = self.run(redis::cmd("GET").arg(&entry)).await?;
        Some((entry, hit))
    }

    /// Keeps `answer` under `entry` (from [`Store::cached`]) for the TTL.
    pub async fn keep(&self, entry: &str, answer: &str) {
        let ttl = self.ttl.as_millis() as u64;
        let _: Option<()> = self.run(redis::cmd("SET").arg(entry).arg(answer).arg("PX").arg(ttl)).await;
    }

    /// `key`'s tenant changed its data: cached answers are no longer served.
    pub async fn changed(&self, key: &KeyRecord) {
        if self.ttl.is_zero() {
            return;
        }
        let _: Option<u64> = self.run(redis::cmd("INCR").arg(self.generation_key(&Self::tenant(key)))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::MockHost;

    #[test]
    fn without_an_answering_redis_there_is_no_shared_window_and_no_cache_and_one_warning() {
        let host = MockHost::new();
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store = Store::new(&format!("redis://:hunter2@127.0.0.1:{port}/0"), "t:", Duration::from_secs(60), host.context()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let key = crate::keys::tests_key("o", "p");
        rt.block_on(async {
            assert_eq!(store.take("k", RateLimit { max: 1, window_ms: 1000 }).await, None);
            assert_eq!(store.cached(&key, "/api/v1/events/summary").await, None);
            store.changed(&key).await;
        });
        let warnings: Vec<String> = host.logs().into_iter().map(|(_, m)| m).filter(|m| m.contains("does not answer")).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("***@127.0.0.1") && !warnings[0].contains("hunter2"), "{warnings:?}");
        assert!(Store::new("not a url", "t:", Duration::ZERO, host.context()).err().unwrap().contains("redis_url"));
    }
}
