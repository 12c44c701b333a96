//! Headers every answer carries: CORS for the web pages allowed to call (preflights are
//! answered here, without entering the pipeline), and the usual security headers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use weir_plugin::origins::Origins;

use crate::config::{CorsConfig, HttpConfig};
use crate::source::error;

/// What the layer applies, prepared once from the config.
pub struct Policy {
    cors: Option<Cors>,
    security: bool,
}

struct Cors {
    origins: Origins,
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

impl Policy {
    /// From a checked config.
    pub fn new(config: &HttpConfig) -> Arc<Policy> {
        let cors = config.cors.as_ref().map(|c: &CorsConfig| Cors {
            origins: Origins::new(&c.allowed_origins),
            methods: c.allowed_methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect(),
            headers: c.allowed_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allow_methods: list(&c.allowed_methods),
            allow_headers: list(&c.allowed_headers),
            expose: (!c.expose_headers.is_empty()).then(|| list(&c.expose_headers)),
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age_secs),
        });
        Arc::new(Policy { cors, security: config.security_headers })
    }
}

impl Cors {
    /// The preflight's answer: 204 with what the page may do, or 403 saying what is not allowed.
    fn preflight(&self, origin: &HeaderValue, headers: &HeaderMap) -> Response {
        let method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if !method.as_ref().is_some_and(|m| self.methods.contains(m)) {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "method {} is not in cors.allowed_methods",
                    headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|m| m.to_str().ok()).unwrap_or("?")
                ),
            );
        }
        let requested = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).and_then(|v| v.to_str().ok()).unwrap_or("");
        if let Some(h) = requested.split(',').map(|h| h.trim().to_ascii_lowercase()).find(|h| !h.is_empty() && !self.headers.contains(h)) {
            return error(StatusCode::FORBIDDEN, format!("request header {h:?} is not in cors.allowed_headers"));
        }
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        self.allow(origin, h);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        r
    }

    fn allow(&self, origin: &HeaderValue, h: &mut HeaderMap) {
        let value = if self.origins.any() && !self.credentials { HeaderValue::from_static("*") } else { origin.clone() };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.append(header::VARY, HeaderValue::from_static("origin"));
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

const SECURITY: [(HeaderName, &str); 5] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
];

/// The layer: answers preflights, refuses origins not allowed, adds the headers.
pub async fn layer(State(policy): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = match (&policy.cors, origin) {
        (Some(cors), Some(origin)) => {
            let text = origin.to_str().unwrap_or("");
            if !cors.origins.lists(text.as_bytes()) {
                error(StatusCode::FORBIDDEN, format!("origin {text:?} is not allowed; add it to cors.allowed_origins"))
            } else if req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
                cors.preflight(&origin, req.headers())
            } else {
                let mut r = next.run(req).await;
                cors.allow(&origin, r.headers_mut());
                if let Some(expose) = &cors.expose {
                    r.headers_mut().insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
                }
                r
            }
        }
        _ => next.run(req).await,
    };
    if policy.security {
        let h = response.headers_mut();
        for (name, value) in SECURITY {
            h.entry(name).or_insert(HeaderValue::from_static(value));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(json: &str) -> Cors {
        let config: HttpConfig = weir_plugin::serde_json::from_str(json).unwrap();
        Arc::into_inner(Policy::new(&config)).unwrap().cors.unwrap()
    }

    #[test]
    fn preflights_say_what_a_page_may_do_or_what_it_may_not() {
        let c = cors(r#"{"cors": {"allowed_origins": ["http://localhost:3000"]}}"#);
        assert!(c.origins.lists(b"http://localhost:3000") && !c.origins.lists(b"http://evil.example"));
        let origin = HeaderValue::from_static("http://localhost:3000");
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("Content-Type, traceparent"));
        let r = c.preflight(&origin, &h);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://localhost:3000");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
        h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("x-secret"));
        assert_eq!(c.preflight(&origin, &h).status(), StatusCode::FORBIDDEN);
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("DELETE"));
        assert_eq!(c.preflight(&origin, &h).status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn any_origin_answers_a_star_unless_credentials() {
        let c = cors(r#"{"cors": {"allowed_origins": ["*"]}}"#);
        let mut h = HeaderMap::new();
        c.allow(&HeaderValue::from_static("https://a.example"), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
