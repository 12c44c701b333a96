use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use weir_plugin::serde_json::{self, json, value::RawValue, Value};
use weir_plugin::{Ack, BatchBuf, Context, EmitError, Emitter, Head, Outcome, PluginError, Source};

use crate::body::{parse_events, read_body, BodyError, BodyRead};
use crate::config::{HttpConfig, RespondAfter};
use weir_plugin::serve::{self as server, Limits};

/// The `http` source.
pub struct HttpSource {
    config: HttpConfig,
    ctx: Context,
    listener: Option<server::Listener>,
    serving: Option<server::Serving>,
}

struct Shared {
    config: HttpConfig,
    emitter: Emitter,
}

impl Source for HttpSource {
    type Config = HttpConfig;
    const NAME: &'static str = "http";
    const DESCRIPTION: &'static str = "HTTP ingest: POST one JSON event or an array; answers once the pipeline took them.";

    fn validate(config: &HttpConfig) -> Result<(), PluginError> {
        config.check().map_err(PluginError::config)
    }

    fn create(config: HttpConfig, ctx: Context) -> Result<Self, PluginError> {
        // On a host of ABI 1.2 or later the address may be shared with other stages, each
        // serving its own paths; an older host hands the whole address over.
        let mut routes = vec![config.path.clone()];
        if !config.health_path.is_empty() {
            routes.push(config.health_path.clone());
        }
        if let Some(tls) = &config.tls {
            // The host routes a shared address by the request's path, which TLS hides.
            let tls = weir_plugin::tls::Tls::new(tls.clone()).map_err(|e| PluginError::config(format!("tls: {e}")))?;
            let listener = server::Listener::Tls(ctx.listen_async(&config.listen)?, Arc::new(tls));
            return Ok(HttpSource { config, ctx, listener: Some(listener), serving: None });
        }
        let shared = {
            let _guard = weir_plugin::runtime().enter();
            ctx.listen_routes(&config.listen, &routes.iter().map(String::as_str).collect::<Vec<_>>())?
        };
        let listener = match shared {
            Some(l) => server::Listener::Routed(Arc::new(l), Arc::new(routes)),
            None => server::Listener::Tcp(ctx.listen_async(&config.listen)?),
        };
        Ok(HttpSource { config, ctx, listener: Some(listener), serving: None })
    }

    fn start(&mut self, emitter: Emitter) -> Result<(), PluginError> {
        let listener = self.listener.take().ok_or_else(|| PluginError::fatal("the source was already started"))?;
        let shared = Arc::new(Shared { config: self.config.clone(), emitter });
        let mut ingest = post(produce);
        if let Some(auth) = &self.config.auth {
            ingest = ingest.layer(axum::middleware::from_fn_with_state(crate::auth::Keys::new(auth), crate::auth::layer));
        }
        let mut app = Router::new().route(&self.config.path, ingest);
        if !self.config.health_path.is_empty() {
            app = app.route(&self.config.health_path, get(health));
        }
        let app = app
            .fallback(not_found)
            .with_state(shared)
            .layer(axum::middleware::from_fn_with_state(crate::headers::Policy::new(&self.config), crate::headers::layer));
        let ctx = self.ctx;
        ctx.info(&format!("Listening on {}{}.", self.config.listen, self.config.path));
        let limits = Limits {
            max_connections: self.config.max_connections.get(),
            header_timeout: Duration::from_millis(self.config.header_timeout_ms.get()),
            idle_timeout: Duration::from_millis(self.config.idle_timeout_ms.get()),
            retry_after_secs: self.config.retry_after_secs,
        };
        self.serving = Some(server::Serving::start(listener, app, limits, server::Connections::default(), ctx, None));
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        self.serving.as_mut().map_or(Ok(()), server::Serving::stop)
    }
}

/// Asks hyper to close the connection after `response` (its body was not read to the end).
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({ "success": false, "error": message.into() }))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn health() -> Response {
    json_response(StatusCode::OK, json!({ "status": "healthy", "timestamp": now_rfc3339() }))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn client_ip(headers: &HeaderMap, peer: SocketAddr, trust_forwarded: bool) -> String {
    if trust_forwarded {
        if let Some(first) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').next()) {
            return first.trim().to_owned();
        }
    }
    peer.ip().to_string()
}

/// The fields echoed back for a single event, as the Neo contract has it.
#[derive(Deserialize)]
struct Echo<'a> {
    #[serde(rename = "eventType", borrow, default)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
}

fn raw_to_value(raw: Option<&RawValue>) -> Value {
    raw.and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or(Value::Null)
}

async fn produce(State(shared): State<Arc<Shared>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    let config = &shared.config;
    let (parts, body): (_, Body) = req.into_parts();
    if !server::is_json(&parts.headers) {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    }
    let idle = Duration::from_millis(config.idle_timeout_ms.get());
    let bytes = match read_body(&parts.headers, body, config.max_body_bytes.get(), idle).await {
        BodyRead::Complete(b) => b,
        refused => return closing(refused.response()),
    };
    let (events, single) = match parse_events(&bytes, config.max_events.get()) {
        Ok(parsed) => parsed,
        Err(BodyError::Malformed(e)) => return malformed(e),
        Err(BodyError::Refused(status, message)) => return error(status, message),
    };
    let ip = client_ip(&parts.headers, peer, config.trust_forwarded_for);
    let ua = parts.headers.get(header::USER_AGENT).map(HeaderValue::as_bytes).unwrap_or_default();
    let key = parts.extensions.get::<Arc<crate::auth::Key>>().cloned();
    let mut meta: Vec<(&str, &[u8])> = vec![("http.client_ip", ip.as_bytes())];
    if let Some(key) = &key {
        meta.extend(key.stamps.iter().map(|(h, v)| (h.as_str(), v.as_slice())));
    }
    if !ua.is_empty() {
        meta.push(("http.user_agent", ua));
    }
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = parts.headers.get(name) {
            meta.push((name, v.as_bytes()));
        }
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
    let mut batch = BatchBuf::with_capacity(events.len(), bytes.len() + events.len() * 64);
    for (i, e) in events.iter().enumerate() {
        batch.push(i as u32, Head { key: None, headers_raw: &[], extra_headers: &meta, timestamp_ms: Some(now_ms) }, e.get().as_bytes());
    }
    let busy = |message: String| {
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(config.retry_after_secs));
        r
    };
    if config.respond_after == RespondAfter::Accepted {
        let wait = Duration::from_millis(config.backpressure_wait_ms);
        return match Emitter::offer(wait, || std::future::ready(shared.emitter.emit(&batch.as_ref(), |_| {}))).await {
            Ok(()) => json_response(StatusCode::ACCEPTED, json!({ "success": true, "queued": events.len() })),
            Err(EmitError::Full) => busy("the pipeline is full; retry later".into()),
            Err(e) => busy(format!("the pipeline is not taking events: {e}")),
        };
    }
    let view = batch.as_ref();
    let sent = Emitter::offer(Duration::from_millis(config.backpressure_wait_ms), || shared.emitter.send(&view));
    let ack = match tokio::time::timeout(Duration::from_millis(config.ack_timeout_ms), sent).await {
        Ok(Ok(ack)) => ack,
        Ok(Err(EmitError::Full)) => return busy("the pipeline is full; retry later".into()),
        Ok(Err(e)) => return busy(format!("the pipeline is not taking events: {e}")),
        Err(_) => {
            return busy(format!(
                "the pipeline did not confirm delivery within {} ms (a sink is failing or slow); the events may still be delivered, so retry with the same event ids",
                config.ack_timeout_ms
            ))
        }
    };
    if single {
        respond_single(events[0], &ack)
    } else {
        respond_many(&ack)
    }
}

fn malformed(e: serde_json::Error) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "success": false, "error": format!("malformed JSON: {e}"), "line": e.line(), "column": e.column() }),
    )
}

fn respond_single(event: &RawValue, ack: &Ack) -> Response {
    match ack.outcomes.first() {
        Some(Outcome::Accepted) | Some(Outcome::Dropped) => {
            let echo: Echo<'_> = serde_json::from_str(event.get()).unwrap_or(Echo { event_type: None, timestamp: None });
            let mut body =
                json!({ "success": true, "eventType": raw_to_value(echo.event_type), "timestamp": raw_to_value(echo.timestamp) });
            if ack.outcomes.first() == Some(&Outcome::Dropped) {
                body["duplicate"] = Value::Bool(true);
            }
            json_response(StatusCode::OK, body)
        }
        Some(Outcome::Rejected(reason)) => error(StatusCode::BAD_REQUEST, reason.clone()),
        Some(Outcome::Failed(reason)) => error(StatusCode::INTERNAL_SERVER_ERROR, reason.clone()),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "the pipeline returned no outcome"),
    }
}

fn respond_many(ack: &Ack) -> Response {
    let mut accepted = 0;
    let mut duplicates = 0;
    let mut rejected = Vec::new();
    let mut failed = Vec::new();
    for (i, o) in ack.outcomes.iter().enumerate() {
        match o {
            Outcome::Accepted => accepted += 1,
            Outcome::Dropped => duplicates += 1,
            Outcome::Rejected(r) => rejected.push(json!({ "index": i, "error": r })),
            Outcome::Failed(r) => failed.push(json!({ "index": i, "error": r })),
        }
    }
    let status = if !failed.is_empty() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if accepted + duplicates == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let success = rejected.is_empty() && failed.is_empty();
    let mut body = json!({ "success": success, "count": ack.outcomes.len(), "accepted": accepted, "duplicates": duplicates });
    if !rejected.is_empty() {
        body["rejected"] = Value::Array(rejected);
    }
    if !failed.is_empty() {
        body["failed"] = Value::Array(failed);
    }
    json_response(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(outcomes: Vec<Outcome>) -> Ack {
        Ack { outcomes }
    }

    #[test]
    fn single_event_echoes_type_and_timestamp() {
        let ev: &RawValue = serde_json::from_str(r#"{"eventType":"like_clicked","timestamp":"2024-01-01T12:00:00.000Z"}"#).unwrap();
        let r = respond_single(ev, &ack(vec![Outcome::Accepted]));
        assert_eq!(r.status(), StatusCode::OK);
        let r = respond_single(ev, &ack(vec![Outcome::Rejected("validate: /userId: missing".into())]));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn arrays_report_partial_acceptance() {
        assert_eq!(respond_many(&ack(vec![Outcome::Accepted, Outcome::Rejected("x".into())])).status(), StatusCode::OK);
        assert_eq!(respond_many(&ack(vec![Outcome::Rejected("x".into())])).status(), StatusCode::BAD_REQUEST);
        assert_eq!(respond_many(&ack(vec![Outcome::Accepted, Outcome::Failed("x".into())])).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn content_type_check_accepts_json_variants() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        assert!(server::is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!server::is_json(&h));
    }

    #[test]
    fn emits_through_a_mock_host() {
        let host = weir_plugin::mock::MockHost::new();
        let config: HttpConfig = serde_json::from_str(r#"{"listen":"127.0.0.1:0"}"#).unwrap();
        let mut src = HttpSource::create(config, host.context()).unwrap();
        let Some(server::Listener::Tcp(l)) = src.listener.as_ref() else { panic!("the mock host hands a whole address") };
        let addr = l.local_addr().unwrap();
        let (emitter, emitted) = weir_plugin::mock::mock_emitter(false);
        src.start(emitter).unwrap();
        let body = r#"[{"eventType":"a","userId":"u1"},{"eventType":"b","userId":"u2"}]"#;
        let request = format!(
            "POST /produce HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(r#""count":2"#), "{response}");
        let got = emitted.batches.lock().unwrap();
        assert_eq!(got.len(), 1);
        let b = got[0].as_ref();
        assert_eq!(b.get(1).value, br#"{"eventType":"b","userId":"u2"}"#);
        assert_eq!(b.get(0).header("http.client_ip"), Some(&b"127.0.0.1"[..]));
        drop(got);
        src.stop().unwrap();
    }
}
