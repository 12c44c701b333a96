//! Cross-origin requests from web pages (CORS) for a plugin's HTTP API (feature `serve`):
//! the config a pipeline gives ([`CorsConfig`]) and the policy prepared from it once
//! ([`Cors`]), which answers preflights and adds the `Access-Control-*` headers. Which
//! origins a request may come from is the caller's decision (one list for a listener, or a
//! list per API key); this module says what a browser is told.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;

use crate::origins::Origins;

/// Which web pages of other origins may call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins whose pages may call, as browsers send them (`https://app.example.com`,
    /// `http://localhost:3000`); `*` for any. A request from another origin gets 403.
    pub allowed_origins: Vec<String>,
    /// Methods a page may use.
    #[serde(default = "default_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a page may send, besides the ones browsers always allow.
    #[serde(default = "default_headers")]
    pub allowed_headers: Vec<String>,
    /// Answer headers a page may read, besides the ones browsers always show.
    #[serde(default = "default_expose")]
    pub expose_headers: Vec<String>,
    /// Let pages send cookies and HTTP authentication (then `allowed_origins` must list
    /// origins, not `*`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may keep a preflight's answer, in seconds.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u32,
}

fn default_methods() -> Vec<String> {
    vec!["POST".into(), "GET".into()]
}
fn default_headers() -> Vec<String> {
    ["content-type", "x-api-key", "traceparent", "tracestate"].map(String::from).to_vec()
}
fn default_expose() -> Vec<String> {
    ["retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"].map(String::from).to_vec()
}
fn default_max_age() -> u32 {
    600
}

/// Checks a list of origins given in field `field`: not empty, each `*` or `scheme://host[:port]`.
pub fn check_origins(field: &str, origins: &[String], credentials: bool) -> Result<(), String> {
    if origins.is_empty() {
        return Err(format!("{field} is empty: list the origins of the pages that may call (or leave it out)"));
    }
    for origin in origins {
        if origin == "*" {
            if credentials {
                return Err(format!("{field} `*` cannot go with allow_credentials: list the origins"));
            }
            continue;
        }
        let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.contains('/')) {
            return Err(format!(
                "{field}: {origin:?} is not an origin: write scheme://host[:port] with no path, e.g. https://app.example.com"
            ));
        }
    }
    Ok(())
}

impl CorsConfig {
    /// A config allowing `origins`, with the default methods, headers and max age.
    pub fn with_origins(origins: Vec<String>) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins,
            allowed_methods: default_methods(),
            allowed_headers: default_headers(),
            expose_headers: default_expose(),
            allow_credentials: false,
            max_age_secs: default_max_age(),
        }
    }

    /// Checks the origins and names (`field` is where the config sits, e.g. `cors`).
    pub fn check(&self, field: &str) -> Result<(), String> {
        check_origins(&format!("{field}.allowed_origins"), &self.allowed_origins, self.allow_credentials)?;
        for name in self.allowed_headers.iter().chain(&self.expose_headers) {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("{field}: {name:?} is not a header name"));
            }
        }
        for method in &self.allowed_methods {
            if Method::from_bytes(method.as_bytes()).is_err() {
                return Err(format!("{field}.allowed_methods: {method:?} is not a method"));
            }
        }
        Ok(())
    }
}

/// The policy, prepared once from a checked [`CorsConfig`].
#[derive(Debug)]
pub struct Cors {
    /// The config's origins.
    pub origins: Origins,
    methods: Vec<Method>,
    /// Lower-case names.
    headers: Vec<String>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

fn list(items: &[String]) -> HeaderValue {
    HeaderValue::from_str(&items.join(", ")).unwrap_or(HeaderValue::from_static(""))
}

/// Whether a request is a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The request's `Origin` when it names another origin than the one the request was sent
/// to (`Host`): a page of another site. `None` for programs (no `Origin`) and for pages of
/// the server itself.
pub fn cross_origin(headers: &HeaderMap) -> Option<&HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes).unwrap_or_default();
    let o = origin.as_bytes();
    let same =
        |scheme: &[u8]| o.len() == scheme.len() + host.len() && o.starts_with(scheme) && o[scheme.len()..].eq_ignore_ascii_case(host);
    (host.is_empty() || !(same(b"http://") || same(b"https://"))).then_some(origin)
}

impl Cors {
    /// From a checked config.
    pub fn new(c: &CorsConfig) -> Cors {
        Cors {
            origins: Origins::new(&c.allowed_origins),
            methods: c.allowed_methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect(),
            headers: c.allowed_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allow_methods: list(&c.allowed_methods),
            allow_headers: list(&c.allowed_headers),
            expose: (!c.expose_headers.is_empty()).then(|| list(&c.expose_headers)),
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age_secs),
        }
    }

    /// The answer to a preflight from `origin` (already found allowed): 204 with what the
    /// page may do, or `Err` saying what is not allowed (for a 403).
    pub fn preflight(&self, origin: &HeaderValue, headers: &HeaderMap) -> Result<Response, String> {
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD);
        if !asked.and_then(|m| Method::from_bytes(m.as_bytes()).ok()).is_some_and(|m| self.methods.contains(&m)) {
            let name = asked.and_then(|m| m.to_str().ok()).unwrap_or("?");
            return Err(format!("method {name} is not in cors.allowed_methods"));
        }
        let requested = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).and_then(|v| v.to_str().ok()).unwrap_or("");
        if let Some(h) = requested.split(',').map(|h| h.trim().to_ascii_lowercase()).find(|h| !h.is_empty() && !self.headers.contains(h)) {
            return Err(format!("request header {h:?} is not in cors.allowed_headers"));
        }
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        self.allow(origin, false, h);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Ok(r)
    }

    /// Adds to an answer for a page from `origin` (already found allowed) the headers that let
    /// the page read it; `exact` names the origin even when the config allows any (the
    /// origin was allowed by a narrower list, such as an API key's).
    pub fn allow(&self, origin: &HeaderValue, exact: bool, h: &mut HeaderMap) {
        let value = if self.origins.any() && !self.credentials && !exact { HeaderValue::from_static("*") } else { origin.clone() };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.append(header::VARY, HeaderValue::from_static("origin"));
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }

    /// [`Cors::allow`] for an answer that is not a preflight: also the headers a page may read.
    pub fn answer(&self, origin: &HeaderValue, exact: bool, h: &mut HeaderMap) {
        self.allow(origin, exact, h);
        if let Some(expose) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(json: &str) -> Cors {
        let config: CorsConfig = serde_json::from_str(json).unwrap();
        config.check("cors").unwrap();
        Cors::new(&config)
    }

    #[test]
    fn preflights_say_what_a_page_may_do_or_what_it_may_not() {
        let c = cors(r#"{"allowed_origins": ["http://localhost:3000"]}"#);
        assert!(c.origins.lists(b"http://localhost:3000") && !c.origins.lists(b"http://evil.example"));
        let origin = HeaderValue::from_static("http://localhost:3000");
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("Content-Type, X-API-Key, traceparent"));
        let r = c.preflight(&origin, &h).unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://localhost:3000");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
        h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("x-secret"));
        assert!(c.preflight(&origin, &h).unwrap_err().contains("x-secret"));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("DELETE"));
        assert!(c.preflight(&origin, &h).unwrap_err().contains("DELETE"));
    }

    #[test]
    fn any_origin_answers_a_star_unless_credentials_or_a_narrower_list() {
        let c = cors(r#"{"allowed_origins": ["*"]}"#);
        let page = HeaderValue::from_static("https://a.example");
        let mut h = HeaderMap::new();
        c.answer(&page, false, &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset");
        c.answer(&page, true, &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
    }

    #[test]
    fn a_page_of_the_server_itself_is_not_cross_origin() {
        let mut h = HeaderMap::new();
        assert!(cross_origin(&h).is_none());
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:3000"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:3000"));
        assert!(cross_origin(&h).is_none());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:3001"));
        assert_eq!(cross_origin(&h).unwrap(), "http://127.0.0.1:3001");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(cross_origin(&h).is_some());
    }

    #[test]
    fn configs_are_checked_with_the_field_named() {
        let bad = |json: &str| serde_json::from_str::<CorsConfig>(json).unwrap().check("cors").unwrap_err();
        assert!(bad(r#"{"allowed_origins": ["https://app.example.com/x"]}"#).contains("cors.allowed_origins"));
        assert!(bad(r#"{"allowed_origins": ["*"], "allow_credentials": true}"#).contains("allow_credentials"));
        assert!(bad(r#"{"allowed_origins": []}"#).contains("is empty"));
        assert!(bad(r#"{"allowed_origins": ["*"], "allowed_methods": ["GE T"]}"#).contains("GE T"));
    }
}
