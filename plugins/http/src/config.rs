use std::num::{NonZeroU64, NonZeroUsize};

use weir_plugin::{Deserialize, JsonSchema};

/// Config of the `http` source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, `host:port`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Path that accepts events with POST.
    #[serde(default = "default_path")]
    pub path: String,
    /// Serve HTTPS: certificate and key files (reloaded on change), optionally a CA that
    /// client certificates must be signed by. The source then takes its address whole (no
    /// other stage may serve paths on it), and on a reload its connections are closed once
    /// answered instead of being handed to the new version.
    #[serde(default)]
    pub tls: Option<weir_plugin::tls::TlsConfig>,
    /// Largest request body accepted, in bytes; a larger one gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: NonZeroUsize,
    /// Most events one request may carry; more get 413.
    #[serde(default = "default_max_events")]
    pub max_events: NonZeroUsize,
    /// How long a request waits for room in a full pipeline before it is answered 503, in milliseconds.
    #[serde(default = "default_wait")]
    pub backpressure_wait_ms: u64,
    /// How long a request waits for the pipeline's acknowledgement before it is answered
    /// 503, in milliseconds. The events may still be delivered after that: a client that
    /// retries should keep each event's id so duplicates can be dropped.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// Seconds put in `Retry-After` when answering 503.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
    /// Path answering `GET` health checks; empty to disable.
    #[serde(default = "default_health")]
    pub health_path: String,
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy you trust).
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// When to answer: `delivered` (default) waits for the pipeline's acknowledgement and
    /// reports each event's outcome (with the pipeline's `acknowledge: delivered`, a 200 means
    /// every sink has the events); `accepted` answers 202 as soon as the pipeline has queued
    /// the request, without outcomes (rejections then go to the dead-letter sink).
    #[serde(default)]
    pub respond_after: RespondAfter,
    /// Most connections open at once; one more is answered 503 with `Retry-After` and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// How long a client may take to send a request's headers, from its first byte, in
    /// milliseconds; a slower one is disconnected.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: NonZeroU64,
    /// How long a connection may stay silent, in milliseconds: between requests on a
    /// keep-alive connection (then it is closed; responses advertise it in `Keep-Alive:
    /// timeout=`) and between the pieces of a body (then the request is answered 408).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: NonZeroU64,
    /// Cross-origin requests from web pages (CORS). Unset: no CORS headers, so a browser
    /// lets no page of another origin post or read an answer.
    #[serde(default)]
    pub cors: Option<weir_plugin::serve::cors::CorsConfig>,
    /// Send the usual security headers with every answer (`X-Content-Type-Options:
    /// nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`, `Cache-Control:
    /// no-store`, a `Content-Security-Policy` that allows nothing).
    #[serde(default = "default_true")]
    pub security_headers: bool,
    /// API keys: every POST must carry one (401 otherwise), each with its own name, record
    /// headers and rate limit (429 over it). Unset: anyone who reaches the address may post.
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
}

/// When the `http` source answers a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RespondAfter {
    /// After the pipeline's acknowledgement, with every event's outcome.
    #[default]
    Delivered,
    /// As soon as the pipeline queued the events (202).
    Accepted,
}

fn default_listen() -> String {
    "127.0.0.1:3001".into()
}
fn default_path() -> String {
    "/produce".into()
}
fn default_max_body() -> NonZeroUsize {
    NonZeroUsize::new(1 << 20).expect("non-zero")
}
fn default_max_events() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}
fn default_wait() -> u64 {
    500
}
fn default_ack_timeout() -> u64 {
    30_000
}
fn default_retry_after() -> u32 {
    1
}
fn default_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(4096).expect("non-zero")
}
fn default_header_timeout() -> NonZeroU64 {
    NonZeroU64::new(10_000).expect("non-zero")
}
fn default_idle_timeout() -> NonZeroU64 {
    NonZeroU64::new(30_000).expect("non-zero")
}
fn default_true() -> bool {
    true
}
fn default_health() -> String {
    "/health".into()
}

impl HttpConfig {
    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!("path {:?} must start with `/`", self.path));
        }
        if !self.health_path.is_empty() && (!self.health_path.starts_with('/') || self.health_path == self.path) {
            return Err(format!("health_path {:?} must start with `/` and differ from path", self.health_path));
        }
        if let Some(cors) = &self.cors {
            cors.check("cors")?;
        }
        if let Some(auth) = &self.auth {
            auth.check()?;
        }
        if self.listen.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(format!("listen {:?} must be host:port", self.listen));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_neo_contract() {
        let c: HttpConfig = weir_plugin::serde_json::from_str("{}").unwrap();
        assert_eq!(c.listen, "127.0.0.1:3001");
        assert_eq!(c.path, "/produce");
        assert_eq!(c.max_events.get(), 1000);
        assert!(c.check().is_ok());
    }

    #[test]
    fn unknown_fields_and_bad_paths_are_refused() {
        assert!(weir_plugin::serde_json::from_str::<HttpConfig>(r#"{"lisen": "x"}"#).is_err());
        let c: HttpConfig = weir_plugin::serde_json::from_str(r#"{"path": "produce"}"#).unwrap();
        assert!(c.check().unwrap_err().contains("must start with"));
    }

    #[test]
    fn cors_origins_are_checked() {
        let c: HttpConfig = weir_plugin::serde_json::from_str(r#"{"cors": {"allowed_origins": ["https://app.example.com/x"]}}"#).unwrap();
        assert!(c.check().unwrap_err().contains("is not an origin"));
        let c: HttpConfig =
            weir_plugin::serde_json::from_str(r#"{"cors": {"allowed_origins": ["*"], "allow_credentials": true}}"#).unwrap();
        assert!(c.check().unwrap_err().contains("cannot go with allow_credentials"));
        let c: HttpConfig = weir_plugin::serde_json::from_str(r#"{"cors": {"allowed_origins": ["http://localhost:3000"]}}"#).unwrap();
        assert!(c.check().is_ok());
        assert_eq!(c.cors.unwrap().max_age_secs, 600);
    }
}
