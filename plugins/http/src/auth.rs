//! API keys on the `http` source (config `auth`): a request must carry one of the keys in
//! a header (`X-API-Key` by default); each key has a name, optional headers stamped on every
//! record it sends (for example a tenant, for `enrich`'s `{{header:NAME}}`), and a rate limit.
//! Keys are configured as secrets (`secret: ${WEB_API_KEY}`) or as SHA-256 digests, kept as
//! digests only, and compared in constant time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use weir_plugin::serve::auth::{digest, same, Limiter, RateLimit};
use weir_plugin::{Deserialize, JsonSchema};

use crate::source::error;

/// API keys a request must carry one of.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The header carrying the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// The keys accepted.
    pub keys: Vec<KeyConfig>,
    /// Rate limit of a key that sets none of its own; unset: none.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// One accepted key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's name, stamped on each record it sends as header `auth.key` (never the secret).
    pub name: String,
    /// The key itself, best from the environment (`${WEB_API_KEY}`); never shown.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub secret: Option<String>,
    /// Or its SHA-256 digest in hex (`printf %s "$KEY" | sha256sum`), so the file holds no secret.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Headers stamped on each record the key sends (for example `tenant: acme`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// This key's own rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

fn default_header() -> String {
    "x-api-key".into()
}

impl AuthConfig {
    /// What is wrong with it, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if axum::http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            return Err(format!("auth.header {:?} is not a header name", self.header));
        }
        if self.keys.is_empty() {
            return Err("auth.keys is empty; list at least one key (or remove auth)".into());
        }
        if let Some(r) = &self.rate_limit {
            r.check("auth.rate_limit")?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            if k.name.trim().is_empty() || !names.insert(k.name.as_str()) {
                return Err(format!("{at}.name must be a name no other key has"));
            }
            match (&k.secret, &k.sha256) {
                (Some(s), None) if s.len() < 16 => return Err(format!("{at}.secret is shorter than 16 characters; use a long random key")),
                (Some(_), None) => {}
                (None, Some(d)) if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    return Err(format!("{at}.sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum)"))
                }
                (None, Some(_)) => {}
                _ => return Err(format!("{at} needs exactly one of secret and sha256")),
            }
            if let Some(r) = &k.rate_limit {
                r.check(&format!("{at}.rate_limit"))?;
            }
            if let Some(h) = k.headers.keys().find(|h| h.is_empty() || h.starts_with("weir.")) {
                return Err(format!("{at}.headers: {h:?} is not a header name a key may set (weir.* is the host's)"));
            }
        }
        Ok(())
    }
}

/// A key as the source keeps it: no secret, only its digest.
pub struct Key {
    digest: String,
    name: String,
    /// What each record it sends carries: `auth.key` and the configured headers.
    pub stamps: Vec<(String, Vec<u8>)>,
    limit: Option<RateLimit>,
}

/// The keys and their rate-limit windows.
pub struct Keys {
    header: String,
    keys: Vec<Arc<Key>>,
    limiter: Limiter,
}

impl Keys {
    /// From a checked config.
    pub fn new(config: &AuthConfig) -> Arc<Keys> {
        let keys = config
            .keys
            .iter()
            .map(|k| {
                let mut stamps = vec![("auth.key".to_owned(), k.name.clone().into_bytes())];
                stamps.extend(k.headers.iter().map(|(h, v)| (h.clone(), v.clone().into_bytes())));
                Arc::new(Key {
                    digest: k.sha256.as_ref().map(|d| d.to_ascii_lowercase()).unwrap_or_else(|| digest(k.secret.as_deref().unwrap_or(""))),
                    name: k.name.clone(),
                    stamps,
                    limit: k.rate_limit.or(config.rate_limit),
                })
            })
            .collect();
        Arc::new(Keys { header: config.header.to_ascii_lowercase(), keys, limiter: Limiter::default() })
    }

    /// The key whose secret is `secret`: every key is compared, each in constant time.
    fn find(&self, secret: &str) -> Option<Arc<Key>> {
        let presented = digest(secret);
        let mut found = None;
        for k in &self.keys {
            if same(k.digest.as_bytes(), presented.as_bytes()) {
                found = Some(k.clone());
            }
        }
        found
    }
}

/// The layer: 401 without a known key, 429 over its limit; the key goes to the handler.
pub async fn layer(State(keys): State<Arc<Keys>>, mut req: Request, next: Next) -> Response {
    let presented = req.headers().get(keys.header.as_str()).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
    let Some(key) = (!presented.is_empty()).then(|| keys.find(presented)).flatten() else {
        let what = if presented.is_empty() { "missing" } else { "unknown" };
        let mut r =
            error(StatusCode::UNAUTHORIZED, format!("{what} API key: send a key this source accepts in the {} header", keys.header));
        if let Ok(v) = HeaderValue::from_str(&format!("ApiKey header=\"{}\"", keys.header)) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return r;
    };
    let Some(limit) = key.limit else {
        req.extensions_mut().insert(key);
        return next.run(req).await;
    };
    let standing = keys.limiter.take(&key.name, limit, Instant::now());
    let mut r = if standing.allowed {
        req.extensions_mut().insert(key);
        next.run(req).await
    } else {
        error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "key {:?} is over its limit of {} requests per {} ms; retry after {} s",
                key.name, limit.max, limit.window_ms, standing.reset_secs
            ),
        )
    };
    standing.stamp(r.headers_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::{self, json};

    fn config(v: serde_json::Value) -> AuthConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn keys_are_checked_and_found_by_secret_or_digest() {
        let c = config(json!({"keys": [
            {"name": "web", "secret": "0123456789abcdef-web", "headers": {"tenant": "acme"}},
            {"name": "batch", "sha256": digest("0123456789abcdef-batch")}
        ]}));
        c.check().unwrap();
        let keys = Keys::new(&c);
        let web = keys.find("0123456789abcdef-web").unwrap();
        assert_eq!(web.stamps, vec![("auth.key".into(), b"web".to_vec()), ("tenant".into(), b"acme".to_vec())]);
        assert_eq!(keys.find("0123456789abcdef-batch").unwrap().name, "batch");
        assert!(keys.find("0123456789abcdef").is_none());
    }

    #[test]
    fn bad_keys_name_their_field() {
        let bad = |v| config(v).check().unwrap_err();
        assert!(bad(json!({"keys": []})).contains("auth.keys"));
        assert!(bad(json!({"keys": [{"name": "a", "secret": "short"}]})).contains("auth.keys[0].secret"));
        assert!(bad(json!({"keys": [{"name": "a", "sha256": "abc"}]})).contains("auth.keys[0].sha256"));
        assert!(bad(json!({"keys": [{"name": "a"}]})).contains("exactly one"));
        let two = json!({"keys": [{"name": "a", "secret": "0123456789abcdef"}, {"name": "a", "secret": "0123456789abcdeg"}]});
        assert!(bad(two).contains("auth.keys[1].name"));
        assert!(bad(json!({"keys": [{"name": "a", "secret": "0123456789abcdef", "headers": {"weir.x": "1"}}]})).contains("weir."));
    }
}
