//! One Socket.IO server per listen address, shared by the stages of this library that name
//! the same `listen`: a process-wide registry keyed by the address. The first stage to
//! attach starts the server; later stages attach their handlers to it; the server stops
//! when the last one detaches. A reloaded pipeline's new version attaches before the old
//! one detaches (make-before-break), so the server, its clients and their rooms stay up
//! through the reload.
//!
//! Each stage mounts the server's path (and a sink's `health_path`) on the address as
//! routes the host shares with other plugins' stages (ABI 1.2: the Neo example serves
//! `/produce` from the `http` source and `/socket.io/` from here on one port); the host
//! hands it the connections for them, served by [`weir_plugin::serve`]. A host older than
//! ABI 1.2 hands the whole address to the first stage instead.
//!
//! Events from clients are dispatched by name to the newest attached stage that handles
//! that name (the `join_event` of a sink with a room, the `event` of a source), so during a
//! reload the new version takes over at once and the old one finishes what it began.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, Value as PacketValue};
use socketioxide::socket::{Sid, Socket};
use socketioxide::{SendError, SocketError, SocketIo};
use weir_plugin::serde_json::{self, json, value::RawValue, Value};
use weir_plugin::Context;

use crate::config::ServerOptions;
use crate::error::SocketIoError;
use crate::source::SourceRole;
use weir_plugin::origins::Origins;
use weir_plugin::serve::{Connections, Limits, Listener};

/// What an attached sink handles besides broadcasting.
#[derive(Debug, Clone)]
pub(crate) struct SinkRole {
    /// The room records go to, joined with `join_event`.
    pub room: Option<String>,
    /// Client event that joins `room`.
    pub join_event: String,
    /// Event answering a join.
    pub joined_event: String,
    /// Path answering `GET` with the clients connected (the Neo seed's `/health`).
    pub health_path: Option<String>,
}

/// What a stage brings to the shared server.
pub(crate) enum Role {
    Sink(SinkRole),
    Source(Arc<SourceRole>),
}

struct Attachment {
    id: u64,
    ctx: Context,
    origins: Origins,
    role: Role,
    /// Stops serving the routes of its own (a sink's `health_path`) on a shared address.
    serving: Mutex<Vec<Stop>>,
}

impl Attachment {
    fn handles(&self, event: &str) -> bool {
        match &self.role {
            Role::Sink(s) => s.room.is_some() && s.join_event == event,
            Role::Source(s) => s.event == event,
        }
    }
}

/// A connected client.
pub(crate) struct Client {
    /// Its socket.
    pub socket: SocketRef,
    /// Its address (the TCP peer).
    pub ip: String,
    /// The event types it asked for; `None`: all.
    pub types: Option<HashSet<String>>,
    /// The rooms it joined.
    pub rooms: HashSet<String>,
}

/// A Socket.IO server on one address.
pub(crate) struct Server {
    options: ServerOptions,
    /// The stage that started it, for errors.
    owner: String,
    clients: Mutex<HashMap<Sid, Client>>,
    stages: RwLock<Vec<Arc<Attachment>>>,
    /// The HTTP side: Engine.IO's transports behind the origin check.
    app: OnceLock<axum::Router>,
    /// The stage through which the host hands over the connections for the server's path,
    /// and what stops that.
    holder: Mutex<Option<(u64, Stop)>>,
    /// Stops serving a whole address (a host older than ABI 1.2).
    shutdown: Mutex<Option<Stop>>,
    /// The clients' connections (WebSockets and long-polling requests).
    connections: Connections,
    key: String,
    /// TLS for every connection; the server then takes its address whole.
    tls: Option<Arc<weir_plugin::tls::Tls>>,
}

/// Stops one `serve` loop: it stops taking connections, and its connections finish or go
/// back to the host.
type Stop = tokio::sync::oneshot::Sender<()>;

fn stop_serving(stop: Stop) {
    let _ = stop.send(());
}

/// Limits of the connections the server takes: a long-polling client holds one request
/// open for up to `ping_interval_ms`, so the idle timeout only applies between requests.
const LIMITS: Limits =
    Limits { max_connections: 65_536, header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60), retry_after_secs: 1 };

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> MutexGuard<'static, HashMap<String, Arc<Server>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<Server>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// A stage's hold on its server; detaches when dropped.
pub(crate) struct Attached {
    server: Arc<Server>,
    id: u64,
}

impl Attached {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.server.detach(self.id);
    }
}

/// Attaches a stage to the server on `options.listen`, starting it when there is none.
pub(crate) fn attach(options: &ServerOptions, ctx: Context, origins: Origins, role: Role) -> Result<Attached, SocketIoError> {
    let id = NEXT_ID.fetch_add(1, Relaxed);
    let attachment = Arc::new(Attachment { id, ctx, origins, role, serving: Mutex::new(Vec::new()) });
    // Port 0 asks for a new port each time, so it is never shared.
    let key = if options.listen.ends_with(":0") { format!("{}#{id}", options.listen) } else { options.listen.clone() };
    let mut servers = registry();
    if let Some(server) = servers.get(&key) {
        if let Some((field, theirs, mine)) = server.options.difference(options) {
            return Err(SocketIoError::Conflict { listen: options.listen.clone(), field, mine, theirs, owner: server.owner.clone() });
        }
        server.listen(&attachment)?;
        server.stages.write().unwrap_or_else(|p| p.into_inner()).push(attachment);
        server.report();
        return Ok(Attached { server: server.clone(), id });
    }
    let server = Server::start(options, key.clone(), attachment.clone())?;
    if let Err(e) = server.listen(&attachment) {
        drop(servers);
        server.detach(id);
        return Err(e);
    }
    servers.insert(key, server.clone());
    server.report();
    Ok(Attached { server, id })
}

/// The record's payload id when the client asked for an acknowledgement.
pub(crate) struct AckId(pub Option<i64>);

impl FromMessageParts<socketioxide::adapter::LocalAdapter> for AckId {
    type Error = std::convert::Infallible;
    fn from_message_parts(
        _: &Arc<Socket<socketioxide::adapter::LocalAdapter>>,
        _: &mut PacketValue,
        ack_id: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        Ok(AckId(*ack_id))
    }
}

impl Server {
    fn start(options: &ServerOptions, key: String, first: Arc<Attachment>) -> Result<Arc<Server>, SocketIoError> {
        let ctx = first.ctx;
        let tls = match &options.tls {
            Some(t) => Some(Arc::new(weir_plugin::tls::Tls::new(t.clone()).map_err(|e| SocketIoError::Config(format!("tls: {e}")))?)),
            None => None,
        };
        let (layer, io) = SocketIo::builder()
            .req_path(options.path.clone())
            .ping_interval(Duration::from_millis(options.ping_interval_ms))
            .ping_timeout(Duration::from_millis(options.ping_timeout_ms))
            .max_buffer_size(options.client_buffer)
            .max_payload(options.max_payload_bytes as u64)
            .ws_max_message_size(options.max_payload_bytes)
            .ws_max_frame_size(options.max_payload_bytes)
            .build_layer();
        let server = Arc::new(Server {
            options: options.clone(),
            owner: format!("pipeline {} (stage {})", ctx.pipeline(), ctx.stage()),
            clients: Mutex::new(HashMap::new()),
            stages: RwLock::new(vec![first]),
            app: OnceLock::new(),
            holder: Mutex::new(None),
            shutdown: Mutex::new(None),
            connections: Connections::tracked(),
            key,
            tls,
        });
        let weak = Arc::downgrade(&server);
        io.ns("/", async move |socket: SocketRef, TryData::<Value>(auth): TryData<Value>| {
            on_connect(weak.clone(), socket, auth.ok());
        });
        let app = axum::Router::new()
            .fallback(not_found)
            .layer(layer)
            .layer(axum::middleware::from_fn_with_state(Arc::downgrade(&server), guard));
        let _ = server.app.set(app);
        ctx.info(&format!("Socket.IO server listening on {}{}/.", options.listen, options.path.trim_end_matches('/')));
        Ok(server)
    }

    /// Serves `routes` for `stage`: the host hands it the connections for them until the
    /// returned sender fires (`None`: on a host older than ABI 1.2, the first call takes the
    /// whole address for the server instead, and later ones do nothing).
    fn serve_routes(&self, stage: &Attachment, routes: Vec<String>) -> Result<Option<Stop>, SocketIoError> {
        let app = self.app.get().cloned().ok_or_else(|| SocketIoError::Start("the Socket.IO server is not built".into()))?;
        let (ctx, listen) = (stage.ctx, &self.options.listen);
        // Over TLS the host cannot route by path: the server takes the address whole.
        let routed = if self.tls.is_some() {
            None
        } else {
            let _guard = weir_plugin::runtime().enter();
            ctx.listen_routes(listen, &routes.iter().map(String::as_str).collect::<Vec<_>>())
                .map_err(|e| SocketIoError::Config(e.to_string()))?
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (listener, stop) = match routed {
            Some(l) => (Listener::Routed(Arc::new(l), Arc::new(routes)), Some(stop_tx)),
            None => {
                let mut whole = self.shutdown.lock().unwrap_or_else(|p| p.into_inner());
                if whole.is_some() {
                    return Ok(None);
                }
                let l = ctx.listen_async(listen).map_err(|e| SocketIoError::Start(e.to_string()))?;
                // The whole address is the server's: it stops with the last stage.
                *whole = Some(stop_tx);
                match &self.tls {
                    Some(tls) => (Listener::Tls(l, tls.clone()), None),
                    None => (Listener::Tcp(l), None),
                }
            }
        };
        weir_plugin::runtime().spawn(weir_plugin::serve::serve(listener, app, LIMITS, self.connections.clone(), ctx, stop_rx));
        Ok(stop)
    }

    /// Mounts what a newly attached stage serves: the server's path, unless another stage
    /// of this server holds it already (the host lets one stage and its versions serve a
    /// path), and a sink's `health_path`.
    fn listen(&self, stage: &Attachment) -> Result<(), SocketIoError> {
        let mut holder = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        let took_path = if holder.is_none() {
            if let Some(stop) = self.serve_routes(stage, vec![self.route()])? {
                *holder = Some((stage.id, stop));
            }
            true
        } else {
            false
        };
        if let Role::Sink(SinkRole { health_path: Some(health), .. }) = &stage.role {
            match self.serve_routes(stage, vec![health.clone()]) {
                Ok(stop) => stage.serving.lock().unwrap_or_else(|p| p.into_inner()).extend(stop),
                Err(e) => {
                    if took_path {
                        if let Some((_, stop)) = holder.take() {
                            stop_serving(stop);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The server's path as a route: it and everything under it.
    fn route(&self) -> String {
        format!("{}/", self.options.path.trim_end_matches('/'))
    }

    /// Passes the server's path from a detached stage to one still attached: to its own
    /// new version first (registered before the old one stops, so no connection finds the
    /// path unserved: make-before-break), else to the newest stage (after the old one
    /// stopped, since the host lets only one stage hold a path).
    fn pass_path(&self, gone: &Attachment, stages: &[Arc<Attachment>]) {
        let mut holder = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if holder.as_ref().is_none_or(|(id, _)| *id != gone.id) {
            return;
        }
        let same = |a: &&Arc<Attachment>| a.ctx.pipeline() == gone.ctx.pipeline() && a.ctx.stage() == gone.ctx.stage();
        let successor = stages.iter().rev().find(same).or_else(|| stages.last());
        let mut old = holder.take().map(|(_, stop)| stop);
        if !successor.is_some_and(|s| same(&s)) {
            if let Some(stop) = old.take() {
                stop_serving(stop);
            }
        }
        if let Some(next) = successor {
            match self.serve_routes(next, vec![self.route()]) {
                Ok(Some(stop)) => *holder = Some((next.id, stop)),
                Ok(None) => {}
                Err(e) => next.ctx.warn(&format!("The Socket.IO path {} is no longer served: {e}", self.route())),
            }
        }
        if let Some(stop) = old {
            stop_serving(stop);
        }
    }

    fn detach(&self, id: u64) {
        let left = {
            let mut stages = self.stages.write().unwrap_or_else(|p| p.into_inner());
            let gone = stages.iter().position(|a| a.id == id).map(|i| stages.remove(i));
            if let Some(gone) = gone {
                // The host routes its paths to the stage serving them now; this one's
                // connections finish or go back to the host (see weir_plugin::serve).
                for stop in gone.serving.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
                    stop_serving(stop);
                }
                self.pass_path(&gone, &stages);
            }
            stages.len()
        };
        if left > 0 {
            self.report();
            return;
        }
        let mut servers = registry();
        // Someone may have attached meanwhile (under the registry lock).
        if !self.stages.read().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return;
        }
        servers.remove(&self.key);
        drop(servers);
        if let Some(stop) = self.shutdown.lock().unwrap_or_else(|p| p.into_inner()).take() {
            stop_serving(stop);
        }
        // The clients' connections are cut, not told goodbye: socket.io-client reconnects by
        // itself after a lost connection (to the next server on the address, or once the
        // pipeline is back), but not after the server disconnected it.
        self.connections.cut_all();
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The connected clients, locked.
    pub fn clients(&self) -> MutexGuard<'_, HashMap<Sid, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest stage handling `event`.
    fn handler_for(&self, event: &str) -> Option<Arc<Attachment>> {
        self.stages.read().unwrap_or_else(|p| p.into_inner()).iter().rev().find(|a| a.handles(event)).cloned()
    }

    /// Whether any attached stage lets a page from `origin` connect.
    fn allows(&self, origin: &[u8]) -> bool {
        self.stages.read().unwrap_or_else(|p| p.into_inner()).iter().any(|a| a.origins.allows(Some(origin)))
    }

    /// The answer of a sink's `health_path`: `status`, `timestamp`, `connected_clients` and
    /// the clients in its room as `<room>_clients` (the Neo seed's `dashboard_clients`).
    fn health(&self, path: &str) -> Option<Value> {
        let room = self.stages.read().unwrap_or_else(|p| p.into_inner()).iter().rev().find_map(|a| match &a.role {
            Role::Sink(s) if s.health_path.as_deref() == Some(path) => Some(s.room.clone()),
            _ => None,
        })?;
        let clients = self.clients();
        let mut answer = json!({ "status": "healthy", "timestamp": now_rfc3339(), "connected_clients": clients.len() });
        if let Some(room) = room {
            answer[room_gauge(&room)] = json!(clients.values().filter(|c| c.rooms.contains(&room)).count());
        }
        Some(answer)
    }

    /// Reports the client counts to every attached sink (sources do not, so the host's
    /// `/health` does not count a client twice).
    pub fn report(&self) {
        let (connected, rooms) = {
            let clients = self.clients();
            let mut rooms: HashMap<String, usize> = HashMap::new();
            for c in clients.values() {
                for r in &c.rooms {
                    *rooms.entry(r.clone()).or_default() += 1;
                }
            }
            (clients.len(), rooms)
        };
        for a in self.stages.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Role::Sink(s) = &a.role {
                a.ctx.gauge_set("connected_clients", "Socket.IO clients connected to this address.", connected as f64);
                if let Some(room) = &s.room {
                    let n = rooms.get(room).copied().unwrap_or(0);
                    a.ctx.gauge_set(&room_gauge(room), "Socket.IO clients in the sink's room.", n as f64);
                }
            }
        }
    }

    /// Drops clients that fell behind: no more packets go to them, they are counted and
    /// disconnected (at once if their queue has room for the disconnect packet, else by the
    /// heartbeat, which cannot queue its ping either).
    pub fn drop_slow(&self, ctx: &Context, slow: &[Sid]) {
        if slow.is_empty() {
            return;
        }
        let sockets: Vec<SocketRef> = {
            let mut clients = self.clients();
            slow.iter().filter_map(|sid| clients.remove(sid)).map(|c| c.socket).collect()
        };
        ctx.counter_add("socketio_slow_clients_disconnected", "Socket.IO clients disconnected for falling behind.", sockets.len() as u64);
        ctx.log(weir_plugin::Level::Debug, &format!("Disconnected {} Socket.IO client(s) that fell behind.", sockets.len()));
        let limit = Duration::from_millis(self.options.ping_interval_ms + self.options.ping_timeout_ms);
        for socket in sockets {
            weir_plugin::runtime().spawn(async move {
                let deadline = tokio::time::Instant::now() + limit;
                loop {
                    match socket.clone().disconnect() {
                        Err(SocketError::InternalChannelFull) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        _ => break,
                    }
                }
            });
        }
        self.report();
    }
}

/// The name of a room's gauge: `<room>_clients`, with characters a metric name cannot hold as `_`.
pub(crate) fn room_gauge(room: &str) -> String {
    let mut name: String = room.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name.push_str("_clients");
    name
}

/// The `types` a client asked for: `auth.types` (an array or a comma-separated string) or
/// the handshake's `?types=a,b`.
pub(crate) fn client_types(auth: Option<&Value>, query: Option<&str>) -> Option<HashSet<String>> {
    let from_auth = auth.and_then(|a| a.get("types")).map(|t| match t {
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>(),
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        _ => Vec::new(),
    });
    let list = from_auth.or_else(|| {
        let query = query?;
        let raw = query.split('&').find_map(|kv| kv.strip_prefix("types="))?;
        Some(percent_decode(raw).split(',').map(str::to_owned).collect())
    })?;
    let set: HashSet<String> = list.into_iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
    (!set.is_empty()).then_some(set)
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn on_connect(server: Weak<Server>, socket: SocketRef, auth: Option<Value>) {
    let Some(server) = server.upgrade() else {
        let _ = socket.disconnect();
        return;
    };
    let parts = socket.req_parts();
    let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_default();
    let types = client_types(auth.as_ref(), parts.uri.query());
    server.clients().insert(socket.id, Client { socket: socket.clone(), ip, types, rooms: HashSet::new() });
    let weak = Arc::downgrade(&server);
    socket.on_fallback(
        async move |socket: SocketRef, Event(event): Event, TryData::<Box<RawValue>>(data), AckId(ack_id): AckId, ack: AckSender| {
            if let Some(server) = weak.upgrade() {
                let payload = data.ok().and_then(|packet| event_payload(&event, &packet));
                dispatch(server, socket, event, payload, ack_id, ack).await;
            }
        },
    );
    let weak = Arc::downgrade(&server);
    socket.on_disconnect(async move |socket: SocketRef| {
        if let Some(server) = weak.upgrade() {
            let removed = server.clients().remove(&socket.id).is_some();
            if removed {
                server.report();
            }
        }
    });
    server.report();
}

/// Answers a client's event with `payload`: as the acknowledgement it asked for, else as `event`.
pub(crate) fn reply(socket: &SocketRef, event: &str, ack_id: Option<i64>, ack: AckSender, payload: &Value) -> Result<(), SendError> {
    if ack_id.is_some() {
        ack.send(payload)
    } else {
        socket.emit(event, payload)
    }
}

async fn dispatch(server: Arc<Server>, socket: SocketRef, event: String, data: Option<Box<RawValue>>, ack_id: Option<i64>, ack: AckSender) {
    let Some(stage) = server.handler_for(&event) else {
        return;
    };
    match &stage.role {
        Role::Sink(sink) => {
            let Some(room) = &sink.room else { return };
            socket.join(room.clone());
            if let Some(c) = server.clients().get_mut(&socket.id) {
                c.rooms.insert(room.clone());
            }
            server.report();
            let payload = json!({ "room": room, "timestamp": now_rfc3339() });
            let _ = reply(&socket, &sink.joined_event, ack_id, ack, &payload);
        }
        Role::Source(source) => {
            let ip = server.clients().get(&socket.id).map(|c| c.ip.clone()).unwrap_or_default();
            source.handle(&stage.ctx, socket, ip, data, ack_id, ack).await;
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "application/json")], r#"{"success":false,"error":"no such endpoint"}"#).into_response()
}

/// Refuses pages from origins no stage allows (403) and gives allowed ones the CORS headers
/// that long-polling from a browser needs (answering their preflight).
async fn guard(State(server): State<Weak<Server>>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET {
        if let Some(health) = server.upgrade().and_then(|s| s.health(req.uri().path())) {
            return ([(header::CONTENT_TYPE, "application/json")], health.to_string()).into_response();
        }
    }
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let Some(server) = server.upgrade() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the Socket.IO server is stopping\n").into_response();
    };
    if !server.allows(origin.as_bytes()) {
        let shown: String = String::from_utf8_lossy(origin.as_bytes()).chars().take(200).collect();
        if let Some(a) = server.stages.read().unwrap_or_else(|p| p.into_inner()).first() {
            a.ctx.counter_add("socketio_origins_refused", "Socket.IO requests refused for their Origin.", 1);
        }
        let body = format!("pages from the origin {shown:?} may not connect; add it to the socketio stage's allowed_origins\n");
        return (StatusCode::FORBIDDEN, body).into_response();
    }
    if req.method() == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        cors(h, origin);
        return response;
    }
    let mut response = next.run(req).await;
    cors(response.headers_mut(), origin);
    response
}

fn cors(h: &mut axum::http::HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The first argument of an event, byte for byte, from the packet's JSON text
/// (`["log_event",{…}]`; the raw extractor hands over the whole array). `None` when the
/// client sent no argument.
pub(crate) fn event_payload(event: &str, packet: &RawValue) -> Option<Box<RawValue>> {
    let items: Vec<&RawValue> = serde_json::from_str(packet.get()).ok()?;
    let named = items.first().and_then(|first| serde_json::from_str::<&str>(first.get()).ok()).is_some_and(|name| name == event);
    let payload = if named { items.get(1)? } else { packet };
    Some(payload.to_owned())
}

/// A record's value as the JSON sent to clients; `None` when it is not JSON.
pub(crate) fn as_json(value: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice::<&RawValue>(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_auth_or_the_query() {
        let auth = json!({"types": ["a", "b"]});
        assert_eq!(client_types(Some(&auth), Some("types=c")).unwrap().len(), 2);
        assert!(client_types(Some(&json!({"types": "x, y"})), None).unwrap().contains("y"));
        let q = client_types(None, Some("EIO=4&transport=polling&types=like_clicked%2Cpage_view")).unwrap();
        assert!(q.contains("like_clicked") && q.contains("page_view"), "{q:?}");
        assert!(client_types(None, Some("EIO=4")).is_none());
        assert!(client_types(Some(&json!({})), None).is_none());
        assert!(client_types(None, Some("types=")).is_none());
    }

    #[test]
    fn the_payload_is_the_first_argument_byte_for_byte() {
        let packet: Box<RawValue> = serde_json::from_str(r#"["log_event",{"n":1.50,"s":"x"},2]"#).unwrap();
        assert_eq!(event_payload("log_event", &packet).unwrap().get(), r#"{"n":1.50,"s":"x"}"#);
        let bare: Box<RawValue> = serde_json::from_str(r#"["log_event"]"#).unwrap();
        assert!(event_payload("log_event", &bare).is_none());
    }

    #[test]
    fn room_gauges_are_metric_names() {
        assert_eq!(room_gauge("dashboard"), "dashboard_clients");
        assert_eq!(room_gauge("ops-team.1"), "ops_team_1_clients");
        assert_eq!(room_gauge("1st"), "_1st_clients");
    }

    fn options(port: u16, path: &str) -> ServerOptions {
        let config: crate::config::SinkConfig =
            serde_json::from_value(json!({"listen": format!("127.0.0.1:{port}"), "path": path})).unwrap();
        config.server()
    }

    fn sink(room: &str) -> Role {
        Role::Sink(SinkRole { room: Some(room.into()), join_event: "join".into(), joined_event: "joined".into(), health_path: None })
    }

    #[test]
    fn stages_on_one_address_share_a_server_until_the_last_leaves() {
        let host = weir_plugin::mock::MockHost::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let old = attach(&options(port, "/socket.io/"), host.context(), Origins::default(), sink("a")).unwrap();
        // A new version attaches before the old one leaves: the same server.
        let new = attach(&options(port, "/socket.io"), host.context(), Origins::default(), sink("b")).unwrap();
        assert!(Arc::ptr_eq(old.server(), new.server()));
        assert_eq!(new.server().handler_for("join").unwrap().id, new.id, "the newest stage takes the clients' events");
        // Server options must agree: the error names the option, both values and the way out.
        let err = attach(&options(port, "/io"), host.context(), Origins::default(), sink("c")).err().unwrap().to_string();
        assert!(err.contains("path /socket.io") && err.contains("asks for /io") && err.contains("another listen address"), "{err}");
        drop(old);
        assert!(registry().contains_key(&format!("127.0.0.1:{port}")), "still served for the new version");
        assert_eq!(new.server().handler_for("join").unwrap().id, new.id);
        drop(new);
        assert!(!registry().contains_key(&format!("127.0.0.1:{port}")), "stopped with its last stage");
    }

    #[test]
    fn origins_allowed_by_any_stage_on_the_address_may_connect() {
        let host = weir_plugin::mock::MockHost::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let a = attach(&options(port, "/socket.io"), host.context(), Origins::new(&["http://a.example".into()]), sink("a")).unwrap();
        assert!(a.server().allows(b"http://a.example") && !a.server().allows(b"http://b.example"));
        let b = attach(&options(port, "/socket.io"), host.context(), Origins::new(&["http://b.example".into()]), sink("b")).unwrap();
        assert!(a.server().allows(b"http://b.example"));
        drop(b);
        assert!(!a.server().allows(b"http://b.example"), "gone with the stage that allowed it");
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%2Cb+c"), "a,b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
