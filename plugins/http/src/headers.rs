//! Headers every answer carries: CORS for the web pages allowed to call (preflights are
//! answered here, without entering the pipeline), and the usual security headers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use weir_plugin::serve::cors::{is_preflight, Cors};

use crate::config::HttpConfig;
use crate::source::error;

/// What the layer applies, prepared once from the config.
pub struct Policy {
    cors: Option<Cors>,
    security: bool,
}

impl Policy {
    /// From a checked config.
    pub fn new(config: &HttpConfig) -> Arc<Policy> {
        Arc::new(Policy { cors: config.cors.as_ref().map(Cors::new), security: config.security_headers })
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
            } else if is_preflight(req.method(), req.headers()) {
                cors.preflight(&origin, req.headers()).unwrap_or_else(|e| error(StatusCode::FORBIDDEN, e))
            } else {
                let mut r = next.run(req).await;
                cors.answer(&origin, false, r.headers_mut());
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
