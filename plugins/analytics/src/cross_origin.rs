//! Calls from web pages of other origins (CORS): browser SDKs send `X-API-Key` from their
//! own sites. A page's origin may use a key when the key's own `allowedOrigins` list it; for
//! a key without such a list, when its project's list in `project_origins` does; for a key
//! of a project without one, when the source's `cors.allowed_origins` do. A preflight carries
//! no key, so it is answered for every origin one of those lists names; the request that
//! follows is then held to its key's list ([`refusal`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use weir_plugin::origins::Origins;
use weir_plugin::serve::cors::{cross_origin, is_preflight, Cors, CorsConfig};

use crate::config::AnalyticsConfig;
use crate::keys::KeyRecord;
use crate::reply::ApiError;
use crate::source::Shared;

/// What the config allows: the listener's policy and the projects' own origins.
pub struct Policy {
    /// From `cors` (no origins of its own when the config has none), with the methods the API uses.
    pub cors: Cors,
    /// `project_origins`, by orgId, then projectId (looked up by the key's ids as they are).
    projects: HashMap<String, HashMap<String, Origins>>,
}

impl Policy {
    /// From a checked config.
    pub fn new(config: &AnalyticsConfig) -> Policy {
        let mut c = config.cors.clone().unwrap_or_else(|| CorsConfig::with_origins(Vec::new()));
        if config.cors.is_none() {
            c.allowed_methods = ["GET", "POST", "DELETE"].map(String::from).to_vec();
        }
        let mut projects: HashMap<String, HashMap<String, Origins>> = HashMap::new();
        for (tenant, list) in &config.project_origins {
            if let Some((org, project)) = tenant.split_once('/') {
                projects.entry(org.to_owned()).or_default().insert(project.to_owned(), Origins::new(list));
            }
        }
        Policy { cors: Cors::new(&c), projects }
    }

    /// The list `key` is held to when it has none of its own.
    fn for_project(&self, key: &KeyRecord) -> &Origins {
        self.projects.get(&key.org_id).and_then(|p| p.get(&key.project_id)).unwrap_or(&self.cors.origins)
    }

    /// Whether any list of the config names `origin`.
    fn lists(&self, origin: &[u8]) -> bool {
        self.cors.origins.lists(origin) || self.projects.values().flat_map(HashMap::values).any(|o| o.lists(origin))
    }
}

fn forbidden(message: String) -> Response {
    ApiError { status: StatusCode::FORBIDDEN, message }.into_response()
}

/// The layer over every route: answers preflights and lets allowed pages read the answers.
pub async fn layer(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(origin) = cross_origin(req.headers()).cloned() else { return next.run(req).await };
    let o = origin.as_bytes();
    let by_config = shared.cors.lists(o);
    let by_key = !by_config && shared.keys.origin_listed(o);
    if is_preflight(req.method(), req.headers()) {
        if !(by_config || by_key) {
            return forbidden(format!(
                "origin {:?} is not allowed; create the key with it in allowedOrigins, or add it to the source's project_origins or cors.allowed_origins",
                origin.to_str().unwrap_or("?")
            ));
        }
        return shared.cors.cors.preflight(&origin, req.headers()).unwrap_or_else(forbidden);
    }
    let mut response = next.run(req).await;
    if by_config || by_key {
        // The config's `*` answers `*`; an origin allowed by a narrower list is named.
        let exact = by_key || !shared.cors.cors.origins.lists(o);
        shared.cors.cors.answer(&origin, exact, response.headers_mut());
    }
    response
}

/// The refusal (403) when the request comes from a page whose origin may not use `key`.
pub fn refusal(policy: &Policy, key: &KeyRecord, headers: &HeaderMap) -> Option<Response> {
    let origin = cross_origin(headers)?;
    let allowed = match &key.origins {
        Some(own) => own.lists(origin.as_bytes()),
        // A key without its own list: its project's, or the listener's.
        None => policy.for_project(key).lists(origin.as_bytes()),
    };
    if allowed {
        return None;
    }
    let origin = origin.to_str().unwrap_or("?");
    Some(forbidden(match key.origins {
        Some(_) => format!("origin {origin:?} may not use this key: it is not among the key's allowedOrigins"),
        None => format!(
            "origin {origin:?} may not use this key: the key has no allowedOrigins, and neither its project's project_origins nor the source's cors.allowed_origins list it"
        ),
    }))
}
