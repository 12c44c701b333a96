//! The `analytics` source: the API's listener, its routes, key authentication and rate
//! limits, and ingest into the pipeline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use chrono::Utc;
use weir_plugin::serde_json::{self, json, Value};
use weir_plugin::serve::auth::Limiter;
use weir_plugin::serve::{self as server, Limits};
use weir_plugin::{BatchBuf, Context, EmitError, Emitter, Head, Outcome, PluginError, Source};

use crate::config::AnalyticsConfig;
use crate::db::Db;
use crate::ingest::{self, Client};
use crate::keys::{self, KeyRecord, Keys, NewKey};
use crate::query::Queries;
use crate::reply::{json_response, ApiError};
use crate::store::Store;

/// How often the key cache is reloaded (so a key revoked through another instance stops
/// working here too) and `lastUsed` written back.
const REFRESH: Duration = Duration::from_secs(5);
/// How long an ingest request waits for room in a full pipeline.
const BACKPRESSURE_WAIT: Duration = Duration::from_secs(2);
/// Seconds in `Retry-After` when the pipeline is full.
const RETRY_AFTER_FULL: u32 = 1;

/// The `analytics` source.
pub struct AnalyticsSource {
    config: AnalyticsConfig,
    ctx: Context,
    listener: Option<server::Listener>,
    /// Redis, when the config names one (moved into [`Shared`] at start).
    store: Option<Store>,
    serving: Option<server::Serving>,
}

/// What every request shares.
pub(crate) struct Shared {
    config: AnalyticsConfig,
    emitter: Emitter,
    pub(crate) keys: Keys,
    limiter: Limiter,
    live: crate::live::Live,
    /// The digest of `admin_key`; `None` when key management is off.
    admin_digest: Option<String>,
    queries: Queries,
    /// Calls from pages of other origins.
    pub(crate) cors: crate::cross_origin::Policy,
    /// Shared rate limits and the query cache, when there is a Redis.
    store: Option<Store>,
    db: Arc<Db>,
    ctx: Context,
}

impl Source for AnalyticsSource {
    type Config = AnalyticsConfig;
    const NAME: &'static str = "analytics";
    const DESCRIPTION: &'static str =
        "The Event Analytics Platform API: authenticated multi-tenant ingest, API keys, rate limits, summary, metrics and journeys.";

    fn validate(config: &AnalyticsConfig) -> Result<(), PluginError> {
        config.check().map_err(PluginError::config)
    }

    fn create(config: AnalyticsConfig, ctx: Context) -> Result<Self, PluginError> {
        let listener = server::Listener::Tcp(ctx.listen_async(&config.listen)?);
        if config.dev_key {
            ctx.warn(&format!(
                "dev_key is on: the public development key {} can write and read project sample-project; turn it off outside development",
                keys::DEV_KEY
            ));
        }
        let store = match &config.redis_url {
            Some(url) => {
                Some(Store::new(url, &config.redis_prefix, Duration::from_secs(config.cache_ttl_secs), ctx).map_err(PluginError::config)?)
            }
            None => None,
        };
        Ok(AnalyticsSource { config, ctx, listener: Some(listener), store, serving: None })
    }

    fn start(&mut self, emitter: Emitter) -> Result<(), PluginError> {
        let listener = self.listener.take().ok_or_else(|| PluginError::fatal("the source was already started"))?;
        let ctx = self.ctx;
        let c = &self.config;
        let ca = c.database_tls_ca_file.as_ref().map(|ca| ctx.resolve(ca));
        let db = Arc::new(Db::new(&c.database_url, c.database_tls, ca, c.database_connections, &c.work_mem, ctx));
        let shared = Arc::new(Shared {
            keys: Keys::new(db.clone(), &self.config.schema, self.config.dev_key),
            limiter: Limiter::default(),
            live: crate::live::Live::default(),
            admin_digest: (!self.config.admin_key.is_empty()).then(|| keys::digest(&self.config.admin_key)),
            queries: Queries {
                db: db.clone(),
                table: self.config.events_table.clone(),
                schema: self.config.schema.clone(),
                rolled: Arc::default(),
                rollups: Arc::new(crate::rollup::Rollups::new(&self.config.schema)),
                ctx,
            },
            cors: crate::cross_origin::Policy::new(&self.config),
            store: self.store.take(),
            config: self.config.clone(),
            emitter,
            db,
            ctx,
        });
        let write =
            Router::new().route("/api/v1/events", post(ingest_events)).route_layer(middleware::from_fn_with_state(keys::WRITE, permitted));
        let read = Router::new()
            .route("/api/v1/events/summary", get(summary))
            .route("/api/v1/events/live", get(live))
            .route("/api/v1/metrics", get(metrics))
            .route("/api/v1/users/{user}/journey", get(journey))
            .route("/api/v1/retention", get(retention))
            .route("/api/v1/funnels", post(create_funnel).get(list_funnels))
            .route("/api/v1/funnels/{id}", get(get_funnel).delete(delete_funnel))
            .route("/api/v1/funnels/{id}/analytics", get(funnel_analytics))
            .route_layer(middleware::from_fn_with_state(keys::READ, permitted));
        // The key is found first, then its permission for the route checked.
        let tenant = read.merge(write).route_layer(middleware::from_fn_with_state(shared.clone(), authenticate));
        let app = Router::new()
            .route("/health", get(health))
            .route("/api-docs", get(crate::openapi::page))
            .route("/api-docs/openapi.json", get(crate::openapi::document))
            .route("/api-docs/swagger-ui-bundle.js", get(crate::openapi::bundle))
            .route("/api-docs/swagger-ui.css", get(crate::openapi::css))
            .route("/api-docs/init.js", get(crate::openapi::init))
            .route("/api/v1/keys", post(create_key).get(list_keys))
            .route("/api/v1/keys/{id}", delete(revoke_key))
            .merge(tenant)
            .fallback(|| async { ApiError::not_found("no such endpoint") })
            .layer(middleware::from_fn_with_state(shared.clone(), crate::cross_origin::layer))
            .with_state(shared.clone());
        ctx.info(&format!("Analytics API listening on {}.", self.config.listen));
        let limits = Limits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            retry_after_secs: 1,
        };
        let background = weir_plugin::runtime().spawn(async move {
            tokio::join!(refresh(shared.clone()), drain(shared));
        });
        self.serving = Some(server::Serving::start(listener, app, limits, server::Connections::default(), ctx, Some(background)));
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        self.serving.as_mut().map_or(Ok(()), server::Serving::stop)
    }
}

/// Creates the keys table once the database answers, then keeps the key cache fresh and
/// writes `lastUsed` back.
async fn refresh(shared: Arc<Shared>) {
    let mut prepared = false;
    loop {
        if !prepared {
            prepared = prepare(&shared).await;
        }
        if prepared {
            if let Err(e) = shared.keys.load().await {
                shared.ctx.warn(&e);
            }
            shared.keys.write_back().await;
            if !shared.queries.rolled() {
                roll_up(&shared).await;
            }
        }
        // Until the rollups are on, look again soon: the events table appears with the
        // postgres sink's start.
        let pause = if shared.queries.rolled() { REFRESH } else { Duration::from_millis(500) };
        tokio::time::sleep(pause).await;
    }
}

/// Rolls up the queued events every `rollup_every_ms`, once the rollups are on.
async fn drain(shared: Arc<Shared>) {
    loop {
        if shared.queries.rolled() {
            if let Err(e) = shared.queries.rollups.drain(&shared.db).await {
                shared.ctx.warn(&format!("{e}; retrying in {} s", REFRESH.as_secs()));
                tokio::time::sleep(REFRESH).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(shared.config.rollup_every_ms)).await;
    }
}

/// Once the events table exists: creates the rollups and the trigger that keeps them, and
/// rolls up what is stored (under the same lock as [`prepare`]).
async fn roll_up(shared: &Shared) {
    let (schema, events) = (&shared.config.schema, &shared.config.events_table);
    let Ok(client) = shared.db.client().await else { return };
    let exists = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[events]).await.map(|r| r.get::<_, bool>(0));
    if !matches!(exists, Ok(true)) {
        return;
    }
    let sql = format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('weir-analytics')); {} {} COMMIT;",
        crate::rollup::ddl(schema),
        crate::rollup::attach(schema, events)
    );
    match client.batch_execute(&sql).await {
        Ok(()) => {
            shared.queries.rolled.store(true, std::sync::atomic::Ordering::Release);
            shared.ctx.info(&format!("Rollups of {events} kept in {schema}.rollup_days, fed by {schema}.rollup_queue."));
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            shared
                .ctx
                .warn(&format!("cannot set up the rollups of {events}: {}; queries read the events meanwhile", crate::db::detail(&e)));
        }
    }
}

/// Creates the schema and the keys table (under a lock, as several instances may start at once).
async fn prepare(shared: &Shared) -> bool {
    let ddl = format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('weir-analytics')); CREATE SCHEMA IF NOT EXISTS {}; {} {} COMMIT;",
        shared.config.schema,
        shared.keys.ddl(),
        crate::funnels::ddl(&shared.config.schema)
    );
    let result = match shared.db.client().await {
        Ok(client) => {
            client.batch_execute(&ddl).await.map_err(|e| format!("cannot create the keys and funnels tables: {}", crate::db::detail(&e)))
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            shared.ctx.warn(&format!("{e}; retrying in {} s", REFRESH.as_secs()));
            false
        }
    }
}

#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, description = "up", body = crate::openapi::Health)))]
pub(crate) async fn health(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, json!({"status": "healthy", "timestamp": keys::iso(Utc::now()), "rollups": shared.queries.rolled()}))
}

/// The query string's parameters (the last of a repeated one wins).
fn params(req_query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(req_query.unwrap_or("").as_bytes()).into_owned().collect()
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError { status: StatusCode::UNAUTHORIZED, message: message.into() }.into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey header=\"X-API-Key\""));
    r
}

/// Finds the request's key, counts it against its rate limit, and hands it to the handler.
async fn authenticate(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let Some(secret) = header.or_else(|| crate::live::key_from_protocols(req.headers())) else {
        return unauthorized("missing X-API-Key header; send the key this project was given");
    };
    let secret = secret.as_str();
    let key = match shared.keys.find(secret).await {
        Ok(Some(k)) => k,
        Ok(None) => return unauthorized("unknown or revoked API key"),
        Err(e) => {
            shared.ctx.warn(&e);
            return ApiError::unavailable().into_response();
        }
    };
    if let Some(refused) = crate::cross_origin::refusal(&shared.cors, &key, req.headers()) {
        return refused;
    }
    let limit = key.rate_limit.unwrap_or(shared.config.rate_limit);
    let shared_window = match &shared.store {
        Some(store) => store.take(&key.id, limit).await,
        None => None,
    };
    let standing = shared_window.unwrap_or_else(|| shared.limiter.take(&key.id, limit, Instant::now()));
    let mut response = if standing.allowed {
        req.extensions_mut().insert(Arc::new(key));
        next.run(req).await
    } else {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "this key is over its limit of {} requests per {} s; retry after {} s",
                limit.max,
                limit.window_ms / 1000,
                standing.reset_secs
            ),
        }
        .into_response()
    };
    standing.stamp(response.headers_mut());
    response
}

/// 403 unless the request's key holds `permission` (after [`authenticate`]).
async fn permitted(
    State(permission): State<&'static str>,
    Extension(key): Extension<Arc<KeyRecord>>,
    req: Request,
    next: Next,
) -> Response {
    if !key.may(permission) {
        return ApiError { status: StatusCode::FORBIDDEN, message: format!("this key lacks the {permission} permission") }.into_response();
    }
    next.run(req).await
}

#[utoipa::path(get, path = "/api/v1/events/live", tag = "events", security(("api_key" = [])), responses((status = 101, description = "a WebSocket of the project's events as they are stored, one text message each"), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 426, description = "not a WebSocket request", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody)))]
pub(crate) async fn live(State(shared): State<Arc<Shared>>, Extension(key): Extension<Arc<KeyRecord>>, req: Request) -> Response {
    shared.live.upgrade(&key, req)
}

#[utoipa::path(get, path = "/api/v1/events/summary", tag = "analytics", params(crate::openapi::RangeParams), security(("api_key" = [])), responses((status = 200, description = "totals", body = crate::openapi::Summary), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn summary(State(shared): State<Arc<Shared>>, Extension(key): Extension<Arc<KeyRecord>>, req: Request) -> Response {
    cached(&shared, &key, req.uri(), shared.queries.summary(&key, &params(req.uri().query()))).await
}

#[utoipa::path(get, path = "/api/v1/metrics", tag = "analytics", params(crate::openapi::MetricsParams, crate::openapi::RangeParams), security(("api_key" = [])), responses((status = 200, description = "buckets", body = crate::openapi::Metrics), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>, Extension(key): Extension<Arc<KeyRecord>>, req: Request) -> Response {
    cached(&shared, &key, req.uri(), shared.queries.metrics(&key, &params(req.uri().query()))).await
}

#[utoipa::path(get, path = "/api/v1/users/{userId}/journey", tag = "analytics", params(("userId" = String, Path, description = "The user"), crate::openapi::PageParams, crate::openapi::RangeParams), security(("api_key" = [])), responses((status = 200, description = "a page of events", body = crate::openapi::Journey), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn journey(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<KeyRecord>>,
    Path(user): Path<String>,
    req: Request,
) -> Response {
    answer(shared.queries.journey(&key, &user, &params(req.uri().query()), shared.config.journey_limit).await)
}

#[utoipa::path(get, path = "/api/v1/retention", tag = "analytics", params(crate::openapi::RetentionParams, crate::openapi::RangeParams), security(("api_key" = [])), responses((status = 200, description = "cohorts", body = crate::openapi::Retention), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn retention(State(shared): State<Arc<Shared>>, Extension(key): Extension<Arc<KeyRecord>>, req: Request) -> Response {
    cached(&shared, &key, req.uri(), shared.queries.retention(&key, &params(req.uri().query()))).await
}

#[utoipa::path(post, path = "/api/v1/funnels", tag = "funnels", request_body = crate::openapi::NewFunnel, security(("api_key" = [])), responses((status = 201, description = "stored", body = crate::openapi::Funnel), (status = 400, description = "a bad funnel, the field named", body = crate::openapi::ErrorBody), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn create_funnel(State(shared): State<Arc<Shared>>, Extension(key): Extension<Arc<KeyRecord>>, body: Bytes) -> Response {
    let new: crate::funnels::NewFunnel = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return ApiError::body(format!("the funnel is not valid: {e}")).into_response(),
    };
    match shared.queries.create_funnel(&key, new).await {
        Ok(body) => {
            changed(&shared, &key).await;
            json_response(StatusCode::CREATED, body)
        }
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(get, path = "/api/v1/funnels", tag = "funnels", security(("api_key" = [])), responses((status = 200, description = "the project's funnels", body = crate::openapi::FunnelList), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list_funnels(State(shared): State<Arc<Shared>>, Extension(key): Extension<Arc<KeyRecord>>) -> Response {
    answer(shared.queries.list_funnels(&key).await)
}

#[utoipa::path(get, path = "/api/v1/funnels/{id}", tag = "funnels", params(("id" = String, Path, description = "The funnel")), security(("api_key" = [])), responses((status = 200, description = "the funnel", body = crate::openapi::Funnel), (status = 404, description = "no such funnel in this project", body = crate::openapi::ErrorBody), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn get_funnel(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<KeyRecord>>,
    Path(id): Path<String>,
) -> Response {
    answer(shared.queries.get_funnel(&key, &id).await)
}

#[utoipa::path(delete, path = "/api/v1/funnels/{id}", tag = "funnels", params(("id" = String, Path, description = "The funnel")), security(("api_key" = [])), responses((status = 200, description = "deleted", body = crate::openapi::Deleted), (status = 404, description = "no such funnel in this project", body = crate::openapi::ErrorBody), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn delete_funnel(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<KeyRecord>>,
    Path(id): Path<String>,
) -> Response {
    let deleted = shared.queries.delete_funnel(&key, &id).await;
    if deleted.is_ok() {
        changed(&shared, &key).await;
    }
    answer(deleted)
}

#[utoipa::path(get, path = "/api/v1/funnels/{id}/analytics", tag = "funnels", params(("id" = String, Path, description = "The funnel"), crate::openapi::FunnelParams, crate::openapi::RangeParams), security(("api_key" = [])), responses((status = 200, description = "figures per step", body = crate::openapi::FunnelAnalytics), (status = 404, description = "no such funnel in this project", body = crate::openapi::ErrorBody), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks analytics:read", body = crate::openapi::ErrorBody), (status = 422, description = "a bad parameter, named", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn funnel_analytics(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<KeyRecord>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    cached(&shared, &key, req.uri(), shared.queries.funnel_analytics(&key, &id, &params(req.uri().query()))).await
}

/// A query's answer: from the cache when it holds one for this tenant and request (path and
/// query), else from `query`, then kept. `X-Cache` says which.
async fn cached(
    shared: &Shared,
    key: &KeyRecord,
    uri: &axum::http::Uri,
    query: impl std::future::Future<Output = Result<Value, ApiError>>,
) -> Response {
    let request = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let entry = match &shared.store {
        Some(store) => store.cached(key, request).await,
        None => None,
    };
    let with_cache = |text: String, state: &'static str| {
        let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], text).into_response();
        r.headers_mut().insert("x-cache", HeaderValue::from_static(state));
        r
    };
    match entry {
        Some((_, Some(hit))) => with_cache(hit, "hit"),
        entry => match query.await {
            Ok(body) => {
                let text = body.to_string();
                if let (Some(store), Some((entry, None))) = (&shared.store, &entry) {
                    store.keep(entry, &text).await;
                }
                with_cache(text, if entry.is_some() { "miss" } else { "off" })
            }
            Err(e) => e.into_response(),
        },
    }
}

/// The key's tenant changed its data: its cached answers go.
async fn changed(shared: &Shared, key: &KeyRecord) {
    if let Some(store) = &shared.store {
        store.changed(key).await;
    }
}

fn answer(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => e.into_response(),
    }
}

/// The refusal for a request without the admin key (compared by digest, in constant time).
fn not_admin(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let Some(admin) = &shared.admin_digest else {
        return Some(
            ApiError { status: StatusCode::FORBIDDEN, message: "key management is off: set the source's admin_key".into() }.into_response(),
        );
    };
    let given = headers.get("x-admin-key").and_then(|v| v.to_str().ok()).unwrap_or("");
    if given.is_empty() || !keys::same(keys::digest(given).as_bytes(), admin.as_bytes()) {
        return Some(unauthorized("missing or wrong X-Admin-Key header"));
    }
    None
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = crate::openapi::NewKey, security(("admin_key" = [])), responses((status = 201, description = "created; the secret is shown this once", body = crate::openapi::CreatedKey), (status = 400, description = "a bad request, the field named", body = crate::openapi::ErrorBody), (status = 401, description = "missing or wrong X-Admin-Key", body = crate::openapi::ErrorBody), (status = 403, description = "key management is off", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn create_key(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = not_admin(&shared, &headers) {
        return r;
    }
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return ApiError::body(format!("the key request is not valid: {e}")).into_response(),
    };
    if let Err(e) = new.check() {
        return ApiError::body(e).into_response();
    }
    match shared.keys.create(new).await {
        Ok(body) => json_response(StatusCode::CREATED, body),
        Err(e) => {
            shared.ctx.warn(&e);
            ApiError::unavailable().into_response()
        }
    }
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", security(("admin_key" = [])), responses((status = 200, description = "every key, no secrets", body = crate::openapi::KeyList), (status = 401, description = "missing or wrong X-Admin-Key", body = crate::openapi::ErrorBody), (status = 403, description = "key management is off", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list_keys(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = not_admin(&shared, &headers) {
        return r;
    }
    match shared.keys.list().await {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => {
            shared.ctx.warn(&e);
            ApiError::unavailable().into_response()
        }
    }
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "The key")), security(("admin_key" = [])), responses((status = 200, description = "revoked", body = crate::openapi::Revoked), (status = 401, description = "missing or wrong X-Admin-Key", body = crate::openapi::ErrorBody), (status = 403, description = "key management is off", body = crate::openapi::ErrorBody), (status = 404, description = "no such active key", body = crate::openapi::ErrorBody), (status = 503, description = "the database is not available", body = crate::openapi::ErrorBody)))]
pub(crate) async fn revoke_key(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = not_admin(&shared, &headers) {
        return r;
    }
    match shared.keys.revoke(&id).await {
        Ok(true) => json_response(StatusCode::OK, json!({"success": true, "id": id, "isActive": false})),
        Ok(false) => ApiError::not_found(format!("no active key with id {id:?}")).into_response(),
        Err(e) => {
            shared.ctx.warn(&e);
            ApiError::unavailable().into_response()
        }
    }
}

/// `POST /api/v1/events`.
#[utoipa::path(post, path = "/api/v1/events", tag = "events", request_body = crate::openapi::IngestBody, security(("api_key" = [])), responses((status = 200, description = "what became of each event", body = crate::openapi::IngestAnswer), (status = 500, description = "some events could not be stored", body = crate::openapi::IngestAnswer), (status = 400, description = "nothing taken: the first reason, naming the field (also malformed JSON)", body = crate::openapi::ErrorBody), (status = 401, description = "missing, unknown or revoked key", body = crate::openapi::ErrorBody), (status = 403, description = "the key lacks events:write", body = crate::openapi::ErrorBody), (status = 413, description = "too many events or bytes", body = crate::openapi::ErrorBody), (status = 415, description = "not JSON", body = crate::openapi::ErrorBody), (status = 429, description = "over the key's rate limit (Retry-After)", body = crate::openapi::ErrorBody), (status = 503, description = "the pipeline is full or the database is not available (Retry-After)", body = crate::openapi::ErrorBody)))]
pub(crate) async fn ingest_events(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<KeyRecord>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !server::is_json(&headers) {
        return ApiError { status: StatusCode::UNSUPPORTED_MEDIA_TYPE, message: "Content-Type must be application/json".into() }
            .into_response();
    }
    let max = shared.config.max_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, max).await else {
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the body is larger than the {max} bytes allowed (or was cut short); send fewer events per request"),
        }
        .into_response();
    };
    // Each event's text; an event is read member by member only once it is known to be one.
    let parsed = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&bytes),
        _ => serde_json::from_slice(&bytes).map(|single| vec![single]),
    };
    let events = match parsed {
        Ok(events) => events,
        Err(e) => return ApiError::body(format!("malformed JSON: {e}")).into_response(),
    };
    if events.is_empty() {
        return ApiError::body("the array holds no events").into_response();
    }
    if events.len() > shared.config.max_events {
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the array holds {} events; the most one request may carry is {}", events.len(), shared.config.max_events),
        }
        .into_response();
    }
    let ip = peer.ip().to_string();
    let client = Client { ip: &ip, user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()), received: Utc::now() };
    let mut rejected: Vec<(usize, String)> = Vec::new();
    let mut records: Vec<(usize, ingest::Stored)> = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        match ingest::record(event, &key, &client, || keys::uuid().unwrap_or_else(|_| format!("{}-{i}", Utc::now().timestamp_micros()))) {
            Ok(r) => records.push((i, r)),
            Err(e) => rejected.push((i, e)),
        }
    }
    let now_ms = client.received.timestamp_millis();
    let mut batch = BatchBuf::with_capacity(records.len(), bytes.len() + records.len() * 256);
    let meta: [(&str, &[u8]); 1] = [("http.client_ip", ip.as_bytes())];
    let mut texts: Vec<Arc<str>> = Vec::with_capacity(records.len());
    for (n, (_, r)) in records.iter().enumerate() {
        let head = Head { key: Some(r.user.as_bytes()), headers_raw: &[], extra_headers: &meta, timestamp_ms: Some(now_ms) };
        batch.push(n as u32, head, r.text.as_bytes());
        texts.push(Arc::from(r.text.as_str()));
    }
    let mut failed: Vec<(usize, String)> = Vec::new();
    let (mut accepted, mut duplicates) = (0usize, 0usize);
    if !records.is_empty() {
        let ack = match send(&shared, &batch).await {
            Ok(ack) => ack,
            Err(r) => return r,
        };
        let tenant = Arc::new((key.org_id.clone(), key.project_id.clone()));
        let stored = texts.iter().zip(&ack.outcomes).filter(|(_, o)| **o == Outcome::Accepted);
        shared.live.publish(stored.map(|(t, _)| crate::live::Stored { tenant: tenant.clone(), text: t.clone() }));
        for ((index, _), outcome) in records.iter().zip(ack.outcomes.iter()) {
            match outcome {
                Outcome::Accepted => accepted += 1,
                Outcome::Dropped => duplicates += 1,
                Outcome::Rejected(reason) => rejected.push((*index, reason.clone())),
                Outcome::Failed(reason) => failed.push((*index, reason.clone())),
            }
        }
    }
    if accepted > 0 {
        changed(&shared, &key).await;
    }
    rejected.sort_by_key(|(i, _)| *i);
    let list = |items: &[(usize, String)]| -> Vec<Value> { items.iter().map(|(i, e)| json!({"index": i, "error": e})).collect() };
    let status = if !failed.is_empty() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if accepted + duplicates == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut body = json!({
        "success": rejected.is_empty() && failed.is_empty(),
        "accepted": accepted, "duplicates": duplicates, "rejected": list(&rejected),
    });
    if !failed.is_empty() {
        body["failed"] = Value::Array(list(&failed));
    }
    if status == StatusCode::BAD_REQUEST {
        if let Some((i, e)) = rejected.first() {
            body["error"] = Value::String(if events.len() == 1 { e.clone() } else { format!("event {i}: {e}") });
        }
    }
    json_response(status, body)
}

/// Hands `batch` to the pipeline and waits for its outcomes, waiting a little for room when
/// the pipeline is full.
async fn send(shared: &Shared, batch: &BatchBuf) -> Result<weir_plugin::Ack, Response> {
    let busy = |message: String| {
        let mut r = ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message }.into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_FULL));
        r
    };
    let view = batch.as_ref();
    let sent = Emitter::offer(BACKPRESSURE_WAIT, || shared.emitter.send(&view));
    match tokio::time::timeout(Duration::from_millis(shared.config.ack_timeout_ms), sent).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(EmitError::Full)) => Err(busy("the pipeline is full; retry later".into())),
        Ok(Err(e)) => Err(busy(format!("the pipeline is not taking events: {e}"))),
        Err(_) => Err(busy(format!(
            "the pipeline did not confirm storage within {} ms; the events may still be stored, so retry with the same eventIds",
            shared.config.ack_timeout_ms
        ))),
    }
}
