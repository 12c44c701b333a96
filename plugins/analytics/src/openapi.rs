//! The API's OpenAPI 3.1 document, generated from the handlers' annotations (`utoipa`), and
//! the Swagger UI that shows it (`GET /api-docs`), its assets built into the library.
//!
//! The types here describe the JSON bodies the handlers write; the end-to-end tests check
//! every answer against this document (schemathesis), so the two cannot drift apart.

#![allow(dead_code)]

use std::collections::BTreeMap;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use weir_plugin::serde_json::Value;

/// An error: what is wrong and what to do.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// Always false.
    success: bool,
    /// What is wrong, naming the field or parameter.
    error: String,
}

/// One event to ingest.
#[derive(ToSchema, serde::Serialize)]
#[schema(rename_all = "camelCase")]
pub struct IngestEvent {
    /// The user (required).
    #[schema(min_length = 1, max_length = 200)]
    user_id: String,
    /// The event (required).
    #[schema(min_length = 1, max_length = 200)]
    event_name: String,
    /// ISO-8601; the receive time when absent.
    #[schema(format = DateTime)]
    timestamp: Option<String>,
    /// Free-form properties.
    properties: Option<BTreeMap<String, Value>>,
    /// The session.
    session_id: Option<String>,
    /// The page.
    page_url: Option<String>,
    /// The client; the request's `User-Agent` when absent.
    user_agent: Option<String>,
    /// The client's address; the request's when absent.
    ip_address: Option<String>,
    /// For idempotency: an event sent again with the same id is a duplicate.
    event_id: Option<String>,
}

/// One event, or an array of up to 1,000.
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub enum IngestBody {
    /// One event.
    One(IngestEvent),
    /// Several.
    Many(Vec<IngestEvent>),
}

/// An event refused, by its index in the request.
#[derive(ToSchema)]
pub struct Refused {
    /// Its index.
    index: usize,
    /// Why.
    error: String,
}

/// What became of the events.
#[derive(ToSchema)]
pub struct IngestAnswer {
    /// Whether every event was taken.
    success: bool,
    /// Events stored.
    accepted: usize,
    /// Events already stored (same `eventId`).
    duplicates: usize,
    /// Events refused.
    rejected: Vec<Refused>,
    /// Events the pipeline could not store (500).
    failed: Option<Vec<Refused>>,
    /// When none was taken: the first reason.
    error: Option<String>,
}

/// `GET /api/v1/events/summary`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Summary {
    /// Events in the range.
    total_events: i64,
    /// Distinct users among them.
    unique_users: i64,
    /// Events by name.
    events_by_name: BTreeMap<String, i64>,
    /// The first event's time.
    first_event_at: Option<String>,
    /// The last event's time.
    last_event_at: Option<String>,
}

/// One time bucket.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Bucket {
    /// Its start (UTC).
    start: String,
    /// Events in it.
    count: i64,
    /// Distinct users in it.
    unique_users: i64,
}

/// `GET /api/v1/metrics`.
#[derive(ToSchema)]
pub struct Metrics {
    /// The event counted, or null for all.
    event: Option<String>,
    /// hourly, daily, weekly or monthly.
    interval: String,
    /// The buckets in time order.
    buckets: Vec<Bucket>,
}

/// One event of a journey.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct JourneyEvent {
    /// The event.
    event_name: String,
    /// Its time.
    timestamp: String,
    /// Its properties.
    properties: BTreeMap<String, Value>,
    /// Its session.
    session_id: Option<String>,
    /// Its page.
    page_url: Option<String>,
}

/// `GET /api/v1/users/{userId}/journey`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Journey {
    /// The user.
    user_id: String,
    /// Their events in time order.
    events: Vec<JourneyEvent>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// One cohort.
#[derive(ToSchema)]
pub struct Cohort {
    /// Its day (`YYYY-MM-DD`).
    date: String,
    /// Users in it.
    users: i64,
    /// Users back on day 0, 1, … `days`.
    retained: Vec<i64>,
    /// The same as shares of `users`.
    rates: Vec<f64>,
}

/// `GET /api/v1/retention`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Retention {
    /// The cohort event.
    cohort_event: String,
    /// The return event, or null for any.
    return_event: Option<String>,
    /// Days followed.
    days: i32,
    /// on or on_or_after.
    mode: String,
    /// The cohorts by day.
    cohorts: Vec<Cohort>,
}

/// A funnel step.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct FunnelStep {
    /// The event that makes the step.
    #[schema(min_length = 1, max_length = 200)]
    event_name: String,
    /// Properties the event must have.
    filters: Option<BTreeMap<String, Value>>,
    /// Most seconds after the step before.
    #[schema(minimum = 1, maximum = 31622400)]
    time_window: Option<i64>,
}

/// A funnel to store.
#[derive(ToSchema)]
pub struct NewFunnel {
    /// Its name.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// 2 to 10 steps.
    #[schema(min_items = 2, max_items = 10)]
    steps: Vec<FunnelStep>,
}

/// A stored funnel.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Funnel {
    /// Its id.
    id: String,
    /// Its name.
    name: String,
    /// Its steps.
    steps: Vec<FunnelStep>,
    /// Its organisation.
    org_id: String,
    /// Its project.
    project_id: String,
    /// When it was stored.
    created_at: String,
    /// When it last changed.
    updated_at: String,
}

/// `GET /api/v1/funnels`.
#[derive(ToSchema)]
pub struct FunnelList {
    /// The project's funnels, oldest first.
    funnels: Vec<Funnel>,
}

/// A step's figures.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct StepFigures {
    /// The step's event.
    event_name: String,
    /// Users who made it.
    users: i64,
    /// Relative to step 1.
    conversion_rate: f64,
    /// Relative to the step before.
    step_conversion_rate: f64,
    /// Users lost since the step before.
    drop_off: i64,
    /// Mean seconds from the step before (null for step 1 or when nobody made it).
    avg_time_to_convert_seconds: Option<f64>,
    /// Median seconds from the step before.
    median_time_to_convert_seconds: Option<f64>,
}

/// `GET /api/v1/funnels/{id}/analytics`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct FunnelAnalytics {
    /// The funnel.
    funnel_id: String,
    /// Its name.
    name: String,
    /// Figures per step.
    steps: Vec<StepFigures>,
    /// Last step's users over the first's.
    overall_conversion_rate: f64,
    /// The window from entry, in seconds.
    window_seconds: i64,
    /// The range's start.
    start_date: Option<String>,
    /// The range's end (exclusive).
    end_date: Option<String>,
}

/// Something deleted.
#[derive(ToSchema)]
pub struct Deleted {
    /// Always true.
    success: bool,
    /// Its id.
    id: String,
}

/// A rate limit.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Limit {
    /// Requests per window.
    #[schema(minimum = 1, maximum = 1000000000)]
    max: u32,
    /// The window in milliseconds.
    #[schema(minimum = 1, maximum = 31622400000_u64)]
    window_ms: u64,
}

/// A key to create.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct NewKey {
    /// Its name.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// The tenant's organisation.
    #[schema(min_length = 1, max_length = 200)]
    org_id: String,
    /// The tenant's project.
    #[schema(min_length = 1, max_length = 200)]
    project_id: String,
    /// `events:write`, `analytics:read` (default both).
    permissions: Option<Vec<String>>,
    /// Its own rate limit.
    rate_limit: Option<Limit>,
    /// Origins of the web pages that may use it (`https://app.example.com`; `*` for any);
    /// unset: those of the source's `cors` config.
    allowed_origins: Option<Vec<String>>,
}

/// A key just created: the only time its secret is shown.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct CreatedKey {
    /// Its id.
    id: String,
    /// The secret, shown once.
    key: String,
    /// Its name.
    name: String,
    /// Organisation.
    org_id: String,
    /// Project.
    project_id: String,
    /// Permissions.
    permissions: Vec<String>,
    /// Its own rate limit.
    rate_limit: Option<Limit>,
    /// Origins of the web pages that may use it.
    allowed_origins: Option<Vec<String>>,
    /// Always true.
    is_active: bool,
    /// When.
    created_at: String,
}

/// A key as listed (no secret).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Its id.
    id: String,
    /// The secret's first characters.
    prefix: String,
    /// Its name.
    name: String,
    /// Organisation.
    org_id: String,
    /// Project.
    project_id: String,
    /// Permissions.
    permissions: Vec<String>,
    /// Its own rate limit.
    rate_limit: Option<Limit>,
    /// Origins of the web pages that may use it.
    allowed_origins: Option<Vec<String>>,
    /// Whether it works.
    is_active: bool,
    /// When it was last used.
    last_used: Option<String>,
    /// When created.
    created_at: String,
    /// When last changed.
    updated_at: String,
}

/// `GET /api/v1/keys`.
#[derive(ToSchema)]
pub struct KeyList {
    /// Every key.
    keys: Vec<KeyInfo>,
}

/// A key revoked.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Revoked {
    /// Always true.
    success: bool,
    /// Its id.
    id: String,
    /// Always false.
    is_active: bool,
}

/// `GET /health`.
#[derive(ToSchema)]
pub struct Health {
    /// `healthy`.
    status: String,
    /// Now.
    timestamp: String,
    /// Whether the rollups are kept (queries over whole days read them).
    rollups: bool,
}

/// `startDate` / `endDate`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(non_snake_case)]
pub struct RangeParams {
    /// `YYYY-MM-DD` (a whole UTC day) or an ISO-8601 time; all time when absent.
    #[param(format = Date)]
    startDate: Option<String>,
    /// `YYYY-MM-DD` (inclusive) or an ISO-8601 time; all time when absent.
    #[param(format = Date)]
    endDate: Option<String>,
}

/// `GET /api/v1/metrics`'s parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsParams {
    /// The event to count; all events when absent.
    event: Option<String>,
    /// hourly, daily (default), weekly or monthly.
    #[param(pattern = "^(hourly|daily|weekly|monthly)$")]
    interval: Option<String>,
}

/// A journey page's parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Events per page, 1 to the source's `journey_limit` (1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The previous page's `nextCursor`.
    cursor: Option<String>,
}

/// Retention's parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(non_snake_case)]
pub struct RetentionParams {
    /// The event that puts a user in a cohort (their first one).
    #[param(min_length = 1)]
    cohort: String,
    /// Days followed after the cohort day, 0–365 (default 7).
    #[param(minimum = 0, maximum = 365)]
    days: Option<i32>,
    /// The event that counts as a return; any event when absent.
    returnEvent: Option<String>,
    /// on (default): a return on day k; on_or_after: on day k or later.
    #[param(pattern = "^(on|on_or_after)$")]
    mode: Option<String>,
}

/// Funnel analytics' parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(non_snake_case)]
pub struct FunnelParams {
    /// Seconds from entry within which later steps count (default 604800, 7 days).
    #[param(minimum = 1, maximum = 31622400)]
    windowSeconds: Option<i64>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
        components.add_security_scheme("admin_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Admin-Key"))));
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Event Analytics API (Weir analytics source)", description = "Authenticated multi-tenant ingest, API keys, and analytics queries."),
    paths(
        crate::source::health,
        crate::source::ingest_events,
        crate::source::summary,
        crate::source::live,
        crate::source::metrics,
        crate::source::journey,
        crate::source::retention,
        crate::source::create_funnel,
        crate::source::list_funnels,
        crate::source::get_funnel,
        crate::source::delete_funnel,
        crate::source::funnel_analytics,
        crate::source::create_key,
        crate::source::list_keys,
        crate::source::revoke_key,
    ),
    modifiers(&Security)
)]
pub struct Doc;

/// `GET /api-docs/openapi.json`.
pub async fn document() -> Response {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| Doc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".into()));
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], text.clone()).into_response()
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Event Analytics API</title>
<link rel="stylesheet" href="/api-docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/api-docs/swagger-ui-bundle.js"></script>
<script src="/api-docs/init.js"></script>
</body></html>
"#;

const INIT: &str = r##"window.ui = SwaggerUIBundle({ url: "/api-docs/openapi.json", dom_id: "#swagger-ui" });
"##;

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api-docs`: Swagger UI (5.35.0, from npm `swagger-ui-dist`, kept in `assets/`).
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE.as_bytes())
}

/// `GET /api-docs/swagger-ui-bundle.js`.
pub async fn bundle() -> Response {
    asset("text/javascript", include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js"))
}

/// `GET /api-docs/swagger-ui.css`.
pub async fn css() -> Response {
    asset("text/css", include_bytes!("../assets/swagger-ui/swagger-ui.css"))
}

/// `GET /api-docs/init.js`.
pub async fn init() -> Response {
    asset("text/javascript", INIT.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_status_is_in_the_document() {
        let doc = weir_plugin::serde_json::to_value(Doc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
        let paths = doc["paths"].as_object().unwrap();
        for p in ["/api/v1/events", "/api/v1/events/summary", "/api/v1/metrics", "/api/v1/retention", "/api/v1/funnels/{id}/analytics"] {
            assert!(paths.contains_key(p), "{p} missing: {:?}", paths.keys().collect::<Vec<_>>());
        }
        let ingest = &paths["/api/v1/events"]["post"]["responses"];
        for status in ["200", "400", "401", "403", "413", "415", "429", "500", "503"] {
            assert!(ingest.get(status).is_some(), "POST /api/v1/events lacks {status}");
        }
    }
}
