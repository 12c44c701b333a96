//! Per-key rate limits: a fixed window per key, counted in this process (a limit shared by
//! several Weir instances through Redis is the next step). Every answer carries the IETF
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers; a request over
//! the limit gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Keys tracked at most; the oldest windows are forgotten beyond it.
const MAX_KEYS: usize = 100_000;

/// Where a key stands in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Whether this request is allowed.
    pub allowed: bool,
    /// The limit.
    pub limit: u32,
    /// Requests left in the window.
    pub remaining: u32,
    /// Seconds until the window ends (at least 1).
    pub reset_secs: u64,
}

/// The windows of every key.
#[derive(Default)]
pub struct Limiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limiter {
    /// Counts one request of key `id` under `limit` at `now`.
    pub fn take(&self, id: &str, limit: RateLimit, now: Instant) -> Standing {
        let window = Duration::from_millis(limit.window_ms);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_KEYS && !windows.contains_key(id) {
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = windows.entry(id.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        let allowed = entry.1 < limit.max;
        if allowed {
            entry.1 += 1;
        }
        let left = window.saturating_sub(now.duration_since(entry.0));
        Standing {
            allowed,
            limit: limit.max,
            remaining: limit.max - entry.1.min(limit.max),
            reset_secs: left.as_millis().div_ceil(1000).max(1) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_allows_max_requests_then_refuses_until_it_ends() {
        let l = Limiter::default();
        let limit = RateLimit { max: 2, window_ms: 10_000 };
        let t0 = Instant::now();
        let a = l.take("k", limit, t0);
        assert_eq!((a.allowed, a.remaining, a.reset_secs), (true, 1, 10));
        assert!(l.take("k", limit, t0 + Duration::from_millis(100)).allowed);
        let over = l.take("k", limit, t0 + Duration::from_millis(2_500));
        assert_eq!((over.allowed, over.remaining, over.reset_secs), (false, 0, 8));
        assert!(l.take("other", limit, t0).allowed, "keys are counted apart");
        assert!(l.take("k", limit, t0 + Duration::from_secs(10)).allowed, "a new window");
    }
}
