//! The admin API: `/health`, `/pipelines`, `/metrics`, and the calls that steer pipelines.
//!
//! Every request passes [`guard`] first: the `Host` must be a loopback name, an IP address
//! or a configured name (against DNS rebinding); an `Origin` must be the API's own or an
//! allowed one (against cross-site requests); with a token set, `Authorization: Bearer`
//! must carry it; a `POST` takes a JSON body or none.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::config::HostConfig;
use crate::error::HostError;
use crate::host::{ApplyError, Host, Preconditions};
use crate::pipeline::State;
use weir_plugin::origins::{check_origin, Origins};

/// The admin API's bearer token. Never printed: `Debug` shows `***`.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// Reads the token from `WEIR_ADMIN_TOKEN` (`env`) or the file; `None` when neither is set.
    pub fn load(env: Option<String>, file: Option<&Path>) -> Result<Option<Token>, HostError> {
        let (raw, from) = match (env, file) {
            (Some(_), Some(f)) => {
                return Err(HostError::Usage(format!(
                    "both WEIR_ADMIN_TOKEN and the admin token file {} are set; set only one of them",
                    f.display()
                )))
            }
            (Some(v), None) => (v, "WEIR_ADMIN_TOKEN".to_owned()),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| HostError::Usage(format!("cannot read the admin token file {}: {e}", f.display())))?;
                (text, format!("the admin token file {}", f.display()))
            }
            (None, None) => return Ok(None),
        };
        let token = raw.trim_end_matches(['\n', '\r']);
        if token.is_empty() {
            return Err(HostError::Usage(format!(
                "{from} is empty; put a token in it (for example the output of `openssl rand -hex 32`), or unset it"
            )));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(HostError::Usage(format!(
                "the admin token from {from} contains spaces or control characters, which cannot travel in an \
                 `Authorization` header; use letters, digits and `-._~+/=`"
            )));
        }
        Ok(Some(Token(token.to_owned())))
    }

    /// The `Authorization` value that presents it (for the CLI's own requests).
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    fn matches(&self, given: &[u8]) -> bool {
        let want = self.0.as_bytes();
        let mut diff = u8::from(want.len() != given.len());
        for (i, &w) in want.iter().enumerate() {
            diff |= w ^ given.get(i).copied().unwrap_or(!w);
        }
        std::hint::black_box(diff) == 0
    }
}

/// Who may use the admin API, and from where.
#[derive(Debug, Clone, Default)]
pub struct Access {
    token: Option<Token>,
    /// Lower-cased `admin_hosts`.
    hosts: Vec<String>,
    /// `admin_allowed_origins`.
    origins: Origins,
}

impl Access {
    /// From the host settings and `WEIR_ADMIN_TOKEN`; reads the token file once.
    pub fn from_config(config: &HostConfig) -> Result<Access, HostError> {
        let env = std::env::var_os("WEIR_ADMIN_TOKEN").map(|v| v.to_string_lossy().into_owned());
        let token = Token::load(env, config.admin_token_file.as_deref())?;
        Access::new(token, &config.admin_hosts, &config.admin_allowed_origins)
    }

    /// With a token (or none), extra `Host` names and allowed browser origins.
    pub fn new(token: Option<Token>, hosts: &[String], origins: &[String]) -> Result<Access, HostError> {
        for o in origins {
            check_origin("admin_allowed_origins", o).map_err(HostError::Usage)?;
        }
        let hosts = hosts.iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        Ok(Access { token, hosts, origins: Origins::new(origins) })
    }

    /// Whether a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Refuses an admin address beyond loopback (`0.0.0.0`, `::`, a LAN address) without a
    /// token: anyone who can reach it could pause, restart or reload pipelines.
    pub fn check_exposure(&self, admin: &str) -> Result<(), HostError> {
        if self.token.is_some() {
            return Ok(());
        }
        // An address that does not resolve fails at bind time, with its own error.
        let Ok(addrs) = admin.to_socket_addrs() else { return Ok(()) };
        match addrs.into_iter().find(|a| !a.ip().is_loopback()) {
            None => Ok(()),
            Some(a) => Err(HostError::Usage(format!(
                "the admin API address {admin} ({}) is not a loopback address and no admin token is set: anyone \
                 who can reach it could pause, restart or reload pipelines. Set WEIR_ADMIN_TOKEN (or \
                 admin_token_file in weir.yaml, WEIR_ADMIN_TOKEN_FILE) to a secret token, or bind the admin API \
                 to loopback (--admin 127.0.0.1:8083)",
                a.ip()
            ))),
        }
    }

    /// A `Host` header that cannot come from DNS rebinding: a loopback name or an IP
    /// address (any port: a port forward changes it), or one of `admin_hosts`.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = split_port(&host).0;
        let literal = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
        name == "localhost"
            || literal.parse::<IpAddr>().is_ok()
            || self.hosts.iter().any(|h| *h == host || (split_port(h).1.is_none() && h == name))
    }

    /// The origin a browser sends for a page served by this API under `host`.
    fn same_origin(origin: &str, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        let origin = origin.to_ascii_lowercase();
        let host = host.trim().to_ascii_lowercase();
        origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host.as_str())
    }

    fn origin_listed(&self, origin: &str) -> bool {
        self.origins.lists(origin.as_bytes())
    }
}

/// `name:port` → (`name`, `Some(port)`); `[v6]:port` keeps its brackets.
fn split_port(host: &str) -> (&str, Option<&str>) {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && (!n.contains(':') || n.ends_with(']')) => (n, Some(p)),
        _ => (host, None),
    };
    (name, port)
}

/// Marks a `/health` request made without the token: it gets the status only.
#[derive(Clone, Copy)]
struct Anonymous;

/// Marks a response [`guard`] gave instead of the route's.
#[derive(Clone, Copy)]
struct Refused;

/// An error answer of the admin API: `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut resp = error(status, message);
    resp.extensions_mut().insert(Refused);
    resp
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// Whether the request carries a body (a `Content-Length` above 0, or chunks).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || header_str(headers, header::CONTENT_LENGTH).is_some_and(|n| n.trim().parse::<u64>().map_or(true, |n| n > 0))
}

/// The checks in front of every route (see the module documentation).
pub async fn guard(access: AxState<Arc<Access>>, req: Request, next: Next) -> Response {
    let body = has_body(req.headers());
    let mut resp = checked(access, req, next).await;
    if body && resp.extensions().get::<Refused>().is_some() {
        // The body was not read: close rather than leave it to be taken for the next request.
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn checked(AxState(access): AxState<Arc<Access>>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = header_str(headers, header::HOST);
    if let Some(h) = host.filter(|h| !access.host_allowed(h)) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this admin API does not answer to the host {h:?}; use localhost or an IP address, or add the name to \
                 admin_hosts in weir.yaml"
            ),
        );
    }
    let mut cors = None;
    if let Some(origin) = header_str(headers, header::ORIGIN) {
        if !Access::same_origin(origin, host) {
            if !access.origin_listed(origin) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "requests from the web origin {origin:?} are refused; call the admin API from a program (no \
                         Origin header) or add the origin to admin_allowed_origins in weir.yaml"
                    ),
                );
            }
            cors = HeaderValue::from_str(origin).ok();
        }
    }
    if req.method() == Method::OPTIONS {
        if let Some(origin) = cors {
            let allow = [
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                (header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE")),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type, if-match, if-none-match")),
                (header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600")),
                (header::VARY, HeaderValue::from_static("Origin")),
            ];
            return (StatusCode::NO_CONTENT, allow).into_response();
        }
    }
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating && cors.is_none() {
        if let Some(site) = header_str(headers, header::HeaderName::from_static("sec-fetch-site")) {
            if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
                return refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "a {site} request from a web page is refused; call the admin API from a program, or add the \
                         page's origin to admin_allowed_origins"
                    ),
                );
            }
        }
    }
    if let Some(token) = &access.token {
        let given = header_str(headers, header::AUTHORIZATION);
        let presented = given.and_then(|v| v.split_once(' ')).filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
        let ok = presented.is_some_and(|(_, t)| token.matches(t.trim().as_bytes()));
        // The console's page, script and style hold no data: a browser opening the page
        // cannot send the token, and the page asks for it before it reads anything.
        let console = req.method() == Method::GET && matches!(req.uri().path(), "/" | "/console.js" | "/console.css");
        if !ok && req.uri().path() == "/health" {
            req.extensions_mut().insert(Anonymous);
        } else if !ok && !console {
            let (challenge, message) = match given {
                None => (
                    "Bearer realm=\"weir admin\"",
                    "this admin API needs a token: send `Authorization: Bearer <token>` with the token set in \
                     WEIR_ADMIN_TOKEN or admin_token_file",
                ),
                Some(_) => (
                    "Bearer realm=\"weir admin\", error=\"invalid_token\"",
                    "the admin token sent is not the one set in WEIR_ADMIN_TOKEN or admin_token_file; send \
                     `Authorization: Bearer <token>` with that token",
                ),
            };
            let mut resp = refuse(StatusCode::UNAUTHORIZED, message.to_owned());
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            return resp;
        }
    }
    let headers = req.headers();
    if mutating {
        // JSON or YAML only: neither is a type a page may send across sites without a
        // preflight, which only listed origins pass.
        let typed = header_str(headers, header::CONTENT_TYPE).map(|ct| {
            let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            matches!(ct.as_str(), "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml")
        });
        if typed == Some(false) || (typed.is_none() && has_body(headers)) {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{} takes no body, a JSON one or (pipelines) a YAML one; send `Content-Type: application/json` or \
                     `application/yaml`, or no body at all (got {})",
                    req.uri().path(),
                    header_str(headers, header::CONTENT_TYPE).map_or("a body without Content-Type".to_owned(), |c| format!("{c:?}"))
                ),
            );
        }
    }
    let mut resp = next.run(req).await;
    if let Some(origin) = cors {
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        resp.headers_mut().append(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// The admin API's routes, behind [`guard`]. `drain` is how long a reload waits for a
/// replaced pipeline.
pub fn router(host: Arc<Host>, drain: std::time::Duration, access: Access) -> Router {
    Router::new()
        .route(
            "/reload",
            axum::routing::post(move |AxState(host): AxState<Arc<Host>>| async move {
                let report = tokio::task::spawn_blocking(move || host.reload(drain)).await.unwrap_or_default();
                let status = if report.result == "ok" { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
                (status, Json(report))
            }),
        )
        .route("/pipelines/{name}/pause", axum::routing::post(|h, n| control(h, n, Control::Pause)))
        .route("/pipelines/{name}/resume", axum::routing::post(|h, n| control(h, n, Control::Resume)))
        .route(
            "/pipelines/{name}/restart",
            axum::routing::post(
                move |AxState(host): AxState<Arc<Host>>, axum::extract::Path(name): axum::extract::Path<String>| async move {
                    let n = name.clone();
                    match tokio::task::spawn_blocking(move || host.restart(&n, drain)).await {
                        Ok(Ok(())) => (StatusCode::OK, Json(serde_json::json!({ "restarted": name }))),
                        Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({ "error": e }))),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": e.to_string() }))),
                    }
                },
            ),
        )
        .route("/health", get(health))
        .route("/pipelines", get(pipelines))
        .route("/pipelines/validate", axum::routing::post(validate))
        .route(
            "/pipelines/{name}",
            get(pipeline)
                .put(move |h, n, headers, body| put_pipeline(h, n, headers, body, drain))
                .delete(move |h, n, headers| delete_pipeline(h, n, headers, drain)),
        )
        .route("/pipelines/{name}/tap", get(tap))
        .route("/pipelines/{name}/records", axum::routing::post(crate::replay::post))
        .route("/pipelines/{name}/offsets", get(crate::offsets::get).patch(crate::offsets::patch).delete(crate::offsets::delete))
        .route("/", get(crate::console::page))
        .route("/console.js", get(crate::console::script))
        .route("/console.css", get(crate::console::style))
        .route("/plugins", get(plugins))
        .route("/plugins/{kind}/{name}", get(plugin))
        .route("/metrics", get(metrics))
        .with_state(host)
        .layer(axum::middleware::from_fn_with_state(Arc::new(access), guard))
}

async fn health(AxState(host): AxState<Arc<Host>>, anonymous: Option<axum::Extension<Anonymous>>) -> Response {
    let pipelines = host.pipelines();
    let all_running = pipelines.iter().all(|p| p.state().0 == State::Running);
    let status = if all_running { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let health = if all_running { "healthy" } else { "degraded" };
    let timestamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    if anonymous.is_some() {
        // Probes get the status; pipeline names and counts need the token.
        return (status, Json(serde_json::json!({ "status": health, "timestamp": timestamp }))).into_response();
    }
    let states: serde_json::Map<String, serde_json::Value> =
        pipelines.iter().map(|p| (p.name.clone(), p.state().0.name().into())).collect();
    let clients: f64 = pipelines.iter().map(|p| p.gauge("connected_clients")).sum();
    let mut down = 0;
    let dependencies: serde_json::Map<String, serde_json::Value> = pipelines
        .iter()
        .map(|p| (p.name.clone(), p.dependency_health()))
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            down += h.values().flat_map(|deps| deps.values()).filter(|d| !d.up).count();
            (name, serde_json::to_value(h).unwrap_or_default())
        })
        .collect();
    let body = serde_json::json!({
        "status": health,
        "timestamp": timestamp,
        "uptime_seconds": host.started.elapsed().as_secs(),
        "pipelines": states,
        "connected_clients": clients as u64,
        "last_reload": host.last_reload(),
        "dependencies": dependencies,
        "dependencies_down": down,
    });
    (status, Json(body)).into_response()
}

async fn pipelines(AxState(host): AxState<Arc<Host>>) -> impl IntoResponse {
    Json(host.pipelines().iter().map(|p| host.report(p)).collect::<Vec<_>>())
}

async fn pipeline(AxState(host): AxState<Arc<Host>>, axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match host.pipelines().into_iter().find(|p| p.name == name) {
        Some(p) => {
            let etag = HeaderValue::from_str(&crate::host::etag(p.hash)).expect("hex digits");
            (StatusCode::OK, [(header::ETAG, etag)], Json(host.report(&p))).into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": format!("no pipeline called {name:?}") }))).into_response(),
    }
}

/// What `GET /pipelines/{name}/tap` takes.
#[derive(Default)]
struct TapQuery {
    /// The stage (default: the source).
    stage: Option<String>,
    /// Only records numbered above this one.
    after: Option<u64>,
    /// At most this many (default 100).
    limit: Option<usize>,
    /// How long to wait for the first (default 0, at most 30 s).
    wait_ms: Option<u64>,
}

impl TapQuery {
    /// Reads the query; the error names the parameter that is wrong.
    fn parse(query: Option<&str>) -> Result<TapQuery, String> {
        let mut q = TapQuery::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{name} must be a whole number, not {v:?}"));
            match name.as_ref() {
                "stage" => q.stage = Some(value.into_owned()),
                "after" => q.after = Some(number(&value)?),
                "limit" => q.limit = Some(number(&value)? as usize),
                "wait_ms" => q.wait_ms = Some(number(&value)?),
                other => return Err(format!("tap takes stage, after, limit and wait_ms, not {other:?}")),
            }
        }
        Ok(q)
    }
}

/// `GET /pipelines/{name}/tap`: the records a stage passed on since `after` (see `tap`).
async fn tap(AxState(host): AxState<Arc<Host>>, axum::extract::Path(name): axum::extract::Path<String>, uri: axum::http::Uri) -> Response {
    let q = match TapQuery::parse(uri.query()) {
        Ok(q) => q,
        Err(e) => return refuse(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let Some(p) = host.pipelines().into_iter().find(|p| p.name == name) else {
        return refuse(StatusCode::NOT_FOUND, format!("no pipeline called {name:?}"));
    };
    let Some((stage, metrics)) = p.stage(q.stage.as_deref()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("pipeline {name:?} has no stage called {:?}; its stages are {:?}", q.stage.unwrap_or_default(), p.stage_names()),
        );
    };
    let (limit, wait) =
        (q.limit.unwrap_or(100).clamp(1, crate::tap::KEPT), std::time::Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000)));
    // Each waiting reader holds a blocking thread: a few at once, so taps cannot starve the
    // API's other work (reloads, PUTs) of them.
    static READERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    const MAX_READERS: usize = 16;
    if READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_READERS {
        READERS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut resp = refuse(StatusCode::TOO_MANY_REQUESTS, format!("{MAX_READERS} taps are being read already; try again shortly"));
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let after = q.after;
    let read = tokio::task::spawn_blocking(move || metrics.tap.read(after, limit, wait)).await;
    READERS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match read {
        Ok((records, next)) => {
            Json(serde_json::json!({ "pipeline": name, "stage": stage, "records": records, "next": next })).into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The request's `If-Match` and `If-None-Match`.
fn preconditions(headers: &HeaderMap) -> Preconditions {
    Preconditions {
        if_match: header_str(headers, header::IF_MATCH).map(str::to_owned),
        if_none_match: header_str(headers, header::IF_NONE_MATCH).map(str::to_owned),
    }
}

/// A pipeline body as text; the error answers the request.
fn body_text(body: &axum::body::Bytes) -> Result<&str, Box<Response>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Box::new(refuse(StatusCode::BAD_REQUEST, format!("the body is not UTF-8 text ({e}); send the pipeline as YAML or JSON")))
    })?;
    if text.trim().is_empty() {
        return Err(Box::new(refuse(StatusCode::UNPROCESSABLE_ENTITY, "the body is empty; send the pipeline as YAML or JSON".into())));
    }
    Ok(text)
}

fn apply_error(e: ApplyError) -> Response {
    let (status, message, problems) = match e {
        ApplyError::Invalid(problems) => {
            let first = problems.first().map_or(String::new(), |p| p.message.clone());
            (StatusCode::UNPROCESSABLE_ENTITY, format!("the pipeline is not valid: {first}"), problems)
        }
        ApplyError::NotFound(m) => (StatusCode::NOT_FOUND, m, Vec::new()),
        ApplyError::Precondition(m) => (StatusCode::PRECONDITION_FAILED, m, Vec::new()),
        ApplyError::Conflict(m) => (StatusCode::CONFLICT, m, Vec::new()),
        ApplyError::NotStarted(m) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("the pipeline is valid but did not start; nothing changed: {m}"), Vec::new())
        }
        ApplyError::Io(m) => (StatusCode::INTERNAL_SERVER_ERROR, m, Vec::new()),
    };
    let mut body = serde_json::json!({ "error": message });
    if !problems.is_empty() {
        body["errors"] = serde_json::to_value(problems).unwrap_or_default();
    }
    (status, Json(body)).into_response()
}

/// `PUT /pipelines/{name}`: writes the pipeline into the directory and applies it.
async fn put_pipeline(
    AxState(host): AxState<Arc<Host>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    drain: std::time::Duration,
) -> Response {
    let text = match body_text(&body) {
        Ok(t) => t.to_owned(),
        Err(resp) => return *resp,
    };
    if !crate::config::valid_name(&name) {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, format!("pipeline name {name:?} may only use letters, digits, `-`, `_` and `.`"));
    }
    if name == "validate" || name.ends_with(".test") {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("pipeline name {name:?} is taken (`validate` is a route; `NAME.test.yaml` is a test file); choose another"),
        );
    }
    let pre = preconditions(&headers);
    let h = host.clone();
    let applied = tokio::task::spawn_blocking(move || h.apply(&name, &text, &pre, drain)).await;
    match applied {
        Ok(Ok(applied)) => {
            let status = if applied.result == "created" { StatusCode::CREATED } else { StatusCode::OK };
            let etag = HeaderValue::from_str(&applied.etag).expect("hex digits");
            let pipeline = host.pipelines().into_iter().find(|p| p.name == applied.name).map(|p| host.report(&p));
            let body = serde_json::json!({ "name": applied.name, "result": applied.result, "file": applied.file, "etag": applied.etag, "pipeline": pipeline });
            (status, [(header::ETAG, etag)], Json(body)).into_response()
        }
        Ok(Err(e)) => apply_error(e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `DELETE /pipelines/{name}`: removes its file; the pipeline drains and stops.
async fn delete_pipeline(
    AxState(host): AxState<Arc<Host>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    drain: std::time::Duration,
) -> Response {
    let pre = preconditions(&headers);
    let n = name.clone();
    match tokio::task::spawn_blocking(move || host.remove(&n, &pre, drain)).await {
        Ok(Ok(file)) => (StatusCode::OK, Json(serde_json::json!({ "deleted": name, "file": file }))).into_response(),
        Ok(Err(e)) => apply_error(e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /pipelines/validate`: every problem of a pipeline body, nothing written.
async fn validate(AxState(host): AxState<Arc<Host>>, body: axum::body::Bytes) -> Response {
    let text = match body_text(&body) {
        Ok(t) => t.to_owned(),
        Err(resp) => return *resp,
    };
    let problems = tokio::task::spawn_blocking(move || host.validate_text(&text)).await.unwrap_or_default();
    Json(serde_json::json!({ "valid": problems.is_empty(), "error_count": problems.len(), "errors": problems })).into_response()
}

/// What the API shows of a plugin; `schema` adds its config schema.
fn plugin_json(p: &crate::loader::Plugin, schema: bool) -> serde_json::Value {
    let l = &p.library;
    let mut v = serde_json::json!({
        "name": p.name,
        "kind": p.kind.name(),
        "description": p.description,
        "library": {"name": l.name, "version": l.version, "abi": l.abi, "build": l.build, "path": l.path},
    });
    if schema {
        v["schema"] = p.schema.clone();
    }
    v
}

/// `GET /plugins`: every plugin found, by kind and name.
async fn plugins(AxState(host): AxState<Arc<Host>>) -> impl IntoResponse {
    let registry = host.registry();
    Json(registry.plugins.values().map(|p| plugin_json(p, false)).collect::<Vec<_>>())
}

/// `GET /plugins/{kind}/{name}`: one plugin with its config schema.
async fn plugin(AxState(host): AxState<Arc<Host>>, axum::extract::Path((kind, name)): axum::extract::Path<(String, String)>) -> Response {
    let registry = host.registry();
    match registry.plugins.values().find(|p| p.kind.name() == kind && p.name == name) {
        Some(p) => Json(plugin_json(p, true)).into_response(),
        None => {
            let kinds = ["source", "transform", "sink"];
            let hint = if kinds.contains(&kind.as_str()) { "see GET /plugins".to_owned() } else { format!("the kind is one of {kinds:?}") };
            (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": format!("no {kind} plugin called {name:?}; {hint}") })))
                .into_response()
        }
    }
}

enum Control {
    Pause,
    Resume,
}

async fn control(
    AxState(host): AxState<Arc<Host>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    what: Control,
) -> impl IntoResponse {
    let Some(p) = host.pipelines().into_iter().find(|p| p.name == name) else {
        return (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": format!("no pipeline called {name:?}") })));
    };
    if p.set_paused(matches!(what, Control::Pause)) {
        (StatusCode::OK, Json(host.report(&p)))
    } else {
        (StatusCode::CONFLICT, Json(serde_json::json!({ "error": format!("pipeline {name:?} is not running") })))
    }
}

async fn metrics(AxState(host): AxState<Arc<Host>>) -> impl IntoResponse {
    {
        // A pipeline whose stage keeps failing shows as failed in `weir_pipeline_up` too.
        let pipelines = host.pipelines();
        let mut states = host.metrics.pipeline_states.lock().unwrap_or_else(|p| p.into_inner());
        for p in &pipelines {
            if let Some(state) = states.get_mut(&p.name) {
                *state = p.state().0.name().into();
            }
        }
    }
    let lags = tokio::task::spawn_blocking({
        let host = host.clone();
        move || crate::offsets::lags(&host)
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], host.metrics.render_with(lags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_one_place_trimmed_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-admin\n").unwrap();
        let t = Token::load(None, Some(&file)).unwrap().unwrap();
        assert!(t.matches(b"s3cret-admin"));
        assert!(!t.matches(b"s3cret-admin\n") && !t.matches(b"s3cret-admiN") && !t.matches(b"s3cret") && !t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(***)");
        assert!(Token::load(None, None).unwrap().is_none());
        std::fs::write(&file, "\n").unwrap();
        let err = Token::load(None, Some(&file)).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        let err = Token::load(Some("x".into()), Some(&file)).unwrap_err().to_string();
        assert!(err.contains("set only one"), "{err}");
        let err = Token::load(Some("two words".into()), None).unwrap_err().to_string();
        assert!(err.contains("spaces") && !err.contains("two words"), "{err}");
        let err = Token::load(None, Some(&dir.path().join("missing"))).unwrap_err().to_string();
        assert!(err.contains("cannot read the admin token file"), "{err}");
    }

    #[test]
    fn beyond_loopback_needs_a_token() {
        let open = Access::default();
        for addr in ["127.0.0.1:8083", "[::1]:8083", "localhost:8083"] {
            assert!(open.check_exposure(addr).is_ok(), "{addr}");
        }
        for addr in ["0.0.0.0:8083", "[::]:8083", "192.168.1.20:8083"] {
            let err = open.check_exposure(addr).unwrap_err().to_string();
            assert!(err.contains("WEIR_ADMIN_TOKEN") && err.contains("127.0.0.1"), "{err}");
        }
        let locked = Access { token: Some(Token("t".into())), ..Access::default() };
        assert!(locked.check_exposure("0.0.0.0:8083").is_ok());
    }

    #[test]
    fn hosts_that_dns_rebinding_could_send_are_refused() {
        let a = Access::new(None, &["weir.internal".into(), "ops.example:8083".into()], &[]).unwrap();
        for ok in ["127.0.0.1:8083", "localhost:8083", "LOCALHOST", "[::1]:8083", "10.0.0.5:9000", "weir.internal:1", "ops.example:8083"] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:8083", "localhost.evil.example", "ops.example:9000", "127.0.0.1.nip.io:8083", ""] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        assert_eq!(split_port("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_port("::1"), ("::1", None));
    }

    #[test]
    fn origins_are_the_api_own_or_listed() {
        assert!(Access::same_origin("http://127.0.0.1:8083", Some("127.0.0.1:8083")));
        assert!(!Access::same_origin("http://localhost:8083", Some("127.0.0.1:8083")));
        assert!(!Access::same_origin("null", Some("127.0.0.1:8083")));
        let a = Access::new(None, &[], &["https://Ops.example.com/".into()]).unwrap();
        assert!(a.origin_listed("https://ops.example.com") && !a.origin_listed("https://evil.example"));
        let err = Access::new(None, &[], &["ops.example.com/path".into()]).unwrap_err().to_string();
        assert!(err.contains("is not an origin"), "{err}");
        assert!(Access::new(None, &[], &["*".into()]).unwrap().origin_listed("http://anything"));
    }
}
