//! The accept loop and the life of each connection: limits (connection cap, header and
//! idle timeouts) and a drain that answers every request it has begun to receive.
//!
//! On stop the listener is dropped (the host keeps the socket; the next version of the
//! pipeline accepts on it), and each open connection is closed only at a moment when no
//! request can be on its way on it: a request in flight or arriving is answered with
//! `Connection: close`, and an idle connection is closed once it has been silent for
//! [`DRAIN_QUIET`] with nothing unread in the socket.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::Router;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower_service::Service;
use weir_plugin::routes::RoutedListener;
use weir_plugin::Context;

/// How long stop waits for open connections before cutting them.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// During a drain, how long an idle connection must have been silent before it is closed.
pub const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// After this many connections closed since the peak, free memory is given back to the
/// system (the allocator keeps what a burst of connections used otherwise).
const RETURN_MEMORY_AFTER: usize = 512;
/// How long a refused connection is given to read its 503 before it is closed.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// The limits one server applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// From a request's first byte to its last header.
    pub header_timeout: Duration,
    /// Silence allowed between requests.
    pub idle_timeout: Duration,
    /// Seconds put in `Retry-After` on a refused connection.
    pub retry_after_secs: u32,
}

/// Milliseconds since the server started: a cheap clock connections share.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// What one connection is doing, updated by its IO and its requests, read by its watchdog.
struct ConnState {
    clock: Clock,
    /// Last byte read or written.
    activity: AtomicU64,
    /// When the first byte of a request whose headers are not complete arrived; 0 if none.
    head_since: AtomicU64,
    /// Requests handed to the service and not yet answered.
    in_flight: AtomicUsize,
    /// Set when the server drains: responses carry `Connection: close`.
    closing: AtomicBool,
    /// A response said `Connection: close`: the client closes after it.
    told_close: AtomicBool,
    /// On a shared address: what was read since the last answer (the next request as it
    /// came), to give back with the connection when that request is another stage's.
    recording: Option<Mutex<Vec<u8>>>,
    /// Set while a request of this source's own is in flight: nothing to record.
    own_request: AtomicBool,
    /// A request arrived for a path another stage serves.
    foreign: tokio::sync::Notify,
}

impl ConnState {
    fn new(clock: Clock, shared: bool) -> Self {
        ConnState {
            recording: shared.then(|| Mutex::new(Vec::new())),
            own_request: AtomicBool::new(false),
            foreign: tokio::sync::Notify::new(),
            clock,
            activity: AtomicU64::new(clock.now()),
            head_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            told_close: AtomicBool::new(false),
        }
    }

    fn read(&self, n: usize) {
        let now = self.clock.now();
        self.activity.store(now, Relaxed);
        if n > 0 && self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(now.max(1), Relaxed);
        }
    }

    fn wrote(&self) {
        self.activity.store(self.clock.now(), Relaxed);
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
    }

    fn request_answered(&self) {
        self.activity.store(self.clock.now(), Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
        if let Some(r) = &self.recording {
            r.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.own_request.store(false, Relaxed);
        }
    }

    /// Records bytes read on a shared address, outside this source's own requests.
    fn record(&self, bytes: &[u8]) {
        if let Some(r) = &self.recording {
            if !self.own_request.load(Relaxed) {
                r.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
            }
        }
    }

    /// A request of this source's own began: what was recorded is its, not to give back.
    fn own(&self) {
        if let Some(r) = &self.recording {
            self.own_request.store(true, Relaxed);
            r.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    fn recorded(&self) -> Vec<u8> {
        self.recording.as_ref().map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|p| p.into_inner()))).unwrap_or_default()
    }
}

/// What the watchdog decides for a connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Look again after this long.
    Wait(Duration),
    /// Idle with nothing on its way: close it.
    CloseIdle,
    /// Headers too slow: cut it.
    Cut,
}

/// Decides from a connection's state. `unread` says whether bytes wait in its socket.
fn verdict(now: u64, state: &ConnState, closing: bool, limits: &Limits, unread: impl FnOnce() -> bool) -> Verdict {
    let quiet = if closing { DRAIN_QUIET } else { limits.idle_timeout };
    if state.in_flight.load(Relaxed) > 0 {
        // Its response ends it when closing; afterwards it is idle and looked at again.
        return Verdict::Wait(quiet);
    }
    let head_since = state.head_since.load(Relaxed);
    if head_since != 0 {
        let limit = limits.header_timeout.as_millis() as u64;
        let elapsed = now.saturating_sub(head_since);
        return if elapsed >= limit { Verdict::Cut } else { Verdict::Wait(Duration::from_millis(limit - elapsed)) };
    }
    let silent = now.saturating_sub(state.activity.load(Relaxed));
    let quiet_ms = quiet.as_millis() as u64;
    if silent < quiet_ms {
        return Verdict::Wait(Duration::from_millis(quiet_ms - silent));
    }
    if unread() {
        // A request is arriving that hyper has not read yet: it will be answered.
        return Verdict::Wait(Duration::from_millis(5));
    }
    Verdict::CloseIdle
}

/// A TCP stream shared by hyper (reads and writes) and the connection's watchdog (peek and
/// shutdown), recording activity as it goes.
struct Io {
    stream: Arc<TcpStream>,
    state: Arc<ConnState>,
    /// Bytes read from the socket by a previous server and not yet used; read first.
    read: Bytes,
}

impl AsyncRead for Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let chunk = self.read.split_to(n);
            buf.put_slice(&chunk);
            self.state.read(n);
            self.state.record(&chunk);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    self.state.record(&buf.initialize_unfilled()[..n]);
                    buf.advance(n);
                    self.state.read(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => {
                    self.state.wrote();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Ok(n) => {
                    self.state.wrote();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write))
    }
}

/// Whether bytes wait unread in the socket (a request on its way).
fn has_unread(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Ok(n) if n > 0)
}

/// An open connection passed from a stopping server to the one that took over its
/// listener, with what was read of it and not yet used.
struct Handed {
    stream: TcpStream,
    read: Bytes,
}

/// The servers accepting in this process (this library's copy of them), by local address:
/// a stopping one hands its idle connections to a newer one on the same socket, so a
/// reload closes no connection.
static SERVERS: Mutex<Vec<(SocketAddr, u64, mpsc::UnboundedSender<Handed>)>> = Mutex::new(Vec::new());

fn servers() -> std::sync::MutexGuard<'static, Vec<(SocketAddr, u64, mpsc::UnboundedSender<Handed>)>> {
    SERVERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a connection goes when its server stops.
#[derive(Clone, Copy)]
struct Successors {
    addr: Option<SocketAddr>,
    me: u64,
}

impl Successors {
    /// Hands `h` to the newest other server on the same address; gives it back if none.
    fn hand(self, mut h: Handed) -> Result<(), Handed> {
        let Some(addr) = self.addr else { return Err(h) };
        let candidates: Vec<mpsc::UnboundedSender<Handed>> =
            servers().iter().rev().filter(|(a, id, _)| *a == addr && *id != self.me).map(|(_, _, tx)| tx.clone()).collect();
        for tx in candidates {
            match tx.send(h) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => h = back,
            }
        }
        Err(h)
    }

    fn exists(self) -> bool {
        self.addr.is_some_and(|addr| servers().iter().any(|(a, id, _)| *a == addr && *id != self.me))
    }
}

/// Where connections come from.
pub enum Listener {
    /// A listening socket of the source's own (a host older than ABI 1.2).
    Tcp(TcpListener),
    /// A shared address: the host hands over connections for these paths.
    Routed(Arc<RoutedListener>, Arc<Vec<String>>),
}

impl Listener {
    async fn accept(&self) -> io::Result<Option<(TcpStream, Bytes)>> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Some((s, Bytes::new()))),
            Listener::Routed(l, _) => l.accept().await.map(|c| c.map(|(s, read)| (s, Bytes::from(read)))),
        }
    }
}

/// Serves `app` on `listener` until `stop` fires, then drains (see the module docs).
pub async fn serve(listener: Listener, app: Router, limits: Limits, ctx: Context, mut stop: tokio::sync::oneshot::Receiver<()>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let clock = Clock(Instant::now());
    let (closing_tx, closing_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let me = NEXT_ID.fetch_add(1, Relaxed);
    let routed = match &listener {
        Listener::Routed(l, routes) => Some((l.clone(), routes.clone())),
        Listener::Tcp(_) => None,
    };
    let addr = match &listener {
        Listener::Tcp(l) => l.local_addr().ok(),
        Listener::Routed(..) => None,
    };
    let (handed_tx, mut handed_rx) = mpsc::unbounded_channel();
    if let Some(addr) = addr {
        servers().push((addr, me, handed_tx));
    }
    let successors = Successors { addr, me };
    let peak = Arc::new(AtomicUsize::new(0));
    let spawn = |stream: TcpStream, read: Bytes| {
        peak.fetch_max(open.fetch_add(1, Relaxed) + 1, Relaxed);
        let (open, peak) = (open.clone(), peak.clone());
        let (app, closing, cut, routed) = (app.clone(), closing_rx.clone(), cut_rx.clone(), routed.clone());
        tokio::spawn(async move {
            let conn = Conn { clock, limits, successors, routed };
            if conn.serve(stream, read, app, closing, cut).await {
                ctx.counter_add("http_connections_timed_out_total", "Connections cut because their headers came too slowly.", 1);
            }
            let left = open.fetch_sub(1, Relaxed) - 1;
            let p = peak.load(Relaxed);
            if p >= left + RETURN_MEMORY_AFTER || (left == 0 && p >= RETURN_MEMORY_AFTER / 4) {
                peak.store(left, Relaxed);
                tokio::task::spawn_blocking(crate::memory::return_free_memory);
                if left == 0 {
                    // Again once what closed with them (refused connections, buffers freed
                    // on other threads) is gone too.
                    tokio::spawn(async {
                        tokio::time::sleep(REFUSE_LINGER * 2).await;
                        tokio::task::spawn_blocking(crate::memory::return_free_memory);
                    });
                }
            }
        });
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(h) = handed_rx.recv() => spawn(h.stream, h.read),
            accepted = listener.accept() => match accepted {
                Ok(Some((stream, read))) => {
                    let _ = stream.set_nodelay(true);
                    if open.load(Relaxed) >= limits.max_connections {
                        ctx.counter_add("http_connections_refused_total", "Connections refused because max_connections were open.", 1);
                        tokio::spawn(refuse(stream, limits.retry_after_secs));
                    } else {
                        spawn(stream, read);
                    }
                }
                Ok(None) => {
                    ctx.warn("The host closed the shared address; no more connections will come.");
                    let _ = (&mut stop).await;
                    break;
                }
                // Out of file descriptors, most likely: let some close.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    servers().retain(|(_, id, _)| *id != me);
    if let Listener::Routed(l, _) = &listener {
        // The host routes no more here; what it sent meanwhile goes back to it.
        let _ = l.close().await;
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Connections handed here while stopping are served in closing mode (handed on again).
    handed_rx.close();
    while let Ok(h) = handed_rx.try_recv() {
        spawn(h.stream, h.read);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while open.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = cut_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(1);
    while open.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What every connection of one server shares.
#[derive(Clone)]
struct Conn {
    clock: Clock,
    limits: Limits,
    successors: Successors,
    /// On a shared address: the host's end and the paths this source serves.
    routed: Option<(Arc<RoutedListener>, Arc<Vec<String>>)>,
}

type Connection = hyper::server::conn::http1::Connection<hyper_util::rt::TokioIo<Io>, ConnService>;

/// The service for one connection: the app, plus the headers that say whether the
/// connection stays open.
struct ConnService {
    app: Router,
    peer: SocketAddr,
    state: Arc<ConnState>,
    keep_alive: HeaderValue,
    /// On a shared address, the paths this source serves.
    routes: Option<Arc<Vec<String>>>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<axum::response::Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(routes) = &self.routes {
            if !routes.iter().any(|r| weir_plugin::routes::serves(r, req.uri().path())) {
                // Another stage's path: the connection goes back to the host with this
                // request as it came; this future is dropped with the connection.
                self.state.foreign.notify_one();
                return Box::pin(std::future::pending());
            }
        }
        let (mut app, state, keep_alive) = (self.app.clone(), self.state.clone(), self.keep_alive.clone());
        state.own();
        state.request_started();
        req.extensions_mut().insert(ConnectInfo(self.peer));
        Box::pin(async move {
            let answered = Answered(&state);
            let mut res = match app.call(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            let headers = res.headers_mut();
            if state.closing.load(Relaxed) {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            if headers.get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close")) {
                state.told_close.store(true, Relaxed);
            } else {
                headers.insert("keep-alive", keep_alive);
            }
            drop(answered);
            Ok(res)
        })
    }
}

impl Conn {
    /// Serves one connection until it ends or is handed to the next server; returns
    /// whether it was cut for slow headers.
    async fn serve(
        self,
        stream: TcpStream,
        read: Bytes,
        app: Router,
        mut closing: watch::Receiver<bool>,
        mut cut: watch::Receiver<bool>,
    ) -> bool {
        let Ok(peer) = stream.peer_addr() else { return false };
        let state = Arc::new(ConnState::new(self.clock, self.routed.is_some()));
        let stream = Arc::new(stream);
        let io = Io { stream: stream.clone(), state: state.clone(), read };
        let mut conn: Connection =
            hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), self.service(app, peer, &state));
        let mut is_closing = *closing.borrow();
        let mut wait = Duration::ZERO;
        loop {
            if is_closing && (self.routed.is_some() || self.successors.exists()) {
                return self.hand_over(conn, &state, stream, &mut cut).await;
            }
            tokio::select! {
                _ = &mut conn => return false,
                _ = state.foreign.notified() => {
                    drop(conn.into_parts());
                    let read = state.recorded();
                    if let (Some((l, _)), Some(stream)) = (&self.routed, Arc::into_inner(stream)) {
                        let _ = l.give_back(&stream, &read).await;
                    }
                    return false;
                }
                _ = tokio::time::sleep(wait) => {}
                changed = closing.changed(), if !is_closing => {
                    is_closing = changed.is_err() || *closing.borrow();
                    state.closing.store(is_closing, Relaxed);
                    continue;
                }
                _ = cut.changed() => return cut_now(conn, &stream, false).await,
            }
            match verdict(self.clock.now(), &state, is_closing, &self.limits, || has_unread(&stream)) {
                Verdict::Wait(d) => wait = d.max(Duration::from_millis(1)),
                Verdict::CloseIdle => {
                    Pin::new(&mut conn).graceful_shutdown();
                    let _ = conn.await;
                    return false;
                }
                Verdict::Cut => return cut_now(conn, &stream, true).await,
            }
        }
    }

    /// Finishes what the connection is doing (a request in flight is answered with
    /// `Connection: close`, and then the client closes), and hands an idle one, with any
    /// bytes read of its next request, to the server that took over the listener.
    async fn hand_over(self, mut conn: Connection, state: &ConnState, stream: Arc<TcpStream>, cut: &mut watch::Receiver<bool>) -> bool {
        state.closing.store(true, Relaxed);
        Pin::new(&mut conn).graceful_shutdown();
        tokio::select! {
            done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if done.is_err() || state.told_close.load(Relaxed) {
                    return false;
                }
            }
            _ = cut.changed() => return cut_now(conn, &stream, false).await,
        }
        let parts = conn.into_parts();
        let io = parts.io.into_inner();
        let read = if parts.read_buf.is_empty() { io.read.clone() } else { [&parts.read_buf[..], &io.read[..]].concat().into() };
        drop((io, parts.service));
        let Some(stream) = Arc::into_inner(stream) else { return false };
        match &self.routed {
            Some((l, _)) => {
                let _ = l.give_back(&stream, &read).await;
            }
            None => {
                let _ = self.successors.hand(Handed { stream, read });
            }
        }
        false
    }

    fn service(&self, app: Router, peer: SocketAddr, state: &Arc<ConnState>) -> ConnService {
        let keep_alive = HeaderValue::from_str(&format!("timeout={}", self.limits.idle_timeout.as_secs().max(1))).expect("ascii");
        ConnService { app, peer, state: state.clone(), keep_alive, routes: self.routed.as_ref().map(|(_, r)| r.clone()) }
    }
}

/// Cuts a connection (both directions) and lets hyper finish with it.
async fn cut_now<F: Future + Unpin>(conn: F, stream: &TcpStream, timed_out: bool) -> bool {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
    let _ = conn.await;
    timed_out
}

/// Marks a request answered when dropped (also when its handler is cancelled).
struct Answered<'a>(&'a ConnState);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.request_answered();
    }
}

/// Answers a connection over the cap with 503 and closes it, letting it read the answer.
async fn refuse(mut stream: TcpStream, retry_after_secs: u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"success":false,"error":"too many open connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {retry_after_secs}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sends until it closes, so closing does not reset the
        // connection before the client has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            header_timeout: Duration::from_millis(1000),
            idle_timeout: Duration::from_millis(5000),
            retry_after_secs: 1,
        }
    }

    fn state_at(activity: u64) -> ConnState {
        let s = ConnState::new(Clock(Instant::now()), false);
        s.activity.store(activity, Relaxed);
        s
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout_or_the_drain_quiet() {
        let s = state_at(1000);
        assert_eq!(verdict(2000, &s, false, &limits(), || false), Verdict::Wait(Duration::from_millis(4000)));
        assert_eq!(verdict(6000, &s, false, &limits(), || false), Verdict::CloseIdle);
        assert_eq!(verdict(1100, &s, true, &limits(), || false), Verdict::Wait(Duration::from_millis(150)));
        assert_eq!(verdict(1250, &s, true, &limits(), || false), Verdict::CloseIdle);
    }

    #[test]
    fn a_request_on_its_way_or_in_flight_is_never_closed_under() {
        let s = state_at(1000);
        assert!(matches!(verdict(9000, &s, true, &limits(), || true), Verdict::Wait(_)), "unread bytes wait");
        s.request_started();
        assert!(matches!(verdict(60_000, &s, true, &limits(), || false), Verdict::Wait(_)), "in flight");
        s.request_answered();
        assert!(matches!(verdict(s.activity.load(Relaxed) + 1, &s, true, &limits(), || false), Verdict::Wait(_)));
    }

    #[test]
    fn slow_headers_are_cut_after_the_header_timeout() {
        let s = state_at(0);
        s.head_since.store(500, Relaxed);
        assert_eq!(verdict(1000, &s, false, &limits(), || false), Verdict::Wait(Duration::from_millis(500)));
        assert_eq!(verdict(1500, &s, false, &limits(), || false), Verdict::Cut);
        s.request_started();
        assert_eq!(s.head_since.load(Relaxed), 0, "complete headers stop the clock");
    }
}
