//! Connections handed from a stopping server to a newer one on the same socket, inside this
//! library (when the host is older than ABI 1.2 and hands the whole address over).

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::body::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// An open connection passed from a stopping server to the one that took over its
/// listener, with what was read of it and not yet used.
pub(super) struct Handed {
    pub(super) stream: TcpStream,
    pub(super) read: Bytes,
}

/// The servers accepting in this process (this library's copy of them), by local address:
/// a stopping one hands its idle connections to a newer one on the same socket, so a
/// reload closes no connection.
pub(super) static SERVERS: Mutex<Vec<(SocketAddr, u64, mpsc::UnboundedSender<Handed>)>> = Mutex::new(Vec::new());

pub(super) fn servers() -> std::sync::MutexGuard<'static, Vec<(SocketAddr, u64, mpsc::UnboundedSender<Handed>)>> {
    SERVERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a connection goes when its server stops.
#[derive(Clone, Copy)]
pub(super) struct Successors {
    pub(super) addr: Option<SocketAddr>,
    pub(super) me: u64,
}

impl Successors {
    /// Hands `h` to the newest other server on the same address; gives it back if none.
    pub(super) fn hand(self, mut h: Handed) -> Result<(), Handed> {
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

    pub(super) fn exists(self) -> bool {
        self.addr.is_some_and(|addr| servers().iter().any(|(a, id, _)| *a == addr && *id != self.me))
    }
}
