//! One connection's life: serving it with hyper (upgrades included), its timeouts, and
//! where it goes when the server stops or a request on it is another stage's.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::routes::RoutedListener;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::Router;
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower_service::Service;

use super::handoff::{Handed, Successors};
use super::state::{has_unread, verdict, ConnState, Io, Verdict};
use super::{Clock, Connections, Limits};

/// What every connection of one server shares.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) clock: Clock,
    pub(super) limits: Limits,
    pub(super) successors: Successors,
    /// On a shared address: the host's end and the paths this source serves.
    pub(super) routed: Option<(Arc<RoutedListener>, Arc<Vec<String>>)>,
    /// Where the connections are kept track of.
    pub(super) connections: Connections,
    /// TLS for this connection: its handshake comes first, and it is never handed on.
    pub(super) tls: Option<crate::tls::TlsAcceptor>,
}

type Connection = hyper::server::conn::http1::UpgradeableConnection<hyper_util::rt::TokioIo<Io>, ConnService>;

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
            if !routes.iter().any(|r| crate::routes::serves(r, req.uri().path())) {
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
            if res.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                // The connection becomes the upgrade's (a WebSocket): never given back.
                state.upgraded.store(true, Relaxed);
            }
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
    pub(super) async fn serve(
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
        self.connections.push(Arc::downgrade(&stream));
        let service = self.service(app, peer, &state);
        if let Some(acceptor) = &self.tls {
            let Ok(io) = crate::tls::Tls::handshake(acceptor, io).await else { return false };
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), service).with_upgrades();
            return self.watch_tls(conn, &state, &stream, closing, cut).await;
        }
        let mut conn: Connection =
            hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), service).with_upgrades();
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
        // hyper ends the connection by shutting its writing side, which this one skips:
        // the connection goes on elsewhere.
        state.keep_open.store(true, Relaxed);
        Pin::new(&mut conn).graceful_shutdown();
        tokio::select! {
            done = &mut conn => {
                if done.is_err() || state.told_close.load(Relaxed) || state.upgraded.load(Relaxed) {
                    return false;
                }
            }
            _ = cut.changed() => return cut_now(conn, &stream, false).await,
        }
        // `None`: upgraded meanwhile, the upgrade's now.
        let Some(parts) = conn.into_parts() else { return false };
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

    /// Serves a TLS connection until it ends: as [`Conn::serve`], except that in a drain
    /// it is closed (once idle, or after its answer) rather than handed on, since its TLS
    /// session cannot move to another server.
    async fn watch_tls<C>(
        &self,
        mut conn: C,
        state: &ConnState,
        stream: &TcpStream,
        mut closing: watch::Receiver<bool>,
        mut cut: watch::Receiver<bool>,
    ) -> bool
    where
        C: Future + Unpin + GracefulShutdown,
    {
        let mut is_closing = *closing.borrow();
        state.closing.store(is_closing, Relaxed);
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = &mut conn => return false,
                _ = tokio::time::sleep(wait) => {}
                changed = closing.changed(), if !is_closing => {
                    is_closing = changed.is_err() || *closing.borrow();
                    state.closing.store(is_closing, Relaxed);
                    continue;
                }
                _ = cut.changed() => return cut_now(conn, stream, false).await,
            }
            match verdict(self.clock.now(), state, is_closing, &self.limits, || has_unread(stream)) {
                Verdict::Wait(d) => wait = d.max(Duration::from_millis(1)),
                Verdict::CloseIdle => {
                    conn.shut_down();
                    let _ = conn.await;
                    return false;
                }
                Verdict::Cut => return cut_now(conn, stream, true).await,
            }
        }
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

/// A hyper connection that can be asked to finish and close.
trait GracefulShutdown {
    fn shut_down(&mut self);
}

impl<I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static> GracefulShutdown
    for hyper::server::conn::http1::UpgradeableConnection<I, ConnService>
{
    fn shut_down(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}
