//! Serving an axum `Router` over HTTP/1.1 for a plugin (feature `serve`), on a whole
//! address or on a shared one ([`crate::routes`]): the accept loop and the life of each
//! connection, with limits (connection cap, header and idle timeouts), HTTP upgrades
//! (WebSocket), giving a connection back to the host when a request on it is for another
//! stage's path, and a drain that answers every request it has begun to receive.
//!
//! On stop the listener is dropped (the host keeps the socket; the next version of the
//! pipeline accepts on it), and each open connection is closed only at a moment when no
//! request can be on its way on it: a request in flight or arriving is answered with
//! `Connection: close`, and an idle connection is closed once it has been silent for
//! [`DRAIN_QUIET`] with nothing unread in the socket.

pub mod auth;
mod conn;
pub mod cors;
mod handoff;
mod memory;
mod state;

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::routes::RoutedListener;
use crate::Context;
use axum::body::Bytes;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use conn::Conn;
use handoff::{servers, Successors};

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

/// The connections of one or more servers, those that switched protocols (WebSockets)
/// included, which a server's drain leaves to the upgrade's handler. Their owner may cut
/// them all at once, so that clients see their connection lost (and reconnect, as
/// socket.io-client does by itself) rather than being told goodbye.
#[derive(Clone, Default)]
pub struct Connections(Option<Arc<std::sync::Mutex<Vec<std::sync::Weak<TcpStream>>>>>);

impl Connections {
    /// Keeps track of the connections (`Connections::default()` keeps none: nothing to cut,
    /// and nothing held for a server with many short connections).
    pub fn tracked() -> Connections {
        Connections(Some(Arc::default()))
    }

    fn push(&self, stream: std::sync::Weak<TcpStream>) {
        let Some(list) = &self.0 else { return };
        let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
        // Closed ones are forgotten now and then (amortised over the pushes).
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(stream);
    }

    /// Cuts every connection still open (both directions); returns how many.
    pub fn cut_all(&self) -> usize {
        let Some(list) = &self.0 else { return 0 };
        let list = std::mem::take(&mut *list.lock().unwrap_or_else(|p| p.into_inner()));
        let open: Vec<Arc<TcpStream>> = list.iter().filter_map(std::sync::Weak::upgrade).collect();
        for s in &open {
            let _ = socket2::SockRef::from(&**s).shutdown(std::net::Shutdown::Both);
        }
        open.len()
    }
}

/// Milliseconds since the server started: a cheap clock connections share.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Where connections come from.
pub enum Listener {
    /// A listening socket of the source's own (a host older than ABI 1.2).
    Tcp(TcpListener),
    /// A shared address: the host hands over connections for these paths.
    Routed(Arc<RoutedListener>, Arc<Vec<String>>),
    /// A listening socket of the source's own, every connection over TLS. A TLS
    /// connection is not handed to the next version on a reload: an idle one is closed
    /// once quiet with nothing unread, one in use after its answer (`Connection: close`).
    Tls(TcpListener, Arc<crate::tls::Tls>),
}

impl Listener {
    async fn accept(&self) -> io::Result<Option<(TcpStream, Bytes)>> {
        match self {
            Listener::Tcp(l) | Listener::Tls(l, _) => l.accept().await.map(|(s, _)| Some((s, Bytes::new()))),
            Listener::Routed(l, _) => l.accept().await.map(|c| c.map(|(s, read)| (s, Bytes::from(read)))),
        }
    }
}

/// Whether a request's `Content-Type` is JSON (`application/json`, or any
/// `application/…+json`), parameters such as `charset` aside.
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A server started on the plugin runtime with [`Serving::start`], served until
/// [`Serving::stop`].
pub struct Serving {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl Serving {
    /// Serves `app` on `listener` on the plugin runtime ([`serve`]); `alongside`, a task
    /// that lives as long as the server, is aborted when it has drained.
    pub fn start(
        listener: Listener,
        app: Router,
        limits: Limits,
        connections: Connections,
        ctx: Context,
        alongside: Option<tokio::task::JoinHandle<()>>,
    ) -> Serving {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        crate::runtime().spawn(async move {
            serve(listener, app, limits, connections, ctx, stop_rx).await;
            if let Some(task) = alongside {
                task.abort();
            }
            let _ = done_tx.send(());
        });
        Serving { stop: Some(stop_tx), done: Some(done_rx) }
    }

    /// Stops accepting, answers what was begun, and waits for the drain (at most
    /// [`STOP_TIMEOUT`] and a little). Calling it again does nothing.
    pub fn stop(&mut self) -> Result<(), crate::PluginError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            if done.recv_timeout(STOP_TIMEOUT + Duration::from_secs(2)).is_err() {
                return Err(crate::PluginError::fatal(format!("in-flight requests did not finish within {} s", STOP_TIMEOUT.as_secs())));
            }
        }
        Ok(())
    }
}

/// Serves `app` on `listener` until `stop` fires, then drains (see the module docs).
/// Its connections are recorded in `connections`.
pub async fn serve(
    listener: Listener,
    app: Router,
    limits: Limits,
    connections: Connections,
    ctx: Context,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    // Builds the handlers not yet built once, here: a router used as a service as it is
    // would build them (and apply its layers) again for every request.
    let app = app.with_state(());
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let clock = Clock(Instant::now());
    let (closing_tx, closing_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let me = NEXT_ID.fetch_add(1, Relaxed);
    let routed = match &listener {
        Listener::Routed(l, routes) => Some((l.clone(), routes.clone())),
        Listener::Tcp(_) | Listener::Tls(..) => None,
    };
    // A TLS server hands no connection on, nor takes one: its successors are unknown.
    let addr = match &listener {
        Listener::Tcp(l) => l.local_addr().ok(),
        Listener::Routed(..) | Listener::Tls(..) => None,
    };
    let tls = match &listener {
        Listener::Tls(_, tls) => Some(tls.clone()),
        _ => None,
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
        let (app, closing, cut, routed, connections) =
            (app.clone(), closing_rx.clone(), cut_rx.clone(), routed.clone(), connections.clone());
        let tls = tls.as_ref().map(|t| t.acceptor_logged(&ctx));
        tokio::spawn(async move {
            let conn = Conn { clock, limits, successors, routed, connections, tls };
            if conn.serve(stream, read, app, closing, cut).await {
                ctx.counter_add("http_connections_timed_out_total", "Connections cut because their headers came too slowly.", 1);
            }
            let left = open.fetch_sub(1, Relaxed) - 1;
            let p = peak.load(Relaxed);
            if p >= left + RETURN_MEMORY_AFTER || (left == 0 && p >= RETURN_MEMORY_AFTER / 4) {
                peak.store(left, Relaxed);
                tokio::task::spawn_blocking(memory::return_free_memory);
                if left == 0 {
                    // Again once what closed with them (refused connections, buffers freed
                    // on other threads) is gone too.
                    tokio::spawn(async {
                        tokio::time::sleep(REFUSE_LINGER * 2).await;
                        tokio::task::spawn_blocking(memory::return_free_memory);
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
                        // Over TLS a plain answer would be noise to the client: it is closed.
                        if tls.is_none() {
                            tokio::spawn(refuse(stream, limits.retry_after_secs));
                        }
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
        let _ = tokio::time::timeout(Duration::from_secs(5), l.close()).await;
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
