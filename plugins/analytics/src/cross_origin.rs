//! Calls from web pages of other origins (CORS): browser SDKs send `X-API-Key` from their
//! own sites. A page's origin may use a key when the key's own `allowedOrigins` list it, or,
//! for a key without such a list, when the source's `cors.allowed_origins` do. A preflight
//! carries no key, so it is answered for the origins of the config and of every active key;
//! the request that follows is then held to its key's list ([`refusal`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use weir_plugin::serve::cors::{cross_origin, is_preflight, Cors, CorsConfig};

use crate::config::AnalyticsConfig;
use crate::keys::KeyRecord;
use crate::reply::ApiError;
use crate::source::Shared;

/// The policy from the config (no origins of its own when it has no `cors`), with the
/// methods the API uses.
pub fn policy(config: &AnalyticsConfig) -> Cors {
    let mut c = config.cors.clone().unwrap_or_else(|| CorsConfig::with_origins(Vec::new()));
    if config.cors.is_none() {
        c.allowed_methods = ["GET", "POST", "DELETE"].map(String::from).to_vec();
    }
    Cors::new(&c)
}

fn forbidden(message: String) -> Response {
    ApiError { status: StatusCode::FORBIDDEN, message }.into_response()
}

/// The layer over every route: answers preflights and lets allowed pages read the answers.
pub async fn layer(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(origin) = cross_origin(req.headers()).cloned() else { return next.run(req).await };
    let o = origin.as_bytes();
    let by_config = shared.cors.origins.lists(o);
    let by_key = !by_config && shared.keys.origin_listed(o);
    if is_preflight(req.method(), req.headers()) {
        if !(by_config || by_key) {
            return forbidden(format!(
                "origin {:?} is not allowed; create the key with it in allowedOrigins, or add it to the source's cors.allowed_origins",
                origin.to_str().unwrap_or("?")
            ));
        }
        return shared.cors.preflight(&origin, req.headers()).unwrap_or_else(forbidden);
    }
    let mut response = next.run(req).await;
    if by_config || by_key {
        shared.cors.answer(&origin, by_key, response.headers_mut());
    }
    response
}

/// The refusal (403) when the request comes from a page whose origin may not use `key`.
pub fn refusal(cors: &Cors, key: &KeyRecord, headers: &HeaderMap) -> Option<Response> {
    let origin = cross_origin(headers)?;
    let allowed = match &key.origins {
        Some(own) => own.lists(origin.as_bytes()),
        // A key without its own list: the config's.
        None => cors.origins.lists(origin.as_bytes()),
    };
    if allowed {
        return None;
    }
    let origin = origin.to_str().unwrap_or("?");
    Some(forbidden(match key.origins {
        Some(_) => format!("origin {origin:?} may not use this key: it is not among the key's allowedOrigins"),
        None => format!(
            "origin {origin:?} may not use this key: the key has no allowedOrigins and the source's cors.allowed_origins do not list it"
        ),
    }))
}
