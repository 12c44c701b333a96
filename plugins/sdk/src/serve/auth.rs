//! API keys and per-key rate limits for a plugin's HTTP API (feature `serve`).
//!
//! Keys are kept as SHA-256 digests ([`digest`]) and compared with [`same`], in time that
//! does not depend on where they differ. Rate limits are fixed windows per key, counted in
//! this process ([`Limiter`]); every answer to a key carries the IETF `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` headers ([`Standing::stamp`]), and a request
//! over the limit gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// Keys tracked at most; beyond it, keys whose window ended are forgotten.
const MAX_KEYS: usize = 100_000;

/// The hex SHA-256 digest of a secret.
pub fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fixed-window rate limit: at most `max` requests per `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all(serialize = "camelCase"))]
pub struct RateLimit {
    /// Requests allowed per window.
    pub max: u32,
    /// The window, in milliseconds (`windowMs` in JSON APIs).
    #[serde(alias = "windowMs")]
    pub window_ms: u64,
}

impl RateLimit {
    /// The most requests per window a limit may allow.
    pub const MAX_REQUESTS: u32 = 1_000_000_000;
    /// The longest window, in milliseconds (366 days).
    pub const MAX_WINDOW_MS: u64 = 366 * 24 * 3600 * 1000;

    /// What is wrong with it, if anything (`field` names it in the message).
    pub fn check(&self, field: &str) -> Result<(), String> {
        if !(1..=Self::MAX_REQUESTS).contains(&self.max) || !(1..=Self::MAX_WINDOW_MS).contains(&self.window_ms) {
            return Err(format!(
                "{field}: max must be from 1 to {} and window_ms from 1 to {} (366 days)",
                Self::MAX_REQUESTS,
                Self::MAX_WINDOW_MS
            ));
        }
        Ok(())
    }
}

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

impl Standing {
    /// Adds the `RateLimit-*` headers (and `Retry-After` when refused) to an answer's headers.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(self.reset_secs));
        if !self.allowed {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(self.reset_secs));
        }
    }
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
    fn digests_and_comparison() {
        assert_eq!(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }

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
        let mut h = HeaderMap::new();
        over.stamp(&mut h);
        assert_eq!(h.get(header::RETRY_AFTER).unwrap(), "8");
        assert_eq!(h.get("ratelimit-remaining").unwrap(), "0");
        assert!(l.take("other", limit, t0).allowed, "keys are counted apart");
        assert!(l.take("k", limit, t0 + Duration::from_secs(10)).allowed, "a new window");
    }

    #[test]
    fn a_limit_fits_what_stores_and_clocks_can_hold() {
        assert!(RateLimit { max: 100, window_ms: 900_000 }.check("x").is_ok());
        assert!(RateLimit { max: 0, window_ms: 1 }.check("x").unwrap_err().starts_with("x:"));
        assert!(RateLimit { max: 1, window_ms: u64::MAX / 2 }.check("x").is_err());
        assert!(RateLimit { max: u32::MAX, window_ms: 1 }.check("x").is_err());
    }
}
